"""The emitter: hands call events to Kafka without ever blocking or raising into the host.

``emit()`` only appends the (already validated) event to a bounded in-memory buffer; a daemon
thread serializes events, packs those that share a Kafka key into envelope records
(:mod:`spendstream.wire`) and hands them to an idempotent confluent-kafka producer. When Kafka is
slow or down the buffer fills and further events are dropped and counted by reason, never
queued without bound.

The buffer is bounded in events and in bytes: with the broker down, 1,000 calls carrying
256 Ki-character prompts grew the host by 254 MB under the count bound alone; the byte bound
(``producer_buffer_bytes``, 64 MiB) charges each buffered event 4 KiB (what one measured in
memory) plus its text, then its encoded record until the broker acknowledges it, librdkafka's
queue included: the same 1,000 prompts now grow it by ~65 MiB (~100 MiB at the peak, while
records are encoded). A bad producer setting disables the emitter (drops counted as
``bad_config``, logged once) instead of raising into ``track()``. Drops are logged at once the
first time per reason, then at most once per interval per reason, and summed up at close.
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

from pydantic import ValidationError

from ..config import Settings, get_settings
from ..events import LLMCallEvent, describe_error
from ..wire import HEADERS, pack
from .repair import Repairs
from .tracking import P, R, TrackedCall, make_tracker, traced

log = logging.getLogger("spendstream.producer")

_DRAIN_MAX = 5_000
"""Events the background thread takes from the buffer per pass; bounds its private backlog."""
MAX_PROVIDER_LABELS = 64
"""Distinct providers counted by name in ``stats().usage_unreadable`` (a metric label)."""
EVENT_BYTES = 4096
"""What one queued event without text holds in memory (tracemalloc: 4.3 KB for a pydantic
LLMCallEvent with usage, tags and UUID): the byte bound's charge per event."""


def text_bytes(event: LLMCallEvent) -> int:
    """Memory of an event's texts: 1 byte a character if ASCII, else at most 4 (O(1) test)."""
    total = 0
    for text in (event.prompt_text, event.response_text):
        if text:
            total += len(text) if text.isascii() else 4 * len(text)
    return total


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
    BAD_CONFIG = "bad_config"
    """The settings or the librdkafka configuration are invalid: no producer could be made."""
    INTERNAL = "internal_error"


@dataclass(frozen=True, slots=True)
class EmitterStats:
    """A snapshot of what the emitter did with the events it was given."""

    delivered: int
    dropped: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    """Accepted events not yet acknowledged by the broker (buffer + backlog + in flight)."""
    last_error: str | None = None
    repaired: dict[str, int] = field(default_factory=dict)
    """Events changed before emitting, by :class:`~spendstream.producers.repair.RepairReason`
    (an event may count under several reasons); they were emitted, not dropped."""
    buffered_bytes: int = 0
    """Estimated bytes held for undelivered events, librdkafka's queue included (the
    producer_buffer_bytes bound)."""
    usage_unreadable: dict[str, int] = field(default_factory=dict)
    """Events emitted with a ``usage_error`` (the provider's usage payload could not be read),
    by provider: the worker prices them as unknown, never as zero tokens."""

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


class LogLimiter:
    """At most one log line per key per interval, the first one at once (a named object so
    the emitter and the tracker share it, and tests can read it)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e18) < self.interval_s:
                return False
            self._last[key] = now
            return True


class Emitter:
    """Non-blocking event publisher; one per process is enough (it is thread-safe)."""

    _producer: Any
    _thread: threading.Thread | None
    _last_error: str | None

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        topic: str | None = None,
        producer_config: dict[str, Any] | None = None,
        register_atexit: bool = True,
    ) -> None:
        self._config_error: str | None = None
        try:
            s = settings or get_settings()
        except Exception as exc:  # invalid SPENDSTREAM_* variables: never raise into the host
            s = Settings.model_construct()
            self._config_error = f"invalid settings: {_first_line(exc)}"
        self.settings = s
        self.topic = topic or s.topic_raw
        self._max_buffer = s.producer_buffer_events
        self._max_buffer_bytes = s.producer_buffer_bytes
        self._max_events = s.producer_max_events_per_record
        self._max_bytes = s.producer_max_record_bytes
        self._span_s = s.producer_max_record_span_s
        self._linger_s = s.producer_linger_ms / 1000
        self._wake_at = max(1, min(self._max_events * 4, self._max_buffer // 2))
        self._log_interval = s.producer_drop_log_interval_s
        self.log_limiter = LogLimiter(self._log_interval)
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

        self._reset_state()
        if self._config_error is None:
            try:
                self._producer = Producer(self._producer_conf())
            except Exception as exc:  # e.g. an unknown or malformed PRODUCER_*/client property
                self._config_error = self._last_error = f"bad producer config: {_first_line(exc)}"
        if self._config_error is not None:
            log.error(
                "spendstream: call events are not sent (counted as dropped, bad_config) "
                "until the settings are fixed: %s",
                self._config_error,
            )
            return
        self._thread = threading.Thread(target=self._run, name="spendstream-emitter", daemon=True)
        self._thread.start()

    def _reset_state(self) -> None:
        """Buffers and counters of a fresh emitter (at start and in a forked child)."""
        self._q: deque[LLMCallEvent] = deque()
        self._held_bytes = 0
        """All the byte bound counts but ``len(_q) * EVENT_BYTES``: text_bytes() of buffered
        events, the charge of a batch being encoded, the encoded records in the backlog and in
        librdkafka's queue until acknowledged. One number, changed under the lock, so emit()
        reads one attribute."""
        self._backlog: deque[tuple[bytes, bytes, int]] = deque()
        self._backlog_events = 0
        self._busy = False
        """True while the thread holds events taken from the buffer but not yet in the backlog."""
        self._busy_events = 0
        self._in_flight = 0
        self._delivered = 0
        self._dropped: Counter[str] = Counter()
        self._repaired: Counter[str] = Counter()
        self._unreadable: Counter[str] = Counter()
        self._logged_drops: Counter[str] = Counter()
        self._drop_logged_at: dict[str, float] = {}
        self._last_error = self._config_error
        self._stop = False
        self._wake = threading.Event()
        self._producer = None
        self._thread = None

    def _after_fork_in_child(self) -> None:
        # librdkafka's threads do not survive fork(); the parent's queued events are its own.
        self._lock = threading.Lock()
        if not self._closed:
            self._start()

    # --- the host-facing path --------------------------------------------------------------------
    def emit(self, event: LLMCallEvent) -> bool:
        """Queue ``event`` for delivery; returns at once. False if it was dropped (counted)."""
        try:
            if self._closed or self._producer is None:
                self._drop(DropReason.CLOSED if self._closed else DropReason.BAD_CONFIG)
                return False
            if not isinstance(event, LLMCallEvent):
                self._drop(DropReason.INVALID)
                return False
            q = self._q
            n = len(q)
            text = 0 if event.prompt_text is None and event.response_text is None else -1
            if text:
                text = text_bytes(event)
            if (
                n >= self._max_buffer
                or (n + 1) * EVENT_BYTES + text + self._held_bytes > self._max_buffer_bytes
            ):
                self._drop(DropReason.BUFFER_FULL)
                return False
            if text:
                with self._lock:
                    self._held_bytes += text
            q.append(event)
            if len(q) == self._wake_at:
                self._wake.set()
            return True
        except Exception:
            self._drop(DropReason.INTERNAL)
            return False

    def _has_room(self, text: int) -> bool:
        """emit()'s test (inlined there: it is the hot path)."""
        n = len(self._q)
        used = (n + 1) * EVENT_BYTES + text + self._held_bytes
        return n < self._max_buffer and used <= self._max_buffer_bytes

    def buffered_bytes(self) -> int:
        """Estimated bytes held for undelivered events: buffer, encoded backlog and librdkafka's
        queue (what producer_buffer_bytes bounds)."""
        return len(self._q) * EVENT_BYTES + self._held_bytes

    def put(self, event: LLMCallEvent, timeout: float | None = None) -> bool:
        """Like :meth:`emit`, but waits for buffer room (for replay and load tools, not hosts)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        text = text_bytes(event) if isinstance(event, LLMCallEvent) else 0
        while not self._has_room(text) and not self._closed and self._producer is not None:
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
        if reason.value not in self._drop_logged_at:
            self._wake.set()  # a reason's first drop is logged now, not at the next linger

    def note_repairs(self, repairs: Repairs) -> None:
        """Count the repairs made to one event and log them (once per reason per interval),
        naming fields only: the values may be prompt, header or user text."""
        if not repairs:
            return
        with self._lock:
            for reason in {r for r, _ in repairs}:
                self._repaired[reason.value] += 1
        for reason, name in repairs:
            if self.log_limiter.allow(f"repair:{reason.value}"):
                log.warning(
                    "spendstream: a call event was repaired (%s: %s); counted in "
                    "stats().repaired, logged at most every %.0fs per reason",
                    reason.value,
                    name,
                    self._log_interval,
                )

    def note_usage_unreadable(self, provider: str) -> None:
        """Count one event sent with a ``usage_error``; log it once per provider per interval.

        At most :data:`MAX_PROVIDER_LABELS` providers are counted by name (the rest as
        ``other``): the provider id is a metric label.
        """
        with self._lock:
            if provider not in self._unreadable and len(self._unreadable) >= MAX_PROVIDER_LABELS:
                provider = "other"
            self._unreadable[provider] += 1
        if self.log_limiter.allow(f"usage-unreadable:{provider}"):
            log.warning(
                "spendstream: a %s response's usage could not be read; the call is sent with "
                "usage_error and priced as unknown (counted in stats().usage_unreadable)",
                provider,
            )

    # --- delivery ------------------------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> int:
        """Deliver what is queued, waiting at most ``timeout`` s; returns events still pending."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._producer is None:
            return self.pending()
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
        """Accepted events not yet acknowledged (a batch being encoded may count twice for a
        moment, never zero times)."""
        return len(self._q) + self._busy_events + self._backlog_events + self._in_flight

    def close(self, timeout: float = 10.0) -> int:
        """Flush, then stop; events still pending are counted as dropped (``closed``)."""
        if self._closed:
            return 0
        self.flush(timeout)
        self._closed = True
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        left = self.pending()  # after the thread stopped: a batch it was encoding is counted
        if left:
            self._drop(DropReason.CLOSED, left)
        self._log_summary()
        return left

    def _log_summary(self) -> None:
        """One line at close: what was delivered, dropped and repaired over the whole run."""
        st = self.stats()

        def counts(d: dict[str, int]) -> str:
            return ", ".join(f"{k}={v}" for k, v in sorted(d.items())) or "none"

        log.log(
            logging.WARNING if st.dropped else logging.INFO,
            "spendstream: emitter closed: %d call events delivered, %d dropped (%s), "
            "%d repaired (%s); last Kafka error: %s",
            st.delivered,
            st.dropped_total,
            counts(st.dropped),
            sum(st.repaired.values()),
            counts(st.repaired),
            st.last_error,
        )

    def _atexit(self) -> None:
        self.close(self.settings.producer_flush_timeout_s)

    def stats(self) -> EmitterStats:
        with self._lock:
            return EmitterStats(
                delivered=self._delivered,
                dropped=dict(self._dropped),
                queued=self.pending(),
                last_error=self._last_error,
                repaired=dict(self._repaired),
                buffered_bytes=self.buffered_bytes(),
                usage_unreadable=dict(self._unreadable),
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
            if not self._q:
                return False
            self._busy = True  # before the first pop, so flush() never sees the events nowhere
            charge = 0
            try:
                batch: list[LLMCallEvent] = []
                charge = self._take(batch)
                self._encode(batch)
            finally:
                with self._lock:  # the records pushed carry their own bytes now
                    self._held_bytes -= charge
                self._busy = False
                self._busy_events = 0
        if not self._send_backlog():
            return False
        self._producer.poll(0)
        return bool(self._q)

    def _send_backlog(self) -> bool:
        """Hand the backlog's records to librdkafka; False when its queue is full."""
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
                    on_delivery=functools.partial(self._on_delivery, n, len(value)),
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
                    self._held_bytes -= len(value)
                self._backlog.popleft()
                too_large = "SIZE_TOO_LARGE" in str(exc)
                self._drop(DropReason.TOO_LARGE if too_large else DropReason.INTERNAL, n)
                self._last_error = str(exc)
                continue
            with self._lock:
                self._backlog_events -= n
            self._backlog.popleft()
        return True

    def _take(self, batch: list[LLMCallEvent]) -> int:
        """Move up to _DRAIN_MAX events from the buffer to ``batch``; returns their charge.

        The EVENT_BYTES part of the charge moves into ``_held_bytes`` *before* the events
        leave the buffer (their text is there already), so emit() never sees room that is
        still used.
        """
        q = self._q
        n = min(len(q), _DRAIN_MAX)
        self._busy_events = n
        with self._lock:
            self._held_bytes += n * EVENT_BYTES
        text = 0
        for _ in range(n):  # only this thread pops
            ev = q.popleft()
            batch.append(ev)
            if ev.prompt_text is not None or ev.response_text is not None:
                text += text_bytes(ev)
        return n * EVENT_BYTES + text

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
        value = b"\n".join(lines)
        with self._lock:
            self._held_bytes += len(value)
            self._backlog_events += len(lines)
        self._backlog.append((key, value, len(lines)))

    def _on_delivery(self, n: int, size: int, err: Any, _msg: Any) -> None:
        with self._lock:
            self._in_flight -= n
            self._held_bytes -= size
            if err is None:
                self._delivered += n
            else:
                self._dropped[DropReason.DELIVERY_FAILED.value] += n
                self._last_error = str(err)

    def _on_error(self, err: Any) -> None:
        self._last_error = str(err)

    def _log_drops(self) -> None:
        """Log new drops: a reason's first drop at once, then at most once per interval."""
        now = time.monotonic()
        with self._lock:
            new = self._dropped - self._logged_drops
            due = {
                k: v
                for k, v in new.items()
                if now - self._drop_logged_at.get(k, -1e18) >= self._log_interval
            }
            for k in due:
                self._logged_drops[k] = self._dropped[k]
                self._drop_logged_at[k] = now
        if due:
            log.warning(
                "spendstream: dropped %s call events (%s) since this reason was last logged; "
                "last Kafka error: %s",
                sum(due.values()),
                ", ".join(f"{k}={v}" for k, v in sorted(due.items())),
                self._last_error,
            )

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.close(self.settings.producer_flush_timeout_s)


def _first_line(exc: BaseException) -> str:
    """What went wrong, without input values (a pydantic error's text echoes them)."""
    if isinstance(exc, ValidationError):
        return describe_error(exc)[:300]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class MemoryEmitter(Emitter):
    """An :class:`Emitter` that keeps events in ``.events`` instead of sending them to Kafka:
    for your own tests, and to price responses without a broker (``Enricher().enrich``)::

        mem = MemoryEmitter()
        with mem.track("openai", "gpt-4o-mini", endpoint="/answer") as call:
            call.set_response(resp)
        (event,) = mem.events

    Same interface and the same tracking, repairs and stats as ``Emitter``; an event counts as
    delivered when it is appended. ``max_events`` bounds the list (further events are dropped
    as ``buffer_full``, counted), so a long-running test cannot grow without limit.
    """

    def __init__(self, settings: Settings | None = None, *, max_events: int = 1_000_000) -> None:
        self.events: list[LLMCallEvent] = []
        self.max_events = max_events
        super().__init__(settings or Settings.model_construct(), register_atexit=False)

    def _start(self) -> None:
        self._reset_state()

    def emit(self, event: LLMCallEvent) -> bool:
        if self._closed:
            self._drop(DropReason.CLOSED)
            return False
        if not isinstance(event, LLMCallEvent):
            self._drop(DropReason.INVALID)
            return False
        with self._lock:
            if len(self.events) >= self.max_events:
                self._dropped[DropReason.BUFFER_FULL.value] += 1
                return False
            self.events.append(event)
            self._delivered += 1
        return True

    def put(self, event: LLMCallEvent, timeout: float | None = None) -> bool:
        return self.emit(event)

    def flush(self, timeout: float = 10.0) -> int:
        return 0

    def close(self, timeout: float = 10.0) -> int:
        self._closed = True
        return 0

    def clear(self) -> list[LLMCallEvent]:
        """Remove and return the events kept so far."""
        with self._lock:
            out, self.events = self.events, []
        return out
