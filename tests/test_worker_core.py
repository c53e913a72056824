"""The worker core without Faust or a broker: stage-1 batches, the tick (resync, idle, lag,
re-reads) and stage 2's outputs-before-state, on dicts with a fake clock and a fake broker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from spendstream.config import Settings
from spendstream.events import example_event
from spendstream.stream import partials
from spendstream.stream.enrich import Enricher
from spendstream.stream.pipeline import DictState, Stage1, Stage2, WriteBuffer
from spendstream.stream.rules import RuleConfig
from spendstream.stream.worker import EndOffset, Record, Worker

RAW, Q = 2, 2


@dataclass
class FakeBroker:
    """End offsets and committed offsets set by the test; seeks recorded."""

    ends: dict[int, int] = field(default_factory=dict)
    commits: dict[int, int] = field(default_factory=dict)
    seeks: list[tuple[str, int, int]] = field(default_factory=list)
    polled: dict[int, float] = field(default_factory=dict)
    clock: Callable[[], float] = lambda: 0.0

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        self.seeks.append((topic, partition, offset))

    async def probe(self, topic: str, partition: int, offset: int) -> int | None:
        return offset

    def committed(self, topic: str, partition: int) -> int | None:
        return self.commits.get(partition)

    def highwater(self, topic: str, partition: int) -> EndOffset | None:
        """Reported just now, unless the test set when it was last polled."""
        end = self.ends.get(partition)
        at = self.polled.get(partition, self.clock())
        return None if end is None else EndOffset(end, at)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(**kw: Any) -> tuple[Worker, FakeBroker, Clock, dict[str, Any]]:
    s = Settings(
        _env_file=None, raw_partitions=RAW, stage2_partitions=Q, idle_timeout_s=5,
        resync_interval_s=30, **kw,
    )  # fmt: skip
    t2 = DictState()
    buf = WriteBuffer(t2, MappingProxyType(t2))  # reads from a view, as on the Faust store
    clock = Clock()
    broker = FakeBroker(clock=clock)
    core = Worker(
        s,
        Stage1(DictState(), s.window_retention_minutes),
        Stage2(buf, RuleConfig(), RAW, s.allowed_lateness_s, 15),
        buf,
        Enricher(),
        broker,
        clock=clock,
    )
    return core, broker, clock, t2


def line(**kw: Any) -> bytes:
    return example_event(event_id=str(uuid.uuid4()), **kw).to_json()


def record(p: int, offset: int, *lines: bytes, headers: Any = None) -> Record:
    return Record(p, offset, b"k", b"\n".join(lines), headers)


async def test_a_batch_sends_enriched_calls_and_dead_letters_and_counts_each_once() -> None:
    core, *_ = make()
    batch = [record(0, 0, line(), b"{not json"), record(1, 0, line(), line())]
    out = await core.apply_batch(batch)
    assert [m.topic for m in out] == ["dlq", "enriched", "enriched"]
    assert out[0].value.startswith(b"{not json")
    assert len(out[2].value.split(b"\n")) == 2
    assert (core.counters.records, core.counters.events, core.counters.dead) == (2, 3, 1)
    assert core.stage1.next_offset(0) == 1 and core.stage1.next_offset(1) == 1
    # the same records again (a rebalance re-delivers them): re-sent, never re-counted
    again = await core.apply_batch(batch)
    assert [m.topic for m in again] == ["dlq", "enriched", "enriched"]
    assert (core.counters.events, core.counters.dead) == (3, 1)


async def test_a_record_with_a_bad_wire_header_is_dead_lettered_whole_and_its_offset_done() -> None:
    core, *_ = make()
    out = await core.apply_batch([record(0, 0, line(), headers=[("spendstream-wire", b"v9")])])
    assert [m.topic for m in out] == ["dlq"]
    assert core.stage1.next_offset(0) == 1 and core.counters.events == 0


async def test_a_record_past_the_expected_offset_is_skipped_and_the_partition_re_read() -> None:
    core, broker, *_ = make()
    await core.apply_batch([record(0, 0, line())])
    out = await core.apply_batch([record(0, 5, line())])
    assert out == [] and core.stage1.next_offset(0) == 1
    assert broker.seeks == [(core.s.topic_raw, 0, 1)]


async def test_the_tick_publishes_everything_when_newly_owned_then_changes_then_all_at_resync() -> (
    None
):
    core, _, clock, _ = make()
    await core.apply_batch([record(0, 0, line()), record(1, 0, line(service="billing"))])
    first = snaps_of(core.tick({0, 1}))
    assert first and {p for p, *_ in first} == {0, 1}
    assert snaps_of(core.tick({0, 1})) == []  # nothing changed
    await core.apply_batch([record(0, 1, line(service="search"))])
    changed = snaps_of(core.tick({0, 1}))
    assert changed and {p for p, *_ in changed} == {0}
    clock.t += 31  # resync: everything again, though nothing changed
    every = {(p, scope, minute) for p, scope, minute, *_ in first + changed}
    assert {(p, scope, minute) for p, scope, minute, *_ in snaps_of(core.tick({0, 1}))} == every
    assert snaps_of(core.tick({0, 1})) == []


def snaps_of(tick: Any) -> list[list[Any]]:
    out: list[list[Any]] = []
    for m in tick.messages:
        out += json.loads(m.value)["snaps"]
    return out


def reports_of(tick: Any) -> dict[str, list[Any]]:
    return dict(json.loads(tick.messages[-1].value)["wm"])


async def test_every_stage2_partition_gets_the_watermarks_in_its_last_message() -> None:
    core, *_ = make()
    await core.apply_batch([record(0, 0, line())])
    tick = core.tick({0, 1})
    assert sorted(m.partition for m in tick.messages) == list(range(Q))
    for m in tick.messages:
        assert set(json.loads(m.value)["wm"]) == {"0", "1"}


async def test_a_partition_is_idle_only_after_its_end_offset_stood_still_and_all_is_applied() -> (
    None
):
    core, broker, clock, _ = make()
    await core.apply_batch([record(0, 0, line())])
    broker.ends = {0: 1, 1: 3}
    assert reports_of(core.tick({0, 1}))["0"][1] is False  # end offset just seen
    clock.t += 4
    assert reports_of(core.tick({0, 1}))["0"][1] is False  # not idle_timeout_s yet
    clock.t += 2
    rep = reports_of(core.tick({0, 1}))
    assert rep["0"][1] is True
    assert rep["1"][1] is False  # records 0..2 of partition 1 not applied: busy, not idle
    assert core.lag == {0: 0, 1: 3}
    broker.ends[0] = 2  # a new record arrived
    assert reports_of(core.tick({0, 1}))["0"][1] is False


async def test_an_end_offset_the_fetcher_has_not_reported_again_never_reads_as_idle() -> None:
    core, broker, clock, _ = make()
    await core.apply_batch([record(0, 0, line())])
    broker.ends, broker.polled = {0: 1}, {0: clock.t}
    assert reports_of(core.tick({0}))["0"][1] is False
    clock.t += 60  # the fetcher stopped polling: its last report is a minute old
    assert reports_of(core.tick({0}))["0"][1] is False  # unchanged only as far as we know
    broker.polled = {0: clock.t}  # it polls again and the broker still says 1
    assert reports_of(core.tick({0}))["0"][1] is True


async def test_a_proven_idle_partition_turns_busy_when_the_fetcher_falls_silent() -> None:
    core, broker, clock, _ = make()
    await core.apply_batch([record(0, 0, line())])
    broker.ends = {0: 1}
    core.tick({0})
    clock.t += 6
    assert reports_of(core.tick({0}))["0"][1] is True  # reported again 6 s later
    clock.t += 6
    broker.polled = {0: clock.t - 6}  # that report is now 6 s old: the fetcher fell silent
    assert reports_of(core.tick({0}))["0"][1] is False
    assert core.counters.stale_ends == 1


async def test_idle_needs_two_reports_of_one_end_offset_idle_timeout_s_apart() -> None:
    core, broker, clock, _ = make()
    await core.apply_batch([record(0, 0, line())])
    broker.ends = {0: 1}
    core.tick({0})  # first seen now (t=1000), reported now
    clock.t += 6
    broker.polled = {0: 1003.0}  # the latest report came 3 s after the first: not yet 5 s
    assert reports_of(core.tick({0}))["0"][1] is False


async def test_lag_forgets_partitions_no_longer_owned() -> None:
    core, broker, *_ = make()
    broker.ends = {0: 4, 1: 2}
    core.tick({0, 1})
    assert core.lag == {0: 4, 1: 2}
    core.tick({1})
    assert core.lag == {1: 2}


async def test_acked_but_unapplied_records_are_re_read_once_the_state_stands_still() -> None:
    core, broker, clock, _ = make()
    await core.apply_batch([record(0, 0, line())])
    broker.commits = {0: 7}  # Faust acked offsets 1..6 without the agent applying them
    assert core.tick({0}).seeks == []
    clock.t += 1
    assert core.tick({0}).seeks == []
    clock.t += 1.5
    assert core.tick({0}).seeks == [(0, 1)]
    assert core.tick({0}).seeks == []  # not again at once
    broker.commits = {0: 1}
    clock.t += 5
    assert core.tick({0}).seeks == []


def seeks_over(
    core: Worker, clock: Clock, seconds: int, assigned: set[int]
) -> list[tuple[float, int, int]]:
    """Tick once a second for ``seconds``; the seeks with the (relative) second they came at."""
    start, got = clock.t, []
    for _ in range(seconds):
        clock.t += 1
        got += [(clock.t - start, p, o) for p, o in core.tick(assigned).seeks]
    return got


async def test_a_partition_whose_unapplied_records_stop_arriving_is_re_read_with_backoff() -> None:
    core, broker, clock, _ = make()
    await core.apply_batch([record(0, 0, line())])
    broker.ends = {0: 9}  # records 1..8 exist; the fetcher keeps reporting them, none arrives
    core.tick({0})
    assert seeks_over(core, clock, 80, {0}) == [(10, 0, 1), (30, 0, 1), (70, 0, 1)]
    assert core.counters.stall_rereads == 3


async def test_records_that_keep_arriving_are_never_re_read_as_stalled() -> None:
    core, broker, clock, _ = make()
    broker.ends = {0: 1000}  # a long backlog, applied a record every 9 s
    for offset in range(8):
        await core.apply_batch([record(0, offset, line())])
        assert seeks_over(core, clock, 9, {0}) == []
    assert seeks_over(core, clock, 1, {0}) == [(1, 0, 8)]  # then none for 10 s: re-read
    assert seeks_over(core, clock, 19, {0}) == []  # the next wait is 20 s
    await core.apply_batch([record(0, 8, line())])
    # an arrival resets the backoff: the next stall is re-read after 10 s again, not 20
    assert seeks_over(core, clock, 40, {0}) == [(10, 0, 9), (30, 0, 9)]


async def test_a_caught_up_partition_is_never_re_read() -> None:
    core, broker, clock, _ = make()
    await core.apply_batch([record(0, 0, line())])
    broker.ends = {0: 1}
    assert seeks_over(core, clock, 60, {0}) == []
    broker.ends = {0: 2}  # a new record: waited for from now, not from the last arrival
    assert seeks_over(core, clock, 9, {0}) == []
    assert seeks_over(core, clock, 1, {0}) == [(1, 0, 1)]


async def test_no_stall_re_read_while_the_fetcher_has_not_reported_the_partition_since() -> None:
    core, broker, clock, _ = make()
    await core.apply_batch([record(0, 0, line())])
    broker.ends, broker.polled = {0: 9}, {0: clock.t + 3}  # its last report: 3 s after
    assert seeks_over(core, clock, 60, {0}) == []  # backpressured or stopped: not a stall
    broker.polled = {}  # it reports again
    assert seeks_over(core, clock, 1, {0}) == [(1, 0, 1)]


async def test_time_the_event_loop_stood_still_does_not_count_as_a_stall() -> None:
    core, broker, clock, _ = make()
    await core.apply_batch([record(0, 0, line())])
    broker.ends = {0: 9}
    core.tick({0})
    clock.t += 30  # one step held the loop for 30 s: no record could have arrived
    assert core.tick({0}).seeks == []
    assert seeks_over(core, clock, 10, {0}) == [(10, 0, 1)]


def partials_body(minute: int, agg: dict[str, Any], wm: float) -> bytes:
    from spendstream.stream.pipeline import Snapshot

    snaps = [Snapshot(p, "endpoint:a", minute, 0, agg) for p in range(RAW)]
    return partials.encode(snaps, {p: (wm, False) for p in range(RAW)})[-1]


async def test_stage2_outputs_come_before_the_state_that_implies_them() -> None:
    core, _, _, table = make(allowed_lateness_s=0)
    agg = {"calls": 1, "spend": 5}
    minute = 29_000_000
    out = await core.apply_partials(0, 0, partials_body(minute, agg, (minute + 2) * 60.0))
    assert out is not None
    windows = [m for m in out.messages if m.topic == "windows"]
    assert [json.loads(m.value)["scope"] for m in windows] == ["endpoint:a"]
    assert json.loads(windows[0].value)["calls"] == 2  # both raw partitions' snapshots
    assert "o|0" not in table and "c|0" not in table  # nothing written before delivery
    core.commit_partials(0, 0)
    assert table["o|0"] == 0 and table["c|0"] >= minute
    # the same message again (a restart before Faust's commit): applied already, nothing sent
    assert await core.apply_partials(0, 0, partials_body(minute, agg, (minute + 2) * 60.0)) is None


async def test_a_revision_of_a_closed_minute_republishes_its_window() -> None:
    core, *_ = make(allowed_lateness_s=0)
    minute = 29_000_000
    await core.apply_partials(0, 0, partials_body(minute, {"calls": 1}, (minute + 2) * 60.0))
    core.commit_partials(0, 0)
    from spendstream.stream.pipeline import Snapshot

    late = partials.encode([Snapshot(0, "endpoint:a", minute, 1, {"calls": 3})], {})[-1]
    out = await core.apply_partials(0, 1, late)
    assert out is not None
    (fix,) = [json.loads(m.value) for m in out.messages if m.topic == "windows"]
    assert (fix["calls"], fix["revision"]) == (4, 1)


@dataclass
class Recorder:
    """A stage-2 table that records the order of its changelog writes."""

    inner: dict[str, Any]
    order: list[str] = field(default_factory=list)

    def get(self, key: str) -> Any:
        return self.inner.get(key)

    def keys(self) -> Any:
        return self.inner.keys()

    def put(self, partition: int, key: str, value: Any) -> None:
        self.order.append(key)
        self.inner[key] = value

    def delete(self, partition: int, key: str) -> None:
        self.order.append(key)
        self.inner.pop(key, None)


async def test_a_run_of_partials_messages_sends_and_commits_what_one_by_one_would() -> None:
    minute = 29_000_000
    bodies = [
        partials_body(minute + i, {"calls": i + 1, "spend": 7 * i}, (minute + i + 2) * 60.0)
        for i in range(3)
    ]
    one, _, _, one_table = make(allowed_lateness_s=0)
    sent_one = []
    for offset, body in enumerate(bodies):
        out = await one.apply_partials(0, offset, body)
        assert out is not None
        sent_one += [(m.topic, m.key, m.value) for m in out.messages]
        one.commit_partials(0, offset)

    run, broker, _, table = make(allowed_lateness_s=0)
    first = await run.apply_partials(0, 0, bodies[0])
    assert first is not None
    run.commit_partials(0, 0)
    res = await run.apply_partials_run(0, [(1, bodies[1]), (2, bodies[2])])
    assert res is not None and res.offset == 2 and broker.seeks == []  # no gap seen in the run
    assert [(m.topic, m.key, m.value) for m in first.messages + res.messages] == sent_one
    assert len([m for m in res.messages if m.topic == "windows"]) == 2
    assert table["o|0"] == 0  # nothing of the run written before its outputs are delivered
    rec = Recorder(table)
    run.t2.table = rec
    run.commit_partials(0, res.offset)
    assert table == one_table and table["o|0"] == 2
    assert len(rec.order) > 1 and rec.order[-1] == "o|0"  # the applied offset reaches it last
    # the run again (a restart before Faust's commit): applied already, nothing sent
    assert await run.apply_partials_run(0, list(enumerate(bodies))) is None


async def test_a_run_whose_outputs_were_not_sent_is_applied_again_after_abandoning_it() -> None:
    minute = 29_000_000
    bodies = [partials_body(minute + i, {"calls": 1}, (minute + i + 2) * 60.0) for i in range(2)]
    core, _, _, table = make(allowed_lateness_s=0)
    first = await core.apply_partials_run(0, list(enumerate(bodies)))
    assert first is not None
    core.abandon_partials()  # sending the outputs failed: the agent restarts in this process
    assert "o|0" not in table
    again = await core.apply_partials_run(0, list(enumerate(bodies)))
    assert again is not None and again.offset == 1
    assert [(m.topic, m.key, m.value) for m in again.messages] == [
        (m.topic, m.key, m.value) for m in first.messages
    ]


def test_partials_round_trip_and_messages_stay_under_the_size_cap() -> None:
    from spendstream.stream.pipeline import Snapshot

    snaps = [
        Snapshot(0, f"prompt:{i:05}", 1, i, {"calls": i, "pad": "x" * 300}) for i in range(3000)
    ]
    bodies = partials.encode(snaps, {0: (60.0, True)})
    assert len(bodies) > 1 and all(len(b) <= partials.MAX_PARTIALS_BYTES + 400 for b in bodies)
    got: list[Snapshot] = []
    reports: dict[int, Any] = {}
    for b in bodies:
        s, r = partials.decode(b)
        got += s
        reports.update(r)
    assert got == snaps and reports == {0: (60.0, True)}
    assert all(partials.decode(b)[1] == {} for b in bodies[:-1])


def test_write_buffer_reads_pending_then_committed_and_writes_only_on_commit() -> None:
    table = DictState({"a": 1, "b": 2})
    buf = WriteBuffer(table, MappingProxyType(table))
    buf["c"] = 3
    assert (buf.get("a"), buf.get("c"), buf.get("zz"), buf.get("zz", 7)) == (1, 3, None, 7)
    assert buf.pop("b") == 2
    assert buf.pop("b", "gone") == "gone"
    assert buf.pop("zz") is None
    assert (buf.get("b"), "b" in buf, "c" in buf) == (None, False, True)
    assert table == {"a": 1, "b": 2}  # nothing written before the commit
    assert sorted(buf) == ["a", "c"]
    buf.commit(0)
    assert table == {"a": 1, "c": 3}
