"""Timing one LLM call and turning it into an event: ``with emitter.track(...) as call``.

The tracker measures latency (and time to first token for streams), reads usage from the
provider response, fills ``status``/``error_type`` when the call raises, and emits on exit. It
re-raises the host's own exception untouched and never raises one of its own: a value the
schema refuses is repaired or left out (:mod:`.repair`, counted in ``stats().repaired``) so the
call is still recorded; only an event beyond repair is dropped (``invalid``). Logs name fields,
never values.

Defaults for ``service``, ``endpoint``, ``team``, ``user_id``, ``session_id`` come from the
request context that :class:`~spendstream.producers.asgi.SpendstreamMiddleware` (or
:func:`call_context`, :func:`session`) sets. ``trace_id``/``span_id`` come from the current
OpenTelemetry span when ``opentelemetry-api`` is installed (:class:`OTelIds`: imported on first
use, never required, never raising), else from the request's W3C ``traceparent`` header.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from pydantic import AwareDatetime, TypeAdapter

from ..events import (
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    CacheKind,
    LLMCallEvent,
    Operation,
    ServiceTier,
    Status,
    Usage,
)
from .repair import (
    RepairReason,
    Repairs,
    build_event,
    fit_texts,
    normalise_provider,
    operation_of,
    repair_usage,
)
from .usage import ExtractedUsage, NoUsage, StreamUsage, as_dict, extract_usage, model_of

if TYPE_CHECKING:
    from .emitter import Emitter

log = logging.getLogger("spendstream.producer")

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class CallContext:
    """Attribution shared by every call made while handling one request."""

    service: str | None = None
    endpoint: str | None = None
    team: str | None = None
    user_id: str | None = None
    prompt_version: str | None = None
    session_id: str | None = None
    trace_id: str | None = None
    """The request's trace (W3C ``traceparent``) when no OpenTelemetry span is current."""
    tags: Mapping[str, str] = field(default_factory=dict)
    endpoint_resolver: Callable[[], str | None] | None = None
    """Resolved when the event is built (the ASGI route is known only after routing)."""

    def resolved_endpoint(self) -> str | None:
        if self.endpoint_resolver is not None:
            with contextlib.suppress(Exception):
                found = self.endpoint_resolver()
                if found:
                    return found
        return self.endpoint


_context: ContextVar[CallContext | None] = ContextVar("spendstream_call_context", default=None)


def current_context() -> CallContext:
    return _context.get() or CallContext()


@contextlib.contextmanager
def call_context(**fields: Any) -> Iterator[CallContext]:
    """Set attribution for the calls made inside the block (nests: inner values win)."""
    ctx = replace(current_context(), **fields)
    token = _context.set(ctx)
    try:
        yield ctx
    finally:
        _context.reset(token)


def session(session_id: str) -> contextlib.AbstractContextManager[CallContext]:
    """``with session("chat-42"):`` — every call inside (nested calls, other tasks started
    inside: a ContextVar) is attributed to that user session or agent conversation."""
    return call_context(session_id=session_id)


class OTelIds:
    """The current OpenTelemetry span's trace and span ids, if ``opentelemetry-api`` is
    importable and a valid span is current. The import is tried once, on first use, so a host
    without OpenTelemetry pays nothing and one with it pays ~1 µs per call."""

    def __init__(self) -> None:
        self._trace_api: Any = None
        self._tried = False

    def current(self) -> tuple[str | None, str | None]:
        if not self._tried:
            self._tried = True
            try:
                from opentelemetry import trace

                self._trace_api = trace
            except Exception:  # not installed, or broken: no ids, never an error
                self._trace_api = None
        if self._trace_api is None:
            return None, None
        try:
            sc = self._trace_api.get_current_span().get_span_context()
            if not sc.is_valid:
                return None, None
            return f"{sc.trace_id:032x}", f"{sc.span_id:016x}"
        except Exception:
            return None, None


otel_ids = OTelIds()
"""The process's reader of the current span (tests replace it)."""


_TIMEOUT_NAMES = ("Timeout", "TimedOut", "DeadlineExceeded")
_RATE_NAMES = ("RateLimit", "TooManyRequests", "ResourceExhausted")


def classify_error(exc: BaseException) -> Status:
    """Map a client exception to a status without importing any provider SDK."""
    if isinstance(exc, TimeoutError):
        return Status.TIMEOUT
    if (
        isinstance(exc, (KeyboardInterrupt, GeneratorExit))
        or type(exc).__name__ == "CancelledError"
    ):
        return Status.CANCELLED
    name = type(exc).__name__
    if any(n in name for n in _TIMEOUT_NAMES):
        return Status.TIMEOUT
    code = getattr(exc, "status_code", None) or getattr(exc, "code", None)
    if code == 429 or any(n in name for n in _RATE_NAMES):
        return Status.RATE_LIMITED
    return Status.ERROR


class TrackedCall:
    """One call being timed. Use as a (async) context manager; see :meth:`Emitter.track`."""

    def __init__(
        self, emitter: Emitter, fields: dict[str, Any], repairs: Repairs | None = None
    ) -> None:
        self._emitter = emitter
        self.fields = fields
        self._repairs: Repairs = repairs or []
        self.usage: Usage | None = fields.pop("usage", None)
        self.response_model: str | None = fields.pop("response_model", None)
        self.usage_error: str | None = None
        """Why the provider's usage could not be read (sent as the event's usage_error)."""
        self.service_tier: ServiceTier | None = None
        self.provider_cost_usd: Decimal | None = None
        self._responded = False
        self._stream: StreamUsage | None = None
        self._t0 = 0.0
        self._ttft_ms: float | None = None
        self._started: datetime | None = None
        self.event: LLMCallEvent | None = None

    # --- what the host tells us ----------------------------------------------------------------
    def set_response(self, response: Any) -> None:
        """Read usage, the response model, the service tier and a provider-reported cost from a
        provider response (an SDK object, a ``with_raw_response`` object or a JSON body).

        Never raises. A response without any usage leaves the usage to the worker's estimate
        (flagged); a usage payload that cannot be read, or an object that is no response,
        sets :attr:`usage_error` with what could be read kept, so the call is priced as
        unknown and counted (``stats().usage_unreadable``), never as zero tokens.
        """
        self._responded = True
        try:
            got = extract_usage(self.fields["provider"], response)
        except NoUsage:
            with contextlib.suppress(Exception):
                self.response_model = model_of(as_dict(response)) or self.response_model
            log.debug("spendstream: the response carries no usage; the worker estimates it")
            return
        except Exception as exc:
            self.usage_error = f"the response could not be read: {exc}"[:250]
            return
        self._apply(got)

    def _apply(self, got: ExtractedUsage) -> None:
        self.usage = got.usage
        self.response_model = got.response_model or self.response_model
        self.service_tier = got.service_tier or self.service_tier
        self.provider_cost_usd = got.provider_cost_usd
        self.usage_error = got.error

    def set_usage(self, **tokens: int | None) -> None:
        """Report usage directly, in OTel semantics (input includes cache tokens).

        Never raises: counts the schema refuses are repaired (:func:`.repair.repair_usage`:
        the inconsistent whole is dropped, the parts kept, the worker estimates it).
        """
        self.usage_error = None  # the host's own counts replace what a response said
        try:
            self.usage = Usage(**tokens)
        except Exception:
            self.usage = repair_usage(tokens)
            self._repairs.append((RepairReason.USAGE_REPAIRED, "usage"))

    def first_token(self) -> None:
        """Mark the first streamed token (sets ``ttft_ms`` once)."""
        if self._ttft_ms is None:
            self._ttft_ms = (time.perf_counter() - self._t0) * 1000

    def observe_chunk(self, chunk: Any) -> None:
        """Feed a streaming chunk or event: the first one with content (text, audio, a tool
        call) sets TTFT — not ``message_start``/``response.created``, which arrive before the
        model produced anything — and the usage chunk/event sets usage."""
        if self._stream is None:
            self._stream = StreamUsage(self.fields["provider"])
        if self._stream.observe(chunk):
            self.first_token()

    def set(self, **fields: Any) -> None:
        """Set any other event field (``cache_hit``, ``feedback``, ``tags`` …)."""
        self.fields.update(fields)

    # --- context manager -----------------------------------------------------------------------
    def __enter__(self) -> TrackedCall:
        self._started = datetime.now(UTC)
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        self._finish(exc)

    async def __aenter__(self) -> TrackedCall:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        try:
            latency_ms = (time.perf_counter() - self._t0) * 1000
            if self._stream is not None and self.usage is None:
                got = self._stream.result()
                if got is not None:
                    self._apply(got)
            ev = self._build(exc, latency_ms)
        except Exception as build_exc:  # a bug here must not reach the host either
            ev = None
            self._emitter.note_repairs(self._repairs)
            if self._emitter.log_limiter.allow("build-error"):
                name = type(build_exc).__name__
                log.warning("spendstream: could not build a call event (%s)", name)
        if ev is None:
            from .emitter import DropReason

            self._emitter._drop(DropReason.INVALID)
            return
        self.event = ev
        if ev.usage_error is not None:
            self._emitter.note_usage_unreadable(ev.provider)
        self._emitter.emit(ev)

    def _build(self, exc: BaseException | None, latency_ms: float) -> LLMCallEvent | None:
        """The event, repaired if the schema refuses a value; None (logged) if beyond repair."""
        ctx = current_context()
        f = dict(self.fields)
        tags = {**ctx.tags, **(f.pop("tags", None) or {})}
        status = f.pop("status", None) or (Status.OK if exc is None else classify_error(exc))
        fields: dict[str, Any] = dict(
            timestamp=self._started or datetime.now(UTC),
            service=f.pop("service", None)
            or ctx.service
            or self._emitter.settings.service
            or "unknown",
            endpoint=f.pop("endpoint", None) or ctx.resolved_endpoint() or "unknown",
            team=f.pop("team", None) or ctx.team,
            user_id=f.pop("user_id", None) or ctx.user_id,
            prompt_version=f.pop("prompt_version", None) or ctx.prompt_version,
            session_id=f.pop("session_id", None) or ctx.session_id,
            tags=tags,
            usage=self._final_usage(status, exc, f.get("operation")),
            response_model=self.response_model,
            usage_error=self.usage_error,
            service_tier=self.service_tier,
            provider_cost_usd=self.provider_cost_usd,
            latency_ms=round(latency_ms, 3),
            ttft_ms=None if self._ttft_ms is None else round(self._ttft_ms, 3),
            status=status,
            error_type=f.pop("error_type", None)
            or (type(exc).__name__ if exc is not None else None),
        )
        _trace_fields(fields, f, ctx)
        repairs = self._repairs
        _check_timestamp(f, repairs)
        fields.update(f)
        fit_texts(fields, repairs)
        try:
            ev: LLMCallEvent | None = LLMCallEvent(**fields)
        except Exception:
            ev, why = build_event(fields, repairs)
            if ev is None and self._emitter.log_limiter.allow("invalid"):
                log.warning("spendstream: a call event could not be repaired, dropped: %s", why)
        self._emitter.note_repairs(repairs)
        return ev

    def _final_usage(self, status: Status, exc: BaseException | None, op: Any) -> Usage:
        """The usage to send; exact zeros where they are known, never guessed.

        - A call refused by the provider (status ``error``/``rate_limited`` from an HTTP error
          status, or set by the host) with no response, no chunk and no usage never reached
          the model: 0 input, 0 output, exact (OpenAI, Anthropic, Google and the
          OpenAI-compatible providers do not bill a request they answered with an error).
          A timeout, a cancellation or a non-HTTP exception may have been billed: unknown.
        - Embeddings and rerank have no output: ``output_tokens`` is 0, not unknown.
        """
        usage = self.usage
        if usage is None:
            seen = self._responded or (self._stream is not None and self._stream.chunks > 0)
            if not seen and self.usage_error is None and _refused(status, exc):
                return Usage(input_tokens=0, output_tokens=0)
            usage = Usage()
        output_less = op in (Operation.EMBEDDINGS, Operation.RERANK)
        if output_less and usage.output_tokens is None and usage.input_tokens is not None:
            return usage.model_copy(update={"output_tokens": 0})
        return usage


def _refused(status: Status, exc: BaseException | None) -> bool:
    if status not in (Status.ERROR, Status.RATE_LIMITED):
        return False
    if exc is None or status is Status.RATE_LIMITED:
        return True
    code = getattr(exc, "status_code", None) or getattr(exc, "code", None)
    return isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599


def _trace_fields(fields: dict[str, Any], f: dict[str, Any], ctx: CallContext) -> None:
    """trace_id/span_id: given to ``track`` (kept in ``f``), else the current OTel span, else
    the request's ``traceparent`` trace (no span id: that span is the caller's, not this call's)."""
    if f.get("trace_id") or f.get("span_id"):
        return
    trace_id, span_id = otel_ids.current()
    if trace_id is None:
        trace_id = ctx.trace_id
    if trace_id is not None:
        fields["trace_id"] = trace_id
    if span_id is not None:
        fields["span_id"] = span_id


_TIMESTAMP: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


def _check_timestamp(f: dict[str, Any], repairs: Repairs) -> None:
    """A ``timestamp=`` override the schema refuses (naive, unparseable, out of range) is
    left out — the measured start time is used — and counted, instead of the event being
    dropped: the timestamp is required, so the repair could not drop it."""
    if "timestamp" not in f:
        return
    try:
        ts = _TIMESTAMP.validate_python(f["timestamp"])
        if MIN_TIMESTAMP <= ts < MAX_TIMESTAMP:
            return
    except Exception:
        pass
    del f["timestamp"]
    repairs.append((RepairReason.FIELD_DROPPED, "timestamp"))


def make_tracker(emitter: Emitter, provider: str, model: str, **fields: Any) -> TrackedCall:
    """Never raises: an unknown operation becomes ``other`` (aliases such as
    ``chat.completions`` map to theirs), a provider id is lowercased, the rest is checked
    when the event is built, after the host's block ran."""
    repairs: Repairs = []
    if "operation" in fields:
        fields["operation"], unknown = operation_of(fields["operation"])
        if unknown:
            repairs.append((RepairReason.OPERATION_UNKNOWN, "operation"))
    kind = fields.get("cache_kind")
    if isinstance(kind, str) and kind in CacheKind.__members__.values():
        fields["cache_kind"] = CacheKind(kind)
    provider = normalise_provider(provider)
    return TrackedCall(emitter, {"provider": provider, "request_model": model, **fields}, repairs)


def traced(
    emitter_getter: Callable[[], Emitter], provider: str, model: str, **fields: Any
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator form of ``track``: the function's return value is read as the response."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with make_tracker(emitter_getter(), provider, model, **fields) as call:
                    result = await fn(*args, **kwargs)
                    call.set_response(result)
                    return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with make_tracker(emitter_getter(), provider, model, **fields) as call:
                result = fn(*args, **kwargs)
                call.set_response(result)
                return result

        return wrapper

    return wrap
