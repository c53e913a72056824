"""The books, checked from outside the pipeline: private databases, queries, and the check that
closed windows, PostgreSQL rows and Prometheus counters agree with each other and the input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

from spendstream.config import Settings
from spendstream.events import LLMCallEvent
from spendstream.money import usd_to_pico
from spendstream.probes import pg_value, prom_value
from spendstream.scopes import minute_dt, minute_of
from spendstream.sinks.postgres import migrate_db
from spendstream.stack.checks import postgres_ensure_database
from tests.stream_helpers import TopicReader, latest_windows, private_settings, wait_for


def private_db(stack: Settings, name: str) -> tuple[Settings, dict[str, str]]:
    db = f"t_{name}_{uuid.uuid4().hex[:8]}"
    dsn = stack.postgres_dsn.rsplit("/", 1)[0] + "/" + db
    s, env = private_settings(stack, name, postgres_db=db, postgres_dsn=dsn)
    postgres_ensure_database(s)
    return s, env


def migrated_db(stack: Settings, name: str) -> tuple[Settings, dict[str, str]]:
    """A private database with the schema applied, as `stack up` leaves the default one."""
    s, env = private_db(stack, name)
    asyncio.run(migrate_db(s))
    return s, env


query = pg_value
"""The first value of one statement (a connection of its own): ``query(s, sql, *args)``."""

T = TypeVar("T")


def on_pg(work: Callable[[Any], Awaitable[T]], dsn: str | None = None, **connect: Any) -> T:
    """``await work(conn)`` on a connection of its own, closed whatever happens; blocking.
    ``dsn`` and ``connect`` are asyncpg's (a test's private database, or host/user/password)."""
    import asyncpg

    async def go() -> T:
        conn = await asyncpg.connect(dsn, **connect)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def assert_books_agree(s: Settings, windows: TopicReader, events: list[LLMCallEvent]) -> Decimal:
    """Every closed window equals the PostgreSQL rows of its minutes exactly (spend and calls),
    and the real Prometheus' counters scraped from the worker equal the rows (requests exactly,
    cost within $0.005). Returns the rows' total cost."""
    last_minute = minute_of(max(e.timestamp for e in events).timestamp())
    minutes = len({minute_of(e.timestamp.timestamp()) for e in events})
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
    cutoff = minute_dt(last_minute)
    stored = query(s, "SELECT sum(cost_usd) FROM llm_calls WHERE ts < $1", cutoff)
    windowed = sum(got[k]["spend_pico"] for k in closed)
    assert usd_to_pico(Decimal(stored)) == windowed  # exact, not just to the cent
    calls = sum(got[k]["calls"] for k in closed)
    assert query(s, "SELECT count(*) FROM llm_calls WHERE ts < $1", cutoff) == calls
    total = Decimal(query(s, "SELECT sum(cost_usd) FROM llm_calls"))
    prom: dict[str, float] = {}

    def scraped() -> bool:
        for name in ("spendstream_llm_requests_total", "spendstream_llm_cost_usd_total"):
            prom[name] = prom_value(s, f"sum({name})")
        return prom["spendstream_llm_requests_total"] >= len(events)

    wait_for(scraped, 60, "Prometheus to scrape every call")
    assert prom["spendstream_llm_requests_total"] == len(events)
    assert abs(Decimal(str(prom["spendstream_llm_cost_usd_total"])) - total) < Decimal("1e-6")
    return total


def assert_rows_are(s: Settings, events: list[LLMCallEvent], total: Decimal | None = None) -> None:
    """PostgreSQL holds exactly these events, once each, and their cost as priced in this
    process (so nothing was lost, duplicated or priced differently on the way)."""
    from spendstream.stream.enrich import Enricher

    assert query(s, "SELECT count(*) FROM llm_calls") == len(events)
    assert query(s, "SELECT count(DISTINCT event_id) FROM llm_calls") == len(events)
    stored = Decimal(query(s, "SELECT sum(cost_usd) FROM llm_calls"))
    assert usd_to_pico(stored) == Enricher().total_pico(events)
    if total is not None:
        assert stored == total
