"""Sessions and traces end to end on the real stack (issue 17): a RAG request made of an
embedding call, a rerank and a generation in three services sharing one trace id is one
request's cost in PostgreSQL and in ``spendstream report --by trace``.

Prices (genai-prices): text-embedding-3-small $0.02/Mtok, @cf/baai/bge-reranker-base
$0.003/Mtok, gpt-4o-mini $0.15 in / $0.60 out per Mtok. So the request costs
3000 x 0.02e-6 + 2000 x 0.003e-6 + (4000 x 0.15e-6 + 500 x 0.60e-6)
= 0.00006 + 0.000006 + 0.0009 = 0.000966 USD.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from spendstream.config import Settings
from spendstream.events import LLMCallEvent, example_event
from tests.books import migrated_db, on_pg, query
from tests.stream_helpers import replay, sink_process, wait_for, workers

pytestmark = [pytest.mark.stack]

RAG = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "0af7651916cd43dd8448eb211c80319c"


def rag_request(t0: datetime) -> list[LLMCallEvent]:
    """One request across three services (trace RAG), a cheaper one-call request (OTHER), a
    call in the same session but no trace, and a call with neither."""

    def call(**kw: Any) -> LLMCallEvent:
        base: dict[str, Any] = dict(
            event_id=uuid.uuid4(), response_model=None, team=None, user_id=None, tags={},
            prompt_version=None, requested_model=None, routing_reason=None, ttft_ms=None,
        )  # fmt: skip
        return example_event(**{**base, **kw})

    embed = {"input_tokens": 3000, "output_tokens": 0}
    return [
        call(service="search-api", endpoint="/search", provider="openai",
             request_model="text-embedding-3-small", operation="embeddings", usage=embed,
             timestamp=t0, latency_ms=80.0, trace_id=RAG, span_id="a1" * 8),
        call(service="ranker", endpoint="/rank", provider="cloudflare",
             request_model="@cf/baai/bge-reranker-base", operation="rerank",
             usage={"input_tokens": 2000, "output_tokens": 0},
             timestamp=t0 + timedelta(milliseconds=100), latency_ms=40.0, trace_id=RAG,
             span_id="b2" * 8),
        call(service="answer-bot", endpoint="/answer", provider="openai",
             request_model="gpt-4o-mini", usage={"input_tokens": 4000, "output_tokens": 500},
             timestamp=t0 + timedelta(milliseconds=250), latency_ms=900.0, trace_id=RAG,
             span_id="c3" * 8, session_id="chat-42"),
        call(service="answer-bot", endpoint="/answer", provider="openai",
             request_model="gpt-4o-mini", usage={"input_tokens": 1000, "output_tokens": 100},
             timestamp=t0 + timedelta(seconds=30), latency_ms=500.0, session_id="chat-42"),
        call(service="search-api", endpoint="/search", provider="openai",
             request_model="text-embedding-3-small", operation="embeddings",
             usage={"input_tokens": 1000, "output_tokens": 0},
             timestamp=t0 + timedelta(seconds=40), latency_ms=20.0, trace_id=OTHER),
        call(service="search-api", endpoint="/search", provider="openai",
             request_model="text-embedding-3-small", operation="embeddings", usage=embed,
             timestamp=t0 + timedelta(seconds=50), latency_ms=20.0),
    ]  # fmt: skip


def test_a_request_across_three_services_is_one_cost_row(stack: Settings, tmp_path: Path) -> None:
    s, env = migrated_db(stack, "sessions")
    t0 = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0)
    events = rag_request(t0)
    path = tmp_path / "rag.jsonl"
    path.write_bytes(b"".join(e.to_json() + b"\n" for e in events))
    with workers(env, 1, tmp_path), sink_process(env, tmp_path):
        replay(env, path)
        wait_for(lambda: query(s, "SELECT count(*) FROM llm_calls") == 6, 180, "6 rows")

    async def rows(conn: Any) -> list[tuple[Any, ...]]:
        got = await conn.fetch(
            "SELECT service, session_id, trace_id, span_id, cost_usd FROM llm_calls ORDER BY ts"
        )
        return [tuple(r) for r in got]

    d = Decimal
    assert on_pg(rows, s.postgres_dsn) == [
        ("search-api", None, RAG, "a1" * 8, d("0.000060000000")),
        ("ranker", None, RAG, "b2" * 8, d("0.000006000000")),
        ("answer-bot", "chat-42", RAG, "c3" * 8, d("0.000900000000")),
        ("answer-bot", "chat-42", None, None, d("0.000210000000")),
        ("search-api", None, OTHER, None, d("0.000020000000")),
        ("search-api", None, None, None, d("0.000060000000")),
    ]
    window = ["--since", (t0 - timedelta(minutes=1)).isoformat(),
              "--until", (t0 + timedelta(minutes=2)).isoformat()]  # fmt: skip
    by_trace = cli(env, "report", "--by", "trace", "--top", "10", *window)
    assert by_trace.splitlines()[1:] == [
        "trace                                  cost USD   calls  duration ms  "
        "first call (UTC)     services",
        f"{RAG}       0.000966       3       1150.0  {t0:%Y-%m-%d %H:%M:%S}  "
        "answer-bot, ranker, search-api",
        f"{OTHER}       0.000020       1         20.0  "
        f"{t0 + timedelta(seconds=40):%Y-%m-%d %H:%M:%S}  search-api",
        "top 2 of 2 traces: 0.000986 of 0.000986 USD",
    ]
    top1 = cli(env, "report", "--by", "trace", "--top", "1", *window).splitlines()
    assert top1[-1] == "top 1 of 2 traces: 0.000966 of 0.000986 USD"
    by_session = cli(env, "report", "--by", "session", "--csv", *window)
    first = (t0 + timedelta(milliseconds=250)).isoformat()
    assert by_session.splitlines() == [
        "key,cost_usd,calls,services,first_ts,duration_ms,unpriced_calls",
        f"chat-42,0.001110000000,2,answer-bot,{first},30250.0,0",  # 30 s apart + 500 ms
    ]


def cli(env: dict[str, str], *argv: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "spendstream.cli", *argv],
        env={**os.environ, **env}, capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def test_the_migration_indexes_session_and_trace_on_every_partition(stack: Settings) -> None:
    from spendstream.sinks.db import ensure_partitions

    s, _ = migrated_db(stack, "sessidx")

    async def go(conn: Any) -> list[str]:
        await ensure_partitions(conn, {datetime(2026, 3, 2).date()})
        got = await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'llm_calls_20260302' "
            "AND (indexdef LIKE '%session_id%' OR indexdef LIKE '%trace_id%') ORDER BY 1"
        )
        return [r["indexname"] for r in got]

    assert len(on_pg(go, s.postgres_dsn)) == 2
