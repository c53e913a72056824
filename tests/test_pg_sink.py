"""The PostgreSQL sink on the real stack: one row per call, idempotent on redelivery, totals
that agree with the windows, and migrations / retention."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from spendstream.config import Settings
from spendstream.events import LLMCallEvent
from spendstream.probes import group_lag, prom_query
from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from spendstream.sinks.db import ensure_partitions, migrate, parse_age, prune
from spendstream.sinks.postgres import migrate_db
from spendstream.stack.checks import postgres_ensure_database
from spendstream.stream.prices import PICO
from tests.stream_helpers import (
    TopicReader,
    latest_windows,
    private_settings,
    replay,
    sink_process,
    start_replay,
    wait_for,
    workers,
)

pytestmark = [pytest.mark.stack]


def private_db(stack: Settings, name: str) -> tuple[Settings, dict[str, str]]:
    db = f"t_{name}_{uuid.uuid4().hex[:8]}"
    s, env = private_settings(stack, name, postgres_db=db, postgres_port=stack.postgres_port)
    postgres_ensure_database(s)
    return s, env


def migrated_db(stack: Settings, name: str) -> tuple[Settings, dict[str, str]]:
    """A private database with the schema applied, as `stack up` leaves the default one."""
    s, env = private_db(stack, name)
    asyncio.run(migrate_db(s))
    return s, env


def query(s: Settings, sql: str, *args: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(s.postgres_dsn)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.mark.slow
def assert_books_agree(s: Settings, windows: TopicReader, events: list[LLMCallEvent]) -> Decimal:
    """Every closed window equals the PostgreSQL rows of its minutes exactly (spend and calls),
    and the real Prometheus' counters scraped from the worker equal the rows (requests exactly,
    cost within $0.005). Returns the rows' total cost."""
    last_minute = int(max(e.timestamp for e in events).timestamp() // 60)
    minutes = len({int(e.timestamp.timestamp() // 60) for e in events})
    wait_for(
        lambda: (
            sum(1 for k in latest_windows(windows) if k.startswith("global:all|")) >= minutes - 1
        ),  # the newest minute stays open
        300,
        "every closed global window",
        every=lambda: windows.poll(0.5),
    )
    got = latest_windows(windows)
    closed = {k for k in got if k.startswith("global:all|")}
    assert all(int(k.rsplit("|", 1)[1]) < last_minute for k in closed)
    cutoff = datetime.fromtimestamp(last_minute * 60, UTC)
    stored = query(s, "SELECT sum(cost_usd) FROM llm_calls WHERE ts < $1", cutoff)
    windowed = sum(got[k]["spend_pico"] for k in closed)
    assert Decimal(stored) * PICO == windowed  # exact, not just to the cent
    calls = sum(got[k]["calls"] for k in closed)
    assert query(s, "SELECT count(*) FROM llm_calls WHERE ts < $1", cutoff) == calls
    total = Decimal(query(s, "SELECT sum(cost_usd) FROM llm_calls"))
    prom: dict[str, float] = {}

    def scraped() -> bool:
        for name in ("spendstream_llm_requests_total", "spendstream_llm_cost_usd_total"):
            res = prom_query(s, f"sum({name})")
            prom[name] = float(res[0]["value"][1]) if res else -1.0
        return prom["spendstream_llm_requests_total"] >= len(events)

    wait_for(scraped, 60, "Prometheus to scrape every call")
    assert prom["spendstream_llm_requests_total"] == len(events)
    assert abs(Decimal(str(prom["spendstream_llm_cost_usd_total"])) - total) < Decimal("0.005")
    return total


def test_100k_events_become_100k_rows_and_a_replay_adds_none(
    stack: Settings, tmp_path: Path
) -> None:
    events = list(SyntheticTraffic(TrafficConfig(seed=15, rate=60)).events(count=100_000))
    path = tmp_path / "calls.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    s, env = migrated_db(stack, "sink")
    group = f"sink-{s.worker_app_id}"
    windows = TopicReader(s, s.topic_windows)

    count = "SELECT count(*) FROM llm_calls"
    with workers(env, 1, tmp_path), sink_process(env, tmp_path) as sink:
        replay(env, path)
        wait_for(lambda: query(s, count) == 100_000, 300, "100k rows")
        assert_books_agree(s, windows, events)

        replay(env, path)  # the same events again: redelivered, never duplicated
        wait_for(
            lambda: group_lag(s, group, s.topic_enriched) == 0,
            300,
            "the sink to consume the replay",
        )
        assert sink.poll() is None
    assert query(s, count) == 100_000
    ids = {str(e.event_id) for e in events}
    assert query(s, "SELECT count(DISTINCT event_id) FROM llm_calls") == len(ids) == 100_000
    # rollups are refreshed from the rows (the sink refreshes them when it stops)
    assert query(s, "SELECT sum(requests) FROM daily_llm_costs") == 100_000
    assert query(s, "SELECT sum(cost_usd) FROM hourly_team_costs") == query(
        s, "SELECT sum(cost_usd) FROM llm_calls"
    )
    windows.close()


def test_migrations_are_recorded_and_prune_drops_whole_days(stack: Settings) -> None:
    s, _ = private_db(stack, "prune")

    async def go() -> tuple[list[str], list[str], list[str], int]:
        conn = await asyncpg.connect(s.postgres_dsn)
        try:
            first = await migrate(conn)
            again = await migrate(conn)
            now = datetime(2026, 6, 30, 12, tzinfo=UTC)
            days = {(now - timedelta(days=d)).date() for d in (0, 1, 89, 90, 91, 120)}
            await ensure_partitions(conn, days)
            dropped = await prune(conn, parse_age("90d"), now=now)
            left = await conn.fetchval(
                "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent "
                "WHERE p.relname = 'llm_calls'"
            )
            return first, again, dropped, left
        finally:
            await conn.close()

    first, again, dropped, left = asyncio.run(go())
    assert first == ["0001_calls.sql", "0002_cache_saved.sql"] and again == []
    assert dropped == ["llm_calls_20260302", "llm_calls_20260331"]  # 120 and 91 days back
    assert left == 4


@pytest.mark.slow
@pytest.mark.drill
def test_postgres_down_for_60s_mid_stream_loses_nothing(stack: Settings, tmp_path: Path) -> None:
    from spendstream import stack as local_stack

    events = list(SyntheticTraffic(TrafficConfig(seed=16, rate=30)).events(count=40_000))
    span = (events[-1].timestamp - events[0].timestamp).total_seconds()
    path = tmp_path / "calls.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    s, env = migrated_db(stack, "pgdown")
    count = "SELECT count(*) FROM llm_calls"
    with workers(env, 1, tmp_path), sink_process(env, tmp_path) as sink:
        feed = start_replay(env, path, "--speed", str(span / 40))
        try:
            wait_for(lambda: (query(s, count) or 0) > 1_000, 120, "the first rows")
            local_stack.down(stack, ["postgres"])
            down_at = time.monotonic()
            wait_for(lambda: time.monotonic() - down_at >= 60, 70, "60 s of outage",
                     every=lambda: time.sleep(1))  # fmt: skip
            assert sink.poll() is None  # still alive, retrying
            local_stack.up(stack, ["postgres"])
        finally:
            if not all(st.ready for st in local_stack.status(stack, ["postgres"])):
                local_stack.up(stack, ["postgres"])
        assert feed.wait(300) == 0
        wait_for(lambda: query(s, count) == 40_000, 300, "40k rows after the outage")
        wait_for(lambda: group_lag(s, f"sink-{s.worker_app_id}", s.topic_enriched) == 0,
                 120, "the sink to commit everything")  # fmt: skip
    assert query(s, count) == 40_000
    assert query(s, "SELECT count(DISTINCT event_id) FROM llm_calls") == 40_000
    log = next(tmp_path.glob("sink-*.log")).read_bytes()
    assert b"PostgreSQL unavailable" in log


def test_report_groups_costs_shares_and_p95_from_the_rows(stack: Settings) -> None:
    from spendstream.events import Cost, EnrichedEvent, TokenCounts, example_event
    from spendstream.sinks.postgres import PostgresSink, row_of
    from spendstream.sinks.report import report, to_csv

    s, _ = migrated_db(stack, "report")
    t0 = datetime(2026, 3, 2, 10, tzinfo=UTC)

    def call(
        endpoint: str, team: str, usd: str, latency: float, minute: int, **tags: str
    ) -> EnrichedEvent:
        ev = example_event(
            endpoint=endpoint, team=team, latency_ms=latency, tags=tags,
            timestamp=t0 + timedelta(minutes=minute), event_id=uuid.uuid4(),
        )  # fmt: skip
        cost = Cost(input=Decimal(usd), output=Decimal(0), total=Decimal(usd), price_source="t")
        return EnrichedEvent(
            event=ev, tokens=TokenCounts(input_tokens=100, output_tokens=10), cost=cost
        )

    calls = [call("/a", "x", "0.30", 100.0 * (i + 1), i) for i in range(20)]  # 6.00
    calls += [call("/b", "y", "2.00", 50.0, m, run="r2", env="prod") for m in (30, 31)]  # 4.00
    calls += [call("/c", "x", "1.00", 10.0, 90)]  # outside the hour asked for

    async def go() -> tuple[list[Any], list[Any], list[Any]]:
        conn = await asyncpg.connect(s.postgres_dsn)
        try:
            sink = PostgresSink(conn)
            assert await sink.write([row_of(c) for c in calls]) == len(calls)
            hour = (t0, t0 + timedelta(hours=1), "endpoint")
            return (
                await report(conn, *hour),
                await report(conn, *hour, tags={"run": "r2"}),
                await report(conn, *hour, tags={"run": "r2", "env": "dev"}),
            )
        finally:
            await conn.close()

    rows, tagged, mismatched = asyncio.run(go())
    # --tag keeps only calls carrying every given tag
    assert [(r.key, r.cost_usd, r.calls) for r in tagged] == [
        (f"{calls[0].event.service}/b", Decimal("4.000000000000"), 2)
    ]
    assert mismatched == []
    svc = calls[0].event.service
    assert [(r.key, r.cost_usd, r.calls) for r in rows] == [
        (f"{svc}/a", Decimal("6.000000000000"), 20),
        (f"{svc}/b", Decimal("4.000000000000"), 2),
    ]
    assert [r.share for r in rows] == [0.6, 0.4]
    # p95 of 100..2000 ms (linear interpolation, as percentile_cont): 1905
    assert rows[0].p95_latency_ms == pytest.approx(1905.0)
    assert rows[1].p95_latency_ms == pytest.approx(69.0)
    assert to_csv(rows).splitlines()[1].startswith(f"{svc}/a,6.000000000000,20,2000,200,")
