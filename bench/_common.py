"""Shared bits of the benchmarks: a fresh topic, percentiles, a machine line."""

from __future__ import annotations

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
    closes the log."""
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed by the caller
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendstream.cli", "worker", "--loglevel", "info"],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[1],
    )
    return proc, log
