"""Reliability drill: the Kafka broker restarts mid-stream while producers keep emitting.

The other drills live beside the code they exercise (``test_scaleout``: kill -9 of a worker
three times; ``test_pg_sink``: PostgreSQL down for 60 s); ``make drills`` runs them all.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from spendstream.config import Settings
from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from spendstream.stream.enrich import Enricher
from spendstream.stream.prices import PICO
from tests.stream_helpers import (
    TopicReader,
    sink_process,
    start_replay,
    wait_for,
    workers,
)
from tests.test_pg_sink import assert_books_agree, migrated_db, query

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.drill]


def test_broker_restart_mid_stream_loses_and_duplicates_nothing(
    stack: Settings, tmp_path: Path
) -> None:
    from spendstream import stack as local_stack

    events = list(SyntheticTraffic(TrafficConfig(seed=18, rate=30)).events(count=40_000))
    span = (events[-1].timestamp - events[0].timestamp).total_seconds()
    path = tmp_path / "calls.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    s, env = migrated_db(stack, "brokerdown")
    count = "SELECT count(*) FROM llm_calls"
    with workers(env, 1, tmp_path), sink_process(env, tmp_path) as sink:
        feed = start_replay(env, path, "--speed", str(span / 40))  # ~40 s of emitting
        try:
            wait_for(lambda: (query(s, count) or 0) > 1_000, 120, "the first rows")
            local_stack.down(stack, ["kafka"])
            down_at = time.monotonic()
            wait_for(lambda: time.monotonic() - down_at >= 15, 20, "15 s without a broker",
                     every=lambda: time.sleep(0.5))  # fmt: skip
            assert feed.poll() is None  # the producer keeps emitting into its buffer
            local_stack.up(stack, ["kafka"])
        finally:
            if not all(st.ready for st in local_stack.status(stack, ["kafka"])):
                local_stack.up(stack, ["kafka"])
        _, err = feed.communicate(timeout=300)
        assert feed.returncode == 0, err.decode(errors="replace")
        wait_for(lambda: query(s, count) == 40_000, 300, "40k rows after the restart")
        windows = TopicReader(s, s.topic_windows)
        total = assert_books_agree(s, windows, events)
        windows.close()
        assert sink.poll() is None
    assert query(s, count) == 40_000
    assert query(s, "SELECT count(DISTINCT event_id) FROM llm_calls") == 40_000
    # the books equal the emitted events priced in this process (no loss, no double count)
    enricher = Enricher()
    expected = sum(enricher.enrich(e, e.to_json()).cost_pico for e in events)
    assert total * PICO == expected
