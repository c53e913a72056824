"""Producer SDK: one event per LLM call, published to Kafka without blocking the host.

    from spendstream.producers import track

    with track("openai", "gpt-4o-mini", endpoint="/answer") as call:
        resp = client.chat.completions.create(...)
        call.set_response(resp)

The module-level helpers use one process-wide :class:`Emitter` built from ``SPENDSTREAM_*``
settings on first use; create your own ``Emitter`` for anything else. In your own tests, run
them against a :class:`MemoryEmitter` (no Kafka; events land in ``.events``)::

    with use_emitter(MemoryEmitter()) as mem:
        with track("openai", "gpt-4o-mini") as call:
            call.set_response(resp)
    (event,) = mem.events

Under an ASGI server, flush at shutdown: uvicorn re-raises SIGTERM after its shutdown, so
``atexit`` never runs and the last events (3 of 3 with ``PRODUCER_LINGER_MS=1000``) were lost.
:class:`SpendstreamMiddleware` flushes at lifespan shutdown; without it use
``Starlette(lifespan=spendstream_lifespan)`` or ``await aflush(5)`` after your own lifespan's
``yield``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

from ..events import LLMCallEvent
from .asgi import SpendstreamMiddleware
from .emitter import DropReason, Emitter, EmitterStats, MemoryEmitter
from .tracking import CallContext, TrackedCall, call_context, classify_error, session
from .usage import ExtractedUsage, NoUsage, StreamUsage, extract_usage

__all__ = [
    "CallContext",
    "DropReason",
    "Emitter",
    "EmitterStats",
    "ExtractedUsage",
    "MemoryEmitter",
    "NoUsage",
    "SpendstreamMiddleware",
    "StreamUsage",
    "TrackedCall",
    "aflush",
    "call_context",
    "classify_error",
    "emit",
    "extract_usage",
    "flush",
    "get_emitter",
    "session",
    "spendstream_lifespan",
    "track",
    "use_emitter",
]

_default: Emitter | None = None
E = TypeVar("E", bound=Emitter)
_lock = threading.Lock()


def get_emitter() -> Emitter:
    """The process-wide emitter (created on first use)."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = Emitter()
    return _default


@contextlib.contextmanager
def use_emitter(emitter: E) -> Iterator[E]:
    """Make ``emitter`` the process-wide one inside the block (``track()``, ``emit()``), e.g.
    a :class:`MemoryEmitter` in a test; the previous one is restored after."""
    global _default
    with _lock:
        previous, _default = _default, emitter
    try:
        yield emitter
    finally:
        with _lock:
            _default = previous


def emit(event: LLMCallEvent) -> bool:
    return get_emitter().emit(event)


def track(provider: str, model: str, **fields: Any) -> TrackedCall:
    return get_emitter().track(provider, model, **fields)


def flush(timeout: float = 10.0) -> int:
    return get_emitter().flush(timeout) if _default is not None else 0


async def aflush(timeout: float = 10.0) -> int:  # noqa: ASYNC109 - mirrors flush()
    """:func:`flush` for asyncio code (runs in a worker thread, not on the event loop)."""
    return await _default.aflush(timeout) if _default is not None else 0


@contextlib.asynccontextmanager
async def spendstream_lifespan(
    app: Any = None, *, flush_timeout_s: float = 5.0
) -> AsyncIterator[None]:
    """An ASGI lifespan that flushes the process-wide emitter at shutdown::

        app = Starlette(routes=..., lifespan=spendstream_lifespan)

    or, inside your own lifespan, ``async with spendstream_lifespan(app): yield``.
    """
    try:
        yield
    finally:
        await aflush(flush_timeout_s)
