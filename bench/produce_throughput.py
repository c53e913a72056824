"""Events/s the SDK sustains into the local broker vs bare confluent-kafka, same run.

SDK: ``Emitter.put()`` (waits for room instead of dropping) then ``flush()``. Bare: one record
per event, ``produce(topic, event.to_json(), key)`` with the same producer settings (idempotent,
acks=all, lz4, linger 50 ms), retrying on BufferError, then ``flush()``. Both serialize the
pydantic event. Run: ``python bench/produce_throughput.py [N]``. Last line:
``produce_ratio=<sdk/bare>``.
"""

from __future__ import annotations

import sys
import time

from _common import fresh_topic, machine, result, settings_with_stack
from confluent_kafka import Producer

from spendstream.producers import Emitter
from spendstream.producers.synthetic import sample_events


def main(n: int = 200_000) -> None:
    s = settings_with_stack()
    events = sample_events(n, run_id="bench")

    topic = fresh_topic(s, "produce-sdk")
    em = Emitter(s, topic=topic, register_atexit=False)
    t0 = time.perf_counter()
    for ev in events:
        em.put(ev)
    left = em.flush(120)
    sdk_s = time.perf_counter() - t0
    stats = em.stats()
    em.close(5)
    assert left == 0 and stats.delivered == n, stats

    topic = fresh_topic(s, "produce-bare")
    p = Producer(
        s.librdkafka(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "lz4",
                "linger.ms": 50,
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 100_000,
            }
        )
    )
    t0 = time.perf_counter()
    for ev in events:
        value, key = ev.to_json(), ev.kafka_key()
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    assert p.flush(120) == 0
    bare_s = time.perf_counter() - t0

    sdk_eps, bare_eps = n / sdk_s, n / bare_s
    print(f"produce_throughput: {n} events; {machine()}")
    print(f"{'path':<28} {'seconds':>8} {'events/s':>10}")
    print(f"{'SDK put()+flush (envelopes)':<28} {sdk_s:>8.2f} {sdk_eps:>10,.0f}")
    print(f"{'bare produce() per event':<28} {bare_s:>8.2f} {bare_eps:>10,.0f}")
    result("SDK produce throughput", sdk_eps, "events/s", "", bare_eps, "bare produce() per event")
    print(f"produce_ratio={sdk_eps / bare_eps:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
