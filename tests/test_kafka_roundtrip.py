"""1,000 events through the real broker: produced with confluent-kafka, consumed with aiokafka."""

from __future__ import annotations

import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer

from spendstream.config import Settings
from spendstream.events import LLMCallEvent
from spendstream.producers.synthetic import sample_events
from spendstream.topics import TopicSpec, ensure_topics, topic_partitions

pytestmark = pytest.mark.stack


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
async def test_thousand_events_round_trip_exactly(stack: Settings, compression: str) -> None:
    topic = f"test.roundtrip.{uuid.uuid4().hex[:8]}"
    ensure_topics(stack, [TopicSpec(topic, 6, 1)])
    assert topic_partitions(stack)[topic] == 6
    events = sample_events(1000, run_id=topic, seed=11)

    producer = Producer(
        stack.librdkafka(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": compression,
                "linger.ms": 5,
            }
        )
    )
    for ev in events:
        producer.produce(topic, key=ev.kafka_key(), value=ev.to_json())
    assert producer.flush(30) == 0

    consumer = AIOKafkaConsumer(
        topic,
        **stack.aiokafka(),
        group_id=f"g-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[tuple[int, bytes, LLMCallEvent]] = []
    try:
        deadline = time.monotonic() + 30
        while len(got) < 1000 and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                got.extend(
                    (tp.partition, r.key or b"", LLMCallEvent.from_json(r.value or b""))
                    for r in records
                )
        extra = await consumer.getmany(timeout_ms=500)
    finally:
        await consumer.stop()

    assert len(got) == 1000
    assert not any(extra.values()), "more records than produced"
    by_id = {ev.event_id: ev for ev in events}
    assert {ev.event_id for _, _, ev in got} == set(by_id)
    assert all(by_id[ev.event_id] == ev for _, _, ev in got)
    # the key is service/endpoint: each key lives on one partition and keeps produce order
    partitions_of_key: dict[bytes, set[int]] = {}
    for part, key, ev in got:
        assert key == ev.kafka_key()
        partitions_of_key.setdefault(key, set()).add(part)
    assert all(len(p) == 1 for p in partitions_of_key.values())
    for key in partitions_of_key:
        consumed = [ev.event_id for _, k, ev in got if k == key]
        produced = [ev.event_id for ev in events if ev.kafka_key() == key]
        assert consumed == produced
    assert len({part for part, _, _ in got}) > 1  # keys spread over partitions
