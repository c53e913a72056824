"""Alert delivery: ``spendstream alerts tail`` and ``spendstream alerts relay --webhook URL``.

The relay reads the alerts topic in its own consumer group and POSTs each alert as JSON (or a
Slack-compatible ``{"text": …}`` body), retrying with backoff until the receiver accepts it;
only then is the record's offset committed. The stream worker is at-least-once, so the same
``(alert_id, status)`` can appear twice on the topic: on start the relay re-reads the topic up
to its committed offsets to learn what it already delivered, and drops repeats. Every request
carries ``Idempotency-Key: <alert_id>:<status>`` for the one case left — the relay killed
between the receiver's answer and the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..alerts import Alert
from ..config import Settings

log = logging.getLogger("spendstream.alerts")


def line_of(a: Alert) -> str:
    """One human line per alert (``alerts tail``, Slack text)."""
    icon = "FIRING" if a.status == "firing" else "resolved"
    ratio = f" ×{a.ratio:.1f}" if a.ratio else ""
    return (
        f"[{icon}] {a.severity} {a.rule} {a.scope} window {a.window_start:%Y-%m-%d %H:%M}Z: "
        f"${a.observed_usd} vs ${a.baseline_usd}{ratio} — {a.message}"
    )


def payload(a: Alert, fmt: str) -> bytes:
    if fmt == "slack":
        return json.dumps({"text": line_of(a)}).encode()
    return a.to_json()


@dataclass
class RelayStats:
    delivered: int = 0
    duplicates: int = 0
    retries: int = 0
    rejected: int = 0
    unreadable: int = 0


def _post(url: str, body: bytes, key: str, timeout: float) -> int:
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def deliver(url: str, a: Alert, fmt: str, stats: RelayStats, stop: asyncio.Event) -> bool:
    """POST until accepted (2xx). A 4xx other than 408/429 is a permanent rejection: logged and
    skipped, since retrying cannot fix the payload. Returns True when accepted."""
    key = f"{a.alert_id}:{a.status}"
    delay = 0.5
    while not stop.is_set():
        try:
            code = await asyncio.to_thread(_post, url, payload(a, fmt), key, 10.0)
        except (OSError, TimeoutError) as exc:
            code, why = 0, str(exc)
        else:
            why = f"HTTP {code}"
        if 200 <= code < 300:
            return True
        if 400 <= code < 500 and code not in (408, 429):
            stats.rejected += 1
            log.error("webhook rejected alert %s (%s); skipping it", key, why)
            return False
        stats.retries += 1
        log.warning("webhook delivery of %s failed (%s); retrying in %.1fs", key, why, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
    return False


def _delivered_before(s: Settings, group: str) -> set[tuple[Any, str]]:
    """(alert_id, status) of every record before the group's committed offsets (blocking)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(s.librdkafka(**{"group.id": group, "enable.auto.commit": False}))
    seen: set[tuple[Any, str]] = set()
    try:
        md = c.list_topics(s.topic_alerts, timeout=10).topics.get(s.topic_alerts)
        if md is None or not md.partitions:
            return seen
        tps = [TopicPartition(s.topic_alerts, p) for p in md.partitions]
        todo = {tp.partition: tp.offset for tp in c.committed(tps, timeout=10) if tp.offset > 0}
        if not todo:
            return seen
        c.assign([TopicPartition(s.topic_alerts, p, 0) for p in todo])
        while todo:
            msgs = c.consume(500, 2.0)
            if not msgs:
                break
            for m in msgs:
                part, off, value = m.partition(), m.offset(), m.value()
                if m.error() is not None or part is None or off is None:
                    continue
                end = todo.get(part)
                if end is None:
                    continue
                if off < end and value is not None:
                    with contextlib.suppress(ValidationError):
                        seen.add(Alert.from_json(value).dedup_key)
                if off + 1 >= end:
                    del todo[part]
    finally:
        c.close()
    return seen


async def relay(
    s: Settings,
    url: str,
    *,
    fmt: str = "json",
    group: str = "spendstream-alert-relay",
    stop: asyncio.Event | None = None,
) -> RelayStats:
    """Forward alerts to ``url`` until ``stop`` is set."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    stop = stop or asyncio.Event()
    stats = RelayStats()
    seen = await asyncio.to_thread(_delivered_before, s, group)
    c = AIOKafkaConsumer(
        s.topic_alerts,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=3_600_000,  # a receiver down for long must not evict us
        **s.aiokafka(),
    )
    await c.start()
    try:
        while not stop.is_set():
            got = await c.getmany(timeout_ms=500, max_records=100)
            for tp, msgs in got.items():
                for m in msgs:
                    try:
                        a = Alert.from_json(m.value)
                    except ValidationError as exc:
                        stats.unreadable += 1
                        log.error("unreadable alert at %s@%d: %s", tp, m.offset, exc)
                    else:
                        if a.dedup_key in seen:
                            stats.duplicates += 1
                        elif await deliver(url, a, fmt, stats, stop):
                            stats.delivered += 1
                            seen.add(a.dedup_key)
                        elif stop.is_set():
                            return stats  # not delivered: not committed
                    await c.commit(
                        {
                            TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(
                                m.offset + 1, ""
                            )
                        }
                    )
    finally:
        await c.stop()
    return stats


async def tail(s: Settings, as_json: bool, from_beginning: bool, stop: asyncio.Event) -> None:
    """Print alerts as they arrive (no consumer group, nothing committed)."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        s.topic_alerts,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **s.aiokafka(),
    )
    await c.start()
    try:
        while not stop.is_set():
            got = await c.getmany(timeout_ms=500)
            for msgs in got.values():
                for m in msgs:
                    try:
                        a = Alert.from_json(m.value)
                    except ValidationError:
                        print(f"(unreadable alert at offset {m.offset})", flush=True)
                        continue
                    print(a.to_json().decode() if as_json else line_of(a), flush=True)
    finally:
        await c.stop()
