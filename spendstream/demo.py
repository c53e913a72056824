"""`spendstream demo` (`make demo`): bring the stack up and prove events flow through Kafka.

Today the demo produces a batch of schema-valid call events into the raw topic with
confluent-kafka (what the producer SDK uses) and reads exactly those back with aiokafka (what
the Faust workers use), comparing every event field by field.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .config import Settings
from .events import LLMCallEvent, Usage


@dataclass(frozen=True, slots=True)
class RoundTrip:
    produced: int
    consumed: int
    mismatched: int
    seconds: float


def sample_events(n: int, run_id: str, seed: int = 0) -> list[LLMCallEvent]:
    """``n`` varied, valid events tagged with ``run_id`` (deterministic for a seed)."""
    rng = random.Random(seed)
    start = datetime.now(UTC).replace(microsecond=0)
    services = {
        "support-bot": ["/v1/answer", "/v1/summarize"],
        "search": ["/query"],
        "billing-assistant": ["/explain-invoice"],
    }
    models = [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-haiku")]
    events = []
    for i in range(n):
        service = rng.choice(list(services))
        provider, model = rng.choice(models)
        inp = rng.randint(50, 8000)
        cached = rng.choice([0, 0, inp // 2])
        events.append(
            LLMCallEvent(
                event_id=uuid.UUID(int=rng.getrandbits(128), version=4),
                timestamp=start + timedelta(milliseconds=37 * i),
                service=service,
                endpoint=rng.choice(services[service]),
                provider=provider,
                request_model=model,
                team=rng.choice(["search", "support", "finance"]),
                user_id=f"u-{rng.randint(1, 500)}",
                tags={"run": run_id},
                usage=Usage(
                    input_tokens=inp, output_tokens=rng.randint(1, 1500), cache_read_tokens=cached
                ),
                latency_ms=round(rng.uniform(80, 4000), 1),
            )
        )
    return events


def round_trip(s: Settings, n: int = 1000, timeout: float = 30.0) -> RoundTrip:
    """Produce ``n`` events to the raw topic and read them back; compare field by field."""
    from confluent_kafka import Producer

    run_id = uuid.uuid4().hex[:12]
    events = sample_events(n, run_id)
    t0 = time.monotonic()
    start_offsets = end_offsets(s, s.topic_raw)
    producer = Producer(
        s.librdkafka(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "zstd",
                "linger.ms": 5,
            }
        )
    )
    for ev in events:
        producer.produce(s.topic_raw, key=ev.kafka_key(), value=ev.to_json())
        producer.poll(0)
    if producer.flush(timeout) != 0:
        raise RuntimeError("not every event was delivered within the timeout")
    got = asyncio.run(_consume_run(s, start_offsets, run_id, n, timeout))
    by_id = {ev.event_id: ev for ev in events}
    mismatched = sum(1 for ev in got if by_id.get(ev.event_id) != ev)
    return RoundTrip(n, len(got), mismatched, time.monotonic() - t0)


def end_offsets(s: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """High watermark of every partition of ``topic``: where records produced next will land."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        s.librdkafka(**{"group.id": "spendstream-offsets", "enable.auto.commit": False})
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        if meta.error is not None:
            raise RuntimeError(f"topic {topic}: {meta.error}; run `spendstream stack up`")
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in meta.partitions
        }
    finally:
        consumer.close()


async def _consume_run(
    s: Settings, start: dict[int, int], run_id: str, n: int, deadline_s: float
) -> list[LLMCallEvent]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**s.aiokafka(), enable_auto_commit=False)
    await consumer.start()
    out: list[LLMCallEvent] = []
    try:
        tps = [TopicPartition(s.topic_raw, p) for p in start]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start[tp.partition])
        deadline = time.monotonic() + deadline_s
        while len(out) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for rec in records:
                    ev = LLMCallEvent.from_json(rec.value or b"")
                    if ev.tags.get("run") == run_id:
                        out.append(ev)
    finally:
        await consumer.stop()
    return out


def run_demo(s: Settings, n: int = 1000) -> int:
    """Entry point of `spendstream demo`; returns a process exit code."""
    from . import stack

    print(f"spendstream demo: bringing the local stack up in {s.stack_dir} ...", flush=True)
    t0 = time.monotonic()
    for st in stack.up(s):
        print(f"  {st.name:<11} {st.state:<8} 127.0.0.1:{st.port}", flush=True)
    print(f"stack ready in {time.monotonic() - t0:.1f}s", flush=True)
    print(
        f"producing {n} call events to '{s.topic_raw}' (confluent-kafka) and reading them "
        "back (aiokafka) ...",
        flush=True,
    )
    rt = round_trip(s, n)
    ok = rt.consumed == rt.produced and rt.mismatched == 0
    print(
        f"  produced {rt.produced}, consumed {rt.consumed}, mismatched {rt.mismatched} "
        f"in {rt.seconds:.2f}s -> {'OK' if ok else 'FAILED'}",
        flush=True,
    )
    print("next: `spendstream stack status`, `spendstream stack down`", flush=True)
    return 0 if ok else 1
