"""Every key family the worker keeps in its two changelog-backed tables, in one place.

The tables outlive the code that wrote them (a worker restores them from compacted changelog
topics), so their layout is versioned: each partition's state carries
:data:`STATE_VERSION` under its version key, written the first time this code touches the
partition, and a partition written by another layout is refused with
:class:`StateVersionError` — never read as zeros, as ``Agg.from_dict`` would read a renamed
field. Change the version whenever a family below changes shape.

Stage 1 (one state per raw partition ``p``, each key in ``p``'s changelog partition):

- ``{p}|{minute}|{scope}`` → :class:`Stage1Window`: the partition's aggregate of one scope and
  minute, with the last raw offset it applied (``thru``) so a re-read record is skipped;
- ``{p}|wm`` → :class:`Stage1Mark`: the partition's watermark and last applied offset;
- ``{p}|v`` → the layout version;
- ``d|{p}|{minute}|{first}.{i}`` → ``{offset: hex ids}``: event ids counted in the minute with
  the offset of the record that counted them (:mod:`.dedupe`; outside the ``{p}|`` prefix so
  window scans never see them).

Stage 2 (one state per stage-2 partition ``q``; scopes are routed to one ``q``):

- ``w|{q}|{minute}|{p}|{scope}`` → :class:`Stage1Window` as received (newest ``thru`` wins);
- ``wi|{q}|{minute}``, ``act|{q}``, ``pr|{q}|{due}`` → :class:`~.pipeline.Names` lists (the
  scopes with data in a minute, the scopes whose rules must see every minute, the scopes to
  check for pruning at a minute), chunked so no record grows with the number of scopes;
- ``mins|{q}`` minutes with data still retained; ``prm|{q}`` minutes with pruning due;
  ``c|{q}`` the last closed minute; ``wm|{q}`` each raw partition's ``[watermark, idle]``;
  ``o|{q}`` the last partials offset applied (written after its outputs were delivered);
  ``org|{q}`` the organisation level ``[minute, n, spend/min, calls/min]`` (detector);
- ``s|{scope}`` → the scope's rules state (``rules.py`` / ``detector.py`` own its contents);
- ``v|{q}`` → the layout version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

STATE_VERSION = 4
"""1: one key per partition and minute (before issue 13); 2: one key per scope and minute;
3: stage 2 keeps the organisation level (``org|q``) and the detector's per-scope state;
4: stage 1 keeps the event ids it counted (``d|p|minute|…``, issue 17)."""


class StateVersionError(RuntimeError):
    """A partition's state was written by a different layout."""


class Stage1Window(TypedDict):
    thru: int
    agg: dict[str, Any]


class Stage1Mark(TypedDict):
    ts: float
    thru: int


# --- stage 1 -----------------------------------------------------------------------------------
def s1_window(p: int, minute: int, scope: str) -> str:
    return f"{p}|{minute}|{scope}"


def s1_mark(p: int) -> str:
    return f"{p}|wm"


def s1_version(p: int) -> str:
    return f"{p}|v"


def s1_seen(p: int, minute: int, chunk: str) -> str:
    return f"d|{p}|{minute}|{chunk}"


def s1_seen_prefix(p: int) -> str:
    """Every event-id key of partition ``p`` starts with this."""
    return f"d|{p}|"


def s1_prefix(p: int) -> str:
    """Every stage-1 key of partition ``p`` starts with this."""
    return f"{p}|"


# --- stage 2 -----------------------------------------------------------------------------------
def s2_window(q: int, minute: int, p: int, scope: str) -> str:
    return f"w|{q}|{minute}|{p}|{scope}"


def s2_index(q: int, minute: int) -> str:
    return f"wi|{q}|{minute}"


def s2_active(q: int) -> str:
    return f"act|{q}"


def s2_minutes(q: int) -> str:
    return f"mins|{q}"


def s2_closed(q: int) -> str:
    return f"c|{q}"


def s2_marks(q: int) -> str:
    return f"wm|{q}"


def s2_applied(q: int) -> str:
    return f"o|{q}"


def s2_org(q: int) -> str:
    return f"org|{q}"


def s2_prune_due(q: int) -> str:
    return f"prm|{q}"


def s2_prune_list(q: int, due: int) -> str:
    return f"pr|{q}|{due}"


def s2_scope(scope: str) -> str:
    return f"s|{scope}"


def s2_version(q: int) -> str:
    return f"v|{q}"


class VersionCheck:
    """Checks (and, for a fresh partition, records) the layout version once per partition
    per process. ``read`` gets a key, ``write`` stores one (into the right changelog)."""

    def __init__(
        self,
        stage: str,
        key: Callable[[int], str],
        read: Callable[[str], Any],
        write: Callable[[int, str, int], None],
    ) -> None:
        self.stage, self.key, self.read, self.write = stage, key, read, write
        self.checked: set[int] = set()

    def __call__(self, part: int) -> None:
        if part in self.checked:
            return
        got = self.read(self.key(part))
        if got is None:
            self.write(part, self.key(part), STATE_VERSION)
        elif got != STATE_VERSION:
            raise StateVersionError(
                f"{self.stage} partition {part}: state layout version {got}, this worker "
                f"reads {STATE_VERSION}; drain the pipeline with the old version first, or "
                "start with a new WORKER_APP_ID (README: upgrade note)"
            )
        self.checked.add(part)
