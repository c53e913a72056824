"""Priced end to end: SDK-tracked calls of Bedrock, DeepSeek and xAI (and the new units: service
tiers, 1-hour cache writes, web searches, a provider-reported cost, an unreadable usage) go
through a real Emitter, Kafka, a worker and the PostgreSQL sink, and land with their exact cost;
and ``spendstream price FILE`` / :func:`spendstream.pricing.price` price the same without Kafka.

Bodies are the documented response shapes of the golden set (tests/golden) plus an Anthropic
Messages body with 1-hour writes and web searches, an OpenAI flex chat completion and a usage
that fails validation. Every expected cost is hand arithmetic from list prices (beside it).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from spendstream.config import Settings
from spendstream.events import LLMCallEvent
from spendstream.pricing import price, price_response
from tests.books import migrated_db, query
from tests.stream_helpers import ROOT, sink_process, wait_for, workers


def _golden(case: str) -> Any:
    for name in ("aws", "compatible"):
        for c in json.loads((ROOT / "tests" / "golden" / f"{name}.json").read_text())["cases"]:
            if c["id"] == case:
                return c["response"]
    raise KeyError(case)


ANTHROPIC: dict[str, Any] = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
    "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
    "usage": {"input_tokens": 1000, "cache_creation_input_tokens": 5000,
              "cache_read_input_tokens": 4000, "output_tokens": 500,
              "cache_creation": {"ephemeral_5m_input_tokens": 2000,
                                 "ephemeral_1h_input_tokens": 3000},
              "server_tool_use": {"web_search_requests": 3}, "service_tier": "standard"},
}  # fmt: skip
ANTHROPIC_BATCH = copy.deepcopy(ANTHROPIC)
ANTHROPIC_BATCH["usage"]["service_tier"] = "batch"
OPENAI_FLEX = {
    "id": "c1", "object": "chat.completion", "created": 1764583200, "model": "gpt-5-2025-08-07",
    "service_tier": "flex",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10000, "completion_tokens": 1000, "total_tokens": 11000,
              "prompt_tokens_details": {"cached_tokens": 2000},
              "completion_tokens_details": {"reasoning_tokens": 600}},
}  # fmt: skip
UNREADABLE = {
    "id": "c2", "object": "chat.completion", "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5,
              "prompt_tokens_details": {"cached_tokens": 50}},
}  # fmt: skip

# (endpoint, provider, model, body, expected cost or None: price unknown)
CALLS: list[tuple[str, str, str, Any, Decimal | None]] = [
    # Bedrock Converse, first call writes the cache: 4 in x $0.80/M + 1030 writes x $1/M
    # + 90 out x $4/M = 0.0000032 + 0.00103 + 0.00036
    ("/bedrock", "aws", "anthropic.claude-3-5-haiku-20241022-v1:0",
     _golden("bedrock-converse-cache-write"), Decimal("0.0013932")),
    # DeepSeek at 10:00 UTC (peak in genai-prices): 400 misses x $0.27/M + 600 hits x $0.07/M
    # + 200 out x $1.10/M = 0.000108 + 0.000042 + 0.00022
    ("/deepseek", "deepseek", "deepseek-chat", _golden("deepseek-cache-hit"), Decimal("0.00037")),
    # xAI grok-4 (completion_tokens excludes reasoning): 500 in x $3/M + 1500 cached x $0.75/M
    # + (100 + 400 reasoning) out x $15/M = 0.0015 + 0.001125 + 0.0075
    ("/xai", "x-ai", "grok-4", _golden("xai-cached"), Decimal("0.010125")),
    # OpenRouter reports usage.cost 0.00021: 1000 in x $0.15/M + 100 out x $0.60/M, the same
    ("/openrouter", "openrouter", "openai/gpt-4o-mini", _golden("openrouter-reported-cost"),
     Decimal("0.00021")),
    # claude-sonnet-4: 1000 in x $3/M + 4000 reads x $0.30/M + 2000 5-minute writes x $3.75/M
    # + 3000 1-hour writes x $6/M + 500 out x $15/M + 3 searches x $0.01
    # = 0.003 + 0.0012 + 0.0075 + 0.018 + 0.0075 + 0.03
    ("/anthropic", "anthropic", "claude-sonnet-4-0", ANTHROPIC, Decimal("0.0672")),
    # the same as a Message Batches result: tokens at half (0.0186), searches unchanged
    ("/anthropic-batch", "anthropic", "claude-sonnet-4-0", ANTHROPIC_BATCH, Decimal("0.0486")),
    # gpt-5 flex: 8000 in x $0.625/M + 2000 cached x $0.0625/M + 1000 out x $5/M
    # = 0.005 + 0.000125 + 0.005
    ("/flex", "openai", "gpt-5", OPENAI_FLEX, Decimal("0.010125")),
    # cached_tokens > prompt_tokens: unreadable, priced unknown (not $0)
    ("/unreadable", "openai", "gpt-4o-mini", UNREADABLE, None),
]  # fmt: skip


def _ts() -> datetime:
    """Yesterday 10:00 UTC: DeepSeek's peak price, well inside the worker's skew window."""
    day = (datetime.now(UTC) - timedelta(days=1)).date()
    return datetime(day.year, day.month, day.day, 10, tzinfo=UTC)


@pytest.mark.stack
def test_sdk_calls_land_in_postgres_with_exact_cost_and_units(
    stack: Settings, tmp_path: Path
) -> None:
    from spendstream.producers.emitter import Emitter

    s, env = migrated_db(stack, "price")
    ts = _ts()
    emitter = Emitter(s, register_atexit=False)
    with workers(env, 1, tmp_path), sink_process(env, tmp_path):
        for endpoint, provider, model, body, _ in CALLS:
            with emitter.track(provider, model, endpoint=endpoint, timestamp=ts) as call:
                call.set_response(body)
        assert emitter.flush(30) == 0
        emitter.close(5)
        sql = "SELECT count(*) FROM llm_calls"
        wait_for(lambda: query(s, sql) == len(CALLS), 120, f"{len(CALLS)} rows in PostgreSQL")
    for endpoint, _, _, _, expected in CALLS:
        got = query(s, "SELECT cost_usd FROM llm_calls WHERE endpoint = $1", endpoint)
        assert (None if got is None else Decimal(got)) == expected, endpoint
    estimated = "SELECT array_agg(endpoint) FROM llm_calls WHERE tokens_estimated"
    assert query(s, estimated) == ["/unreadable"]  # its input count is missing: a guess, flagged

    def col(endpoint: str, column: str) -> Any:
        return query(s, f"SELECT {column} FROM llm_calls WHERE endpoint = $1", endpoint)

    assert (col("/anthropic", "cache_write_1h_tokens"), col("/anthropic", "web_searches")) == (
        3000,
        3,
    )
    assert Decimal(col("/anthropic", "web_search_cost_usd")) == Decimal("0.03")
    assert Decimal(col("/anthropic", "cache_write_cost_usd")) == Decimal("0.0255")
    assert col("/anthropic-batch", "service_tier") == "batch"
    assert col("/flex", "service_tier") == "flex"
    assert Decimal(col("/openrouter", "provider_cost_usd")) == Decimal("0.00021")
    assert col("/unreadable", "price_unknown") is True
    assert "cached" in col("/unreadable", "usage_error")
    assert col("/unreadable", "price_unknown_reason").startswith("usage unreadable: ")


def test_price_and_price_response_without_kafka() -> None:
    ts = _ts()
    for _, provider, model, body, expected in CALLS:
        e = price_response(provider, model, body, timestamp=ts)
        assert (e.cost.total if e.cost else None) == expected, (provider, model)
    ev = price_response("x-ai", "grok-4", _golden("xai-cached"), timestamp=ts).event
    assert price(ev.model_dump(mode="json")).cost == price(ev).cost


def test_price_command_prints_each_cost_and_the_total_and_exits_2_on_a_bad_line(
    tmp_path: Path,
) -> None:
    ts = _ts()
    lines = [
        json.dumps({"provider": p, "model": m, "response": b, "timestamp": ts.isoformat()})
        for _, p, m, b, _ in CALLS
    ]
    event = price_response("x-ai", "grok-4", _golden("xai-cached"), timestamp=ts).event
    lines.insert(2, "{not json")
    lines.append(LLMCallEvent.model_validate(event).to_json().decode())
    lines.append(json.dumps({"provider": "openai", "response": {}}))  # no model
    path = tmp_path / "calls.jsonl"
    path.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", "price", str(path)],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "item 3: not JSON" in err and "item 11: a response item needs 'model'" in err
    # the known costs above (0.0013932 + 0.00037 + 0.010125 + 0.00021 + 0.0672 + 0.0486
    # + 0.010125 = 0.1380232) plus the xAI event again (0.010125)
    assert "total 0.148148200000 USD over 8 priced calls; 1 of unknown price" in out, out
    assert "unknown (usage unreadable: " in out
