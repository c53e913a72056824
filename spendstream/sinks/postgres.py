"""PostgreSQL sink: the enriched topic → ``llm_calls`` (one row per call) and the rollups.

:meth:`PostgresSink.write` makes one batch durable (the caller batches: :func:`run` hands it
up to ``batch_rows`` consumed rows at a time). A batch is COPY'd into a temporary table and
moved with ``INSERT … ON CONFLICT (event_id, ts) DO NOTHING`` in one transaction, so a redelivered
event never makes a second row. :func:`run` commits Kafka offsets only after that transaction has
committed; while PostgreSQL is unreachable it retries with backoff and stops consuming
(back-pressure), so nothing is lost and nothing is skipped.

A line the sink cannot store is dead-lettered, never skipped and never fatal: an unreadable
enriched line at once, and a row PostgreSQL refuses (a data error: NUL in text, a numeric
overflow, a constraint) by bisecting the failed batch until each refused row stands alone —
k bad rows in n cost O(k log n) extra transactions, the good rows are written, the bad ones go
to ``Settings.topic_dlq`` with the worker's headers (reason, source topic/partition/offset/line),
counted in :class:`SinkStats` and logged, and then offsets are committed. Before this, one such
row made COPY raise out of :func:`run` before the commit: every restart died on the same batch.

Prompt/response digests are HMAC-SHA256 keyed with ``Settings.prompt_hash_key`` (NULL without
a key): an unsalted SHA-256 of a short prompt is recoverable by brute force.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError

from ..config import Settings
from ..events import EnrichedEvent, describe_error
from ..stream.prices import EXTRA_FIELDS
from ..wire import dlq_headers
from .db import ensure_partitions, migrate

log = logging.getLogger("spendstream.sink")

COLUMNS = (
    "event_id",
    "ts",
    "service",
    "endpoint",
    "provider",
    "request_model",
    "response_model",
    "operation",
    "team",
    "user_id",
    "prompt_version",
    "status",
    "error_type",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "tokens_estimated",
    "cost_usd",
    "input_cost_usd",
    "cache_read_cost_usd",
    "cache_write_cost_usd",
    "output_cost_usd",
    "reasoning_cost_usd",
    "price_unknown",
    "price_source",
    "latency_ms",
    "ttft_ms",
    "cache_hit",
    "cache_kind",
    "cache_saved_usd",
    "requested_model",
    "routing_reason",
    "tags",
    "prompt_text",
    "response_text",
    "prompt_sha256",
    "response_sha256",
    # migration 0003 (issue 14)
    "service_tier",
    "provider_cost_usd",
    "usage_error",
    "price_unknown_reason",
    "audio_cost_usd",
    "image_cost_usd",
    "web_search_cost_usd",
    "request_cost_usd",
    # the priced units' counts, one column each (cache_image_read_tokens: migration 0004),
    # named and ordered as the price book's EXTRA_FIELDS so row_of reads them by that list
    *EXTRA_FIELDS,
    # migration 0005 (issue 17)
    "session_id",
    "trace_id",
    "span_id",
)
Row = tuple[Any, ...]


def _text(
    value: str | None, keep: bool, limit: int, key: bytes | None
) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    digest = None if key is None else hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
    # PostgreSQL text cannot hold NUL (COPY refuses the row): stored text gets U+FFFD instead
    return (value[:limit].replace("\x00", "\ufffd") if keep else None), digest


def row_of(
    e: EnrichedEvent,
    keep_text: bool = False,
    text_limit: int = 4000,
    hash_key: bytes | None = None,
) -> Row:
    """The ``llm_calls`` row of an enriched event: text only when configured (truncated), its
    HMAC-SHA256 under ``hash_key`` when one is configured (else NULL)."""
    ev, t, c = e.event, e.tokens, e.cost
    prompt, prompt_sha = _text(ev.prompt_text, keep_text, text_limit, hash_key)
    response, response_sha = _text(ev.response_text, keep_text, text_limit, hash_key)
    return (
        ev.event_id,
        ev.timestamp,
        ev.service,
        ev.endpoint,
        ev.provider,
        ev.request_model,
        ev.response_model,
        ev.operation.value,
        ev.team,
        ev.user_id,
        ev.prompt_version,
        ev.status.value,
        ev.error_type,
        t.input_tokens,
        t.output_tokens,
        t.cache_read_tokens,
        t.cache_creation_tokens,
        t.reasoning_tokens,
        t.estimated,
        c.total if c else None,
        c.input if c else None,
        c.cache_read if c else None,
        c.cache_write if c else None,
        c.output if c else None,
        c.reasoning if c else None,
        e.price_unknown,
        c.price_source if c else None,
        ev.latency_ms,
        ev.ttft_ms,
        ev.cache_hit,
        ev.cache_kind.value if ev.cache_kind else None,
        ev.cache_saved_usd,
        ev.requested_model,
        ev.routing_reason,
        json.dumps(ev.tags),
        prompt,
        response,
        prompt_sha,
        response_sha,
        ev.service_tier.value if ev.service_tier else None,
        ev.provider_cost_usd,
        ev.usage_error,
        e.price_unknown_reason,
        c.audio if c else None,
        c.image if c else None,
        c.web_search if c else None,
        c.request if c else None,
        *(getattr(t, unit) for unit in EXTRA_FIELDS),
        ev.session_id,
        ev.trace_id,
        ev.span_id,
    )


@dataclass
class PostgresSink:
    """Idempotent batched writer of ``llm_calls`` rows over one asyncpg connection."""

    conn: Any
    hours: set[datetime] = field(default_factory=set)
    """UTC hours written since the last rollup refresh (their days are the days touched)."""
    _partitions: set[date] = field(default_factory=set)

    async def write(self, batch: Sequence[Row]) -> int:
        """Make ``batch`` durable; returns how many rows were new."""
        days = {r[1].date() for r in batch}
        new_days = days - self._partitions
        if new_days:
            await ensure_partitions(self.conn, new_days)
            self._partitions |= new_days
        async with self.conn.transaction():
            await self.conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS llm_calls_in "
                "(LIKE llm_calls INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            await self.conn.copy_records_to_table("llm_calls_in", records=batch, columns=COLUMNS)
            status = await self.conn.execute(
                f"INSERT INTO llm_calls ({', '.join(COLUMNS)}) "
                f"SELECT {', '.join(COLUMNS)} FROM llm_calls_in "
                "ON CONFLICT (event_id, ts) DO NOTHING"
            )
        inserted = int(status.rsplit(" ", 1)[1])
        self.hours |= {r[1].replace(minute=0, second=0, microsecond=0) for r in batch}
        return inserted

    async def write_good(self, batch: Sequence[Row]) -> tuple[int, list[tuple[int, str]]]:
        """Write ``batch``; the rows PostgreSQL refuses are isolated by bisection and returned
        as (index in ``batch``, reason) instead of failing the batch. Returns (new rows,
        refused). Connection errors and errors that are not about a row's data propagate."""
        inserted = 0
        refused: list[tuple[int, str]] = []
        todo = [(0, len(batch))]
        while todo:
            lo, hi = todo.pop()
            try:
                inserted += await self.write(batch[lo:hi])
            except Exception as exc:
                if not _is_row_error(exc):
                    raise
                if hi - lo == 1:
                    refused.append((lo, f"PostgreSQL refused the row: {type(exc).__name__}: {exc}"))
                    continue
                mid = (lo + hi) // 2
                todo += [(mid, hi), (lo, mid)]
        return inserted, sorted(refused)

    def take_touched(self) -> set[datetime]:
        """The hours written since the last call, forgotten here."""
        hours, self.hours = self.hours, set()
        return hours


async def refresh_rollups(conn: Any, hours: Iterable[datetime]) -> None:
    """Rewrite ``hourly_team_costs`` for ``hours`` and ``daily_llm_costs`` for their days from
    the rows, in one transaction. A day's rewrite scans the day (its p95 needs every latency);
    an hour's only the hour."""
    hours = sorted(hours)
    async with conn.transaction():
        for day in sorted({h.date() for h in hours}):
            await conn.execute("DELETE FROM daily_llm_costs WHERE day = $1", day)
            await conn.execute(
                """
                INSERT INTO daily_llm_costs
                SELECT $1::date, service, endpoint, request_model, count(*),
                       sum(input_tokens), sum(output_tokens), sum(cache_read_tokens),
                       coalesce(sum(cost_usd), 0), avg(latency_ms),
                       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
                FROM llm_calls
                WHERE ts >= $1::date AND ts < $1::date + 1
                GROUP BY service, endpoint, request_model
                """,
                day,
            )
        for hour in hours:
            await conn.execute("DELETE FROM hourly_team_costs WHERE hour = $1", hour)
            await conn.execute(
                """
                INSERT INTO hourly_team_costs
                SELECT $1::timestamptz, coalesce(team, '-'), count(*),
                       sum(input_tokens), sum(output_tokens), coalesce(sum(cost_usd), 0)
                FROM llm_calls
                WHERE ts >= $1::timestamptz AND ts < $1::timestamptz + interval '1 hour'
                GROUP BY 2
                """,
                hour,
            )


class RollupRefresher:
    """Refreshes the rollups in the background, on a connection of its own.

    A day's rewrite scans the day's rows: seconds on a busy day (1.8M rows in the soak), and
    done inline it paused ingestion every 30 s, lag growing with the day. Here the writer never
    waits for it, and the next refresh comes no sooner than ``every_s`` and 10x the last
    refresh's duration, so rollups cost at most a tenth of one connection's time.
    """

    def __init__(
        self, s: Settings, sink: Callable[[], PostgresSink | None], every_s: float
    ) -> None:
        self.s = s
        self.sink = sink
        self.every_s = every_s
        self.last_s = 0.0
        self._conn: Any = None
        self._pending: set[datetime] = set()

    async def refresh(self) -> bool:
        """One refresh of everything touched so far; False when PostgreSQL is unavailable
        (what was touched is kept for the next try)."""
        sink = self.sink()
        if sink is not None:
            self._pending |= sink.take_touched()
        if not self._pending:
            return True
        t0 = time.monotonic()
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await connect(self.s)
            await refresh_rollups(self._conn, self._pending)
        except Exception as exc:
            if not _is_connection_error(exc):
                raise
            log.warning("rollups postponed, PostgreSQL unavailable (%s)", exc)
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            return False
        self._pending = set()
        self.last_s = time.monotonic() - t0
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh until ``stop``; then once more, so a stopped sink leaves them current."""
        while not stop.is_set():
            wait = max(self.every_s, 10 * self.last_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            await self.refresh()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


async def connect(s: Settings) -> Any:
    import asyncpg

    return await asyncpg.connect(s.postgres_dsn, timeout=10)


async def migrate_db(s: Settings) -> list[str]:
    conn = await connect(s)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


@dataclass
class SinkStats:
    records: int = 0
    rows_seen: int = 0
    rows_new: int = 0
    bad_lines: int = 0
    """Enriched lines that do not parse as :class:`EnrichedEvent` (dead-lettered)."""
    rows_refused: int = 0
    """Rows PostgreSQL refused (dead-lettered)."""
    dead_letters: int = 0
    """Records the sink sent to the dead-letter topic: bad_lines + rows_refused."""
    retries: int = 0


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a row came from: what its dead letter carries (the line as it was consumed)."""

    topic: str
    partition: int
    offset: int
    line: int
    key: bytes | None
    raw: bytes


class DeadLetters:
    """The sink's side of the dead-letter topic: one record per line it cannot store, with the
    worker's headers, acknowledged by the broker before the sink commits its offsets."""

    def __init__(self, s: Settings, stats: SinkStats) -> None:
        from aiokafka import AIOKafkaProducer

        self.topic = s.topic_dlq
        self.stats = stats
        self.producer = AIOKafkaProducer(acks="all", **s.aiokafka())

    async def send(self, origin: Origin, reason: str) -> None:
        h = dlq_headers(origin.topic, origin.partition, origin.offset, origin.line, reason)
        await self.producer.send_and_wait(
            self.topic, value=origin.raw, key=origin.key, headers=list(h.items())
        )
        self.stats.dead_letters += 1
        log.error("dead-lettered %s[%d]@%d line %d: %s", origin.topic, origin.partition,
                  origin.offset, origin.line, reason[:500])  # fmt: skip


def parse_records(
    msgs: Iterable[Any], s: Settings, stats: SinkStats, dead: list[tuple[Origin, str]]
) -> tuple[list[Row], list[Origin]]:
    """Rows of consumed records and where each came from; unreadable lines go to ``dead``."""
    key = s.prompt_hash_key.get_secret_value().encode() if s.prompt_hash_key else None
    rows: list[Row] = []
    origins: list[Origin] = []
    for m in msgs:
        stats.records += 1
        for i, line in enumerate((m.value or b"").split(b"\n")):
            if not line.strip():
                continue
            origin = Origin(m.topic, m.partition, m.offset, i, m.key, line)
            try:
                rows.append(row_of(EnrichedEvent.model_validate_json(line), s.keep_text, 4000, key))
            except ValidationError as exc:
                stats.bad_lines += 1
                dead.append((origin, f"unreadable enriched line: {describe_error(exc)}"))
                continue
            except Exception as exc:  # ValueError, UnicodeError: still this line's fault
                stats.bad_lines += 1
                dead.append((origin, f"unreadable enriched line: {type(exc).__name__}: {exc}"))
                continue
            origins.append(origin)
    return rows, origins


@dataclass
class _Writer:
    """The sink's connection, kept across batches and replaced after a connection error."""

    s: Settings
    stats: SinkStats
    conn: Any = None
    sink: PostgresSink | None = None

    async def write(
        self, rows: list[Row], batch_rows: int, stop: asyncio.Event
    ) -> list[tuple[int, str]]:
        """Make ``rows`` durable (retrying while PostgreSQL is unreachable: back-pressure);
        returns (index, reason) of the rows PostgreSQL refused. CancelledError on stop."""
        delay = 0.5
        while True:
            try:
                if self.conn is None or self.conn.is_closed():
                    self.conn = await connect(self.s)
                    await migrate(self.conn)
                    hours = self.sink.hours if self.sink else set()
                    self.sink = PostgresSink(self.conn, hours=hours)
                refused: list[tuple[int, str]] = []
                for i in range(0, len(rows), batch_rows):
                    assert self.sink is not None
                    new, bad = await self.sink.write_good(rows[i : i + batch_rows])
                    self.stats.rows_new += new
                    refused += [(i + j, why) for j, why in bad]
                return refused
            except Exception as exc:
                if not _is_connection_error(exc):
                    raise
                self.stats.retries += 1
                log.warning("PostgreSQL unavailable (%s); retrying in %.1fs", exc, delay)
            if self.conn is not None:
                self.conn.terminate()
                self.conn = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            if stop.is_set():
                raise asyncio.CancelledError

    async def close(self) -> None:
        if self.conn is not None:
            try:
                await self.conn.close(timeout=5)
            except Exception:  # already broken: just drop it
                self.conn.terminate()


async def run(
    s: Settings,
    *,
    group: str = "spendstream-sink-postgres",
    batch_rows: int = 5000,
    batch_wait_s: float = 1.0,
    rollup_every_s: float = 30.0,
    stop: asyncio.Event | None = None,
    stats: SinkStats | None = None,
) -> SinkStats:
    """Consume the enriched topic into PostgreSQL until ``stop`` is set; counts go to
    ``stats`` (given: a metrics collector reads the same object)."""
    from aiokafka import AIOKafkaConsumer

    stop = stop or asyncio.Event()
    stats = stats if stats is not None else SinkStats()
    consumer = AIOKafkaConsumer(
        s.topic_enriched,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=3_600_000,  # a long PostgreSQL outage must not evict us
        **s.aiokafka(),
    )
    dlq = DeadLetters(s, stats)
    await consumer.start()
    await dlq.producer.start()
    writer = _Writer(s, stats)
    rollups = RollupRefresher(s, lambda: writer.sink, rollup_every_s)
    done = asyncio.Event()  # the consume loop ended: a last refresh, then the task ends
    refresher = asyncio.create_task(rollups.run(done))
    try:
        while not stop.is_set():
            got = await consumer.getmany(timeout_ms=int(batch_wait_s * 1000), max_records=500)
            if not got:
                continue
            if not await _store(got, s, stats, writer, dlq, batch_rows, stop):
                return stats
            await _commit(consumer)
    finally:
        done.set()
        await refresher  # its last refresh covers every row written
        await rollups.close()
        await consumer.stop()
        await dlq.producer.stop()
        await writer.close()
    return stats


async def _store(
    got: dict[Any, list[Any]],
    s: Settings,
    stats: SinkStats,
    writer: _Writer,
    dlq: DeadLetters,
    batch_rows: int,
    stop: asyncio.Event,
) -> bool:
    """One poll's records into PostgreSQL, the lines it cannot store into the dead-letter topic;
    False when stopped before the rows were durable (offsets must not be committed)."""
    dead: list[tuple[Origin, str]] = []
    rows, origins = parse_records((m for msgs in got.values() for m in msgs), s, stats, dead)
    try:
        refused = await writer.write(rows, batch_rows, stop) if rows else []
    except asyncio.CancelledError:
        return False
    stats.rows_refused += len(refused)
    dead += [(origins[i], why) for i, why in refused]
    for origin, reason in sorted(dead, key=lambda d: (d[0].partition, d[0].offset, d[0].line)):
        await dlq.send(origin, reason)
    stats.rows_seen += len(rows)
    return True


async def _commit(consumer: Any) -> None:
    from aiokafka.errors import CommitFailedError

    try:
        await consumer.commit()
    except CommitFailedError as exc:  # rows are in; a redelivery adds none
        log.warning("offset commit failed after a rebalance: %s", exc)


def _is_row_error(exc: BaseException) -> bool:
    """A refusal of the rows' data (SQLSTATE class 22/23, or a value asyncpg cannot encode):
    bisecting finds the row. Anything else (a missing column, no permission) is not one row's
    fault and must stop the sink rather than dead-letter every row."""
    import asyncpg

    return isinstance(
        exc,
        asyncpg.DataError
        | asyncpg.IntegrityConstraintViolationError
        | ValueError
        | ArithmeticError
        | TypeError,
    ) and not _is_connection_error(exc)


def _is_connection_error(exc: BaseException) -> bool:
    import asyncpg

    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.CannotConnectNowError
        | asyncpg.exceptions.OperatorInterventionError
        # a server-side termination seen between queries can leave the client mid-protocol
        # ("cannot switch to state …; another operation is in progress"): reconnect
        | asyncpg.InternalClientError,
    )


__all__ = [
    "COLUMNS",
    "DeadLetters",
    "Origin",
    "PostgresSink",
    "SinkStats",
    "migrate_db",
    "parse_records",
    "row_of",
    "run",
]
