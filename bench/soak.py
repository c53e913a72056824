"""Soak: two workers and the PostgreSQL sink under a steady rate for 30 minutes (`make soak`).

Every 10 s it records each worker's resident memory (``VmRSS`` from ``/proc``) and the lag of
the worker group on the raw topic and of the sink group on the enriched topic (end offsets
minus committed offsets, asked of the broker, not of the processes). At the end it waits for
the backlog to drain and checks the books: PostgreSQL rows == events emitted, no duplicates,
the stored total == the emitted events priced in this process, and the workers' Prometheus
request counter == events emitted.

Writes ``bench/soak/soak.csv`` and ``bench/soak/soak.png`` (needs matplotlib: ``pip install
-e '.[soak]'``; `make soak` does it). Not part of CI: it takes the time it says.
Run: ``python bench/soak.py [--minutes 30] [--rate 1000]``. Last line
``soak_rss_growth_mb_per_10min=<max over workers>``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import machine, private_settings, result, settings_with_stack, start_worker

from spendstream.events import LLMCallEvent
from spendstream.money import pico_to_usd
from spendstream.probes import group_lag, pg_value, prom_value
from spendstream.producers.emitter import Emitter
from spendstream.producers.replay import publish
from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from spendstream.stream.enrich import Enricher

OUT = Path(__file__).resolve().parent / "soak"
COLUMNS = ["t_s", "emitted", "rows", "raw_lag", "enriched_lag", "rss_mb_w0", "rss_mb_w1"]


class Emitted:
    """Events as they are emitted, tagged with the run, counted and priced on the way."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.n = 0
        self.pico = 0
        self.enricher = Enricher()

    def tagged(self, events: Iterator[LLMCallEvent]) -> Iterator[LLMCallEvent]:
        for e in events:
            e = e.model_copy(update={"tags": {"soak_run": self.run}})
            self.pico += self.enricher.enrich(e, e.to_json()).cost_pico
            self.n += 1
            yield e


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def plot(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for k in ("rss_mb_w0", "rss_mb_w1"):
        ax1.plot(t, [r[k] for r in rows], label=k.removeprefix("rss_mb_").replace("w", "worker "))
    ax1.set_ylabel("RSS (MB)")
    ax1.legend(loc="lower right")
    ax1.grid(alpha=0.3)
    ax2.plot(t, [r["raw_lag"] for r in rows], label="workers: raw topic")
    ax2.plot(t, [r["enriched_lag"] for r in rows], label="sink: enriched topic")
    ax2.set_ylabel("lag (records)")
    ax2.set_xlabel("minutes")
    ax2.legend(loc="upper right")
    ax2.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def growth_per_10min(rows: list[dict[str, float]], key: str, skip_s: float) -> float:
    """Least-squares slope of ``key`` after the warm-up, in MB per 10 minutes."""
    pts = [(r["t_s"], r[key]) for r in rows if r["t_s"] >= skip_s]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx * 600 if sxx else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="events per second")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    base = settings_with_stack()
    s, env = private_settings(base, "soak")
    run = uuid.uuid4().hex[:8]
    sink_group = f"{s.worker_app_id}-sink"
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    workers = [start_worker(env, logs / f"worker-{i}.log") for i in range(2)]
    sink_log = open(logs / "sink.log", "wb")  # noqa: SIM115 - closed below
    sink = subprocess.Popen(
        [sys.executable, "-m", "spendstream.cli", "sink", "postgres", "--group", sink_group],
        env={**os.environ, **env},
        stdout=sink_log,
        stderr=subprocess.STDOUT,
    )
    start = datetime.now(UTC)
    cfg = TrafficConfig(seed=21, rate=args.rate, start=start, daily_cycle=False)
    em = Emitted(run)
    events = em.tagged(SyntheticTraffic(cfg).events(until=start + timedelta(minutes=args.minutes)))
    done = threading.Event()
    pub: dict[str, Any] = {}

    def produce() -> None:
        with Emitter(s, register_atexit=False) as emitter:
            pub["res"] = publish(events, emitter, speed=1.0)
        done.set()

    rows: list[dict[str, float]] = []
    tag = json.dumps({"soak_run": run})
    count_sql = "SELECT count(*) FROM llm_calls WHERE tags @> $1::jsonb AND ts >= $2"
    t0 = time.monotonic()
    threading.Thread(target=produce, daemon=True).start()
    csv_path = args.out / "soak.csv"
    ok = True
    try:
        with csv_path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            next_at = t0
            drained_for = 0
            while True:
                next_at += args.every
                time.sleep(max(0.0, next_at - time.monotonic()))
                for i, (p, _) in enumerate(workers):
                    if p.poll() is not None:
                        raise RuntimeError(f"worker {i} exited with {p.returncode}")
                row = {
                    "t_s": round(time.monotonic() - t0, 1),
                    "emitted": em.n,
                    "rows": pg_value(s, count_sql, tag, start - timedelta(minutes=1)),
                    "raw_lag": group_lag(s, s.worker_app_id, s.topic_raw),
                    "enriched_lag": group_lag(s, sink_group, s.topic_enriched),
                    **{f"rss_mb_w{i}": round(rss_mb(p.pid), 1) for i, (p, _) in enumerate(workers)},
                }
                rows.append(row)
                w.writerow(row)
                f.flush()
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
                if done.is_set():
                    drained_for = drained_for + 1 if row["rows"] >= em.n else 0
                    if drained_for >= 1 or time.monotonic() - t0 > args.minutes * 60 + 300:
                        break
        res = pub.get("res")
        stored_n = pg_value(s, count_sql, tag, start - timedelta(minutes=1))
        distinct = pg_value(
            s,
            "SELECT count(DISTINCT event_id) FROM llm_calls WHERE tags @> $1::jsonb AND ts >= $2",
            tag,
            start - timedelta(minutes=1),
        )
        stored_usd = pg_value(
            s,
            "SELECT sum(cost_usd) FROM llm_calls WHERE tags @> $1::jsonb AND ts >= $2",
            tag,
            start - timedelta(minutes=1),
        )
        prom_calls = -1.0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and prom_calls < em.n:
            prom_calls = prom_value(s, "sum(spendstream_llm_requests_total)")
            time.sleep(1)
        expected = pico_to_usd(em.pico)
        checks = {
            "emitter dropped nothing": res is not None and res.dropped == 0,
            f"rows == emitted ({stored_n} vs {em.n})": stored_n == em.n,
            f"no duplicates ({distinct} distinct)": distinct == stored_n,
            f"stored total == emitted priced here (${stored_usd} vs ${expected})": (
                stored_usd == expected
            ),
            f"Prometheus requests == emitted ({prom_calls:.0f})": prom_calls == em.n,
        }
        for what, good in checks.items():
            print(("ok   " if good else "FAIL ") + what, flush=True)
        ok = all(checks.values())
    finally:
        for p, _ in workers:
            p.send_signal(signal.SIGTERM)
        sink.send_signal(signal.SIGTERM)
        for p, log in workers:
            p.wait(timeout=30)
            log.close()
        sink.wait(timeout=30)
        sink_log.close()

    warm = min(120.0, args.minutes * 60 / 4)
    growth = max(growth_per_10min(rows, f"rss_mb_w{i}", warm) for i in range(2))
    steady = [r for r in rows if r["t_s"] >= warm and r["t_s"] <= args.minutes * 60]
    max_lag = max((r["raw_lag"] for r in steady), default=0)
    max_sink_lag = max((r["enriched_lag"] for r in steady), default=0)
    rss_end = max(rows[-1][f"rss_mb_w{i}"] for i in range(2))
    title = (
        f"spendstream soak: 2 workers + PostgreSQL sink, {args.rate:g} ev/s for "
        f"{args.minutes:g} min — {machine()}"
    )
    plot(rows, args.out / "soak.png", title)
    print(f"{machine()}; {em.n:,} events; wrote {csv_path} and {args.out / 'soak.png'}")
    result("soak: worker RSS growth after warm-up", growth, "MB/10 min", "≈ 0 (no leak)")
    result("soak: worker RSS at the end", rss_end, "MB", "bounded")
    result("soak: max raw-topic lag (steady state)", max_lag, "records", "< 10 s of traffic")
    result("soak: max sink lag (steady state)", max_sink_lag, "records", "< 10 s of traffic")
    print("soak " + ("OK" if ok else "FAILED"))
    print(f"soak_rss_growth_mb_per_10min={growth:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
