"""`spendstream replay`: every good line published once, bad lines reported by number."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spendstream.config import Settings
from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from tests.kafka_helpers import fresh_topic, read_events

pytestmark = pytest.mark.stack


def replay(s: Settings, topic: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SPENDSTREAM_TOPIC_RAW": topic,
        "SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
    }
    return subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "replay", *args, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_replay_max_speed_publishes_all_100k(stack: Settings, tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    events = list(SyntheticTraffic(TrafficConfig(seed=7)).events(count=100_000))
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    topic = fresh_topic(stack, "replay", partitions=12)
    r = replay(stack, topic, str(path), "--max-speed")
    assert r.returncode == 0, r.stderr
    assert "published 100000 events" in r.stdout and "0 dropped" in r.stdout
    got = read_events(stack, topic, 100_000, deadline_s=180)
    assert len(got.events) == 100_000
    assert {e.event_id for e in got.events} == {e.event_id for e in events}
    # event time is kept, not restamped
    by_id = {e.event_id: e.timestamp for e in events}
    assert all(by_id[e.event_id] == e.timestamp for e in got.events)


def test_malformed_lines_are_reported_with_numbers_and_skipped(
    stack: Settings, tmp_path: Path
) -> None:
    good = list(SyntheticTraffic(TrafficConfig(seed=2)).events(count=5))
    lines = [
        good[0].to_json(),
        b'{"truncated": ',
        good[1].to_json(),
        b"",
        b'{"event_id": 5}',
        good[2].to_json(),
        b"\xff\xfe not utf8",
        good[3].to_json(),
        good[4].to_json(),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    topic = fresh_topic(stack, "replay-bad", partitions=3)
    r = replay(stack, topic, str(path), "--max-speed")
    assert r.returncode == 0, r.stderr
    assert "published 5 events" in r.stdout and "3 malformed lines skipped" in r.stdout
    reported = sorted(int(ln.split(":")[1]) for ln in r.stderr.splitlines() if "skipped" in ln)
    assert reported == [2, 5, 7]
    assert "event_id: UUID input should be a string" in r.stderr or "event_id:" in r.stderr
    got = read_events(stack, topic, 5)
    assert {e.event_id for e in got.events} == {e.event_id for e in good}


def test_speed_paces_by_event_time(stack: Settings, tmp_path: Path) -> None:
    # 40 events over ~20 s of event time at speed 10 take about 2 s of wall time
    events = list(SyntheticTraffic(TrafficConfig(seed=3, rate=2.0)).events(count=40))
    span = (events[-1].timestamp - events[0].timestamp).total_seconds()
    path = tmp_path / "paced.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    topic = fresh_topic(stack, "replay-paced", partitions=1)
    t0 = time.monotonic()
    r = replay(stack, topic, str(path), "--speed", "10")
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 >= span / 10
    got = read_events(stack, topic, 40)
    assert [e.event_id for e in got.events] == [e.event_id for e in events]  # one partition
