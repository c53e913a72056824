"""The Kafka topics of the pipeline, declared once; `stack up` and workers create them from here.

This is the one place that knows every topic name: the pipeline's own (:func:`declared_topics`)
and the stage-1/stage-2 tables' changelogs of one worker app id (:func:`changelog_topics`,
named as Faust names them, ``<app id>-<table>-changelog``, so created here before Faust would
create them with its own defaults).

Creating is idempotent: an existing topic with fewer partitions than declared is grown (never
shrunk), and one with more is left as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .config import Settings

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic: name, partition count and the topic configs the pipeline relies on."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


def declared_topics(s: Settings) -> list[TopicSpec]:
    """Raw events, enriched events, alerts and dead letters, sized from settings."""
    rf = s.topic_replication_factor
    min_isr = str(min(2, rf))
    return [
        TopicSpec(
            s.topic_raw,
            s.raw_partitions,
            rf,
            {"retention.ms": str(7 * DAY_MS), "min.insync.replicas": min_isr},
            "LLMCallEvent records from producers, keyed by service/endpoint",
        ),
        TopicSpec(
            s.topic_enriched,
            s.enriched_partitions,
            rf,
            {"retention.ms": str(7 * DAY_MS), "min.insync.replicas": min_isr},
            "EnrichedEvent records (tokens + exact cost) from stream workers",
        ),
        TopicSpec(
            s.topic_alerts,
            s.alerts_partitions,
            rf,
            {"retention.ms": str(30 * DAY_MS), "min.insync.replicas": min_isr},
            "spend alerts (firing / resolved)",
        ),
        TopicSpec(
            s.topic_partials,
            s.stage2_partitions,
            rf,
            {"retention.ms": str(DAY_MS), "min.insync.replicas": min_isr},
            "internal: stage-1 window snapshots and watermarks for stage 2",
        ),
        TopicSpec(
            s.topic_windows,
            s.windows_partitions,
            rf,
            {"cleanup.policy": "compact", "min.insync.replicas": min_isr},
            "closed 1-minute spend per scope (latest revision per window)",
        ),
        TopicSpec(
            s.topic_dlq,
            s.dlq_partitions,
            rf,
            {"retention.ms": str(30 * DAY_MS), "min.insync.replicas": min_isr},
            "records that failed validation: original bytes + reason + source offset",
        ),
    ]


def changelog_topic_name(app_id: str, table: str) -> str:
    """Faust's name for ``table``'s changelog in app ``app_id``."""
    return f"{app_id}-{table}-changelog"


def changelog_topics(s: Settings, app_id: str | None = None) -> list[TopicSpec]:
    """The stage-1/stage-2 tables' changelog topics of ``app_id`` (``s.worker_app_id`` by
    default): compacted, and co-partitioned with the topic each table is keyed by (stage 1 with
    the raw topic, stage 2 with the partials topic), which Faust requires to restore a
    partition's table state on the worker that owns that partition."""
    app = s.worker_app_id if app_id is None else app_id
    rf = s.topic_replication_factor
    return [
        TopicSpec(
            changelog_topic_name(app, "stage1"),
            s.raw_partitions,
            rf,
            {"cleanup.policy": "compact"},
            "internal: stage-1 table changelog (per raw partition)",
        ),
        TopicSpec(
            changelog_topic_name(app, "stage2"),
            s.stage2_partitions,
            rf,
            {"cleanup.policy": "compact"},
            "internal: stage-2 table changelog (per stage-2 partition)",
        ),
    ]


def ensure_topics(s: Settings, specs: list[TopicSpec] | None = None, timeout: float = 30.0) -> None:
    """Create missing topics and grow under-partitioned ones; raise on any other error."""
    from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

    specs = declared_topics(s) if specs is None else specs
    admin = AdminClient(s.librdkafka())
    new = [
        NewTopic(
            t.name,
            num_partitions=t.partitions,
            replication_factor=t.replication_factor,
            config=t.config,
        )
        for t in specs
    ]
    for name, fut in admin.create_topics(new, request_timeout=timeout).items():
        if topic_created(fut, timeout):
            log.info("created topic %s", name)
    meta = admin.list_topics(timeout=timeout)
    grow = [
        NewPartitions(t.name, t.partitions)
        for t in specs
        if t.name in meta.topics and len(meta.topics[t.name].partitions) < t.partitions
    ]
    if grow:
        for name, fut in admin.create_partitions(grow, request_timeout=timeout).items():
            fut.result(timeout)
            log.info("grew topic %s", name)


def topic_created(fut: Any, timeout: float) -> bool:
    """False when the topic already existed. (A helper, not inline: the future keeps the
    exception and its traceback keeps the catching frame, which must not hold the client.)"""
    from confluent_kafka import KafkaError, KafkaException

    try:
        fut.result(timeout)
        return True
    except KafkaException as exc:
        err: Any = exc.args[0]
        if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
        return False


def topic_partitions(s: Settings, timeout: float = 10.0) -> dict[str, int]:
    """Partition count of every topic the broker has (internal ones excluded)."""
    from confluent_kafka.admin import AdminClient

    meta = AdminClient(s.librdkafka()).list_topics(timeout=timeout)
    return {n: len(t.partitions) for n, t in meta.topics.items() if not n.startswith("__")}
