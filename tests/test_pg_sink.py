"""The PostgreSQL sink on the real stack: one row per call, idempotent on redelivery, totals
that agree with the windows, and migrations / retention."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from spendstream.config import Settings
from spendstream.probes import group_lag
from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from spendstream.sinks.db import ensure_partitions, migrate, parse_age, prune
from tests.books import assert_books_agree, migrated_db, on_pg, private_db, query
from tests.stream_helpers import (
    TopicReader,
    replay,
    sink_process,
    wait_for,
    workers,
)

pytestmark = [pytest.mark.stack]


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

    async def go(conn: Any) -> tuple[list[str], list[str], list[str], int]:
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

    first, again, dropped, left = on_pg(go, s.postgres_dsn)
    assert first == [
        "0001_calls.sql",
        "0002_cache_saved.sql",
        "0003_priced_units.sql",
        "0004_cache_image_read.sql",
        "0005_sessions_traces.sql",
    ]
    assert again == []
    assert dropped == ["llm_calls_20260302", "llm_calls_20260331"]  # 120 and 91 days back
    assert left == 4


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
    calls += [
        call("/b", "y", "2.00", ms, minute, run="r2", env="prod")
        for ms, minute in ((50.0, 30), (70.0, 31))
    ]  # 4.00
    calls += [call("/c", "x", "1.00", 10.0, 90)]  # outside the hour asked for

    async def go(conn: Any) -> tuple[list[Any], list[Any], list[Any]]:
        sink = PostgresSink(conn)
        assert await sink.write([row_of(c) for c in calls]) == len(calls)
        hour = (t0, t0 + timedelta(hours=1), "endpoint")
        return (
            await report(conn, *hour),
            await report(conn, *hour, tags={"run": "r2"}),
            await report(conn, *hour, tags={"run": "r2", "env": "dev"}),
        )

    rows, tagged, mismatched = on_pg(go, s.postgres_dsn)
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


def test_rollups_rewrite_the_days_and_hours_written_from_their_own_connection(
    stack: Settings,
) -> None:
    from spendstream.events import Cost, EnrichedEvent, TokenCounts, example_event
    from spendstream.sinks.postgres import PostgresSink, RollupRefresher, row_of

    s, _ = migrated_db(stack, "rollup")
    t0 = datetime(2026, 3, 3, 9, tzinfo=UTC)

    def call(minute: int, usd: str, team: str) -> EnrichedEvent:
        ev = example_event(team=team, timestamp=t0 + timedelta(minutes=minute),
                           event_id=uuid.uuid4())  # fmt: skip
        cost = Cost(input=Decimal(usd), output=Decimal(0), total=Decimal(usd), price_source="t")
        tokens = TokenCounts(input_tokens=10, output_tokens=1)
        return EnrichedEvent(event=ev, tokens=tokens, cost=cost)

    hourly = "SELECT hour, team, requests, cost_usd FROM hourly_team_costs ORDER BY hour, team"

    async def go(conn: Any) -> tuple[list[Any], list[Any], Any]:
        sink = PostgresSink(conn)
        refresher = RollupRefresher(s, lambda: sink, every_s=30)
        try:
            # 09:00–09:59 and 10:00–10:59, two teams
            await sink.write([row_of(call(m, "0.10", "a")) for m in (0, 30, 59)])
            await sink.write([row_of(call(m, "0.25", "b")) for m in (60, 61)])
            assert sink.hours == {t0, t0 + timedelta(hours=1)}
            assert await refresher.refresh()
            assert sink.hours == set()  # taken by the refresher
            first = [tuple(r) for r in await conn.fetch(hourly)]
            # a later call in 10:xx rewrites that hour and the day, not 09:xx
            await sink.write([row_of(call(90, "1.00", "a"))])
            assert sink.hours == {t0 + timedelta(hours=1)}
            assert await refresher.refresh()
            second = [tuple(r) for r in await conn.fetch(hourly)]
            daily = await conn.fetchrow(
                "SELECT sum(requests) AS n, sum(cost_usd) AS usd FROM daily_llm_costs"
            )
            return first, second, daily
        finally:
            await refresher.close()

    first, second, daily = on_pg(go, s.postgres_dsn)
    h9, h10 = t0, t0 + timedelta(hours=1)
    assert first == [
        (h9, "a", 3, Decimal("0.300000000000")),
        (h10, "b", 2, Decimal("0.500000000000")),
    ]
    assert second == [
        (h9, "a", 3, Decimal("0.300000000000")),
        (h10, "a", 1, Decimal("1.000000000000")),
        (h10, "b", 2, Decimal("0.500000000000")),
    ]
    assert (daily["n"], daily["usd"]) == (6, Decimal("1.800000000000"))


def test_report_escapes_terminal_sequences_neutralises_csv_formulas_and_keeps_groups_apart(
    stack: Settings,
) -> None:
    from spendstream.events import Cost, EnrichedEvent, TokenCounts, example_event
    from spendstream.sinks.postgres import COLUMNS, PostgresSink, row_of
    from spendstream.sinks.report import report, to_csv, to_table

    s, _ = migrated_db(stack, "inject")
    t0 = datetime(2026, 3, 5, 10, tzinfo=UTC)

    def row(usd: str, **fields: str) -> tuple[Any, ...]:
        ev = example_event(event_id=uuid.uuid4(), timestamp=t0)
        cost = Cost(input=Decimal(usd), output=Decimal(0), total=Decimal(usd), price_source="t")
        r = list(
            row_of(
                EnrichedEvent(
                    event=ev, tokens=TokenCounts(input_tokens=1, output_tokens=1), cost=cost
                )
            )
        )
        for k, v in fields.items():  # rows an older schema let through (no control check)
            r[COLUMNS.index(k)] = v
        return tuple(r)  # fmt: skip

    rows = [
        row("1", service="a/v1", endpoint="/x"),
        row("2", service="a", endpoint="/v1/x"),  # the same "a/v1/x" when concatenated
        row("4", service="\x1b]8;;http://evil\x07click\x1b[2J", endpoint="/e", team="x"),
        row("8", service="s", endpoint="/y", team='=HYPERLINK("http://evil","f")'),
    ]

    async def go(conn: Any) -> tuple[list[Any], list[Any]]:
        await PostgresSink(conn).write(rows)
        hour = (t0, t0 + timedelta(hours=1))
        return await report(conn, *hour, "endpoint"), await report(conn, *hour, "team")

    by_endpoint, by_team = on_pg(go, s.postgres_dsn)
    assert sorted((r.key, r.cost_usd) for r in by_endpoint if r.key == "a/v1/x") == [
        ("a/v1/x", Decimal("1.000000000000")),
        ("a/v1/x", Decimal("2.000000000000")),
    ]
    table = to_table(by_endpoint, "endpoint")
    assert "\x1b" not in table and "\x07" not in table
    assert "\\x1b]8;;http://evil\\x07click\\x1b[2J/e" in table
    csv_lines = to_csv(by_team).splitlines()
    assert csv_lines[1].startswith('"\'=HYPERLINK(""http://evil"",""f"")",8.0')
    assert [line.split(",")[0] for line in csv_lines[2:]] == ["x", "customer-success"]


def test_prompt_digests_are_keyed_hmac_sha256_and_absent_without_a_key() -> None:
    import hashlib
    import hmac

    from spendstream.events import EnrichedEvent, TokenCounts, example_event
    from spendstream.sinks.postgres import COLUMNS, row_of

    ev = example_event(prompt_text="hi", response_text="yo\x00!")
    e = EnrichedEvent(
        event=ev, tokens=TokenCounts(input_tokens=1, output_tokens=1), price_unknown=True
    )
    sha = COLUMNS.index("prompt_sha256")
    unkeyed = row_of(e, keep_text=True)
    assert (unkeyed[sha], unkeyed[sha + 1]) == (None, None)
    keyed = row_of(e, keep_text=True, hash_key=b"k3y")
    assert keyed[sha] == hmac.new(b"k3y", b"hi", hashlib.sha256).hexdigest()
    assert keyed[sha] != hashlib.sha256(b"hi").hexdigest()
    assert keyed[sha + 1] == hmac.new(b"k3y", b"yo\x00!", hashlib.sha256).hexdigest()
    assert keyed[COLUMNS.index("response_text")] == "yo\ufffd!"  # PostgreSQL holds no NUL


def test_a_long_or_quoted_override_file_name_is_carried_not_a_reason_to_skip(
    tmp_path: Path,
) -> None:
    from spendstream.events import EnrichedEvent, example_event
    from spendstream.sinks.postgres import COLUMNS, row_of
    from spendstream.stream.enrich import Enricher
    from spendstream.stream.prices import PriceBook

    name = 'negotiated "2026" \\ ' + "p" * 200 + ".toml"
    path = tmp_path / name
    path.write_text(
        '[[price]]\nprovider = "openai"\nmodel = "gpt-4o-mini"\n'
        'input_mtok = "1"\noutput_mtok = "2"\n'
    )
    ev = example_event(response_model=None, usage={"input_tokens": 10**6, "output_tokens": 0})
    call = Enricher(PriceBook.from_file(path)).enrich(ev, ev.to_json())
    e = EnrichedEvent.from_json(call.to_json())
    assert e.cost is not None and e.cost.total == Decimal(1)
    assert row_of(e)[COLUMNS.index("price_source")] == f"override:{name}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "--since", "999999999d"], "more than 100 years"),
        (["report", "--until", "99999999999999999999999d"], "age must look like"),
        (["report", "--since", "9999-12-31T23:59:59-23:59"], "or an ISO time"),
        (["db", "prune", "--older-than", "999999999d"], "more than 100 years"),
    ],
)
def test_absurd_ages_and_times_are_usage_errors_without_a_traceback(
    argv: list[str], message: str
) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", *argv], capture_output=True, timeout=60
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert message in err and "Traceback" not in err
