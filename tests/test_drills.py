"""Reliability drills: a service of the stack goes away mid-stream while producers keep emitting.

Each drill streams 40k synthetic calls for ~40 s through a worker and the PostgreSQL sink,
takes one service down for a while, brings it back, and then checks the books: exactly 40k
rows, no duplicates, every closed window equal to the rows of its minutes, Prometheus equal to
the rows, and the rows' cost equal to the emitted events priced in this process. The kill -9
drill lives beside the other scale-out tests (``test_scaleout``); ``make drills`` runs all.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from spendstream.config import Settings
from spendstream.probes import group_lag
from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from tests.books import assert_books_agree, assert_rows_are, migrated_db, query
from tests.stream_helpers import TopicReader, sink_process, start_replay, wait_for, workers

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.drill]

N = 40_000


def outage(stack: Settings, tmp_path: Path, service: str, seconds: float, seed: int) -> Settings:
    """Run the drill with ``service`` stopped for ``seconds`` once the first rows are in;
    returns the drill's settings (its private database) after the books were checked."""
    from spendstream import stack as local_stack

    events = list(SyntheticTraffic(TrafficConfig(seed=seed, rate=30)).events(count=N))
    span = (events[-1].timestamp - events[0].timestamp).total_seconds()
    path = tmp_path / "calls.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    s, env = migrated_db(stack, f"{service}down")
    count = "SELECT count(*) FROM llm_calls"
    windows = TopicReader(s, s.topic_windows)
    with workers(env, 1, tmp_path), sink_process(env, tmp_path) as sink:
        feed = start_replay(env, path, "--speed", str(span / 40))  # ~40 s of emitting
        try:
            wait_for(lambda: (query(s, count) or 0) > 1_000, 120, "the first rows")
            local_stack.down(stack, [service])
            down_at = time.monotonic()
            wait_for(lambda: time.monotonic() - down_at >= seconds, seconds + 10,
                     f"{seconds:g} s without {service}", interval=0.5)  # fmt: skip
            assert feed.poll() is None or feed.returncode == 0  # never failed by the outage
            assert sink.poll() is None  # still alive, retrying
            local_stack.up(stack, [service])
        finally:
            if not all(st.ready for st in local_stack.status(stack, [service])):
                local_stack.up(stack, [service])
        _, err = feed.communicate(timeout=300)
        assert feed.returncode == 0, err.decode(errors="replace")
        wait_for(lambda: query(s, count) == N, 300, f"{N} rows after the outage")
        total = assert_books_agree(s, windows, events)
        wait_for(lambda: group_lag(s, f"sink-{s.worker_app_id}", s.topic_enriched) == 0,
                 120, "the sink to commit everything")  # fmt: skip
        assert sink.poll() is None
    windows.close()
    assert_rows_are(s, events, total)
    return s


def test_broker_stopped_15s_mid_stream_loses_and_duplicates_nothing(
    stack: Settings, tmp_path: Path
) -> None:
    outage(stack, tmp_path, "kafka", 15, seed=18)


def test_postgres_down_for_60s_mid_stream_loses_nothing(stack: Settings, tmp_path: Path) -> None:
    outage(stack, tmp_path, "postgres", 60, seed=16)
    log = next(tmp_path.glob("sink-*.log")).read_bytes()
    assert b"PostgreSQL unavailable" in log
