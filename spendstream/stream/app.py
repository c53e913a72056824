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
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from typing import Any

from ..config import Settings
from ..sinks.live import LiveSpendWriter
from ..sinks.metrics import PipelineMetrics, serve
from ..wire import check_headers, dlq_headers
from .enrich import Enricher, redact_record
from .offsets import OffsetGuard
from .pipeline import Snapshot, Stage1, Stage2, WriteBuffer, route
from .prices import PriceBook
from .windows import RecordAggregate

log = logging.getLogger("spendstream.worker")

SKEW_REASON = "ahead of the worker clock"
"""In the dead-letter reason of an event dated beyond ``max_future_skew_s`` (enrich.py)."""
ENRICHED_HEADERS = {"spendstream-wire": b"jsonl/1", "content-type": b"application/x-enriched"}


class WorkerStats:
    """Counters of this worker process (exported by the metrics sink)."""

    def __init__(self) -> None:
        self.records = 0
        self.events = 0
        self.dead = 0
        self.price_unknown = 0
        self.late_dropped = 0
        self.future_skewed = 0
        self.windows_closed = 0
        self.alerts = 0
        self.batches = 0


class TableState:
    """Stage-1 storage on a Faust table, writing each key to its raw partition's changelog.

    ``table[key] = value`` would pick the changelog partition of the "current event", which
    is ambiguous for a batch that spans partitions; here the partition is explicit.
    """

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: str) -> Any:
        return self.table.data.get(key)

    def keys(self) -> Any:
        return self.table.data.keys()

    def put(self, partition: int, key: str, value: Any) -> None:
        self.table.data[key] = value
        self.table.send_changelog(partition, key, value)

    def delete(self, partition: int, key: str) -> None:
        self.table.data.pop(key, None)
        self.table.send_changelog(partition, key, None, value_serializer="raw")


def build_app(s: Settings) -> Any:
    """Create the Faust app with its topics, tables, agents and timer."""
    import faust
    from faust.types import TP

    broker = [f"kafka://{h.strip()}" for h in s.kafka_bootstrap_servers.split(",") if h.strip()]
    conf: dict[str, Any] = {}
    if s.kafka_security_protocol != "PLAINTEXT":
        conf["broker_credentials"] = _credentials(s)
    datadir = s.stack_dir / "worker-data" / s.worker_app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        s.worker_app_id,
        broker=broker,
        store="memory://",
        topic_partitions=s.raw_partitions,
        topic_replication_factor=s.topic_replication_factor,
        topic_allow_declare=True,
        web_enabled=False,
        processing_guarantee="at_least_once",
        broker_commit_interval=1.0,
        broker_session_timeout=s.worker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, s.worker_session_timeout_s / 3),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        table_standby_replicas=0,
        datadir=str(datadir),
        **conf,
    )
    raw = app.topic(
        s.topic_raw, key_serializer="raw", value_serializer="raw", partitions=s.raw_partitions
    )
    enriched = app.topic(s.topic_enriched, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(s.topic_dlq, key_serializer="raw", value_serializer="raw")
    partials = app.topic(
        s.topic_partials,
        key_serializer="raw",
        value_serializer="raw",
        partitions=s.stage2_partitions,
    )
    windows = app.topic(s.topic_windows, key_serializer="raw", value_serializer="raw")
    alerts = app.topic(s.topic_alerts, key_serializer="raw", value_serializer="raw")

    t1 = app.Table("stage1", partitions=s.raw_partitions)
    t2 = app.Table("stage2", partitions=s.stage2_partitions)
    enricher = Enricher(
        PriceBook.from_file(s.price_overrides_file),
        keep_text=s.keep_text,
        max_future_skew_s=s.max_future_skew_s,
    )
    # events further ahead of this worker's clock than the admission check allows (300 s when
    # the check is off) do not move the watermark: one wrong clock cannot blind the windows
    skew = 300.0 if s.max_future_skew_s is None else s.max_future_skew_s
    stage1 = Stage1(TableState(t1), s.window_retention_minutes, max_skew_s=skew)
    t2_writes = WriteBuffer(t2)
    live = LiveSpendWriter(s.redis_url)
    stage2 = Stage2(
        t2_writes,
        s.rule_config(),
        s.raw_partitions,
        s.allowed_lateness_s,
        s.window_retention_minutes,
        max_skew_s=skew,
    )
    stats = WorkerStats()
    end_seen: dict[int, tuple[int, float]] = {}
    stalled: dict[int, tuple[int, float]] = {}
    known: set[int] = set()
    last_resync = [time.monotonic()]
    last_log = [0.0]
    app.spendstream_stats = stats  # type: ignore[attr-defined]

    async def seek(topic: str, partition: int, offset: int) -> None:
        await app.consumer.seek(TP(topic, partition), offset)

    def probe_sync(topic: str, partition: int, offset: int) -> int | None:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer(
            s.librdkafka(**{"group.id": f"{s.worker_app_id}-probe", "enable.auto.commit": False})
        )
        try:
            low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if offset < low:
                return int(low)  # deleted by retention
            if offset >= high:
                return None
            c.assign([TopicPartition(topic, partition, offset)])
            for m in c.consume(1, 10.0):
                found = m.offset()
                if m.error() is None and found is not None:
                    return found  # control records (markers) are skipped
            return None
        finally:
            c.close()

    async def probe(topic: str, partition: int, offset: int) -> int | None:
        return await asyncio.to_thread(probe_sync, topic, partition, offset)

    guard = OffsetGuard(seek, probe)
    lag: dict[int, int] = {}
    metrics = PipelineMetrics(lambda: dict(lag), max_label_sets=s.metrics_max_label_sets)
    app.spendstream_metrics = metrics  # type: ignore[attr-defined]

    @app.agent(raw, name="stage1")
    async def stage1_agent(stream: Any) -> None:
        # Batches of records: table keys are written once per batch (into the changelog
        # partition of the record's own raw partition), and Faust acks the batch's offsets
        # only after this loop body has run for it.
        async for batch in stream.take_events(s.worker_batch_records, within=0.05):
            applied: list[tuple[int, int, RecordAggregate]] = []
            nxt: dict[int, int | None] = {}
            batch_calls: list[Any] = []
            for event in batch:
                m = event.message
                p, offset = m.partition, m.offset
                expected = nxt[p] if p in nxt else stage1.next_offset(p)
                if not await guard.admit(s.topic_raw, p, offset, expected):
                    nxt[p] = expected
                    continue
                # a record before ``expected`` was applied (and counted) before a rebalance or
                # restart: its calls are re-sent downstream (sinks drop repeats by event_id) but
                # not counted again, or every rebalance would inflate the Prometheus counters
                fresh = expected is None or offset >= expected
                nxt[p] = max(offset + 1, expected or 0)
                stats.records += 1
                bad_header = check_headers(m.headers)
                if bad_header is not None:
                    await dlq.send(
                        key=m.key,
                        value=redact_record(m.value or b"", s.keep_text),
                        headers=dlq_headers(s.topic_raw, p, offset, None, bad_header),
                    )
                    stats.dead += int(fresh)
                    applied.append((p, offset, RecordAggregate()))  # handled: offset done
                    continue
                res = enricher.process(m.value)
                for d in res.dead:
                    await dlq.send(
                        key=m.key,
                        value=d.raw,
                        headers=dlq_headers(s.topic_raw, p, offset, d.line, d.reason),
                    )
                if fresh:
                    stats.dead += len(res.dead)
                    stats.future_skewed += sum(1 for d in res.dead if SKEW_REASON in d.reason)
                    batch_calls.extend(res.calls)
                    stats.events += len(res.calls)
                    stats.price_unknown += sum(1 for c in res.calls if c.parts_pico is None)
                if res.calls:
                    await enriched.send(
                        key=m.key,
                        value=b"\n".join(c.to_json(s.keep_text) for c in res.calls),
                        headers=ENRICHED_HEADERS,
                    )
                applied.append((p, offset, res.aggregate))
            stage1.apply_batch(applied)
            stats.late_dropped = stage1.late_dropped
            metrics.add_calls(batch_calls)  # metrics per batch, never per event
            metrics.dead_letters = stats.dead
            metrics.late_dropped = stats.late_dropped
            metrics.future_skewed = stats.future_skewed
            stats.batches += 1
            if stats.batches % 200 == 0:
                for p in {p for p, _, _ in applied}:
                    stage1.prune(p)

    @app.timer(s.tick_interval_s)  # type: ignore[untyped-decorator]
    async def publish_partials() -> None:
        if app.in_recovery or app.rebalancing:
            return
        assigned = {
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == s.topic_raw
        }
        if not assigned:
            known.clear()
            return
        # No await before sending: everything below is computed in one synchronous step, so
        # snapshots, watermarks and idle flags describe the same applied state (a batch in
        # flight is in none of them). End offsets are the ones the fetcher last saw (every
        # fetch response carries them): asking the broker here took ~1.2 s per tick.
        hws = {p: _highwater(p) for p in assigned}
        now = time.monotonic()
        resync = now - last_resync[0] >= s.resync_interval_s
        if resync:
            last_resync[0] = now
        by_q: dict[int, list[list[Any]]] = defaultdict(list)
        reports: dict[int, list[Any]] = {}
        for p in sorted(assigned):
            if p not in known or resync:
                # newly owned (restored from the changelog) or periodic: publish everything
                keys = stage1.keys_of(p)
                stage1.dirty.pop(p, None)
                snaps = stage1.snapshots(p, keys)
            else:
                snaps = stage1.snapshots(p)
            for q, sn in route(snaps, s.stage2_partitions):
                by_q[q].append([sn.partition, sn.scope, sn.minute, sn.thru, sn.agg])
            reports[p] = [stage1.watermark(p), _idle(p, hws[p], now)]
            hw, nx = hws[p], stage1.next_offset(p)
            if hw is not None:
                lag[p] = max(0, hw - (nx or 0))
        for p in [p for p in lag if p not in assigned]:
            del lag[p]
        known.clear()
        known.update(assigned)
        if now - last_log[0] >= 10:
            last_log[0] = now
            log.info(
                "worker: records=%d events=%d dead=%d late_dropped=%d windows=%d alerts=%d "
                "watermarks=%s",
                stats.records,
                stats.events,
                stats.dead,
                stats.late_dropped,
                stats.windows_closed,
                stats.alerts,
                reports,
            )
        for q in range(s.stage2_partitions):
            # chunks of snapshots first, the watermarks last: stage 2 must have seen every
            # snapshot a watermark covers before it closes minutes with it
            for body in _chunks(by_q.get(q, []), reports):
                await partials.send(value=body, partition=q)
        for p in assigned:
            await _reread_if_skipped(p, now)

    async def _reread_if_skipped(p: int, now: float) -> None:
        """The group's committed offset is past the state's next offset and the state has
        not moved for a while: records were acked without being applied (Faust's gap acks,
        then a restart) and no newer record arrives to show it. Re-read them."""
        nxt = stage1.next_offset(p)
        tp = TP(s.topic_raw, p)
        committed = app.consumer._committed_offset.get(tp)  # type: ignore[attr-defined]
        if nxt is None or committed is None or committed <= nxt:
            stalled.pop(p, None)
            return
        seen = stalled.get(p)
        if seen is None or seen[0] != nxt:
            stalled[p] = (nxt, now)
        elif now - seen[1] >= 2.0:
            stalled[p] = (nxt, now)
            log.warning(
                "%s[%d]: committed offset %d is past the applied state (next %d); re-reading",
                s.topic_raw, p, committed, nxt,
            )  # fmt: skip
            await app.consumer.seek(tp, nxt)

    def _highwater(p: int) -> int | None:
        try:
            hw = app.consumer.highwater(TP(s.topic_raw, p))
        except Exception:  # not fetched yet (assignment in progress)
            return None
        return None if hw is None else int(hw)

    def _idle(p: int, hw: int | None, now: float) -> bool:
        """Nothing new arrived in the partition for idle_timeout_s (its end offset did not
        move) and every record in it is applied. Judged on the broker's end offsets and the
        applied state, so a stalled worker never takes a busy partition for an idle one."""
        if hw is None:
            return False
        seen = end_seen.get(p)
        if seen is None or seen[0] != hw:
            end_seen[p] = (hw, now)
            return False
        if now - seen[1] < s.idle_timeout_s:
            return False
        wm = stage1.t.get(f"{p}|wm")
        if wm is not None:
            return bool(wm["thru"] + 1 >= hw)
        committed = (
            app.consumer._committed_offset.get(  # type: ignore[attr-defined]
                TP(s.topic_raw, p)
            )
            or 0
        )
        return bool(hw <= committed)

    @app.agent(partials, name="stage2")
    async def stage2_agent(stream: Any) -> None:
        async for event in stream.events():
            q, offset = event.message.partition, event.message.offset
            done = t2_writes.get(f"o|{q}")
            if not await guard.admit(
                s.topic_partials, q, offset, None if done is None else done + 1
            ):
                continue
            if done is not None and offset <= done:
                continue  # applied and its outputs delivered before a restart
            msg = json.loads(event.message.value)
            snaps = [Snapshot(p, sc, mi, th, ag) for p, sc, mi, th, ag in msg["snaps"]]
            delivered = []
            for fix in stage2.apply_snapshots(q, snaps):
                delivered.append(
                    await windows.send(
                        key=fix.key.encode(), value=json.dumps(fix.to_dict()).encode()
                    )
                )
            stage2.set_watermarks(q, {int(p): (v[0], bool(v[1])) for p, v in msg["wm"].items()})
            res = stage2.close(q)
            for w in res.windows:
                delivered.append(
                    await windows.send(key=w.key.encode(), value=json.dumps(w.to_dict()).encode())
                )
            for a in res.alerts:
                delivered.append(await alerts.send(key=a.scope.encode(), value=a.to_json()))
            if delivered:
                # outputs acknowledged by the broker before the state that implies them
                await asyncio.gather(*delivered)
            if res.windows:
                await live.update(res.windows)
            t2_writes[f"o|{q}"] = offset
            t2_writes.commit()
            stats.windows_closed += len(res.windows)
            stats.alerts += len(res.alerts)

    return app


MAX_PARTIALS_BYTES = 256 * 1024


def _chunks(snaps: list[list[Any]], reports: dict[int, list[Any]]) -> list[bytes]:
    out: list[bytes] = []
    batch: list[str] = []
    size = 0
    for sn in snaps:
        enc = json.dumps(sn)
        if batch and size + len(enc) > MAX_PARTIALS_BYTES:
            out.append(('{"snaps":[' + ",".join(batch) + '],"wm":{}}').encode())
            batch, size = [], 0
        batch.append(enc)
        size += len(enc) + 1
    out.append(('{"snaps":[' + ",".join(batch) + '],"wm":' + json.dumps(reports) + "}").encode())
    return out


def changelog_topics(s: Settings) -> list[Any]:
    """The tables' changelog topics, created up front (compacted, co-partitioned)."""
    from ..topics import TopicSpec

    return [
        TopicSpec(
            f"{s.worker_app_id}-stage1-changelog",
            s.raw_partitions,
            s.topic_replication_factor,
            {"cleanup.policy": "compact"},
        ),
        TopicSpec(
            f"{s.worker_app_id}-stage2-changelog",
            s.stage2_partitions,
            s.topic_replication_factor,
            {"cleanup.policy": "compact"},
        ),
    ]


def _credentials(s: Settings) -> Any:
    import faust

    kw = s.aiokafka()
    if s.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kw.get("sasl_plain_username"),
            password=kw.get("sasl_plain_password"),
            mechanism=kw.get("sasl_mechanism", "PLAIN"),
            ssl_context=kw.get("ssl_context"),
        )
    return faust.SSLCredentials(kw["ssl_context"])


def run_worker(s: Settings, loglevel: str = "warn") -> None:
    """Run one worker until interrupted (blocks)."""
    import faust

    from ..topics import ensure_topics

    ensure_topics(s)
    ensure_topics(s, changelog_topics(s))
    app = build_app(s)
    try:
        port = serve(app.spendstream_metrics, s.metrics_port, s.metrics_targets)
        log.info("metrics on :%d/metrics", port)
    except OSError as exc:  # metrics are not worth refusing to process events
        log.warning("no metrics endpoint: %s", exc)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
