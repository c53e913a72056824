"""Stage 1 counts an event id once: a re-published event is left out of windows and metrics.

Why here: PostgreSQL drops a repeated ``event_id`` (primary key), but before this a retried
export (an OTLP exporter re-sending a batch after a lost 200, an SDK re-emitting after a
timeout) was a *new raw record* — new offset, so stage 1's offset rules (``thru``) did not
skip it — and it was added to the windows and to the worker's Prometheus counters again.
Raw records are keyed ``service/endpoint``, so a retry lands on the same raw partition as the
original: deduplicating per raw partition needs no cross-partition coordination.

What is remembered: for each raw partition and event minute (``minute_of(event time)``; a retry
carries the same event time), every event id seen with the **offset of the record that counted
it**. An id seen again in a record at *another* offset is a duplicate (dropped from the
aggregate and from the counted calls, still forwarded to the enriched topic, where the sinks
drop it by id); a second copy inside one record is a duplicate too. An id seen again *at the
same offset* is that very record re-applied (a replay after a crash, or the offset guard's
re-read after a rebalance) and is kept — stage 1's ``thru`` rules decide, key by key, whether
its contribution is already in. So a record's decision depends only on the records before it,
never on whether the process crashed between writing ids and windows: a replay cannot
double-count, and cannot drop a record whose earlier application was lost.

Survives restarts and rebalances: new ids are written to the stage-1 table (its compacted
changelog, the raw partition's changelog partition) under ``d|{p}|{minute}|{first offset}.{i}``
(:func:`.state.s1_seen`), one key per batch, minute and chunk of :data:`CHUNK` ids, *before*
the batch's window keys and watermark, so a restored watermark implies its ids were restored
(one producer, one changelog partition: in order). The in-memory index is rebuilt from the
table when the partition's applied offset is not the one this process last wrote (a restart,
or a rebalance during which another worker applied records).

Bounded memory: minutes older than ``watermark − retention − ceil(allowed lateness / 60)``
are forgotten (memory and table). Those events are dropped as late from windows anyway; a
retry arriving later than that is still counted in Prometheus (documented limit). Per raw
partition the index holds at most ``R × (H + 1)`` ids, R = events/minute into the partition,
H = retention + lateness minutes (15 + 2 by default): ~17 × R. Measured (tracemalloc, this
module's ``python -m spendstream.stream.dedupe``, 100,000 ids in one minute): ~125 bytes/event
in memory (16-byte id, dict slot), 32 characters/event in the changelog; at 10,000 events/s
over 12 partitions that is ~833 events/s/partition → ~850k ids → ~106 MB per partition's worker
at the default horizon: size ``window_retention_minutes`` with that in mind. CPU: ~1.1 µs per
event (admit + flush, ``time.process_time`` over 10,000 events of 100-event records), against
~9–13 µs to validate and enrich it; a first version (a dict lookup and a ``setdefault`` chain per
event) cost 1.7 µs.

Tested on dicts (``tests/test_dedupe.py``: retries, copies in one record, restart, lost windows,
offset-guard re-reads, a stale index after a rebalance, pruning) and on the stack (a real OTLP
exporter's retries, ``tests/test_ingest_retries.py``; ids restored after ``kill -9``,
``tests/test_dedupe_restart.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..scopes import MINUTE
from . import state as layout

if TYPE_CHECKING:
    from .enrich import EnrichedCall
    from .pipeline import Stage1

CHUNK = 8192
"""Ids per table value (~270 KB of hex): far below the broker's 1 MiB record limit."""
_UNSYNCED = -2


@dataclass(slots=True)
class _Partition:
    """One raw partition's index: minute → {event id bytes: offset of the counting record}."""

    minutes: dict[int, dict[bytes, int]] = field(default_factory=dict)
    keys: dict[int, list[str]] = field(default_factory=dict)
    """minute → the table keys holding its ids (deleted with the minute)."""


class Dedupe:
    """Per-raw-partition event-id index of one worker's stage 1 (see the module docstring)."""

    def __init__(self, stage1: Stage1, horizon_minutes: int) -> None:
        self.stage1 = stage1
        self.t = stage1.t
        self.horizon = horizon_minutes
        self.parts: dict[int, _Partition] = {}
        self.synced: dict[int, int | None] = {}
        """Partition → the stage-1 next offset when this process last wrote its ids."""
        self._checked: set[int] = set()
        self._pending: dict[tuple[int, int], dict[int, list[bytes]]] = {}
        """(partition, minute) → {offset: new ids} of the batch in progress."""

    @classmethod
    def for_settings(cls, stage1: Stage1, retention: int, lateness_s: int) -> Dedupe:
        return cls(stage1, retention + math.ceil(lateness_s / MINUTE))

    def admit(
        self, p: int, offset: int, calls: Sequence[EnrichedCall]
    ) -> tuple[list[EnrichedCall], list[EnrichedCall]]:
        """(kept, duplicates) of one record's calls; remembers the kept ones' ids."""
        part = self._partition(p)
        oldest = self._oldest(p)
        kept: list[EnrichedCall] = []
        dups: list[EnrichedCall] = []
        here: set[bytes] = set()
        minute, seen, new = None, None, None  # the calls of a record share a minute or two
        for c in calls:
            eid = c.event.event_id.bytes
            m = int(c.ts // MINUTE)
            if m != minute:
                minute, seen, new = m, part.minutes.get(m), None
            at = None if seen is None else seen.get(eid)
            if eid in here or (at is not None and at != offset):
                dups.append(c)
                continue
            here.add(eid)
            kept.append(c)
            if at is None and m >= oldest:
                if seen is None:
                    seen = part.minutes[m] = {}
                seen[eid] = offset
                if new is None:
                    new = self._pending.setdefault((p, m), {}).setdefault(offset, [])
                new.append(eid)
        return kept, dups

    def flush(self) -> None:
        """Write the batch's new ids (before stage 1 writes its windows and watermark)."""
        for (p, minute), by_offset in self._pending.items():
            flat = [(o, e) for o, ids in by_offset.items() for e in ids]
            first = min(by_offset)
            for i in range(0, len(flat), CHUNK):
                groups: dict[int, list[str]] = {}
                for o, e in flat[i : i + CHUNK]:
                    groups.setdefault(o, []).append(e.hex())
                key = layout.s1_seen(p, minute, f"{first}.{i // CHUNK}")
                self.t.put(p, key, {str(o): "".join(h) for o, h in groups.items()})
                self.parts[p].keys.setdefault(minute, []).append(key)
        self._pending.clear()

    def mark_synced(self, partitions: Iterable[int]) -> None:
        """After stage 1 applied the batch: the index of each partition it checked is current
        as of the partition's next offset; one it did not check (a batch of dead-lettered
        records only) is rebuilt on its next use, as its memory may be stale."""
        for p in partitions:
            if p in self._checked:
                self.synced[p] = self.stage1.next_offset(p)
            else:
                self.synced.pop(p, None)
        self._checked.clear()

    def prune(self, p: int) -> int:
        """Forget the minutes beyond the horizon behind the partition's watermark."""
        part = self.parts.get(p)
        if part is None:
            return 0
        oldest = self._oldest(p)
        gone = [m for m in part.minutes if m < oldest]
        for m in gone:
            del part.minutes[m]
            for key in part.keys.pop(m, []):
                self.t.delete(p, key)
        return len(gone)

    def ids(self, p: int) -> int:
        """How many ids partition ``p``'s index holds (tests, the memory figure)."""
        part = self.parts.get(p)
        return 0 if part is None else sum(len(m) for m in part.minutes.values())

    def _oldest(self, p: int) -> int:
        wm = self.stage1.watermark(p)
        return -1 if wm is None else int(wm // MINUTE) - self.horizon

    def _partition(self, p: int) -> _Partition:
        """The partition's index, rebuilt from the table if another writer may have moved it."""
        if p in self._checked:
            return self.parts[p]
        self._checked.add(p)
        if p not in self.parts or self.synced.get(p, _UNSYNCED) != self.stage1.next_offset(p):
            self.parts[p] = self._load(p)
        return self.parts[p]

    def _load(self, p: int) -> _Partition:
        part = _Partition()
        prefix = layout.s1_seen_prefix(p)
        for key in [k for k in list(self.t.keys()) if k.startswith(prefix)]:
            value = self.t.get(key)
            if value is None:
                continue
            minute = int(key[len(prefix) :].split("|", 1)[0])
            seen = part.minutes.setdefault(minute, {})
            for o, hexes in value.items():
                raw, offset = bytes.fromhex(hexes), int(o)
                for i in range(0, len(raw), 16):
                    seen.setdefault(raw[i : i + 16], offset)
            part.keys.setdefault(minute, []).append(key)
        return part


def _measure(n: int = 100_000) -> None:
    """Bytes per remembered id (the figure in the module docstring)."""
    import tracemalloc
    import uuid

    from .pipeline import DictState
    from .pipeline import Stage1 as S1

    ids = [uuid.uuid4().bytes for _ in range(n)]
    d = Dedupe(S1(DictState()), 17)
    tracemalloc.start()
    part = d._partition(0)
    seen = part.minutes[0] = {}
    for i, e in enumerate(ids):
        seen[e] = i // 100  # ~100 events per record
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the id bytes themselves are allocated before tracing: add them
    per = size / n + (len(ids[0]) + 33)
    print(f"dedupe_bytes_per_event={per:.0f}")


if __name__ == "__main__":
    _measure()
