"""The stream worker's core: what the Faust agents do, without Faust.

``app.py`` wires Faust (app, topics, tables, two agents and a timer) and each agent step calls
one method here; the Kafka operations the core needs (seek, probe a partition, the group's
committed offsets, the end offsets the fetcher saw) come in through :class:`Broker`, as
:class:`OffsetGuard` takes its seek and probe. So the worker's policies — counting replayed
records once, dead letters, idle partitions, the periodic resync, lag, re-reading records that
were acked without being applied, the order of stage-2 outputs and state — are unit-tested on
dicts with a fake clock (``tests/test_worker_core.py``) instead of only on the stack. (They
used to be closures over one-element lists inside a 317-line ``build_app``.)

Per agent step:

- ``stage1`` batch → :meth:`Worker.apply_batch` → dead letters and enriched records to send;
  Faust acks the batch's offsets once the agent body has run, so the messages are handed to
  the producer first.
- timer → :meth:`Worker.tick` → the partials messages and the seeks to perform. Synchronous on
  purpose: snapshots, watermarks and idle flags describe one applied state (a batch in flight
  is in none of them).
- ``stage2`` batch → per stage-2 partition, :meth:`Worker.apply_partials_run` (each message
  as :meth:`Worker.apply_partials`) → window totals and alerts to send; the agent waits until
  the broker has acknowledged them, then :meth:`Worker.commit_partials` writes the state that
  implies them (outputs before state: a crash in between repeats the outputs, which are
  idempotent, and never loses them). Committing once per run instead of once per message
  writes a key changed by several messages once and waits for the broker once: in the week
  replay (``bench/replay_week.py``, same session, three runs against two) 546–560 µs of
  workers' CPU per closed window and 80.3–90.0 s, against 605–641 µs and 89.0–92.3 s one
  message at a time (py-spy: the changelog records and their acknowledgements were ~15%).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import msgspec

from ..config import Settings
from ..wire import check_headers, dlq_headers
from . import partials
from . import state as layout
from .dedupe import Dedupe
from .enrich import EnrichedCall, Enricher, RecordResult, redact_record
from .offsets import OffsetGuard
from .pipeline import Snapshot, Stage1, Stage2, WindowTotal, WriteBuffer, route
from .windows import RecordAggregate

log = logging.getLogger("spendstream.worker")

SKEW_REASON = "ahead of the worker clock"
"""In the dead-letter reason of an event dated beyond ``max_future_skew_s`` (enrich.py)."""
ENRICHED_HEADERS = {"spendstream-wire": b"jsonl/1", "content-type": b"application/x-enriched"}
PRUNE_EVERY_BATCHES = 200
REREAD_AFTER_S = 2.0
"""How long a partition's applied state must stand still, with the group's committed offset
past it, before its unapplied records are re-read."""
STALL_REREAD_S = 10.0
"""How long no record of a partition may reach stage 1, while the fetcher keeps reporting
records past its next offset, before the partition is re-read (see ``Worker._stalled_at``).
Ten ticks of a busy worker: records queued behind a backlog arrive within seconds
(offsets.py)."""
STALL_REREAD_MAX_S = 320.0
"""The wait doubles after each stall re-read of a partition that brought nothing, up to this."""


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any = None


@dataclass(frozen=True, slots=True)
class Message:
    """One record to produce: ``topic`` is the role (``enriched``, ``dlq``, ``partials``,
    ``windows``, ``alerts``), mapped to a topic name by the adapter."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Any = None
    partition: int | None = None


class Broker(Protocol):
    """The Kafka operations of the worker's consumer, injected by the adapter."""

    async def seek(self, topic: str, partition: int, offset: int) -> None: ...
    async def probe(self, topic: str, partition: int, offset: int) -> int | None: ...
    def committed(self, topic: str, partition: int) -> int | None: ...
    def highwater(self, topic: str, partition: int) -> EndOffset | None: ...


class EndOffset(NamedTuple):
    """A partition's end offset as the broker last reported it, and when (worker clock)."""

    offset: int
    at: float


class MetricsSink(Protocol):
    """What the worker tells its Prometheus collector (once per batch, never per event)."""

    dead_letters: int
    late_dropped: int
    future_skewed: int

    def add_calls(self, calls: Iterable[EnrichedCall]) -> None: ...
    def add_duplicates(self, calls: Iterable[EnrichedCall]) -> None: ...


@dataclass(slots=True)
class Counters:
    """This process's counters (the periodic log line; the metrics collector's totals)."""

    records: int = 0
    events: int = 0
    dead: int = 0
    price_unknown: int = 0
    late_dropped: int = 0
    future_skewed: int = 0
    windows_closed: int = 0
    alerts: int = 0
    stale_ends: int = 0
    """Ticks on which a partition looked idle on an end offset the fetcher reported more than
    ``idle_timeout_s`` ago, and was kept busy."""
    stall_rereads: int = 0
    """Re-reads of a partition whose unapplied records stopped arriving (``_stalled_at``)."""
    batches: int = 0
    duplicates: int = 0
    """Events dropped from windows and metrics: their id was counted before (dedupe.py)."""


@dataclass(slots=True)
class TickOut:
    messages: list[Message] = field(default_factory=list)
    seeks: list[tuple[int, int]] = field(default_factory=list)
    """(raw partition, offset) to re-read from."""


@dataclass(slots=True)
class PartialsOut:
    messages: list[Message] = field(default_factory=list)
    windows: list[WindowTotal] = field(default_factory=list)
    """Closed windows (the live-spend writer's input)."""
    offset: int = -1
    """The last partials offset applied: what :meth:`Worker.commit_partials` records."""


@dataclass(slots=True)
class _Arrivals:
    """When a record of a raw partition last reached stage 1, and how long to wait for the
    next one before re-reading it (doubling while re-reads bring nothing)."""

    last: float
    wait: float = STALL_REREAD_S


@dataclass(slots=True)
class _Batch:
    """One stage-1 batch in progress."""

    applied: list[tuple[int, int, RecordAggregate]] = field(default_factory=list)
    nxt: dict[int, int | None] = field(default_factory=dict)
    calls: list[EnrichedCall] = field(default_factory=list)
    out: list[Message] = field(default_factory=list)
    dups: list[EnrichedCall] = field(default_factory=list)


class Worker:
    """Stage 1, the tick and stage 2 of one worker process (see the module docstring)."""

    def __init__(
        self,
        s: Settings,
        stage1: Stage1,
        stage2: Stage2,
        t2: WriteBuffer,
        enricher: Enricher,
        broker: Broker,
        metrics: MetricsSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s = s
        self.stage1 = stage1
        self.stage2 = stage2
        self.t2 = t2
        self.enricher = enricher
        self.broker = broker
        self.metrics = metrics
        self.clock = clock
        self.guard = OffsetGuard(broker.seek, broker.probe)
        self.dedupe = Dedupe.for_settings(stage1, stage1.retention, s.allowed_lateness_s)
        self.counters = Counters()
        self.lag: dict[int, int] = {}
        """Raw partition → records not yet applied (end offset − next offset)."""
        self._end_seen: dict[int, tuple[int, float]] = {}
        self._stalled: dict[int, tuple[int, float]] = {}
        self._arrivals: dict[int, _Arrivals] = {}
        self._known: set[int] = set()
        self._last_resync = clock()
        self._last_tick = clock()
        self._last_log = float("-inf")

    # --- stage 1 -----------------------------------------------------------------------------
    async def apply_batch(self, records: Sequence[Record]) -> list[Message]:
        """Validate, enrich and aggregate a batch of raw records; returns the dead letters and
        enriched records to send. Table keys are written once per batch."""
        b = _Batch()
        for r in records:
            p = r.partition
            expected = b.nxt[p] if p in b.nxt else self.stage1.next_offset(p)
            if not await self.guard.admit(self.s.topic_raw, p, r.offset, expected):
                b.nxt[p] = expected
                continue
            # a record before ``expected`` was applied (and counted) before a rebalance or
            # restart: its calls are re-sent downstream (sinks drop repeats by event_id) but
            # not counted again, or every rebalance would inflate the Prometheus counters
            fresh = expected is None or r.offset >= expected
            b.nxt[p] = max(r.offset + 1, expected or 0)
            self.counters.records += 1
            self._apply_record(b, r, fresh)
        self.dedupe.flush()  # ids before the windows and watermark that imply them
        self.stage1.apply_batch(b.applied)
        self.dedupe.mark_synced(b.nxt)
        now = self.clock()
        for p in b.nxt:  # admitted or skipped: the fetcher hands this partition's records over
            self._arrivals[p] = _Arrivals(now)
        self._after_batch(b)
        return b.out

    def _apply_record(self, b: _Batch, r: Record, fresh: bool) -> None:
        c, s = self.counters, self.s
        bad_header = check_headers(r.headers)
        if bad_header is not None:
            value = redact_record(r.value or b"", s.keep_text)
            headers = dlq_headers(s.topic_raw, r.partition, r.offset, None, bad_header)
            b.out.append(Message("dlq", r.key, value, headers))
            c.dead += int(fresh)
            b.applied.append((r.partition, r.offset, RecordAggregate()))  # handled: offset done
            return
        res: RecordResult = self.enricher.process(r.value)
        kept, dups = self.dedupe.admit(r.partition, r.offset, res.calls)
        if dups:  # an id counted before: out of the windows and the counters
            res.aggregate = RecordAggregate()
            res.aggregate.add_calls(kept)
        for d in res.dead:
            headers = dlq_headers(s.topic_raw, r.partition, r.offset, d.line, d.reason)
            b.out.append(Message("dlq", r.key, d.raw, headers))
        if fresh:
            c.dead += len(res.dead)
            c.future_skewed += sum(1 for d in res.dead if SKEW_REASON in d.reason)
            b.calls.extend(kept)
            b.dups.extend(dups)
            c.duplicates += len(dups)
            c.events += len(kept)
            c.price_unknown += sum(1 for call in kept if call.parts_pico is None)
        if res.calls:
            value = b"\n".join(call.to_json(s.keep_text) for call in res.calls)
            b.out.append(Message("enriched", r.key, value, ENRICHED_HEADERS))
        b.applied.append((r.partition, r.offset, res.aggregate))

    def _after_batch(self, b: _Batch) -> None:
        c = self.counters
        c.late_dropped = self.stage1.late_dropped
        if self.metrics is not None:
            self.metrics.add_calls(b.calls)
            self.metrics.add_duplicates(b.dups)
            self.metrics.dead_letters = c.dead
            self.metrics.late_dropped = c.late_dropped
            self.metrics.future_skewed = c.future_skewed
        c.batches += 1
        if c.batches % PRUNE_EVERY_BATCHES == 0:
            for p in {p for p, _, _ in b.applied}:
                self.stage1.prune(p)
                self.dedupe.prune(p)

    # --- the tick ----------------------------------------------------------------------------
    def tick(self, assigned: set[int]) -> TickOut:
        """The partials of every owned raw partition (changed snapshots; all of them for a
        partition newly owned or at the periodic resync) with its watermark and idle flag,
        and the seeks of partitions whose acked records were never applied."""
        out = TickOut()
        if not assigned:
            self._known.clear()
            return out
        now = self.clock()
        resync = now - self._last_resync >= self.s.resync_interval_s
        if resync:
            self._last_resync = now
        if now - self._last_tick > STALL_REREAD_S / 2:
            # the event loop stood still (a long step): nothing could arrive meanwhile
            for seen in self._arrivals.values():
                seen.last = now
        self._last_tick = now
        by_q: dict[int, list[Snapshot]] = defaultdict(list)
        reports: dict[int, partials.Report] = {}
        for p in sorted(assigned):
            for q, sn in route(self._snapshots(p, resync), self.s.stage2_partitions):
                by_q[q].append(sn)
            end = self.broker.highwater(self.s.topic_raw, p)
            reports[p] = (self.stage1.watermark(p), self._idle(p, end, now))
            if end is not None:
                self.lag[p] = max(0, end.offset - (self.stage1.next_offset(p) or 0))
            if (o := self._stalled_at(p, end, now)) is not None:
                out.seeks.append((p, o))
        for by_p in (self.lag, self._arrivals):  # forget partitions no longer owned
            for p in [p for p in by_p if p not in assigned]:
                del by_p[p]
        self._known = set(assigned)
        self._log(now, reports)
        for q in range(self.s.stage2_partitions):
            for body in partials.encode(by_q.get(q, []), reports):
                out.messages.append(Message("partials", None, body, partition=q))
        out.seeks += [
            (p, o) for p in sorted(assigned) if (o := self._reread_at(p, now)) is not None
        ]
        return out

    def _snapshots(self, p: int, resync: bool) -> list[Snapshot]:
        if p not in self._known or resync:
            # newly owned (restored from the changelog) or periodic: publish everything
            keys = self.stage1.keys_of(p)
            self.stage1.dirty.pop(p, None)
            return self.stage1.snapshots(p, keys)
        return self.stage1.snapshots(p)

    def _idle(self, p: int, end: EndOffset | None, now: float) -> bool:
        """The broker reported the same end offset at two moments ``idle_timeout_s`` apart,
        the later one at most ``idle_timeout_s`` ago, and every record in it is applied.

        Judged on the broker's reports, not on how long this process has looked at a cached
        end offset: a fetcher that stops polling (the event loop busy with a long stage-2
        close, its fetches waiting) leaves the last-seen end offset standing still, and a
        stage 1 that applied everything fetched so far then looked idle while the broker held
        more. That false idle once let stage 2 close ~150 minutes with part of their data
        unread (test_scaleout, 1 of 3 runs with a faster worker). The second report proves
        the offset stood still; the age bound keeps a fetcher stall from stretching an old
        proof further than the tolerance idleness already has. Its cost was not measurable:
        the week replay (bench/replay_week) took 290.8 s with a 3 s bound, 263.7 s with this
        one and 283.2 s with none, in one session (noise ~10%), though the loaded worker's
        log counted ~300 ticks of stale reports (``stale_ends``)."""
        if end is None:
            return False
        seen = self._end_seen.get(p)
        if seen is None or seen[0] != end.offset:
            self._end_seen[p] = (end.offset, end.at)
            return False
        if end.at - seen[1] < self.s.idle_timeout_s:
            return False
        if now - end.at > self.s.idle_timeout_s:
            self.counters.stale_ends += 1  # in the periodic log line: the fetcher is behind
            return False
        nxt = self.stage1.next_offset(p)
        if nxt is not None:
            return nxt >= end.offset
        return end.offset <= (self.broker.committed(self.s.topic_raw, p) or 0)

    def _reread_at(self, p: int, now: float) -> int | None:
        """The group's committed offset is past the state's next offset and the state has
        not moved for a while: records were acked without being applied (Faust's gap acks,
        then a restart) and no newer record arrives to show it. Re-read them."""
        nxt = self.stage1.next_offset(p)
        committed = self.broker.committed(self.s.topic_raw, p)
        if nxt is None or committed is None or committed <= nxt:
            self._stalled.pop(p, None)
            return None
        seen = self._stalled.get(p)
        if seen is None or seen[0] != nxt:
            self._stalled[p] = (nxt, now)
            return None
        if now - seen[1] < REREAD_AFTER_S:
            return None
        self._stalled[p] = (nxt, now)
        log.warning(
            "%s[%d]: committed offset %d is past the applied state (next %d); re-reading",
            self.s.topic_raw, p, committed, nxt,
        )  # fmt: skip
        return nxt

    def _stalled_at(self, p: int, end: EndOffset | None, now: float) -> int | None:
        """Records past the applied state exist, the fetcher keeps reporting the partition,
        and none of its records has reached stage 1 for ``wait`` seconds: re-read them.

        Faust drops them otherwise. :meth:`OffsetGuard.admit` seeks while Faust's drain loop is
        still handing over an already-fetched batch (the records it skips); ``Consumer.seek``
        sets the partition's read offset to the seek target, the loop then sets it again to
        each later record of that batch, and the re-fetched records are below it, so Faust
        drops them without a word (``_drain_messages``, "DROPPED MESSAGE"). With nothing
        produced after that batch no record reaches the guard to seek again: a joining worker
        in test_scaleout got none of one partition's records for 5 minutes after such a seek
        ("got offset 1890 while 1888 is next"), and every window stayed open.

        A spurious re-read is safe: the records it brings again are before the next offset,
        re-sent and never re-counted (sinks drop repeats by event id). The fetcher must have
        reported the partition ``wait`` after the last arrival (not a fetcher backpressured
        or stopped: its reports stand still), and the wait doubles after each re-read until a
        record arrives, so a partition that ends in offsets without records (transaction
        markers) is re-read a few times an hour, not every tick."""
        nxt = self.stage1.next_offset(p)
        seen = self._arrivals.get(p)
        if seen is None or nxt is None or end is None or end.offset <= nxt:
            self._arrivals[p] = _Arrivals(now)  # caught up (or unknown): wait from now
            return None
        if now - seen.last < seen.wait or end.at - seen.last < seen.wait:
            return None
        log.warning(
            "%s[%d]: no record for %.0f s while the broker holds %d past next offset %d; "
            "re-reading from %d",
            self.s.topic_raw, p, now - seen.last, end.offset - nxt, nxt, nxt,
        )  # fmt: skip
        self._arrivals[p] = _Arrivals(now, min(seen.wait * 2, STALL_REREAD_MAX_S))
        self.counters.stall_rereads += 1
        return nxt

    def _log(self, now: float, reports: dict[int, partials.Report]) -> None:
        if now - self._last_log < 10:
            return
        self._last_log = now
        c = self.counters
        log.info(
            "worker: records=%d events=%d dead=%d late_dropped=%d windows=%d alerts=%d "
            "stale_ends=%d stall_rereads=%d watermarks=%s",
            c.records, c.events, c.dead, c.late_dropped, c.windows_closed, c.alerts,
            c.stale_ends, c.stall_rereads, reports,
        )  # fmt: skip

    # --- stage 2 -----------------------------------------------------------------------------
    async def apply_partials(self, q: int, offset: int, value: bytes) -> PartialsOut | None:
        """Apply one partials message to stage-2 partition ``q`` and close what its
        watermarks allow; None when the message was applied before (nothing to send)."""
        done = self.t2.get(layout.s2_applied(q))
        expected = None if done is None else done + 1
        if not await self.guard.admit(self.s.topic_partials, q, offset, expected):
            return None
        if done is not None and offset <= done:
            return None  # applied and its outputs delivered before a restart
        self.t2[layout.s2_applied(q)] = offset  # held back with the rest until commit_partials
        snaps, reports = partials.decode(value)
        out = PartialsOut(offset=offset)
        for fix in self.stage2.apply_snapshots(q, snaps):
            out.messages.append(_window_message(fix))
        self.stage2.set_watermarks(q, reports)
        res = self.stage2.close(q)
        out.messages += [_window_message(w) for w in res.windows]
        out.messages += [Message("alerts", a.scope.encode(), a.to_json()) for a in res.alerts]
        out.windows = res.windows
        self.counters.windows_closed += len(res.windows)
        self.counters.alerts += len(res.alerts)
        return out

    async def apply_partials_run(
        self, q: int, messages: Sequence[tuple[int, bytes]]
    ) -> PartialsOut | None:
        """Apply consecutive partials messages (offset, value) of stage-2 partition ``q`` as
        :meth:`apply_partials` does one: their outputs together, ``offset`` the last applied,
        None when nothing new was. One commit after the outputs are acked then writes each
        changed key once and waits for the broker once per run instead of once per message."""
        run: PartialsOut | None = None
        for offset, value in messages:
            out = await self.apply_partials(q, offset, value)
            if out is None:
                continue
            if run is None:
                run = out
            else:
                run.messages += out.messages
                run.windows += out.windows
                run.offset = out.offset
        return run

    def abandon_partials(self) -> None:
        """Undo what was applied since the last commit, when its outputs could not be sent: the
        agent is restarted in this process (Faust's supervisor) and is handed the messages
        again; left pending, their applied offset would have them skipped as delivered."""
        self.t2.rollback()

    def commit_partials(self, q: int, offset: int) -> None:
        """Write the state of an applied partials message (after its outputs are acked), the
        applied offset last."""
        self.t2.put_last(layout.s2_applied(q), offset)
        self.t2.commit(q)


_encode_json = msgspec.json.Encoder().encode
"""The same JSON as ``json.dumps`` (compact, UTF-8), at a fraction of its cost per window."""


def _window_message(w: WindowTotal) -> Message:
    return Message("windows", w.key.encode(), _encode_json(w.to_dict()))
