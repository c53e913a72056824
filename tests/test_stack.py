"""The running local stack: each service answers for real, topics are as declared."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from spendstream import stack as local_stack
from spendstream.config import Settings
from spendstream.topics import declared_topics, topic_partitions
from tests.books import on_pg
from tests.stream_helpers import wait_for

pytestmark = pytest.mark.stack


def test_status_shows_every_service_up(stack: Settings) -> None:
    rows = {r.name: r for r in local_stack.status(stack)}
    assert set(rows) == {"kafka", "postgres", "redis", "prometheus"}
    assert all(r.state == "up" and r.pid for r in rows.values())
    assert rows["kafka"].port == stack.kafka_port
    assert rows["postgres"].port == stack.postgres_port


def test_up_is_idempotent(stack: Settings) -> None:
    before = {r.name: r.pid for r in local_stack.status(stack)}
    t0 = time.monotonic()
    after = {r.name: r.pid for r in local_stack.up(stack)}
    assert after == before
    assert time.monotonic() - t0 < 30


def test_declared_topics_exist_with_their_partitions(stack: Settings) -> None:
    have = topic_partitions(stack)
    for spec in declared_topics(stack):
        assert have.get(spec.name, 0) >= spec.partitions, spec.name
    assert have[stack.topic_raw] >= 6


def test_postgres_answers_in_the_project_database(stack: Settings) -> None:
    async def ask(conn: Any) -> tuple[Any, ...]:
        return (
            await conn.fetchval("SELECT 1"),
            await conn.fetchval("SELECT current_database()"),
            await conn.fetchval("SELECT current_setting('listen_addresses')"),
        )

    assert on_pg(ask, stack.postgres_dsn) == (1, stack.postgres_db, "127.0.0.1")


def test_postgres_does_not_run_as_root(stack: Settings) -> None:
    pid = next(r.pid for r in local_stack.status(stack) if r.name == "postgres")
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(status.split("Uid:")[1].split()[0])
    assert uid != 0


def test_redis_set_get_ping(stack: Settings) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    key = f"test:{uuid.uuid4().hex}"
    try:
        assert client.ping()
        client.set(key, "42", ex=30)
        assert client.get(key) == b"42"
        assert client.config_get("save")["save"] == ""
    finally:
        client.delete(key)
        client.close()


def test_prometheus_ready_and_scraping_worker_ports(stack: Settings) -> None:
    with urllib.request.urlopen(f"{stack.prometheus_url}/-/ready", timeout=5) as r:
        assert r.status == 200
    urls: set[str] = set()

    def scraping() -> bool:
        with urllib.request.urlopen(f"{stack.prometheus_url}/api/v1/targets", timeout=5) as r:
            active = json.load(r)["data"]["activeTargets"]
        urls.clear()
        urls.update(t["scrapeUrl"] for t in active if t["labels"]["job"] == "spendstream")
        return bool(urls)

    wait_for(scraping, 30, "Prometheus to list the spendstream targets", interval=0.5)
    expected = {
        f"http://127.0.0.1:{stack.metrics_port + i}/metrics" for i in range(stack.metrics_targets)
    }
    assert urls == expected
