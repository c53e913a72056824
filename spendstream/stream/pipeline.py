"""The two aggregation stages, written against plain mappings so that the Faust worker (tables)
and the tests (dicts) run the very same code.

Stage 1 (keyed like the raw topic, one state per raw partition P): adds each record's
aggregates to ``P|scope|minute`` keys, each remembering the last record offset it applied
(``thru``), so a record processed again after a crash is skipped key by key. Every tick it
publishes snapshots of the keys it changed, with the partition's watermark (largest event time
seen) and whether the partition is idle.

Stage 2 (keyed by scope): keeps the latest snapshot of every (scope, minute) per raw partition
— replacing, never adding, so repeats are harmless — and sums them. When the event-time
watermark (the minimum over the raw partitions that are not idle) passes a minute's end plus
the allowed lateness, the minute closes: its totals are published and the scope's rules run.

Late events: a snapshot for a closed minute that is still retained corrects its totals (and
republishes them) but does not re-run rules; events older than ``retention_minutes`` behind
their partition's watermark are counted in ``late_dropped`` and left out of windows (they are
still enriched and priced).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..alerts import Alert, minute_dt
from .prices import pico_to_usd
from .rules import RuleConfig, ScopeRules
from .windows import MINUTE, Agg, RecordAggregate, total

State = MutableMapping[str, Any]


def scope_partition(scope: str, partitions: int) -> int:
    """Stage-2 partition of a scope (stable across processes, unlike ``hash``)."""
    return zlib.crc32(scope.encode()) % partitions


@dataclass(frozen=True, slots=True)
class Snapshot:
    partition: int
    scope: str
    minute: int
    thru: int
    agg: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """What readers of the windows topic need from a record (the demo's live table)."""

    scope: str
    minute: int
    spend_pico: int
    calls: int

    @classmethod
    def from_json(cls, data: bytes | str) -> WindowSummary:
        d = json.loads(data)
        return cls(d["scope"], int(d["minute"]), int(d["spend_pico"]), int(d["calls"]))


@dataclass(frozen=True, slots=True)
class WindowTotal:
    """A closed (or corrected) 1-minute window of one scope; published to the windows topic."""

    scope: str
    minute: int
    agg: Agg
    revision: int
    hour_spend: int
    day_spend: int

    @property
    def key(self) -> str:
        return f"{self.scope}|{self.minute}"

    def to_dict(self) -> dict[str, Any]:
        a = self.agg
        return {
            "scope": self.scope,
            "window_start": minute_dt(self.minute).isoformat(),
            "minute": self.minute,
            "spend_usd": str(pico_to_usd(a.spend)),
            "spend_pico": a.spend,
            "calls": a.calls,
            "errors": a.errors,
            "input_tokens": a.inp,
            "output_tokens": a.out,
            "cache_read_tokens": a.cr,
            "cache_creation_tokens": a.cw,
            "reasoning_tokens": a.rs,
            "price_unknown_calls": a.unknown,
            "estimated_calls": a.est,
            "models": {k: str(pico_to_usd(v)) for k, v in a.models.items()},
            "hour_spend_usd": str(pico_to_usd(self.hour_spend)),
            "day_spend_usd": str(pico_to_usd(self.day_spend)),
            "revision": self.revision,
        }


class PartitionedState(Protocol):
    """Stage-1 storage: reads by key, writes into a given raw partition's changelog."""

    def get(self, key: str) -> Any: ...
    def keys(self) -> Iterable[str]: ...
    def put(self, partition: int, key: str, value: Any) -> None: ...
    def delete(self, partition: int, key: str) -> None: ...


class DictState(dict[str, Any]):
    """:class:`PartitionedState` over a plain dict (tests, offline runs)."""

    def put(self, partition: int, key: str, value: Any) -> None:
        self[key] = value

    def delete(self, partition: int, key: str) -> None:
        self.pop(key, None)


class Stage1:
    """Per-raw-partition window state."""

    def __init__(self, state: PartitionedState, retention_minutes: int = 15) -> None:
        self.t = state
        self.retention = retention_minutes
        self.dirty: dict[int, set[str]] = {}
        self.late_dropped = 0

    def watermark(self, p: int) -> float | None:
        wm = self.t.get(f"{p}|wm")
        return None if wm is None else float(wm["ts"])

    def next_offset(self, p: int) -> int | None:
        """The raw offset to process next in partition ``p`` (None: no state yet)."""
        wm = self.t.get(f"{p}|wm")
        return None if wm is None else int(wm["thru"]) + 1

    def apply(self, p: int, offset: int, rec: RecordAggregate) -> None:
        self.apply_batch([(p, offset, rec)])

    def apply_batch(self, records: Iterable[tuple[int, int, RecordAggregate]]) -> None:
        """Add records (in offset order per partition) and write each touched key once.

        State is one key per (raw partition, minute) holding every scope's totals, so a batch
        writes as many changelog records as minutes it spans. A record's contribution to a
        key is skipped when the key already covers its offset (``thru``): after a crash,
        records are re-read from the last committed offset and some of their effects may
        already be in the changelog.
        """
        pending: dict[str, tuple[int, int, dict[str, Agg]]] = {}
        marks: dict[int, tuple[float, int]] = {}
        for p, offset, rec in records:
            wm = marks.get(p)
            if wm is None:
                stored = self.t.get(f"{p}|wm")
                wm = (stored["ts"], stored["thru"]) if stored else (0.0, -1)
            if offset <= wm[1]:
                continue  # the whole record was applied before a restart
            # late = older than the retention behind the partition's watermark *before* this
            # record (a record's events are never late relative to each other)
            oldest = int(wm[0] // MINUTE) - self.retention
            marks[p] = (max(rec.max_ts, wm[0]), offset)
            for (scope, minute), agg in rec.items():
                if minute < oldest:
                    self.late_dropped += agg.calls
                    continue
                key = f"{p}|{minute}"
                cur = pending.get(key)
                if cur is None:
                    stored = self.t.get(key)
                    if stored is not None and stored["thru"] >= offset:
                        continue
                    scopes = (
                        {sc: Agg.from_dict(d) for sc, d in stored["scopes"].items()}
                        if stored
                        else {}
                    )
                    cur = (p, offset, scopes)
                cur_scopes = cur[2]
                have = cur_scopes.get(scope)
                if have is None:
                    cur_scopes[scope] = agg.copy()
                else:
                    have.merge(agg)
                pending[key] = (p, offset, cur_scopes)
        for key, (p, offset, scopes) in pending.items():
            self.t.put(
                p, key, {"thru": offset, "scopes": {sc: a.to_dict() for sc, a in scopes.items()}}
            )
            self.dirty.setdefault(p, set()).add(key)
        for p, (high, offset) in marks.items():
            self.t.put(p, f"{p}|wm", {"ts": high, "thru": offset})

    def snapshots(self, p: int, keys: Iterable[str] | None = None) -> list[Snapshot]:
        """Snapshots of ``keys`` (default: the dirty ones, which are then cleared)."""
        if keys is None:
            keys = self.dirty.pop(p, set())
        out = []
        for key in sorted(keys):
            v = self.t.get(key)
            if v is None:
                continue
            minute = int(key.split("|", 1)[1])
            for scope, agg in v["scopes"].items():
                out.append(Snapshot(p, scope, minute, int(v["thru"]), agg))
        return out

    def keys_of(self, p: int) -> list[str]:
        prefix = f"{p}|"
        return [k for k in list(self.t.keys()) if k.startswith(prefix) and not k.endswith("|wm")]

    def prune(self, p: int) -> int:
        """Drop minutes older than the retention behind the partition's watermark."""
        wm = self.watermark(p)
        if wm is None:
            return 0
        oldest = int(wm // MINUTE) - self.retention
        dirty = self.dirty.get(p, set())
        gone = 0
        for key in self.keys_of(p):
            # a dirty key has not been published yet: stage 2 still needs it
            if key not in dirty and int(key.rsplit("|", 1)[1]) < oldest:
                self.t.delete(p, key)
                gone += 1
        return gone


_DELETED = object()


class WriteBuffer(MutableMapping[str, Any]):
    """Stage-2 state writes held back until the outputs they imply are delivered.

    Closing a minute changes the state ("closed through minute m") and publishes the window
    and alerts. If the state change reached the changelog and the worker died before the
    window did, a restarted worker would never publish it. So the worker publishes, waits for
    the broker's acknowledgement, and only then commits the writes; a crash in
    between replays the partials and publishes again (windows are keyed, alerts carry a
    stable id: repeats are harmless).
    """

    def __init__(self, table: State) -> None:
        self.table = table
        self.pending: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        v = self.pending.get(key, None)
        if v is _DELETED:
            raise KeyError(key)
        if v is not None:
            return v
        return self.table[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.pending[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.pending[key] = _DELETED

    def __contains__(self, key: object) -> bool:
        if key in self.pending:
            return self.pending[key] is not _DELETED
        return key in self.table

    def __iter__(self) -> Iterator[str]:
        seen = set(self.pending)
        yield from (k for k, v in self.pending.items() if v is not _DELETED)
        yield from (k for k in self.table if k not in seen)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def commit(self) -> None:
        for key, value in self.pending.items():
            if value is _DELETED:
                self.table.pop(key, None)
            else:
                self.table[key] = value
        self.pending.clear()


@dataclass
class CloseResult:
    windows: list[WindowTotal] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)


class Stage2:
    """Per-scope totals, event-time watermark and rules; ``table`` is a Faust table or dict."""

    def __init__(
        self,
        table: State,
        rules: RuleConfig,
        raw_partitions: int,
        allowed_lateness_s: int = 120,
        retention_minutes: int = 15,
    ) -> None:
        self.t = table
        self.rules = ScopeRules(rules)
        self.raw_partitions = raw_partitions
        self.lateness = allowed_lateness_s
        self.retention = retention_minutes

    # --- input ---------------------------------------------------------------------------
    def apply_snapshots(self, q: int, snaps: Iterable[Snapshot]) -> list[WindowTotal]:
        """Keep the newest snapshot per (scope, minute, raw partition); one write per minute
        touched. Returns corrected totals for minutes that had already closed."""
        by_minute: dict[int, list[Snapshot]] = {}
        for sn in snaps:
            by_minute.setdefault(sn.minute, []).append(sn)
        fixes: list[WindowTotal] = []
        scopes_key = f"scopes|{q}"
        known = dict(self.t.get(scopes_key) or {})
        new_scopes = False
        for minute, group in sorted(by_minute.items()):
            wkey = f"w|{q}|{minute}"
            cur = dict(self.t.get(wkey) or {})
            changed: set[str] = set()
            for sn in group:
                closed = known.get(sn.scope)
                if closed is None:
                    known[sn.scope] = closed = sn.minute - 1
                    new_scopes = True
                if sn.minute <= closed - self.retention:
                    continue  # too late (or a resync repeat): the minute is no longer kept
                parts = dict(cur.get(sn.scope) or {})
                old = parts.get(str(sn.partition))
                if old is not None and old["thru"] >= sn.thru:
                    continue
                parts[str(sn.partition)] = {"thru": sn.thru, "agg": sn.agg}
                cur[sn.scope] = parts
                changed.add(sn.scope)
            if not changed:
                continue
            self.t[wkey] = cur
            for scope in sorted(changed):
                if minute <= known[scope]:
                    st = self.t.get(f"s|{scope}") or {}
                    rev = dict(st.get("rev", {}))
                    rev[str(minute)] = rev.get(str(minute), 0) + 1
                    self.t[f"s|{scope}"] = {**st, "rev": rev}
                    fixes.append(
                        WindowTotal(scope, minute, self._total(cur[scope]), rev[str(minute)], 0, 0)
                    )
        if new_scopes:
            self.t[scopes_key] = known
        return fixes

    def set_watermarks(self, q: int, reports: dict[int, tuple[float | None, bool]]) -> None:
        key = f"wm|{q}"
        cur = dict(self.t.get(key) or {})
        for p, (ts, idle) in reports.items():
            old = cur.get(str(p))
            best = ts
            if old is not None and old[0] is not None and (ts is None or old[0] > ts):
                best = old[0]  # watermarks never go back
            cur[str(p)] = [best, bool(idle)]
        self.t[key] = cur

    def watermark(self, q: int) -> tuple[float, bool] | None:
        """(event time, all idle): the minimum over busy partitions, or the maximum over all
        when every partition is idle; None until every raw partition has reported."""
        reps = self.t.get(f"wm|{q}") or {}
        if len(reps) < self.raw_partitions:
            return None
        busy = [v for v in reps.values() if not v[1]]
        if any(v[0] is None for v in busy):
            return None
        if busy:
            return float(min(v[0] for v in busy)), False
        seen = [v[0] for v in reps.values() if v[0] is not None]
        return (float(max(seen)), True) if seen else None

    # --- closing ---------------------------------------------------------------------------
    def close(self, q: int) -> CloseResult:
        res = CloseResult()
        mark = self.watermark(q)
        if mark is None:
            return res
        wm, all_idle = mark
        # Busy: a minute closes once the watermark is ``lateness`` past its end. All idle:
        # nothing is in flight, so every minute that has ended in event time closes now.
        close_to = int((wm - (0 if all_idle else self.lateness)) // MINUTE) - 1
        scopes_key = f"scopes|{q}"
        known = dict(self.t.get(scopes_key) or {})
        todo = {sc: c for sc, c in known.items() if c < close_to}
        if not todo:
            return res
        first = min(todo.values()) + 1
        states = {sc: dict(self.t.get(f"s|{sc}") or {}) for sc in todo}
        for minute in range(first, close_to + 1):
            window = self.t.get(f"w|{q}|{minute}") or {}
            for scope in sorted(todo):
                if todo[scope] >= minute:
                    continue
                st = states[scope]
                parts = window.get(scope)
                agg = self._total(parts) if parts else Agg()
                res.alerts += self.rules.close_minute(scope, st, minute, agg)
                if agg.calls:
                    res.windows.append(
                        WindowTotal(scope, minute, agg, 0, st["hour"][1], st["day"][1])
                    )
        for scope, st in states.items():
            for m in [m for m in st.get("rev", {}) if int(m) < close_to - self.retention]:
                del st["rev"][m]
            self.t[f"s|{scope}"] = st
            known[scope] = close_to
        self.t[scopes_key] = known
        for minute in range(first - self.retention - 1, close_to - self.retention):
            self.t.pop(f"w|{q}|{minute}", None)
        return res

    @staticmethod
    def _total(parts: dict[str, Any]) -> Agg:
        return total(Agg.from_dict(v["agg"]) for v in parts.values())
