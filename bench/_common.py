"""Shared bits of the benchmarks: a fresh topic, percentiles, a machine line."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO

import numpy as np

from spendstream import stack
from spendstream.config import Settings
from spendstream.topics import TopicSpec, ensure_topics


def settings_with_stack() -> Settings:
    s = Settings()
    if not all(st.ready for st in stack.status(s)):
        stack.up(s)
    return s


def fresh_topic(s: Settings, name: str, partitions: int = 12) -> str:
    topic = f"bench.{name}.{uuid.uuid4().hex[:8]}"
    ensure_topics(s, [TopicSpec(topic, partitions, 1)])
    return topic


def pct_us(samples_ns: np.ndarray, q: float) -> float:
    return float(np.percentile(samples_ns, q)) / 1000.0


def result(
    figure: str,
    measured: float,
    unit: str,
    goal: str,
    baseline: float | None = None,
    baseline_name: str = "",
) -> None:
    """One row of ``bench/RESULTS.md``: printed as ``RESULT {json}`` for ``bench/run_all.py``."""
    row = {
        "figure": figure,
        "measured": measured,
        "unit": unit,
        "goal": goal,
        "baseline": baseline,
        "baseline_name": baseline_name,
        "ratio": (measured / baseline) if baseline else None,
    }
    print("RESULT " + json.dumps(row), flush=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def private_settings(s: Settings, name: str, **extra: object) -> tuple[Settings, dict[str, str]]:
    """Settings with fresh topics (created) and worker app id, and the same as env vars for a
    worker subprocess."""
    ps, env = s.isolated(f"bench-{name}-{uuid.uuid4().hex[:8]}", **extra)
    ensure_topics(ps)
    return ps, env


def start_worker(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """One `spendstream worker` with ``env``, logging to ``log_path``; the caller stops it and
    closes the log. With ``SPENDSTREAM_BENCH_PYSPY=<dir>`` the worker runs under ``py-spy
    record`` (not a project dependency) and its profile lands in that directory."""
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed by the caller
    cmd = [sys.executable, "-m", "spendstream.cli", "worker", "--loglevel", "info"]
    spy = os.environ.get("SPENDSTREAM_BENCH_PYSPY")
    if spy:
        out = Path(spy) / f"{log_path.stem}-{uuid.uuid4().hex[:6]}.txt"
        pyspy = Path(sys.executable).with_name("py-spy")
        cmd = [str(pyspy), "record", "-r", "100", "-f", "raw", "-o", str(out), "--", *cmd]
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1],
    )
    return proc, log


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants that are still running
    (the worker, not py-spy when it runs the worker), from /proc: on 2 shared cores wall time
    is noisy, CPU time per event much less so."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            head, rest = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)
            fields = rest.split()
            if not head.endswith("py-spy"):  # the profiler's own samples are not the worker's
                total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM the worker (under py-spy: the worker itself, so py-spy writes its profile when it
    exits), then SIGKILL whatever is left after ``timeout``."""
    kids = [int(c) for c in _children(proc.pid)]
    for pid in kids or [proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
