"""The emitter against the real broker: exactly-once arrival, envelopes, drops, flush, outage."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from spendstream import stack as local_stack
from spendstream.config import Settings
from spendstream.producers import Emitter
from spendstream.producers.emitter import _DRAIN_MAX
from spendstream.producers.synthetic import sample_events
from tests.kafka_helpers import fresh_topic, read_events

pytestmark = pytest.mark.stack


@pytest.fixture
def topic(stack: Settings) -> str:
    return fresh_topic(stack, "emit")


@pytest.fixture
def emitter(stack: Settings, topic: str) -> Iterator[Emitter]:
    e = Emitter(stack, topic=topic, register_atexit=False)
    yield e
    e.close(timeout=5)


def test_events_from_threads_arrive_exactly_once_in_envelopes(
    stack: Settings, topic: str, emitter: Emitter
) -> None:
    events = sample_events(6000, run_id="threads", seed=3)
    parts = [events[i::3] for i in range(3)]
    results: list[list[bool]] = [[], [], []]

    def worker(i: int) -> None:
        results[i] = [emitter.emit(ev) for ev in parts[i]]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(all(r) for r in results)
    assert emitter.flush(30) == 0
    assert emitter.stats().delivered == 6000 and emitter.stats().dropped == {}

    got = read_events(stack, topic, 6000)
    assert len(got.events) == 6000
    assert sorted(str(e.event_id) for e in got.events) == sorted(str(e.event_id) for e in events)
    by_id = {e.event_id: e for e in events}
    assert all(by_id[e.event_id] == e for e in got.events)
    assert got.bad == [] and got.keys_ok and got.headers_ok
    assert got.records < 6000 / 5  # several events travel in one record
    # one thread's events of one key keep their order
    for part in parts:
        key = part[0].kafka_key()
        mine = {e.event_id for e in part if e.kafka_key() == key}
        assert [e.event_id for e in got.events if e.event_id in mine] == [
            e.event_id for e in part if e.kafka_key() == key
        ]


def test_events_from_asyncio_tasks_arrive_exactly_once(
    stack: Settings, topic: str, emitter: Emitter
) -> None:
    events = sample_events(2000, run_id="asyncio", seed=4)

    async def main() -> int:
        async def task(chunk: list) -> None:
            for ev in chunk:
                assert emitter.emit(ev)
                await asyncio.sleep(0)

        await asyncio.gather(*(task(events[i::50]) for i in range(50)))
        return await emitter.aflush(30)

    assert asyncio.run(main()) == 0
    got = read_events(stack, topic, 2000)
    assert sorted(str(e.event_id) for e in got.events) == sorted(str(e.event_id) for e in events)


def test_oversized_event_is_dropped_and_counted_neighbours_delivered(
    stack: Settings, topic: str, emitter: Emitter
) -> None:
    events = sample_events(10, run_id="big", seed=5)
    huge = events[0].model_copy(update={"prompt_text": "\U0001f4b8" * 262_144})  # 1 MiB UTF-8
    for ev in [*events[1:], huge]:
        emitter.emit(ev)
    assert emitter.flush(30) == 0
    assert emitter.stats().dropped == {"too_large": 1}
    got = read_events(stack, topic, 9)
    assert {e.event_id for e in got.events} == {e.event_id for e in events[1:]}


def test_flush_honours_its_timeout_when_no_broker_answers() -> None:
    s = Settings(kafka_bootstrap_servers="127.0.0.1:1")
    e = Emitter(s, topic="nowhere", register_atexit=False)
    for ev in sample_events(25, run_id="t", seed=6):
        assert e.emit(ev)
    t0 = time.monotonic()
    left = e.flush(0.5)
    elapsed = time.monotonic() - t0
    assert left == 25
    assert 0.5 <= elapsed < 3.0
    assert e.close(timeout=0) == 25
    assert e.stats().dropped == {"closed": 25}


@pytest.mark.slow
def test_broker_outage_emit_stays_immediate_bounded_counted_then_delivers(stack: Settings) -> None:
    topic = fresh_topic(stack, "outage")
    buffer_events = 3000
    s = stack.model_copy(
        update={
            "producer_buffer_events": buffer_events,
            "producer_queue_kbytes": 1024,
            "producer_message_timeout_ms": 180_000,
        }
    )
    e = Emitter(s, topic=topic, register_atexit=False)
    events = iter(sample_events(40_000, run_id="outage", seed=8))
    before = [next(events) for _ in range(1000)]
    for ev in before:
        assert e.emit(ev)
    assert e.flush(30) == 0

    local_stack.down(stack, ["kafka"])
    try:
        accepted, attempts, slowest, peak = [], 0, 0.0, 0
        for ev in events:
            t0 = time.perf_counter()
            ok = e.emit(ev)
            slowest = max(slowest, time.perf_counter() - t0)
            attempts += 1
            if ok:
                accepted.append(ev)
            peak = max(peak, e.pending())
        stats = e.stats()
        assert attempts == 39_000
        # never blocked: a blocking producer would wait for the broker for seconds
        assert slowest < 0.1
        dropped = stats.dropped.get("buffer_full", 0)
        assert dropped > 0 and dropped + len(accepted) == attempts
        # bounded: the buffer, one backlog batch, and what librdkafka's 1 MiB queue holds
        assert peak <= buffer_events + _DRAIN_MAX + 1024 * 1024 // 200
        assert stats.dropped.keys() == {"buffer_full"}
    finally:
        local_stack.up(stack, ["kafka"])

    assert e.flush(120) == 0
    assert e.stats().delivered == 1000 + len(accepted)
    got = read_events(stack, topic, 1000 + len(accepted), deadline_s=120)
    ids = [e.event_id for e in got.events]
    assert len(ids) == len(set(ids)) == 1000 + len(accepted)
    assert set(ids) == {ev.event_id for ev in before + accepted}
    e.close(timeout=5)
