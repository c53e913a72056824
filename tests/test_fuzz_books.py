"""Schema-valid but extreme events keep the books balanced: every line is enriched or
dead-lettered (never both, never neither), the closed global windows add up to the events'
exact costs, and the PostgreSQL sink stores every enriched event through its own write path.

Extremes: names at their maximum lengths in any printable Unicode, token counts up to
MAX_TOKENS, timestamps anywhere in 2000..2099, 16 tags of 256 characters, cache savings up to
MAX_USD with 12 decimals, latencies up to a day, unknown models, and events dated beyond the
worker's future skew (which must be dead-lettered, not windowed)."""

from __future__ import annotations

import string
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendstream.config import Settings
from spendstream.events import (
    MAX_LATENCY_MS,
    MAX_TAG_KEY_CHARS,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS,
    MAX_TIMESTAMP,
    MAX_TOKENS,
    MAX_USD,
    EnrichedEvent,
    LLMCallEvent,
)
from spendstream.scopes import minute_of
from spendstream.sinks.postgres import PostgresSink, row_of
from spendstream.stream.enrich import Enricher
from spendstream.stream.offline import records_of, run
from tests.books import migrated_db, on_pg

pytestmark = [pytest.mark.stack]

SKEW_S = 300.0
SPAN_S = 600  # admitted events lie within 10 minutes: windows close without a long walk
printable = st.characters(exclude_categories=("Cc", "Cs"))


def names(max_size: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(printable, min_size=1, max_size=8),
        st.text(printable, min_size=max_size, max_size=max_size),
    )


models = st.sampled_from(
    ["gpt-4o", "gpt-4o-mini", "o3", "claude-3-5-sonnet-latest", "acme-private-\u00e9\u4e2d"]
)
tag_keys = st.text(string.ascii_letters + string.digits + "_.:/-", min_size=1,
                   max_size=MAX_TAG_KEY_CHARS)  # fmt: skip
tag_values = st.text(printable, max_size=MAX_TAG_VALUE_CHARS)
big = st.one_of(st.integers(0, 1000), st.integers(0, MAX_TOKENS), st.just(MAX_TOKENS))


@st.composite
def usage(draw: st.DrawFn) -> dict[str, int]:
    inp, out = draw(big), draw(big)
    read = draw(st.integers(0, inp))
    u = {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_tokens": read,
        "cache_creation_tokens": draw(st.integers(0, inp - read)),
        "reasoning_tokens": draw(st.integers(0, out)),
    }
    return {k: v for k, v in u.items() if k not in draw(st.sets(st.sampled_from(sorted(u))))}


@st.composite
def event(draw: st.DrawFn, at: datetime) -> LLMCallEvent:
    hit = draw(st.booleans())
    status = draw(st.sampled_from(["ok", "error", "timeout", "rate_limited", "cancelled"]))
    saved = draw(st.decimals(0, MAX_USD, places=12)) if hit and draw(st.booleans()) else None
    return LLMCallEvent.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "timestamp": at,
            "service": draw(names(128)),
            "endpoint": draw(names(256)),
            "provider": draw(st.sampled_from(["openai", "anthropic", "x-unknown"])),
            "request_model": draw(models),
            "response_model": draw(st.none() | models),
            "team": draw(st.none() | names(128)),
            "user_id": draw(st.none() | st.text(printable, max_size=256)),
            "routing_reason": draw(st.none() | st.text(printable, max_size=256)),
            "prompt_version": draw(st.none() | names(128)),
            "tags": draw(st.dictionaries(tag_keys, tag_values, max_size=MAX_TAGS)),
            "usage": draw(usage()),
            "prompt_text": draw(st.none() | st.text(max_size=300)),
            "latency_ms": draw(st.none() | st.floats(0, MAX_LATENCY_MS)),
            "status": status,
            "error_type": None if status == "ok" else draw(st.none() | names(128)),
            "cache_hit": hit,
            "cache_kind": draw(st.sampled_from(["exact", "semantic"])) if hit else None,
            "cache_saved_usd": saved,
            "feedback": draw(st.none() | st.floats(-1, 1)),
        }
    )


@st.composite
def batches(draw: st.DrawFn) -> tuple[float, list[LLMCallEvent], int]:
    """(the worker's clock, events sorted by time, how many are dated beyond the skew)."""
    base = draw(st.datetimes(datetime(2000, 1, 1), datetime(2099, 6, 1), timezones=st.just(UTC)))
    offsets = draw(st.lists(st.integers(0, SPAN_S), min_size=1, max_size=25))
    admitted = [draw(event(base + timedelta(seconds=o))) for o in sorted(offsets)]
    now = base.timestamp() + SPAN_S
    latest = MAX_TIMESTAMP.timestamp() - now - 1  # base <= 2099-06: half a year at least
    ahead_s = draw(st.lists(st.floats(SKEW_S + 1, latest), max_size=3))
    ahead = [draw(event(datetime.fromtimestamp(now + a, UTC))) for a in ahead_s]
    return now, admitted + ahead, len(ahead)


@pytest.fixture(scope="module")
def db(stack: Settings) -> Iterator[Settings]:
    s, _ = migrated_db(stack, "fuzz")
    yield s


@given(batches())
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_extreme_events_balance_the_books_and_every_enriched_event_is_stored(
    db: Settings, batch: tuple[float, list[LLMCallEvent], int]
) -> None:
    now, events, n_ahead = batch
    en = Enricher(max_future_skew_s=SKEW_S, now=lambda: now)
    res = run(records_of(events, 12), enricher=en, clock=lambda: now)
    assert (res.calls, res.dead) == (len(events) - n_ahead, n_ahead)

    admitted = events[: len(events) - n_ahead]
    cost = {e.event_id: en.enrich(e, e.to_json()).cost_pico for e in admitted}
    closed = {w.minute: w.agg for k, w in res.windows.items() if k.startswith("global:all|")}
    watermark = max(e.timestamp.timestamp() for e in admitted)
    per_minute: dict[int, list[int]] = {}
    for e in admitted:
        per_minute.setdefault(minute_of(e.timestamp.timestamp()), []).append(cost[e.event_id])
    # at the end every partition is idle: each minute that has ended in event time is closed
    assert set(closed) == {m for m in per_minute if (m + 1) * 60 <= watermark}
    assert {m: (a.spend, a.calls) for m, a in closed.items()} == {
        m: (sum(per_minute[m]), len(per_minute[m])) for m in closed
    }
    enriched = [
        EnrichedEvent.from_json(c.to_json())
        for line in (e.to_json() for e in admitted)
        for c in en.process(line).calls
    ]
    assert len(enriched) == len(admitted)
    rows = [row_of(e, keep_text=True, hash_key=b"k") for e in enriched]
    new, refused, stored = write(db, rows, [e.event.event_id for e in enriched])
    assert refused == [] and new == len(rows)
    total = sum((e.cost.total for e in enriched if e.cost), Decimal(0))
    assert stored == total


def write(s: Settings, rows: list[Any], ids: list[uuid.UUID]) -> tuple[int, Any, Decimal]:
    """Through the sink's own write path; returns (new rows, refused, their stored cost)."""

    async def go(conn: Any) -> tuple[int, Any, Decimal]:
        new, refused = await PostgresSink(conn).write_good(rows)
        stored = await conn.fetchval(
            "SELECT coalesce(sum(cost_usd), 0) FROM llm_calls WHERE event_id = ANY($1)", ids
        )
        return new, refused, stored

    return on_pg(go, s.postgres_dsn)
