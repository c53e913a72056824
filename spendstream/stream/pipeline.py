"""The two aggregation stages, written against plain mappings so that the Faust worker (tables)
and the tests (dicts) run the very same code.

Stage 1 (keyed like the raw topic, one state per raw partition P): adds each record's
aggregates to ``P|minute|scope`` keys, each remembering the last record offset it applied
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

Bounded by design (issue 13): no state record or partials message grows with the number of
scopes (one key per scope and minute; scope-name lists in chunks), closing a minute costs
O(scopes with data or an open alert) and jumps empty stretches, idle scopes are pruned, and a
future-dated event cannot move a watermark. Measured on dicts with 20,000 endpoint scopes:
closing a later minute with 3 scopes of data took 235 ms before (every scope ever seen was
visited), 0.1 ms now; an event 6 days ahead made closing iterate ~8,640 empty minutes × every
scope (hours), now it does not move the watermark at all.
"""

from __future__ import annotations

import json
import time
import zlib
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..alerts import Alert
from ..money import pico_to_usd
from ..scopes import GLOBAL, MINUTE, minute_dt
from . import state as layout
from .detector import Org
from .rules import RuleConfig, ScopeRules
from .windows import Agg, RecordAggregate

State = MutableMapping[str, Any]


def scope_partition(scope: str, partitions: int) -> int:
    """Stage-2 partition of a scope (stable across processes, unlike ``hash``)."""
    return zlib.crc32(scope.encode()) % partitions


ORG_SCOPE = "org:all"
"""A copy of ``global:all``'s snapshots sent to every stage-2 partition: the organisation's
level the detector's materiality is relative to. Not a scope: no rules, no windows."""
ORG_SPAN = 1440
"""Minutes of the organisation level's EWMA."""


def route(snaps: Iterable[Snapshot], partitions: int) -> Iterator[tuple[int, Snapshot]]:
    """(stage-2 partition, snapshot) pairs: each scope to its partition, plus a copy of
    ``global:all`` as :data:`ORG_SCOPE` to every partition (the worker and offline alike)."""
    for sn in snaps:
        yield scope_partition(sn.scope, partitions), sn
        if sn.scope == GLOBAL:
            for q in range(partitions):
                yield q, Snapshot(sn.partition, ORG_SCOPE, sn.minute, sn.thru, sn.agg)


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
        a.trim()
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
    """Per-raw-partition window state: one key per (raw partition, minute, scope).

    Keys are ``P|minute|scope`` (each ``{"thru": offset, "agg": …}``) plus ``P|wm``. One
    key per scope bounds every changelog record by the size of one scope's window (top-K maps,
    see :mod:`.windows`): the former one-key-per-minute layout grew with the number of scopes
    and ~5,000 raw endpoint paths in a partition-minute exceeded the broker's 1 MiB limit. A
    batch now writes one changelog record per (scope, minute) it touched instead of one per
    minute (tens per batch in ordinary traffic, against thousands of events), and it no longer
    re-serialises the scopes it did not touch.

    Watermark: the largest event time applied *among events not beyond* ``clock() +
    max_skew_s``; an event further ahead does not move it at all. One event dated 2099 (a host
    with a wrong clock) used to set the watermark to 2099, after which every later real event
    of the partition was "late" forever — persisted in the changelog. Capping the watermark at
    the clock would not do either: a worker catching up on a backlog older than the retention
    would drop it as late. Events beyond the skew are still aggregated into their own (future)
    minute, which closes when its time comes; the enricher's admission check dead-letters them
    before they get here. In the rare record holding such an event, the rest's maximum is taken
    at minute precision (the watermark may lead by < 60 s). A stored watermark beyond the cap
    (written by an older worker) is discarded and rebuilt from the next record.
    """

    def __init__(
        self,
        state: PartitionedState,
        retention_minutes: int = 15,
        *,
        max_skew_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.t = state
        self.retention = retention_minutes
        self.max_skew_s = max_skew_s
        self.clock = clock
        self.dirty: dict[int, set[str]] = {}
        self.late_dropped = 0
        self.check_version = layout.VersionCheck("stage1", layout.s1_version, state.get, state.put)

    def _cap(self) -> float:
        return self.clock() + self.max_skew_s

    def watermark(self, p: int) -> float | None:
        wm = self.t.get(layout.s1_mark(p))
        if wm is None:
            return None
        ts = float(wm["ts"])
        return None if ts > self._cap() else ts

    @staticmethod
    def _candidate(rec: RecordAggregate, cap: float) -> float:
        """The record's watermark candidate: its largest event time not beyond ``cap``."""
        if rec.max_ts <= cap:
            return rec.max_ts
        ok = [m for _, m in rec.by_key if m * MINUTE <= cap]
        return min((max(ok) + 1) * MINUTE - 0.001, cap) if ok else 0.0

    def next_offset(self, p: int) -> int | None:
        """The raw offset to process next in partition ``p`` (None: no state yet)."""
        wm = self.t.get(layout.s1_mark(p))
        return None if wm is None else int(wm["thru"]) + 1

    def apply(self, p: int, offset: int, rec: RecordAggregate) -> None:
        self.apply_batch([(p, offset, rec)])

    def apply_batch(self, records: Iterable[tuple[int, int, RecordAggregate]]) -> None:
        """Add records (in offset order per partition) and write each touched key once.

        A record's contribution to a key is skipped when the key already covers its offset
        (``thru``): after a crash, records are re-read from the last committed offset and some
        of their effects may already be in the changelog.
        """
        pending: dict[str, tuple[int, int, Agg]] = {}
        marks: dict[int, tuple[float, int]] = {}
        cap = self._cap()
        for p, offset, rec in records:
            wm = marks.get(p)
            if wm is None:
                self.check_version(p)
                stored = self.t.get(layout.s1_mark(p))
                wm = (float(stored["ts"]), stored["thru"]) if stored else (0.0, -1)
                if wm[0] > cap:  # written before the cap existed: unknown, rebuilt from here
                    wm = (0.0, wm[1])
            if offset <= wm[1]:
                continue  # the whole record was applied before a restart
            # late = older than the retention behind the partition's watermark *before* this
            # record (a record's events are never late relative to each other)
            oldest = int(wm[0] // MINUTE) - self.retention
            marks[p] = (max(self._candidate(rec, cap), wm[0]), offset)
            for (scope, minute), agg in rec.items():
                if minute < oldest:
                    if scope == GLOBAL:  # every event is in one global key: count once
                        self.late_dropped += agg.calls
                    continue
                key = layout.s1_window(p, minute, scope)
                cur = pending.get(key)
                if cur is None:
                    stored = self.t.get(key)
                    if stored is not None and stored["thru"] >= offset:
                        continue
                    have = Agg.from_dict(stored["agg"]) if stored else agg.copy()
                    if stored:
                        have.merge(agg)
                else:
                    have = cur[2]
                    have.merge(agg)
                pending[key] = (p, offset, have)
        for key, (p, offset, agg) in pending.items():
            self.t.put(p, key, {"thru": offset, "agg": agg.to_dict()})
            self.dirty.setdefault(p, set()).add(key)
        for p, (high, offset) in marks.items():
            self.t.put(p, layout.s1_mark(p), {"ts": high, "thru": offset})

    def snapshots(self, p: int, keys: Iterable[str] | None = None) -> list[Snapshot]:
        """Snapshots of ``keys`` (default: the dirty ones, which are then cleared)."""
        if keys is None:
            keys = self.dirty.pop(p, set())
        out = []
        for key in sorted(keys):
            v = self.t.get(key)
            parts = key.split("|", 2)
            if v is None or len(parts) < 3:
                continue  # a "P|minute" key of the former layout: pruned with its minute
            _, minute, scope = parts
            out.append(Snapshot(p, scope, int(minute), int(v["thru"]), v["agg"]))
        return out

    def keys_of(self, p: int) -> list[str]:
        """The partition's window keys (not its watermark or version)."""
        prefix, meta = layout.s1_prefix(p), (layout.s1_mark(p), layout.s1_version(p))
        return [k for k in list(self.t.keys()) if k.startswith(prefix) and k not in meta]

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
            if key not in dirty and int(key.split("|", 2)[1]) < oldest:
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

    def __init__(self, table: PartitionedState, reads: Mapping[str, Any]) -> None:
        self.table = table
        self.reads = reads
        """Where committed values are read: the Faust table's store (``Table.data``) rather
        than the table, whose ``[]`` raises for a missing key through two layers."""
        self.pending: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        """Without the KeyError of ``Mapping.get``: stage 2 reads ~12 keys per scope-minute
        closed (one per raw partition), most of them absent."""
        v = self.pending.get(key)
        if v is None:
            return self.reads.get(key, default)
        return default if v is _DELETED else v

    def pop(self, key: str, default: Any = None) -> Any:
        v = self.get(key, _DELETED)
        if v is _DELETED:
            return default
        self.pending[key] = _DELETED
        return v

    def __getitem__(self, key: str) -> Any:
        v = self.pending.get(key, None)
        if v is _DELETED:
            raise KeyError(key)
        if v is not None:
            return v
        return self.reads[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.pending[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.pending[key] = _DELETED

    def __contains__(self, key: object) -> bool:
        if key in self.pending:
            return self.pending[key] is not _DELETED
        return key in self.reads

    def __iter__(self) -> Iterator[str]:
        seen = set(self.pending)
        yield from (k for k, v in self.pending.items() if v is not _DELETED)
        yield from (k for k in self.reads if k not in seen)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def put_last(self, key: str, value: Any) -> None:
        """Write ``key`` so that it reaches the changelog after every other pending write (the
        changelog is written in write order: a crash part-way through a commit then never
        leaves ``key`` — stage 2's applied offset — claiming writes that were lost)."""
        self.pending.pop(key, None)
        self.pending[key] = value

    def rollback(self) -> None:
        """Forget the held-back values (their outputs were not delivered)."""
        self.pending.clear()

    def commit(self, partition: int) -> None:
        """Write the held-back values into stage-2 partition ``partition``'s changelog."""
        for key, value in self.pending.items():
            if value is _DELETED:
                self.table.delete(partition, key)
            else:
                self.table.put(partition, key, value)
        self.pending.clear()


@dataclass
class CloseResult:
    windows: list[WindowTotal] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)


class Names:
    """A persisted list of names in chunks of at most :data:`NAMES_PER_KEY` (``prefix|0``,
    ``prefix|1``, … and the count in ``prefix|n``), so that no state record grows with the
    number of scopes: 50 scope names of ≤ ~400 characters stay under 256 KiB as JSON even when
    every character needs a 12-byte escape."""

    def __init__(self, t: State, prefix: str) -> None:
        self.t = t
        self.prefix = prefix

    def count(self) -> int:
        return int(self.t.get(f"{self.prefix}|n") or 0)

    def load(self) -> list[str]:
        n = self.count()
        out: list[str] = []
        for j in range((n + NAMES_PER_KEY - 1) // NAMES_PER_KEY):
            out += self.t.get(f"{self.prefix}|{j}") or []
        return out

    def add(self, names: Iterable[str]) -> None:
        n = start = self.count()
        j = n // NAMES_PER_KEY
        chunk = list(self.t.get(f"{self.prefix}|{j}") or []) if n % NAMES_PER_KEY else []
        for name in names:
            chunk.append(name)
            n += 1
            if len(chunk) == NAMES_PER_KEY:
                self.t[f"{self.prefix}|{j}"] = chunk
                j, chunk = j + 1, []
        if chunk:
            self.t[f"{self.prefix}|{j}"] = chunk
        if n != start:
            self.t[f"{self.prefix}|n"] = n

    def drop(self) -> None:
        n = self.count()
        for j in range((n + NAMES_PER_KEY - 1) // NAMES_PER_KEY):
            self.t.pop(f"{self.prefix}|{j}", None)
        self.t.pop(f"{self.prefix}|n", None)

    def replace(self, names: Iterable[str]) -> None:
        self.drop()
        self.add(names)


NAMES_PER_KEY = 50


class Stage2:
    """Per-scope totals, event-time watermark and rules; ``table`` is a Faust table or dict.

    State of stage-2 partition ``q`` (every record bounded, whatever the number of scopes):

    - ``w|q|minute|P|scope``: the newest snapshot of (scope, minute) from raw partition P;
    - ``wi|q|minute``: names of the scopes with data in the minute (:class:`Names`), and
      ``mins|q`` the sorted minutes that have one; ``c|q`` the minute closed through;
    - ``s|scope``: the scope's rules state, with ``last`` (last minute its rules saw) and
      ``data`` (last minute with calls);
    - ``act|q``: scopes whose rules must see every minute, data or not (an open alert or
      streak, a budget projection still moving: :meth:`ScopeRules.needs_every_minute`);
    - ``pr|q|minute`` / ``prm|q``: scopes to check for pruning at that minute.

    Closing costs O(scopes with data + active scopes) per minute, and minutes with neither are
    jumped over: before this, every scope ever seen was visited every minute (20,000 endpoints:
    0.6–1.2 s per minute) and an event 6 days ahead cost ~11 s of closing empty minutes. An idle
    scope's empty minutes are caught up when it next has data, by
    :meth:`ScopeRules.close_empty` (O(baseline), same state as closing each minute).

    Pruning: a scope's state is deleted once it has had no calls for more than
    ``max(baseline_minutes, retention_minutes)`` minutes (all its rules look back at) *and*
    the UTC day of its last calls has ended (so hour/day totals stay exact), unless it is
    active or has a configured budget. Its next calls start a fresh baseline.

    Watermark reports beyond ``clock() + max_skew_s`` are ignored (see :class:`Stage1`).
    """

    def __init__(
        self,
        table: State,
        rules: RuleConfig,
        raw_partitions: int,
        allowed_lateness_s: int = 120,
        retention_minutes: int = 15,
        *,
        max_skew_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.t = table
        self.rules = ScopeRules(rules)
        self.raw_partitions = raw_partitions
        self.lateness = allowed_lateness_s
        self.retention = retention_minutes
        self.max_skew_s = max_skew_s
        self.clock = clock
        self.horizon = max(rules.baseline_minutes, retention_minutes)
        self._index: dict[tuple[int, int], set[str]] = {}
        self.check_version = layout.VersionCheck(
            "stage2", layout.s2_version, table.get, lambda _q, key, v: table.__setitem__(key, v)
        )
        self.visited = 0
        """Scope-minutes closed so far (the work closing did; the tests read it)."""
        self.pruned = 0

    # --- input ---------------------------------------------------------------------------
    def apply_snapshots(self, q: int, snaps: Iterable[Snapshot]) -> list[WindowTotal]:
        """Keep the newest snapshot per (scope, minute, raw partition); returns corrected
        totals for minutes that had already closed."""
        by_minute: dict[int, list[Snapshot]] = {}
        for sn in snaps:
            by_minute.setdefault(sn.minute, []).append(sn)
        self.check_version(q)
        fixes: list[WindowTotal] = []
        closed = self.t.get(layout.s2_closed(q))
        mins = list(self.t.get(layout.s2_minutes(q)) or [])
        for minute, group in sorted(by_minute.items()):
            if closed is not None and minute <= closed - self.retention:
                continue  # too late (or a resync repeat): the minute is no longer kept
            changed: set[str] = set()
            new: list[str] = []
            indexed = self._indexed(q, minute)
            for sn in group:
                # indexed whether or not the snapshot is news: a repeat (resync) re-indexes a
                # scope whose index write was lost in a crash
                if sn.scope not in indexed:
                    indexed.add(sn.scope)
                    new.append(sn.scope)
                key = layout.s2_window(q, minute, sn.partition, sn.scope)
                old = self.t.get(key)
                if old is not None and old["thru"] >= sn.thru:
                    continue
                self.t[key] = {"thru": sn.thru, "agg": sn.agg}
                changed.add(sn.scope)
            if new:
                Names(self.t, layout.s2_index(q, minute)).add(new)
            if minute not in mins:
                insort(mins, minute)
                self.t[layout.s2_minutes(q)] = list(mins)
            changed.discard(ORG_SCOPE)  # a late correction of the org level: not a window
            if closed is None or minute > closed:
                continue
            for scope in sorted(changed):
                st = self.t.get(layout.s2_scope(scope)) or {}
                rev = dict(st.get("rev", {}))
                rev[str(minute)] = rev.get(str(minute), 0) + 1
                self.t[layout.s2_scope(scope)] = {**st, "rev": rev}
                agg = self._total(q, minute, scope)
                fixes.append(WindowTotal(scope, minute, agg, rev[str(minute)], 0, 0))
        return fixes

    def _indexed(self, q: int, minute: int) -> set[str]:
        """The minute's scope index as a set, kept in memory while its size in the state is
        the one this process knows (a restore or another worker's writes reload it)."""
        names = Names(self.t, layout.s2_index(q, minute))
        n = names.count()
        got = self._index.get((q, minute))
        if got is None or len(got) != n:
            got = self._index[(q, minute)] = set(names.load())
        return got

    def _cap(self) -> float:
        return self.clock() + self.max_skew_s

    def set_watermarks(self, q: int, reports: dict[int, tuple[float | None, bool]]) -> None:
        key = layout.s2_marks(q)
        cur = dict(self.t.get(key) or {})
        cap = self._cap()
        for p, (ts, idle) in reports.items():
            old = cur.get(str(p))
            # watermarks never go back; one stored beyond the cap is bogus (an older worker's)
            kept = [t for t in (ts, old[0] if old else None) if t is not None and t <= cap]
            cur[str(p)] = [max(kept) if kept else None, bool(idle)]
        self.t[key] = cur

    def watermark(self, q: int) -> tuple[float, bool] | None:
        """(event time, all idle): the minimum over busy partitions, or the maximum over all
        when every partition is idle; None until every raw partition has reported. A report
        beyond the clock + skew counts as no report (see :class:`Stage1`)."""
        reps = self.t.get(layout.s2_marks(q)) or {}
        if len(reps) < self.raw_partitions:
            return None
        cap = self._cap()
        marks = [(None if v[0] is None or v[0] > cap else float(v[0]), v[1]) for v in reps.values()]
        busy = [ts for ts, idle in marks if not idle]
        if any(ts is None for ts in busy):
            return None
        if busy:
            return min(ts for ts in busy if ts is not None), False
        seen = [ts for ts, _ in marks if ts is not None]
        return (max(seen), True) if seen else None

    # --- closing ---------------------------------------------------------------------------
    def close(self, q: int) -> CloseResult:
        self.check_version(q)
        res = CloseResult()
        mark = self.watermark(q)
        if mark is None:
            return res
        wm, all_idle = mark
        # Busy: a minute closes once the watermark is ``lateness`` past its end. All idle:
        # nothing is in flight, so every minute that has ended in event time closes now.
        close_to = int((wm - (0 if all_idle else self.lateness)) // MINUTE) - 1
        closed = self.t.get(layout.s2_closed(q))
        mins: list[int] = list(self.t.get(layout.s2_minutes(q)) or [])
        if closed is None:
            if not mins:
                return res
            closed = mins[0] - 1
        if close_to <= closed:
            return res
        acts = Names(self.t, layout.s2_active(q))
        active = set(acts.load())
        states: dict[str, dict[str, Any]] = {}
        org_state: list[float] | None = self.t.get(layout.s2_org(q))
        minute = closed + 1
        while minute <= close_to:
            scopes = set(active)
            i = bisect_left(mins, minute)
            if i < len(mins) and mins[i] == minute:
                scopes.update(Names(self.t, layout.s2_index(q, minute)).load())
            if ORG_SCOPE in scopes:
                scopes.discard(ORG_SCOPE)
                org_state = self._org_add(q, minute)
            org = self._org(org_state, minute)
            for scope in sorted(scopes):
                if self._close_scope(q, scope, minute, states, res, org):
                    active.add(scope)
                else:
                    active.discard(scope)
            if active:
                minute += 1
            else:  # nothing to do until the next minute with data
                j = bisect_right(mins, minute)
                minute = mins[j] if j < len(mins) else close_to + 1
        for scope, st in states.items():
            rev = st.get("rev")
            if rev:
                st["rev"] = {m: n for m, n in rev.items() if int(m) >= close_to - self.retention}
            self.t[layout.s2_scope(scope)] = st
        if set(acts.load()) != active:
            acts.replace(sorted(active))
        self.t[layout.s2_closed(q)] = close_to
        self._expire(q, mins, close_to, states)
        return res

    def _org_add(self, q: int, minute: int) -> list[float]:
        """Fold the minute's ``global:all`` totals into the partition's org EWMA
        ``[minute, n, spend/min, calls/min]`` (empty minutes count as zeros)."""
        cur = self.t.get(layout.s2_org(q)) or [minute - 1, 0, 0.0, 0.0]
        spend, calls = self._spend_calls(q, minute, ORG_SCOPE)
        a = max(1.0 / ORG_SPAN, 1.0 / (cur[1] + 1))
        d = (1 - a) ** max(0, minute - 1 - cur[0])
        new = [
            minute,
            min(cur[1] + 1, ORG_SPAN),
            round(cur[2] * d + a * (spend - cur[2] * d), 3),
            round(cur[3] * d + a * (calls - cur[3] * d), 6),
        ]
        self.t[layout.s2_org(q)] = new
        return new

    @staticmethod
    def _org(cur: list[float] | None, minute: int) -> Org | None:
        if cur is None:
            return None
        d = (1 - max(1.0 / ORG_SPAN, 1.0 / (cur[1] + 1))) ** max(0, minute - cur[0])
        return Org(spend_day=cur[2] * d * 1440, calls_day=cur[3] * d * 1440)

    def _close_scope(
        self,
        q: int,
        scope: str,
        minute: int,
        states: dict[str, dict[str, Any]],
        res: CloseResult,
        org: Org | None = None,
    ) -> bool:
        """Run the scope's rules for ``minute`` (catching up its empty minutes first);
        returns whether its rules must see the next minute too."""
        st = states.get(scope)
        if st is None:
            st = states[scope] = dict(self.t.get(layout.s2_scope(scope)) or {})
        last = st.get("last")
        if last is not None and last < minute - 1:
            res.alerts += self.rules.close_empty(scope, st, last + 1, minute - 1, org)
        agg = self._total(q, minute, scope)
        res.alerts += self.rules.close_minute(scope, st, minute, agg, org)
        st["last"] = minute
        self.visited += 1
        if agg.calls:
            st["data"] = minute
            res.windows.append(WindowTotal(scope, minute, agg, 0, st["hour"][1], st["day"][1]))
        return self.rules.needs_every_minute(scope, st)

    def _expire(
        self, q: int, mins: list[int], close_to: int, states: dict[str, dict[str, Any]]
    ) -> None:
        """Drop minutes past the retention (scheduling their scopes' pruning), then prune
        the scopes whose check is due."""
        keep_from = close_to - self.retention
        gone = [m for m in mins if m < keep_from]
        if gone:
            schedule: dict[int, list[str]] = {}
            for m in gone:
                names = Names(self.t, layout.s2_index(q, m))
                for scope in names.load():
                    for p in range(self.raw_partitions):
                        self.t.pop(layout.s2_window(q, m, p, scope), None)
                    st = states.get(scope) or self.t.get(layout.s2_scope(scope)) or {}
                    if st.get("data", m) <= m:  # no calls since: check it for pruning
                        schedule.setdefault(self._prune_due(m), []).append(scope)
                names.drop()
                self._index.pop((q, m), None)
            self.t[layout.s2_minutes(q)] = [m for m in mins if m >= keep_from]
            self._schedule(q, schedule)
        due_at: list[int] = list(self.t.get(layout.s2_prune_due(q)) or [])
        if not due_at or due_at[0] > close_to:
            return
        again: dict[int, list[str]] = {}
        for d in [d for d in due_at if d <= close_to]:
            names = Names(self.t, layout.s2_prune_list(q, d))
            for scope in names.load():
                self._prune(scope, close_to, again)
            names.drop()
        self.t[layout.s2_prune_due(q)] = [d for d in due_at if d > close_to]
        self._schedule(q, again)

    def _prune_due(self, last_data: int) -> int:
        day_end = last_data - last_data % 1440 + 1440
        return max(last_data + self.horizon + 1, day_end)

    def _prune(self, scope: str, now: int, again: dict[int, list[str]]) -> None:
        st = self.t.get(layout.s2_scope(scope))
        if st is None:
            return
        data = st.get("data")
        if data is not None and self._prune_due(data) > now:
            return  # calls since: that minute's expiry scheduled it again
        if scope in self.rules.cfg.budgets or self.rules.needs_every_minute(scope, st):
            again.setdefault(now + self.horizon, []).append(scope)
            return
        del self.t[layout.s2_scope(scope)]
        self.pruned += 1

    def _schedule(self, q: int, schedule: dict[int, list[str]]) -> None:
        if not schedule:
            return
        due_at = set(self.t.get(layout.s2_prune_due(q)) or [])
        for d, scopes in sorted(schedule.items()):
            Names(self.t, layout.s2_prune_list(q, d)).add(scopes)
            due_at.add(d)
        self.t[layout.s2_prune_due(q)] = sorted(due_at)

    def _spend_calls(self, q: int, minute: int, scope: str) -> tuple[int, int]:
        """A scope-minute's spend and calls only: the org level needs no more, and building
        the full :class:`Agg` of ``global:all`` (its model/user/prompt maps from every raw
        partition) every minute was ~a quarter of closing's time."""
        spend = calls = 0
        for p in range(self.raw_partitions):
            v = self.t.get(layout.s2_window(q, minute, p, scope))
            if v is not None:
                spend += int(v["agg"].get("spend", 0))
                calls += int(v["agg"].get("calls", 0))
        return spend, calls

    def _total(self, q: int, minute: int, scope: str) -> Agg:
        out: Agg | None = None
        for p in range(self.raw_partitions):
            v = self.t.get(layout.s2_window(q, minute, p, scope))
            if v is None:
                continue
            if out is None:
                out = Agg.from_dict(v["agg"])
            else:
                out.merge(Agg.from_dict(v["agg"]))
        return Agg() if out is None else out
