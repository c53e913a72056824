"""µs per ``emit()`` in the calling thread, broker up and broker unreachable, against a bare
confluent-kafka ``Producer.produce()`` of the same (pre-serialized) bytes in the same run.

Goal: p50 ≤ 5 µs and p99 ≤ 50 µs in both states. Each call is timed with perf_counter_ns
(the timer's own ~0.1 µs is included). Run: ``python bench/emit_overhead.py [N]``.
Last line: ``emit_p50_us=<worse p50 of the two states>``.
"""

from __future__ import annotations

import gc
import sys
import time

import numpy as np
from _common import fresh_topic, machine, pct_us, result, settings_with_stack
from confluent_kafka import Producer

from spendstream.producers import Emitter
from spendstream.producers.synthetic import sample_events


def time_calls(fn, items) -> np.ndarray:  # type: ignore[no-untyped-def]
    out = np.empty(len(items), dtype=np.int64)
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for i, item in enumerate(items):
            t0 = clock()
            fn(item)
            out[i] = clock() - t0
    finally:
        gc.enable()
    return out


def main(n: int = 100_000) -> None:
    s = settings_with_stack()
    events = sample_events(n, run_id="bench")
    payloads = [(e.kafka_key(), e.to_json()) for e in events]
    rows = []
    worst_p50 = worst_base = worst_p99 = 0.0
    for state in ("up", "down"):
        st = s if state == "up" else s.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})
        topic = fresh_topic(s, "emit") if state == "up" else "bench.unreachable"
        em = Emitter(st, topic=topic, register_atexit=False)
        time_calls(em.emit, events[:5000])  # warm-up
        sdk = time_calls(em.emit, events)
        dropped = em.stats().dropped_total
        em.close(timeout=30 if state == "up" else 0)

        bare_p = Producer(
            st.librdkafka(
                **{
                    "enable.idempotence": True,
                    "acks": "all",
                    "compression.type": "lz4",
                    "linger.ms": 50,
                    "queue.buffering.max.messages": 1_000_000,
                    "log_level": 0,
                }
            )
        )
        full = 0

        def bare(kv: tuple[bytes, bytes], p: Producer = bare_p, t: str = topic) -> None:
            nonlocal full
            try:
                p.produce(t, kv[1], kv[0])
            except BufferError:
                full += 1

        time_calls(bare, payloads[:5000])
        base = time_calls(bare, payloads)
        if state == "up":
            bare_p.flush(30)
        for name, arr, extra in (
            ("emit()", sdk, f"dropped={dropped}"),
            ("bare produce()", base, f"buffer_full={full}"),
        ):
            rows.append((state, name, pct_us(arr, 50), pct_us(arr, 99), pct_us(arr, 99.9), extra))
        if pct_us(sdk, 50) >= worst_p50:
            worst_p50, worst_base, worst_p99 = pct_us(sdk, 50), pct_us(base, 50), pct_us(sdk, 99)
        ratio = pct_us(sdk, 50) / pct_us(base, 50)
        rows.append((state, "emit/bare p50", ratio, pct_us(sdk, 99) / pct_us(base, 99), 0.0, ""))

    print(f"emit_overhead: {n} events per run; {machine()}")
    print(f"{'broker':<7} {'call':<15} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9}  note")
    for state, name, p50, p99, p999, extra in rows:
        if name.endswith("p50"):
            print(f"{state:<7} {name:<15} {p50:>7.2f}x {p99:>7.2f}x")
        else:
            print(f"{state:<7} {name:<15} {p50:>8.2f} {p99:>8.2f} {p999:>9.2f}  {extra}")
    print("goal: p50 <= 5 us, p99 <= 50 us in both states")
    result(
        "emit() p50, worse broker state",
        worst_p50,
        "µs",
        "≤ 5 µs",
        worst_base,
        "bare confluent-kafka produce() p50",
    )
    result("emit() p99, same state", worst_p99, "µs", "≤ 50 µs")
    print(f"emit_p50_us={worst_p50:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
