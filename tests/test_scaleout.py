"""Several workers on one raw topic: the window totals stay exact when workers join, and when
workers are killed with SIGKILL and restarted mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from spendstream.config import Settings
from spendstream.producers.synthetic import (
    DEFAULT_START,
    SyntheticTraffic,
    TrafficConfig,
)
from spendstream.stream.offline import records_of, run
from tests.stream_helpers import (
    TopicReader,
    latest_windows,
    private_settings,
    wait_for,
    workers,
)

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def totals(windows: dict[str, Any]) -> dict[str, tuple[int, int, int, int]]:
    return {
        k: (v["spend_pico"], v["calls"], v["input_tokens"], v["output_tokens"])
        for k, v in windows.items()
    }


def offline_totals(events: list[Any]) -> dict[str, tuple[int, int, int, int]]:
    res = run(records_of(events, 12))
    return {k: (w.agg.spend, w.agg.calls, w.agg.inp, w.agg.out) for k, w in res.windows.items()}


def test_second_worker_joining_mid_replay_changes_no_total(stack: Settings, tmp_path: Path) -> None:
    cfg = TrafficConfig(seed=12, rate=2.0)
    events = list(SyntheticTraffic(cfg).events(until=DEFAULT_START + timedelta(hours=12)))
    path = tmp_path / "half-day.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    expected = offline_totals(events)
    s, env = private_settings(stack, "join")
    windows = TopicReader(s, s.topic_windows)
    with workers(env, 1, tmp_path) as procs:
        replay = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spendstream.cli",
                "replay",
                str(path),
                "--speed",
                "3600",
                "--no-progress",
            ],
            env={**os.environ, **env},
        )
        wait_for(
            lambda: windows.poll(0.5) >= 0 and len(windows.records) > 200, 120, "the first windows"
        )
        procs.append(procs.start(1))  # a second worker joins: partitions are rebalanced
        assert replay.wait(300) == 0
        wait_for(
            lambda: len(latest_windows(windows)) >= len(expected),
            300,
            f"{len(expected)} windows",
            every=lambda: windows.poll(0.5),
        )
        windows.poll(2.0)
    got = totals(latest_windows(windows))
    windows.close()
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    assert (missing, extra, wrong) == ([], [], [])


def test_kill_9_three_times_with_two_workers_keeps_every_total_exact(
    stack: Settings, tmp_path: Path
) -> None:
    events = list(SyntheticTraffic(TrafficConfig(seed=13, rate=40)).events(count=200_000))
    span = (events[-1].timestamp - events[0].timestamp).total_seconds()
    path = tmp_path / "crash.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    expected = offline_totals(events)
    assert sum(v[1] for k, v in expected.items() if k.startswith("global:all|")) > 199_000
    s, env = private_settings(stack, "crash")
    windows = TopicReader(s, s.topic_windows)
    kills = 0
    with workers(env, 2, tmp_path) as procs:
        replay = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spendstream.cli",
                "replay",
                str(path),
                "--speed",
                str(span / 60),
                "--no-progress",
            ],
            env={**os.environ, **env},
        )
        started = time.monotonic()
        for at in (12, 27, 42):  # seconds into the ~60 s stream
            wait_for(
                lambda at=at: time.monotonic() - started >= at,
                60,
                f"t+{at}s",
                every=lambda: windows.poll(0.2),
            )
            victim = next(p for p in procs[-2:] if p.poll() is None)
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
            kills += 1
            procs.append(procs.start(len(procs)))  # a replacement: two workers again
        assert replay.wait(300) == 0
        wait_for(
            lambda: len(latest_windows(windows)) >= len(expected),
            400,
            f"{len(expected)} windows",
            every=lambda: windows.poll(0.5),
        )
        windows.poll(3.0)
        assert sum(p.poll() is None for p in procs) == 2
    got = totals(latest_windows(windows))
    windows.close()
    assert kills == 3
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    assert (missing[:5], extra[:5], wrong[:5]) == ([], [], [])
    assert got == expected


def test_committed_offsets_ahead_of_the_state_are_reread(stack: Settings, tmp_path: Path) -> None:
    """Faust acks offsets it takes for a gap (faust-streaming #221); the worker trusts its own
    applied offsets instead. Simulated here by committing the group's offsets past records no
    worker has seen: they must still be counted."""
    from confluent_kafka import Consumer, TopicPartition

    events = list(SyntheticTraffic(TrafficConfig(seed=14, rate=20)).events(count=30_000))
    first, second = events[:15_000], events[15_000:]
    expected = offline_totals(events)
    s, env = private_settings(stack, "skip")
    windows = TopicReader(s, s.topic_windows)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(b"".join(e.to_json() + b"\n" for e in first))
    b.write_bytes(b"".join(e.to_json() + b"\n" for e in second))

    def replay(path: Path) -> None:
        r = subprocess.run(
            [sys.executable, "-m", "spendstream.cli", "replay", str(path), "--max-speed",
             "--no-progress"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr

    first_only = offline_totals(first)
    with workers(env, 1, tmp_path):
        replay(a)
        wait_for(
            lambda: len(latest_windows(windows)) >= len(first_only),
            300,
            "the first half's windows",
            every=lambda: windows.poll(0.5),
        )
    replay(b)
    c = Consumer(s.librdkafka(**{"group.id": s.worker_app_id, "enable.auto.commit": False}))
    ends = [
        TopicPartition(s.topic_raw, p, c.get_watermark_offsets(TopicPartition(s.topic_raw, p))[1])
        for p in range(s.raw_partitions)
    ]
    c.commit(offsets=ends, asynchronous=False)  # as if every record had been processed
    c.close()
    log_dir = tmp_path / "second"
    log_dir.mkdir()
    with workers(env, 1, log_dir) as procs:
        wait_for(
            lambda: len(latest_windows(windows)) >= len(expected),
            300,
            f"{len(expected)} windows",
            every=lambda: windows.poll(0.5),
        )
        windows.poll(2.0)
        assert procs[0].poll() is None
    (log,) = log_dir.glob("worker-*.log")
    assert b"re-reading" in log.read_bytes()
    got = totals(latest_windows(windows))
    windows.close()
    assert got == expected
