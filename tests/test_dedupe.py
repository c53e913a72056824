"""Stage 1 counts an event id once (dedupe.py), across records, restarts and rebalances, on
dicts without a broker: the windows' stage-1 aggregates, the counters and the Prometheus
collector each see a re-published event once; a replay of the record that counted it is
never taken for a duplicate."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from spendstream.events import example_event
from spendstream.stream import state as layout
from spendstream.stream.dedupe import Dedupe
from spendstream.stream.enrich import Enricher
from spendstream.stream.metrics import PipelineMetrics
from spendstream.stream.pipeline import DictState, Stage1
from spendstream.stream.worker import Worker
from tests.test_worker_core import make, record

BASE = datetime(2026, 11, 28, 14, 3, 7, tzinfo=UTC)


def ev(eid: str, minutes: float = 0, **kw: Any) -> bytes:
    ts = (BASE + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
    return example_event(event_id=eid, timestamp=ts, **kw).to_json()


def global_calls(core: Worker, p: int = 0) -> int:
    t = core.stage1.t
    return sum(
        v["agg"]["calls"]
        for k in core.stage1.keys_of(p)
        if k.endswith("|global:all") and (v := t.get(k)) is not None
    )


def with_metrics(core: Worker) -> PipelineMetrics:
    m = PipelineMetrics()
    core.metrics = m
    return m


def rebuilt(core: Worker) -> Worker:
    """A new worker process on the same (restored) stage-1 table."""
    fresh, *_ = make()
    fresh.stage1 = Stage1(core.stage1.t, core.stage1.retention)
    fresh.dedupe = Dedupe.for_settings(fresh.stage1, fresh.stage1.retention, 120)
    return fresh


async def test_a_republished_event_is_counted_once_in_windows_counters_and_prometheus() -> None:
    core, *_ = make()
    m = with_metrics(core)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    await core.apply_batch([record(0, 0, ev(a), ev(b))])
    out = await core.apply_batch([record(0, 1, ev(a)), record(0, 2, ev(b), ev(b))])
    assert global_calls(core) == 2
    c = core.counters
    assert (c.events, c.duplicates, c.records) == (2, 3, 3)
    assert sum(m.calls.values()) == 2 and m.duplicates == {"support-bot": 3}
    # still forwarded: the sinks drop repeats by event_id
    assert [msg.topic for msg in out] == ["enriched", "enriched"]
    names = {f.name: f for f in m.collect()}
    dup = names["spendstream_duplicate_events"]
    assert [(s.name, s.labels, s.value) for s in dup.samples if s.name.endswith("_total")] == [
        ("spendstream_duplicate_events_total", {"service": "support-bot"}, 3)
    ]


async def test_a_copy_inside_one_record_is_a_duplicate_and_other_ids_are_kept() -> None:
    core, *_ = make()
    a = str(uuid.uuid4())
    await core.apply_batch([record(0, 0, ev(a), ev(a), ev(str(uuid.uuid4())))])
    assert global_calls(core) == 2 and core.counters.duplicates == 1


async def test_ids_survive_a_restart_so_a_later_retry_is_still_dropped() -> None:
    core, *_ = make()
    a = str(uuid.uuid4())
    await core.apply_batch([record(0, 0, ev(a), ev(str(uuid.uuid4())))])
    again = rebuilt(core)
    await again.apply_batch([record(0, 1, ev(a))])
    assert global_calls(again) == 2 and again.counters.duplicates == 1


async def test_a_replay_of_the_counting_record_after_its_windows_were_lost_is_counted() -> None:
    """Crash after the ids reached the changelog but before the windows did: the record is
    re-read at the same offset and must be applied, not dropped as its own duplicate."""
    core, *_ = make()
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    await core.apply_batch([record(0, 0, ev(a), ev(b))])
    t = core.stage1.t
    for k in [*core.stage1.keys_of(0), layout.s1_mark(0)]:
        del t[k]  # lost: only the ids and the version survived
    assert any(k.startswith(layout.s1_seen_prefix(0)) for k in t)
    again = rebuilt(core)
    await again.apply_batch([record(0, 0, ev(a), ev(b)), record(0, 1, ev(a))])
    assert global_calls(again) == 2
    assert (again.counters.events, again.counters.duplicates) == (2, 1)


async def test_a_re_read_after_a_rebalance_is_counted_once_and_not_dropped() -> None:
    core, *_ = make()
    a = str(uuid.uuid4())
    batch = [record(0, 0, ev(a))]
    await core.apply_batch(batch)
    await core.apply_batch(batch)  # the offset guard's re-read: offset already applied
    assert global_calls(core) == 1 and core.counters.duplicates == 0


async def test_an_index_made_stale_by_another_worker_is_rebuilt_from_the_table() -> None:
    """Partition 0 moves to another worker, which counts id Y, and comes back: this worker's
    memory lacks Y, but the applied offset moved, so it reloads and drops Y's retry."""
    core, *_ = make()
    await core.apply_batch([record(0, 0, ev(str(uuid.uuid4())))])
    other = rebuilt(core)
    y = str(uuid.uuid4())
    await other.apply_batch([record(0, 1, ev(y))])
    await core.apply_batch([record(0, 2, ev(y))])
    assert global_calls(core) == 2 and core.counters.duplicates == 1


async def test_minutes_beyond_the_horizon_are_forgotten_in_memory_and_in_the_table() -> None:
    core, *_ = make()
    d = core.dedupe
    old = str(uuid.uuid4())
    await core.apply_batch([record(0, 0, ev(old))])
    far = d.horizon + 2
    await core.apply_batch([record(0, 1, ev(str(uuid.uuid4()), minutes=far))])
    assert d.ids(0) == 2
    assert d.prune(0) == 1 and d.ids(0) == 1
    keys = [k for k in core.stage1.t if k.startswith(layout.s1_seen_prefix(0))]
    assert len(keys) == 1 and f"|{int(BASE.timestamp() // 60) + far}|" in keys[0]
    # an event older than the horizon is not remembered (stage 1 drops it as late anyway)
    await core.apply_batch([record(0, 2, ev(str(uuid.uuid4())))])
    assert d.ids(0) == 1


def test_id_keys_stay_out_of_the_window_keys_and_chunk_under_the_record_limit() -> None:
    s1 = Stage1(DictState())
    d = Dedupe(s1, 17)
    calls = Enricher().process(b"\n".join(ev(str(uuid.uuid4())) for _ in range(20_000))).calls
    kept, dups = d.admit(0, 0, calls)
    assert len(kept) == 20_000 and dups == []
    d.flush()
    keys = [k for k in s1.t if k.startswith("d|0|")]
    assert len(keys) == 3  # 8192-id chunks
    assert max(len(str(s1.t.get(k))) for k in keys) < 300_000
    assert s1.keys_of(0) == []


async def test_a_batch_of_dead_letters_only_does_not_vouch_for_a_stale_index() -> None:
    core, *_ = make()
    await core.apply_batch([record(0, 0, ev(str(uuid.uuid4())))])
    other = rebuilt(core)
    y = str(uuid.uuid4())
    await other.apply_batch([record(0, 1, ev(y))])
    bad = record(0, 2, ev(str(uuid.uuid4())), headers=[("spendstream-wire", b"v9")])
    await core.apply_batch([bad])  # the partition is back: only a dead letter
    await core.apply_batch([record(0, 3, ev(y))])
    assert global_calls(core) == 2 and core.counters.duplicates == 1
