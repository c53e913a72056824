"""The Faust worker: `spendstream worker`. Start several with the same app id to scale out.

Agents:

- ``stage1`` on the raw topic — one Kafka record (an envelope of events) per iteration:
  validate, enrich, send enriched events and dead letters, add the record's window aggregates
  to the ``stage1`` table (changelog-backed, per raw partition, idempotent per key by offset).
- a timer (every ``tick_interval_s``) publishes the changed window snapshots plus each owned raw
  partition's watermark and idle flag to the partials topic, one message per stage-2 partition.
- ``stage2`` on the partials topic: keeps the newest snapshot per (scope, minute, raw
  partition) in the ``stage2`` table, tracks the event-time watermark, closes minutes, runs the
  rules, and publishes window totals and alerts.

Processing is at-least-once. Effects are idempotent: table keys skip offsets already applied;
snapshots replace, never add; window totals are keyed (compacted topic); alerts carry a stable
``alert_id``. Enriched events and dead letters may repeat after a crash; their consumers
deduplicate by ``event_id`` (the PostgreSQL sink does, by primary key).

This module is only the wiring: each agent step calls one method of the
:class:`~spendstream.stream.worker.Worker` core (tested without Faust); what knows Faust's
private API is :mod:`spendstream.stream.faust_adapter`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..config import Settings
from .enrich import Enricher
from .faust_adapter import FaustBroker, StoreReads, TableState, make_app
from .live import LiveSpendWriter
from .metrics import PipelineMetrics, serve
from .pipeline import Stage1, Stage2, WriteBuffer
from .prices import PriceBook
from .worker import Record, Worker

log = logging.getLogger("spendstream.worker")


def build_core(s: Settings, t1: TableState, t2: TableState, broker: FaustBroker) -> Worker:
    """The worker core on the app's two tables."""
    enricher = Enricher(
        PriceBook.from_file(s.price_overrides_file),
        keep_text=s.keep_text,
        max_future_skew_s=s.max_future_skew_s,
    )
    # events further ahead of this worker's clock than the admission check allows (300 s when
    # the check is off) do not move the watermark: one wrong clock cannot blind the windows
    skew = 300.0 if s.max_future_skew_s is None else s.max_future_skew_s
    stage1 = Stage1(t1, s.window_retention_minutes, max_skew_s=skew)
    t2_writes = WriteBuffer(t2, StoreReads(t2.table))
    stage2 = Stage2(
        t2_writes,
        s.rule_config(),
        s.raw_partitions,
        s.allowed_lateness_s,
        s.window_retention_minutes,
        max_skew_s=skew,
    )
    return Worker(s, stage1, stage2, t2_writes, enricher, broker)


def build_app(s: Settings) -> Any:
    """Create the Faust app with its topics, tables, agents and timer."""
    app = make_app(s)

    def topic(name: str, partitions: int | None = None) -> Any:
        return app.topic(name, key_serializer="raw", value_serializer="raw", partitions=partitions)

    raw = topic(s.topic_raw, s.raw_partitions)
    partials = topic(s.topic_partials, s.stage2_partitions)
    broker = FaustBroker(app, s)
    t1 = TableState(app.Table("stage1", partitions=s.raw_partitions))
    t2 = TableState(app.Table("stage2", partitions=s.stage2_partitions))
    core = build_core(s, t1, t2, broker)
    core.metrics = app.spendstream_metrics = PipelineMetrics(  # type: ignore[attr-defined]
        lambda: dict(core.lag), max_label_sets=s.metrics_max_label_sets
    )
    live = LiveSpendWriter(s.redis_url)

    send = broker.send

    @app.agent(raw, name="stage1")
    async def stage1_agent(stream: Any) -> None:
        # Faust acks a batch's offsets only after this loop body has run for it
        async for batch in stream.take_events(s.worker_batch_records, within=0.05):
            records = [
                Record(e.message.partition, e.message.offset, e.message.key, e.message.value,
                       e.message.headers)
                for e in batch
            ]  # fmt: skip
            for m in await core.apply_batch(records):
                await send(m)
            await t1.flush(app.producer)

    @app.timer(s.tick_interval_s)  # type: ignore[untyped-decorator]
    async def publish_partials() -> None:
        if broker.settling():
            return
        tick = core.tick(broker.assigned(s.topic_raw))
        for m in tick.messages:
            await send(m)
        for p, offset in tick.seeks:
            await broker.seek(s.topic_raw, p, offset)

    @app.agent(partials, name="stage2")
    async def stage2_agent(stream: Any) -> None:
        # a message waits at most `within` for company: 20 ms on an alert's path
        async for batch in stream.take_events(s.stage2_batch_messages, within=0.02):
            runs: dict[int, list[tuple[int, bytes]]] = {}
            for e in batch:
                runs.setdefault(e.message.partition, []).append((e.message.offset, e.message.value))
            for q, messages in runs.items():
                res = await core.apply_partials_run(q, messages)
                if res is None:
                    continue
                try:  # outputs acknowledged by the broker before the state that implies them
                    await asyncio.gather(*[await send(m) for m in res.messages])
                except BaseException:
                    core.abandon_partials()
                    raise
                if res.windows:
                    await live.update(res.windows)
                core.commit_partials(q, res.offset)
            await t2.flush(app.producer)

    return app


def warm_tokenizers() -> None:
    """Load the tiktoken vocabularies before consuming: loading one took ~1-2 s of CPU (5% of
    a 100k-event bench run, py-spy) at the first event that needed an estimate, stalling the
    stream then instead of at start-up. A missing vocabulary is the enricher's to report."""
    from . import tokens

    for name in ("o200k_base", "cl100k_base"):
        try:
            tokens.encoding(name)
        except tokens.TokenizerUnavailable as exc:
            log.warning("tokenizer %s not preloaded: %s", name, exc)


def run_worker(s: Settings, loglevel: str = "warn") -> None:
    """Run one worker until interrupted (blocks)."""
    import faust

    from ..topics import changelog_topics, ensure_topics

    ensure_topics(s)
    ensure_topics(s, changelog_topics(s))
    warm_tokenizers()
    app = build_app(s)
    try:
        port = serve(app.spendstream_metrics, s.metrics_port, s.metrics_targets)
        log.info("metrics on :%d/metrics", port)
    except OSError as exc:  # metrics are not worth refusing to process events
        log.warning("no metrics endpoint: %s", exc)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
