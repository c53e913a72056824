"""Run every benchmark against the local stack and write ``bench/RESULTS.md``.

    python bench/run_all.py [NAME ...]     (``make bench``; names like ``pg_sink`` pick a subset)

Each benchmark stays runnable alone; this runner streams its output, collects the ``RESULT``
rows it prints (figure, goal, measured, the baseline measured in the same run, ratio) and
writes them as one table with the machine description. A benchmark that fails is listed as
failed and the rest still run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ORDER = [
    "emit_overhead", "produce_throughput", "cost_enrich", "worker_core", "pipeline_throughput",
    "alert_latency", "alert_quality", "replay_week", "pg_sink", "router_eval", "cache_lookup",
    "cache_quality", "budget_reserve", "budget_overshoot", "ingest_throughput",
]  # fmt: skip


def machine_description() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kb / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        mem = "RAM unknown"
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return ""
    if unit == "share":
        return f"{v:.4f}"
    if abs(v) >= 1000:
        return f"{v:,.0f} {unit}".strip()
    return f"{v:.3g} {unit}".strip()


def run(name: str) -> tuple[int, float, list[dict[str, Any]]]:
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / f"{name}.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=HERE.parent,
    )
    rows: list[dict[str, Any]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if line.startswith("RESULT "):
            rows.append(json.loads(line[len("RESULT ") :]))
    return proc.wait(), time.monotonic() - t0, rows


def main() -> None:
    names = sys.argv[1:] or ORDER
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE.parent
    ).stdout.strip()
    out = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`python bench/run_all.py`) on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit `{commit}`.",
        f"Machine: {machine_description()}. The local stack (Kafka, PostgreSQL, Redis, "
        "Prometheus) runs on the same machine; on a small VM expect ±50% between runs.",
        "",
        "| benchmark | figure | goal | measured | baseline (same run) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        print(f"== bench/{name}.py", flush=True)
        code, secs, rows = run(name)
        if code != 0:
            out.append(f"| `{name}` | **failed** (exit {code} after {secs:.0f} s) | | | | |")
            continue
        for r in rows:
            unit = str(r["unit"])
            base = r["baseline"]
            base_s = f"{r['baseline_name']}: {fmt(base, unit)}" if base is not None else ""
            ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else ""
            out.append(
                f"| `{name}` | {r['figure']} | {r['goal']} | {fmt(r['measured'], unit)} "
                f"| {base_s} | {ratio} |"
            )
    out += ["", "Each benchmark runs alone too: `python bench/<name>.py` (see its docstring)."]
    (HERE / "RESULTS.md").write_text("\n".join(out) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
