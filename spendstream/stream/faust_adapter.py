"""Everything that knows Faust's internals, in one place.

faust-streaming gives no public way to write a table key into a chosen changelog partition, to
read the group's committed offset of a partition, or to see the end offset the fetcher last
saw; the worker needs all three (see :mod:`spendstream.stream.worker`). They are here, behind
small typed objects, so an upgrade of Faust has one module to check: :class:`TableState`
(``Table.data`` and ``changelog_topic``), :class:`FaustBroker` (``consumer._committed_offset``,
``consumer.highwater`` with aiokafka's ``last_poll_timestamp``, ``consumer.seek``,
``assignor.assigned_actives``) and :func:`make_app` (the ``faust.App`` settings the worker
relies on).

Changelog records and outputs go straight to ``app.producer.send`` (:meth:`TableState.flush`,
:meth:`FaustBroker.send`), not through ``send_changelog`` / ``Topic.send``: a one-day replay
went from 49.6 s to 14.9 s, exact. First landed and reverted on 2026-12-03 after 2 of ~12 runs
with a rebalance never closed part of the windows. The cause was not this path but a false
idle the faster worker made likely (stage 1 had applied all its fetcher had handed over while
the fetcher had not polled for seconds; see ``Worker._idle``). With that fixed it landed again
after 21 of 21 rebalance runs (~72 rebalances) were exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from ..config import Settings
from .worker import EndOffset

if TYPE_CHECKING:
    import faust

    from .worker import Message


class TableState:
    """A Faust table's storage, writing each key to a chosen changelog partition straight
    through the app's producer.

    ``table[key] = value`` would pick the changelog partition of the "current event", which
    is ambiguous for a batch that spans partitions; here the partition is explicit. And
    ``Table.send_changelog`` costs a ``FutureMessage``, a trip through Faust's producer buffer
    and its stdlib-JSON codec per key: with ~8 stage-2 and ~2.5 stage-1 changelog records per
    closed window that path was ~25% of a worker's CPU in a replay (py-spy, bench/replay_week).
    Here a write stores the value, encodes key and value once with msgspec (the same JSON
    Faust's codec reads back on restore) and queues the record; :meth:`flush` hands the queue
    to the producer in order. The agent flushes after each step, before Faust acks the step's
    input (as Faust's own changelog sends, nothing waits for the broker's acknowledgement;
    a record lost in a crash is repaired as before: stage 1 re-reads, stage 2 replays).
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.pending: list[tuple[int, bytes, bytes | None]] = []

    def get(self, key: str) -> Any:
        return _store(self.table).get(key)

    def keys(self) -> Any:
        return _store(self.table).keys()

    def put(self, partition: int, key: str, value: Any) -> None:
        _store(self.table)[key] = value
        self.pending.append((partition, _encode(key), _encode(value)))

    def delete(self, partition: int, key: str) -> None:
        _store(self.table).pop(key, None)
        self.pending.append((partition, _encode(key), None))

    async def flush(self, producer: Any) -> None:
        """Send the queued records (in write order) through Faust's producer."""
        if not self.pending:
            return
        topic = self.table.changelog_topic.get_topic_name()
        pending, self.pending = self.pending, []
        for partition, key, value in pending:
            await producer.send(topic, key, value, partition, None, None)


_encode = msgspec.json.Encoder().encode


def _store(table: Any) -> dict[str, Any]:
    """The plain dict under a memory-store table. ``Table.get`` (and the store's own ``get``)
    go through ``__getitem__`` and a KeyError for every absent key, plus a sensor call per
    read; stage 2 reads ~12 keys per scope-minute it closes, most of them absent."""
    data: dict[str, Any] = table.data.data
    return data


class StoreReads(Mapping[str, Any]):
    """Read-only view of a table's committed values for :class:`~.pipeline.WriteBuffer`
    (writes still go through the table, which sends them to its changelog)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: str, default: Any = None) -> Any:
        return _store(self.table).get(key, default)

    def __getitem__(self, key: str) -> Any:
        return _store(self.table)[key]

    def __contains__(self, key: object) -> bool:
        return key in _store(self.table)

    def __iter__(self) -> Iterator[str]:
        return iter(list(_store(self.table)))

    def __len__(self) -> int:
        return len(_store(self.table))


class FaustBroker:
    """The :class:`~spendstream.stream.worker.Broker` of a running Faust app."""

    def __init__(self, app: Any, s: Settings) -> None:
        self.app = app
        self.s = s
        self.topics = {
            "enriched": s.topic_enriched,
            "dlq": s.topic_dlq,
            "partials": s.topic_partials,
            "windows": s.topic_windows,
            "alerts": s.topic_alerts,
        }

    async def send(self, m: Message) -> Awaitable[Any]:
        """Produce ``m`` through Faust's producer; returns the future of its acknowledgement.
        Straight to the producer, not through ``Topic.send`` (a ``FutureMessage`` and codec
        lookups per record: ~7% of a worker's CPU in a replay, py-spy)."""
        topic = self.topics[m.topic]
        return await self.app.producer.send(topic, m.key, m.value, m.partition, None, m.headers)  # type: ignore[no-any-return]

    @staticmethod
    def _tp(topic: str, partition: int) -> Any:
        from faust.types import TP

        return TP(topic, partition)

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        await self.app.consumer.seek(self._tp(topic, partition), offset)

    async def probe(self, topic: str, partition: int, offset: int) -> int | None:
        return await asyncio.to_thread(probe_offset, self.s, topic, partition, offset)

    def committed(self, topic: str, partition: int) -> int | None:
        got = self.app.consumer._committed_offset.get(self._tp(topic, partition))
        return None if got is None else int(got)

    def highwater(self, topic: str, partition: int) -> EndOffset | None:
        """The end offset the fetcher last saw (every fetch response carries it: asking the
        broker on every tick took ~1.2 s) and when it saw it (aiokafka's wall-clock
        ``last_poll_timestamp``, moved onto the monotonic clock the worker core uses)."""
        tp = self._tp(topic, partition)
        try:
            hw = self.app.consumer.highwater(tp)
            polled_ms = self.app.consumer._thread._ensure_consumer().last_poll_timestamp(tp)
        except Exception:  # not fetched yet (assignment in progress)
            return None
        if hw is None or polled_ms is None:
            return None
        age = max(0.0, time.time() - polled_ms / 1000)
        return EndOffset(int(hw), time.monotonic() - age)

    def assigned(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def settling(self) -> bool:
        """Recovering tables or rebalancing: the state is not the group's yet."""
        return bool(self.app.in_recovery or self.app.rebalancing)


def probe_offset(s: Settings, topic: str, partition: int, offset: int) -> int | None:
    """The first existing offset at or after ``offset`` (a separate confluent-kafka consumer
    reads it; transaction markers and retention leave holes); None when none exists yet."""
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
                return int(found)  # control records (markers) are skipped
        return None
    finally:
        c.close()


def make_app(s: Settings) -> faust.App:
    """The ``faust.App`` with the settings the worker's guarantees rest on: at-least-once,
    acks=all, memory tables restored from compacted changelogs, earliest offsets."""
    import faust

    broker = [f"kafka://{h.strip()}" for h in s.kafka_bootstrap_servers.split(",") if h.strip()]
    conf: dict[str, Any] = {}
    if s.kafka_security_protocol != "PLAINTEXT":
        conf["broker_credentials"] = _credentials(s)
    datadir = s.stack_dir / "worker-data" / s.worker_app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
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
        # an enriched record (~36 events) is ~40 KB: Faust's default 16 KiB batch and 0 linger
        # made every record its own produce request (aiokafka's sender was ~10% of the worker's
        # CPU); 5 ms of linger batches a stage-1 batch's records and stage 2's window totals
        producer_linger=0.005,
        producer_max_batch_size=512 * 1024,
        table_standby_replicas=0,
        datadir=str(datadir),
        **conf,
    )


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
