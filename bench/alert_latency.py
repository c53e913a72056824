"""Wall time from the event-time watermark passing a spiking window to its alert on the topic,
with live traffic at 10k events/s through one worker.

Traffic: 24 endpoints (12 services × 2) on gpt-4o-mini, event time running 60× faster than
wall time (one event-minute per wall second) so a baseline builds up in seconds. After a
6-minute baseline, one endpoint at a time switches to gpt-4o for 3 minutes. A window closes when
the watermark is ``allowed_lateness`` past its end; the clock starts when the producer has
emitted the first event at or past that point (the watermark cannot pass earlier) and stops
when the alert is read from the alerts topic. Baseline in the same run: produce→ack latency of
the raw records (the broker's share). Run: ``python bench/alert_latency.py [SPIKES] [RATE]``. Last
line ``alert_latency_p99_s=<value>``.
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from bisect import bisect_left
from pathlib import Path

import numpy as np
from _common import machine, private_settings, result, settings_with_stack, start_worker
from confluent_kafka import Consumer, Producer

from spendstream.alerts import Alert
from spendstream.wire import HEADERS

RATE = 10_000  # events per wall second (goal); the second argument overrides it
TICK = 0.05  # seconds per producer batch
SPEEDUP = 60  # event seconds per wall second
LATENESS = 120
BASELINE_MIN, SPIKE_MIN, GAP_MIN = 6, 3, 3
ENDPOINTS = [(f"svc{i // 2}", f"/op{i % 2}") for i in range(24)]


def line(ts: float, service: str, endpoint: str, model: str, rng: random.Random) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"
    return (
        f'{{"event_id":"{uuid.UUID(int=rng.getrandbits(128), version=4)}","timestamp":"{stamp}",'
        f'"service":"{service}","endpoint":"{endpoint}","provider":"openai",'
        f'"request_model":"{model}","team":"t{service[-1]}","user_id":"u{rng.randint(1, 50)}",'
        f'"usage":{{"input_tokens":{rng.randint(800, 1200)},'
        f'"output_tokens":{rng.randint(150, 250)}}},'
        f'"latency_ms":{rng.uniform(200, 900):.1f}}}'
    ).encode()


def main(spikes: int = 12, rate: int = RATE) -> None:
    base = settings_with_stack()
    s, env = private_settings(
        base,
        "alerts",
        alert_min_baseline_minutes=5,
        allowed_lateness_s=LATENESS,
        idle_timeout_s=5,
    )
    log_path = Path(s.stack_dir) / "bench-alert-worker.log"
    worker, log = start_worker(env, log_path)
    alerts = Consumer(
        s.librdkafka(**{"group.id": f"a-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"})
    )
    alerts.subscribe([s.topic_alerts])
    acks: list[float] = []

    def on_ack(sent: float) -> object:
        return lambda err, _msg: acks.append(time.perf_counter() - sent) if err is None else None

    producer = Producer(s.librdkafka(**{"linger.ms": 5, "compression.type": "lz4"}))
    try:
        deadline = time.monotonic() + 120
        while b"Worker ready" not in log_path.read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("worker did not start")
            time.sleep(0.2)

        rng = random.Random(7)
        e0 = (time.time() // 60) * 60 - 24 * 3600  # event time: yesterday, minute aligned
        total_min = BASELINE_MIN + spikes * (SPIKE_MIN + GAP_MIN) + 6
        schedule = {
            i % len(ENDPOINTS): BASELINE_MIN + i * (SPIKE_MIN + GAP_MIN) for i in range(spikes)
        }
        emitted_ts: list[float] = []  # event time reached ...
        emitted_at: list[float] = []  # ... at this wall time
        received: list[tuple[float, Alert]] = []
        per_tick = int(rate * TICK)
        w0 = time.perf_counter()
        tick = 0
        events = 0
        while True:
            t_wall = w0 + tick * TICK
            while (now := time.perf_counter()) < t_wall:
                for m in alerts.consume(100, min(0.01, t_wall - now)):
                    if m.error() is None:
                        received.append((time.perf_counter(), Alert.from_json(m.value())))
            ev_lo = e0 + tick * TICK * SPEEDUP
            minute = int((ev_lo - e0) // 60)
            if minute >= total_min:
                break
            records: dict[bytes, list[bytes]] = {}
            for i in range(per_tick):
                ts = ev_lo + TICK * SPEEDUP * i / per_tick
                k = i % len(ENDPOINTS)
                service, endpoint = ENDPOINTS[k]
                start = schedule.get(k)
                spiking = start is not None and start <= minute < start + SPIKE_MIN
                model = "gpt-4o" if spiking else "gpt-4o-mini"
                records.setdefault(f"{service}/{endpoint}".encode(), []).append(
                    line(ts, service, endpoint, model, rng)
                )
            sent = time.perf_counter()
            for key, lines in records.items():
                producer.produce(
                    s.topic_raw, b"\n".join(lines), key, headers=HEADERS, on_delivery=on_ack(sent)
                )
            producer.poll(0)
            events += per_tick
            emitted_ts.append(ev_lo + TICK * SPEEDUP)
            emitted_at.append(time.perf_counter())
            tick += 1
        wall = time.perf_counter() - w0
        producer.flush(30)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            for m in alerts.consume(100, 0.2):
                if m.error() is None:
                    received.append((time.perf_counter(), Alert.from_json(m.value())))
    finally:
        alerts.close()
        worker.terminate()
        worker.wait(30)
        log.close()

    latencies = []
    firing = [
        (at, a) for at, a in received if a.status == "firing" and a.scope.startswith("endpoint:")
    ]
    for at, a in firing:
        close_point = a.window_start.timestamp() + 60 + LATENESS
        i = bisect_left(emitted_ts, close_point)
        if i < len(emitted_at):
            latencies.append(at - emitted_at[i])
    lat = np.array(latencies)
    ack = np.array(acks)
    print(f"alert_latency: {events:,} events in {wall:.0f}s ({events / wall:,.0f}/s); {machine()}")
    print(
        f"spikes injected {spikes}; endpoint alerts firing {len(firing)}; "
        f"all alerts {len(received)}"
    )
    if len(lat) == 0:
        raise SystemExit("no alerts")
    p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
    a99 = float(np.percentile(ack, 99))
    print(f"{'path':<40} {'p50 s':>8} {'p99 s':>8} {'max s':>8}")
    print(f"{'watermark passed -> alert read':<40} {p50:>8.3f} {p99:>8.3f} {lat.max():>8.3f}")
    print(
        f"{'baseline: raw record produce -> ack':<40} {np.percentile(ack, 50):>8.3f} "
        f"{a99:>8.3f} {ack.max():>8.3f}"
    )
    print(f"ratio p99 alert / p99 ack: {p99 / a99:.1f}")
    print(json.dumps({"latencies_s": [round(x, 3) for x in latencies]}))
    result(
        "spike alert latency p99 (watermark → alert read)",
        p99,
        "s",
        "≤ 2 s",
        a99,
        "raw produce→ack p99",
    )
    print(f"alert_latency_p99_s={p99:.3f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
