"""The counted event ids survive ``kill -9`` (real worker, real changelog): events re-published
after the worker was killed and replaced are left out of the windows and counted as duplicates
by the new worker, which only knows them from the restored stage-1 table."""

from __future__ import annotations

import os
import re
import signal
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spendstream.config import Settings
from spendstream.events import LLMCallEvent, Usage
from spendstream.producers import Emitter
from spendstream.scopes import minute_of
from spendstream.stream.enrich import Enricher
from spendstream.topics import changelog_topic_name
from tests.stream_helpers import TopicReader, latest_windows, private_settings, wait_for, workers

pytestmark = pytest.mark.stack

N = 300


def publish(s: Settings, events: list[LLMCallEvent]) -> None:
    em = Emitter(s, register_atexit=False)
    for e in events:
        em.put(e)
    assert em.flush(30) == 0
    em.close(5)


def changelog_has_ids(reader: TopicReader) -> bool:
    """A ``d|…`` key (:func:`~spendstream.stream.state.s1_seen`) reached the changelog."""
    reader.poll(0.5)
    return any(m.key() is not None and b"d|" in m.key()[:4] for m in reader.records)


def log_of(tmp_path: Path, suffix: str) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.glob(f"worker-*-{suffix}.log"))


def test_ids_counted_before_a_kill_9_still_drop_retries_after_the_restart(
    stack: Settings, tmp_path: Path
) -> None:
    s, env = private_settings(stack, "deduprestart", idle_timeout_s=2.0)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=6)
    minute = minute_of(start.timestamp())
    events = [
        LLMCallEvent(
            timestamp=start + timedelta(milliseconds=100 * i),
            service="support-bot",
            endpoint=f"/v1/{i % 3}",
            provider="openai",
            request_model="gpt-4o-mini",
            usage=Usage(input_tokens=900 + i, output_tokens=120),
        )
        for i in range(N)
    ]
    closer = events[0].model_copy(
        update={"event_id": uuid.uuid4(), "timestamp": start + timedelta(minutes=1, seconds=5)}
    )
    changelog = TopicReader(s, changelog_topic_name(s.worker_app_id, "stage1"))
    windows = TopicReader(s, s.topic_windows)
    with workers(env, 1, tmp_path) as procs:
        publish(s, events)
        wait_for(lambda: changelog_has_ids(changelog), 90, "event ids in the changelog")
        done = f"events={N} ".encode()
        wait_for(lambda: done in log_of(tmp_path, "0-0"), 60, "every event applied", interval=1)
        os.killpg(procs[0].pid, signal.SIGKILL)
        procs[0].wait()
        publish(s, [*events, closer])  # every event re-published (a retry), and one more
        procs.append(procs.start(1))
        wait_for(
            lambda: f"global:all|{minute}" in latest_windows(windows),
            180,
            "the minute's global window",
            every=lambda: windows.poll(0.5),
        )
        w = latest_windows(windows)[f"global:all|{minute}"]
        wait_for(lambda: b"metrics on :" in log_of(tmp_path, "1-1"), 30, "the metrics port")
        port = int(re.findall(rb"metrics on :(\d+)", log_of(tmp_path, "1-1"))[-1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    changelog.close()
    windows.close()
    assert (w["calls"], w["spend_pico"]) == (N, Enricher().total_pico(events))
    dup = re.search(r'spendstream_duplicate_events_total\{service="support-bot"\} (\S+)', text)
    assert dup is not None and float(dup.group(1)) == N
