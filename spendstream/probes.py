"""Read-only questions to the running services: consumer-group lag, Prometheus instant queries,
one value from PostgreSQL.

Used by the demo, the soak and the tests, which check the pipeline from outside its processes.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from typing import Any

from .config import Settings


def group_lag(s: Settings, group: str, topic: str) -> int:
    """Records of ``topic`` not yet committed by ``group`` (end offsets minus commits)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(s.librdkafka(**{"group.id": group, "enable.auto.commit": False}))
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in parts]
        committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
        return sum(
            c.get_watermark_offsets(tp, timeout=10)[1] - max(committed.get(tp.partition, 0), 0)
            for tp in tps
        )
    finally:
        c.close()


def prom_query(s: Settings, expr: str) -> list[Any]:
    """An instant query to ``s.prometheus_url``; the result vector (raises on HTTP errors)."""
    url = f"{s.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus query {expr!r} failed: {body}")
    return list(body["data"]["result"])


def prom_value(s: Settings, expr: str) -> float:
    """The first sample of an instant query; -1 when there is none or Prometheus is away."""
    try:
        res = prom_query(s, expr)
    except OSError:
        return -1.0
    return float(res[0]["value"][1]) if res else -1.0


def pg_value(s: Settings, sql: str, *args: Any) -> Any:
    """The first value of ``sql`` on ``s.postgres_dsn`` (a connection of its own; blocking)."""
    from .sinks.postgres import connect

    async def go() -> Any:
        conn = await connect(s)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())
