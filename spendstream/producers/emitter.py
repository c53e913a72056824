"""The emitter: hands call events to Kafka without ever blocking or raising into the host.

``emit()`` only appends the (already validated) event to a bounded in-memory buffer; a daemon
thread serializes events, packs those that share a Kafka key into envelope records
(:mod:`spendstream.wire`) and hands them to an idempotent confluent-kafka producer. When Kafka is
slow or down the buffer fills and further events are dropped and counted by reason, never
queued without bound; a warning is logged at most once per interval, from the background thread.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..config import Settings, get_settings
from ..events import LLMCallEvent
from ..wire import HEADERS, pack
from .tracking import P, R, TrackedCall, make_tracker, traced

log = logging.getLogger("spendstream.producer")

_DRAIN_MAX = 5_000
"""Events the background thread takes from the buffer per pass; bounds its private backlog."""


class DropReason(StrEnum):
    BUFFER_FULL = "buffer_full"
    """The in-memory buffer was full (Kafka slow or unreachable)."""
    INVALID = "invalid"
    """Not an LLMCallEvent, or it could not be serialized."""
    TOO_LARGE = "too_large"
    """One event is larger than the producer's message.max.bytes."""
    DELIVERY_FAILED = "delivery_failed"
    """The broker did not acknowledge it within producer_message_timeout_ms."""
    CLOSED = "closed"
    """Emitted after close(), or still queued when the exit flush timed out."""
    INTERNAL = "internal_error"


@dataclass(frozen=True, slots=True)
class EmitterStats:
    """A snapshot of what the emitter did with the events it was given."""

    delivered: int
    dropped: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    """Accepted events not yet acknowledged by the broker (buffer + backlog + in flight)."""
    last_error: str | None = None

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class _RateLimitFilter(logging.Filter):
    """Lets a given message through at most once per interval (librdkafka repeats itself)."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)[:80]
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self.interval_s:
            return False
        self._last[key] = now
        return True


class Emitter:
    """Non-blocking event publisher; one per process is enough (it is thread-safe)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        topic: str | None = None,
        producer_config: dict[str, Any] | None = None,
        register_atexit: bool = True,
    ) -> None:
        s = settings or get_settings()
        self.settings = s
        self.topic = topic or s.topic_raw
        self._max_buffer = s.producer_buffer_events
        self._max_events = s.producer_max_events_per_record
        self._max_bytes = s.producer_max_record_bytes
        self._span_s = s.producer_max_record_span_s
        self._linger_s = s.producer_linger_ms / 1000
        self._wake_at = max(1, min(self._max_events * 4, self._max_buffer // 2))
        self._log_interval = s.producer_drop_log_interval_s
        self._extra_conf = producer_config or {}
        self._lock = threading.Lock()
        self._closed = False
        self._start()
        if register_atexit:
            ref = weakref.WeakMethod(self._atexit)
            atexit.register(lambda: (m := ref()) and m())
        child_ref = weakref.WeakMethod(self._after_fork_in_child)
        os.register_at_fork(after_in_child=lambda: (m := child_ref()) and m())

    # --- set-up --------------------------------------------------------------------------------
    def _producer_conf(self) -> dict[str, Any]:
        s = self.settings
        rdlog = logging.getLogger("spendstream.producer.librdkafka")
        if not any(isinstance(f, _RateLimitFilter) for f in rdlog.filters):
            rdlog.addFilter(_RateLimitFilter(self._log_interval))
        return s.librdkafka(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": s.producer_compression,
                "linger.ms": s.producer_linger_ms,
                "batch.size": 1_000_000,
                "queue.buffering.max.kbytes": s.producer_queue_kbytes,
                "queue.buffering.max.messages": 100_000,
                "message.timeout.ms": s.producer_message_timeout_ms,
                "error_cb": self._on_error,
                "logger": rdlog,
                **self._extra_conf,
            }
        )

    def _start(self) -> None:
        from confluent_kafka import Producer

        self._q: deque[LLMCallEvent] = deque()
        self._backlog: deque[tuple[bytes, bytes, int]] = deque()
        self._backlog_events = 0
        self._busy = False
        """True while the thread holds events taken from the buffer but not yet in the backlog."""
        self._in_flight = 0
        self._delivered = 0
        self._dropped: Counter[str] = Counter()
        self._logged_drops: Counter[str] = Counter()
        self._last_error: str | None = None
        self._last_log = time.monotonic()
        self._stop = False
        self._wake = threading.Event()
        self._producer = Producer(self._producer_conf())
        self._thread = threading.Thread(target=self._run, name="spendstream-emitter", daemon=True)
        self._thread.start()

    def _after_fork_in_child(self) -> None:
        # librdkafka's threads do not survive fork(); the parent's queued events are its own.
        self._lock = threading.Lock()
        if not self._closed:
            self._start()

    # --- the host-facing path --------------------------------------------------------------------
    def emit(self, event: LLMCallEvent) -> bool:
        """Queue ``event`` for delivery; returns at once. False if it was dropped (counted)."""
        try:
            if self._closed:
                self._drop(DropReason.CLOSED)
                return False
            if not isinstance(event, LLMCallEvent):
                self._drop(DropReason.INVALID)
                return False
            q = self._q
            if len(q) >= self._max_buffer:
                self._drop(DropReason.BUFFER_FULL)
                return False
            q.append(event)
            if len(q) == self._wake_at:
                self._wake.set()
            return True
        except Exception:
            self._drop(DropReason.INTERNAL)
            return False

    def put(self, event: LLMCallEvent, timeout: float | None = None) -> bool:
        """Like :meth:`emit`, but waits for buffer room (for replay and load tools, not hosts)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._q) >= self._max_buffer and not self._closed:
            if deadline is not None and time.monotonic() >= deadline:
                break
            self._wake.set()
            time.sleep(0.001)
        return self.emit(event)

    def track(self, provider: str, model: str, **fields: Any) -> TrackedCall:
        """Time one call and emit its event on exit::

            with emitter.track("openai", "gpt-4o-mini", endpoint="/answer") as call:
                resp = client.chat.completions.create(...)
                call.set_response(resp)

        Works with ``async with`` too; for streams call ``call.observe_chunk(chunk)``.
        """
        return make_tracker(self, provider, model, **fields)

    def traced(
        self, provider: str, model: str, **fields: Any
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Decorator: time the function and read its return value as the provider response."""
        return traced(lambda: self, provider, model, **fields)

    def _drop(self, reason: DropReason, n: int = 1) -> None:
        with self._lock:
            self._dropped[reason.value] += n

    # --- delivery ------------------------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> int:
        """Deliver what is queued, waiting at most ``timeout`` s; returns events still pending."""
        deadline = time.monotonic() + max(0.0, timeout)
        try:
            while (self._q or self._busy or self._backlog) and time.monotonic() < deadline:
                self._wake.set()
                time.sleep(0.002)
            while self._in_flight and time.monotonic() < deadline:
                self._producer.flush(min(0.1, max(0.0, deadline - time.monotonic())))
        except Exception:
            log.exception("spendstream: flush failed")
        return self.pending()

    async def aflush(self, timeout: float = 10.0) -> int:  # noqa: ASYNC109 - mirrors flush()
        """:meth:`flush` for asyncio code: runs in a worker thread, not on the event loop."""
        import asyncio

        return await asyncio.to_thread(self.flush, timeout)

    def pending(self) -> int:
        """Accepted events not yet acknowledged (a batch being encoded is not counted)."""
        return len(self._q) + self._backlog_events + self._in_flight

    def close(self, timeout: float = 10.0) -> int:
        """Flush, then stop; events still pending are counted as dropped (``closed``)."""
        if self._closed:
            return 0
        left = self.flush(timeout)
        self._closed = True
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=2.0)
        if left:
            self._drop(DropReason.CLOSED, left)
            log.warning("spendstream: %d call events were not delivered before close", left)
        return left

    def _atexit(self) -> None:
        self.close(self.settings.producer_flush_timeout_s)

    def stats(self) -> EmitterStats:
        with self._lock:
            return EmitterStats(
                delivered=self._delivered,
                dropped=dict(self._dropped),
                queued=self.pending(),
                last_error=self._last_error,
            )

    # --- background thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self._linger_s)
            self._wake.clear()
            try:
                while self._pump():
                    pass
                self._producer.poll(0)
                self._log_drops()
            except Exception:  # never let the thread die
                log.exception("spendstream: emitter loop error")
                time.sleep(0.1)

    def _pump(self) -> bool:
        """Move one batch buffer → backlog → producer; True if there is more to do now."""
        if not self._backlog:
            batch: list[LLMCallEvent] = []
            q = self._q
            if not q:
                return False
            self._busy = True  # before the first pop, so flush() never sees the events nowhere
            try:
                while q and len(batch) < _DRAIN_MAX:
                    batch.append(q.popleft())
                self._encode(batch)
            finally:
                self._busy = False
        produce = self._producer.produce
        while self._backlog:
            key, value, n = self._backlog[0]
            # Count the record in flight before producing: its delivery callback may run on
            # another thread (flush) before produce() returns, and flush() must never see the
            # events neither in the backlog nor in flight.
            with self._lock:
                self._in_flight += n
            try:
                produce(
                    self.topic,
                    value,
                    key,
                    headers=HEADERS,
                    on_delivery=functools.partial(self._on_delivery, n),
                )
            except BufferError:
                with self._lock:
                    self._in_flight -= n
                self._producer.poll(0.05)  # librdkafka's queue is full: wait for the broker
                return False
            except Exception as exc:  # e.g. MSG_SIZE_TOO_LARGE
                with self._lock:
                    self._in_flight -= n
                    self._backlog_events -= n
                self._backlog.popleft()
                too_large = "SIZE_TOO_LARGE" in str(exc)
                self._drop(DropReason.TOO_LARGE if too_large else DropReason.INTERNAL, n)
                self._last_error = str(exc)
                continue
            with self._lock:
                self._backlog_events -= n
            self._backlog.popleft()
        self._producer.poll(0)
        return bool(self._q)

    def _encode(self, batch: list[LLMCallEvent]) -> None:
        """Cut the batch into records (:func:`spendstream.wire.pack`) and queue them."""
        for key, lines in pack(
            batch,
            self._max_events,
            self._max_bytes,
            self._span_s,
            on_error=lambda _ev, _exc: self._drop(DropReason.INVALID),
        ):
            self._push(key, lines)

    def _push(self, key: bytes, lines: list[bytes]) -> None:
        self._backlog.append((key, b"\n".join(lines), len(lines)))
        with self._lock:
            self._backlog_events += len(lines)

    def _on_delivery(self, n: int, err: Any, _msg: Any) -> None:
        with self._lock:
            self._in_flight -= n
            if err is None:
                self._delivered += n
            else:
                self._dropped[DropReason.DELIVERY_FAILED.value] += n
                self._last_error = str(err)

    def _on_error(self, err: Any) -> None:
        self._last_error = str(err)

    def _log_drops(self) -> None:
        now = time.monotonic()
        if now - self._last_log < self._log_interval:
            return
        with self._lock:
            new = self._dropped - self._logged_drops
            self._logged_drops = Counter(self._dropped)
        self._last_log = now
        if new:
            log.warning(
                "spendstream: dropped %s call events in the last %.0fs (%s); last Kafka error: %s",
                sum(new.values()),
                self._log_interval,
                ", ".join(f"{k}={v}" for k, v in sorted(new.items())),
                self._last_error,
            )

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.close(self.settings.producer_flush_timeout_s)
