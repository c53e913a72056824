"""Reading topics back in tests: wait on a condition (a count) with a deadline, never sleep."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Consumer

from spendstream import wire
from spendstream.config import Settings
from spendstream.events import LLMCallEvent
from spendstream.topics import TopicSpec, ensure_topics


def fresh_topic(s: Settings, prefix: str, partitions: int = 6) -> str:
    name = f"test.{prefix}.{uuid.uuid4().hex[:10]}"
    ensure_topics(s, [TopicSpec(name, partitions, 1)])
    return name


@dataclass
class Records:
    events: list[LLMCallEvent] = field(default_factory=list)
    records: int = 0
    bad: list[wire.BadLine] = field(default_factory=list)
    keys_ok: bool = True
    headers_ok: bool = True


def read_events(
    s: Settings, topic: str, expected: int, deadline_s: float = 60.0, settle_s: float = 1.0
) -> Records:
    """Consume ``topic`` from the start until ``expected`` events arrived (then ``settle_s``
    more to catch extras) or the deadline passes."""
    c = Consumer(
        s.librdkafka(
            **{
                "group.id": f"t-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
    )
    c.subscribe([topic])
    out = Records()
    deadline = time.monotonic() + deadline_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if settle_until is None and len(out.events) >= expected:
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            msg = c.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            out.records += 1
            if wire.check_headers(msg.headers()) is not None or not msg.headers():
                out.headers_ok = False
            for item in wire.decode(msg.value()):
                if isinstance(item, wire.BadLine):
                    out.bad.append(item)
                else:
                    out.events.append(item)
                    if item.kafka_key() != msg.key():
                        out.keys_ok = False
    finally:
        c.close()
    return out
