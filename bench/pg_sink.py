"""Rows/s of the idempotent PostgreSQL sink against a bare asyncpg COPY of the same rows into
the same (partitioned, primary-keyed) table, in the same run.

Sink: :meth:`PostgresSink.write` per batch of 5,000 — COPY into a temporary table, then
``INSERT … ON CONFLICT (event_id, ts) DO NOTHING``, one transaction. Bare: ``COPY`` of the same
batches straight into ``llm_calls`` (no idempotence: a redelivery would fail or duplicate).
Each path gets its own fresh database. Rows are built beforehand from enriched synthetic
events (parsing is the consumer's cost, not the writer's). Run:
``python bench/pg_sink.py [N]``. Last line ``pg_sink_ratio=<sink/bare>``.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import asyncpg
from _common import machine, result, settings_with_stack

from spendstream.config import Settings
from spendstream.events import EnrichedEvent
from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from spendstream.sinks.db import ensure_partitions, migrate
from spendstream.sinks.postgres import COLUMNS, PostgresSink, Row, row_of
from spendstream.stack.checks import postgres_ensure_database
from spendstream.stream.enrich import Enricher

BATCH = 5000


def rows(n: int) -> list[Row]:
    en = Enricher()
    out = []
    for ev in SyntheticTraffic(TrafficConfig(seed=31, rate=50)).events(count=n):
        call = en.enrich(ev, ev.to_json())
        out.append(row_of(EnrichedEvent.model_validate_json(call.to_json())))
    return out


async def fresh(s: Settings, name: str) -> asyncpg.Connection:
    db = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    s2 = Settings(postgres_db=db, postgres_port=s.postgres_port)
    await asyncio.to_thread(postgres_ensure_database, s2)
    conn = await asyncpg.connect(s2.postgres_dsn)
    await migrate(conn)
    return conn


async def run(s: Settings, data: list[Row]) -> tuple[float, float, int]:
    days = {r[1].date() for r in data}
    sink_conn = await fresh(s, "sink")
    bare_conn = await fresh(s, "bare")
    try:
        sink = PostgresSink(sink_conn)
        await ensure_partitions(sink_conn, days)
        await ensure_partitions(bare_conn, days)
        t0 = time.perf_counter()
        new = 0
        for i in range(0, len(data), BATCH):
            new += await sink.write(data[i : i + BATCH])
        sink_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        for i in range(0, len(data), BATCH):
            await bare_conn.copy_records_to_table(
                "llm_calls", records=data[i : i + BATCH], columns=COLUMNS
            )
        bare_s = time.perf_counter() - t0
        again = 0
        for i in range(0, len(data), BATCH):  # redelivery of everything: no new rows
            again += await sink.write(data[i : i + BATCH])
        assert new == len(data) and again == 0, (new, again)
        return sink_s, bare_s, again
    finally:
        await sink_conn.close()
        await bare_conn.close()


def main(n: int = 200_000) -> None:
    s = settings_with_stack()
    data = rows(n)
    sink_s, bare_s, _ = asyncio.run(run(s, data))
    sink_rps, bare_rps = n / sink_s, n / bare_s
    print(f"pg_sink: {n} rows in batches of {BATCH}; {machine()}")
    print(f"{'path':<44} {'seconds':>8} {'rows/s':>10}")
    print(f"{'sink: COPY temp + INSERT ON CONFLICT':<44} {sink_s:>8.2f} {sink_rps:>10,.0f}")
    print(f"{'bare COPY into llm_calls':<44} {bare_s:>8.2f} {bare_rps:>10,.0f}")
    print("redelivered the same rows: 0 new (checked)")
    result(
        "PostgreSQL sink (idempotent)",
        sink_rps,
        "rows/s",
        "100k rows/s; ratio ≥ 0.5",
        bare_rps,
        "bare COPY into llm_calls",
    )
    print(f"pg_sink_ratio={sink_rps / bare_rps:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
