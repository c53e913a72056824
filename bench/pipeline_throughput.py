"""Events/s of one stream worker (validate, enrich, window) against a bare aiokafka consumer
that only decodes the same records, in the same run on the same pre-filled topic.

The raw topic is pre-filled with N synthetic events (SDK envelopes). Baseline: aiokafka from
offset 0, ``json.loads`` of every line, until N events are seen. Worker: one
``spendstream worker`` from offset 0; its clock starts at its first enriched record (Faust's
start-up and group join are left out) and stops when the enriched topic holds a record for
every raw record and the ``global:all`` windows add up to N calls. Run:
``python bench/pipeline_throughput.py [N]``. Last line ``pipeline_ratio=<worker/raw>``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

from _common import (
    cpu_seconds,
    machine,
    private_settings,
    result,
    settings_with_stack,
    start_worker,
    stop_worker,
)
from confluent_kafka import Consumer, TopicPartition

from spendstream.config import Settings
from spendstream.producers import Emitter
from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from spendstream.scopes import minute_of


def fill(s: Settings, n: int) -> tuple[int, int]:
    """Produce n events; return the raw records written and the calls in closed minutes.

    Minutes close when the event-time watermark passes them; once every partition is idle
    that is every minute before the newest event's, so the newest minute stays open.
    """
    em = Emitter(s, register_atexit=False)
    minutes: list[int] = []
    for ev in SyntheticTraffic(TrafficConfig(seed=21, rate=300)).events(count=n):
        minutes.append(minute_of(ev.timestamp.timestamp()))
        em.put(ev)
    assert em.flush(300) == 0
    st = em.stats()
    em.close(5)
    assert st.delivered == n, st
    last = max(minutes)
    return end_offsets(s, s.topic_raw), sum(1 for m in minutes if m < last)


def end_offsets(s: Settings, topic: str) -> int:
    c = Consumer(s.librdkafka(**{"group.id": f"hw-{uuid.uuid4().hex}"}))
    md = c.list_topics(topic, timeout=10).topics[topic]
    total = 0
    for p in md.partitions:
        total += c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
    c.close()
    return total


async def bare(s: Settings, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        s.topic_raw,
        bootstrap_servers=s.kafka_bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await c.start()
    seen = 0
    t0 = time.perf_counter()
    try:
        while seen < n:
            got = await c.getmany(timeout_ms=500, max_records=1000)
            for msgs in got.values():
                for m in msgs:
                    for line in m.value.split(b"\n"):
                        if line:
                            json.loads(line)
                            seen += 1
    finally:
        await c.stop()
    return time.perf_counter() - t0


def worker_run(
    s: Settings, env: dict[str, str], closed_calls: int, records: int
) -> tuple[float, float, float]:
    """(seconds to all enriched, seconds to all windowed, worker CPU seconds in between)."""
    proc, log = start_worker(env, Path(s.stack_dir) / "bench-pipeline-worker.log")
    windows = Consumer(
        s.librdkafka(**{"group.id": f"w-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"})
    )
    windows.subscribe([s.topic_windows])
    calls: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 900
        start = None
        cpu0 = 0.0
        while start is None:
            if end_offsets(s, s.topic_enriched) > 0:
                start = time.perf_counter()
                cpu0 = cpu_seconds(proc.pid)
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("worker did not start")
            time.sleep(0.02)
        enriched_s = None
        while True:
            if enriched_s is None and end_offsets(s, s.topic_enriched) >= records:
                enriched_s = time.perf_counter() - start
            for m in windows.consume(1000, 0.1):
                if m.error() is None and m.key().startswith(b"global:all|"):
                    calls[m.key().decode()] = json.loads(m.value())["calls"]
            if enriched_s is not None and sum(calls.values()) == closed_calls:
                return enriched_s, time.perf_counter() - start, cpu_seconds(proc.pid) - cpu0
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker stopped or timed out: {sum(calls.values())} calls")
            time.sleep(0.05)
    finally:
        windows.close()
        stop_worker(proc)
        log.close()


def main(n: int = 500_000) -> None:
    base = settings_with_stack()
    s, env = private_settings(base, "pipeline", idle_timeout_s=1)
    t0 = time.perf_counter()
    records, closed_calls = fill(s, n)
    print(f"filled {n} events in {records} records ({time.perf_counter() - t0:.1f}s)", flush=True)
    bare_s = asyncio.run(bare(s, n))
    enriched_s, windowed_s, cpu_s = worker_run(s, env, closed_calls, records)
    bare_eps, worker_eps = n / bare_s, n / windowed_s
    print(f"pipeline_throughput: {n} events, {records} records; {machine()}")
    print(f"{'path':<40} {'seconds':>8} {'events/s':>10}")
    print(f"{'bare aiokafka + json.loads per event':<40} {bare_s:>8.2f} {bare_eps:>10,.0f}")
    print(f"{'worker: all enriched':<40} {enriched_s:>8.2f} {n / enriched_s:>10,.0f}")
    print(f"{'worker: all enriched and windowed':<40} {windowed_s:>8.2f} {worker_eps:>10,.0f}")
    print(f"worker CPU {cpu_s:.2f} s = {cpu_s / n * 1e6:.1f} µs/event (same interval)")
    result(
        "stream worker, enriched + windowed",
        worker_eps,
        "events/s",
        "ratio ≥ 0.35",
        bare_eps,
        "bare aiokafka + json.loads",
    )
    print(f"pipeline_ratio={worker_eps / bare_eps:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500_000)
