"""Shared bits of the benchmarks: a fresh topic, percentiles, a machine line."""

from __future__ import annotations

import os
import platform
import uuid

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


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def private_settings(s: Settings, name: str, **extra: object) -> tuple[Settings, dict[str, str]]:
    """Settings with fresh topic names and worker app id (created), and the same as env vars
    for a worker subprocess."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    env = {
        "SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "SPENDSTREAM_STACK_DIR": str(s.stack_dir),
        "SPENDSTREAM_WORKER_APP_ID": f"bench-{tag}",
        **{
            f"SPENDSTREAM_TOPIC_{t.upper()}": f"bench.{tag}.{t}"
            for t in ("raw", "enriched", "alerts", "dlq", "partials", "windows")
        },
        **{f"SPENDSTREAM_{k.upper()}": str(v) for k, v in extra.items()},
    }
    ps = Settings(**{k.removeprefix("SPENDSTREAM_").lower(): v for k, v in env.items()})
    ensure_topics(ps)
    return ps, env
