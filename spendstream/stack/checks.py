"""Readiness probes that do real work against each service (used by `stack up` and tests)."""

from __future__ import annotations

import asyncio
import time
import uuid

from ..config import Settings
from ..topics import topic_created

HEALTH_TOPIC = "spendstream.healthcheck"


def kafka_round_trip(s: Settings, timeout: float = 10.0) -> bool:
    """Produce one record to the health topic and read that very record back."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(s.librdkafka())
    futures = admin.create_topics([NewTopic(HEALTH_TOPIC, 1, 1)], request_timeout=timeout)
    topic_created(futures[HEALTH_TOPIC], timeout)
    token = uuid.uuid4().hex.encode()
    # log_level 3: the broker's "coordinator load in progress" warnings at start-up are noise here.
    producer = Producer(s.librdkafka(**{"enable.idempotence": True, "acks": "all", "log_level": 3}))
    delivered: list[int] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is None:
            delivered.append(msg.offset())  # type: ignore[attr-defined]

    producer.produce(HEALTH_TOPIC, value=token, on_delivery=on_delivery)
    producer.flush(timeout)
    if not delivered:
        return False
    consumer = Consumer(
        s.librdkafka(
            **{"group.id": f"spendstream-health-{uuid.uuid4().hex}", "enable.auto.commit": False}
        )
    )
    try:
        consumer.assign([TopicPartition(HEALTH_TOPIC, 0, delivered[0])])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and msg.value() == token:
                return True
        return False
    finally:
        consumer.close()


def postgres_select_one(s: Settings, database: str | None = None) -> bool:
    """``SELECT 1`` over TCP with the configured credentials."""
    import asyncpg

    async def probe() -> bool:
        kw = {"database": database} if database else {}
        conn = await asyncpg.connect(s.postgres_dsn, timeout=5, **kw)
        try:
            return bool(await conn.fetchval("SELECT 1") == 1)
        finally:
            await conn.close()

    return asyncio.run(probe())


def postgres_ensure_database(s: Settings) -> None:
    """Create the configured database if it does not exist yet."""
    import asyncpg

    async def ensure() -> None:
        conn = await asyncpg.connect(s.postgres_dsn, database="postgres", timeout=5)
        try:
            if not await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", s.postgres_db
            ):
                await conn.execute(f'CREATE DATABASE "{s.postgres_db}"')
        finally:
            await conn.close()

    asyncio.run(ensure())


def redis_ping(s: Settings) -> bool:
    import redis

    client = redis.Redis.from_url(s.redis_url, socket_timeout=2)
    try:
        return bool(client.ping())
    finally:
        client.close()
