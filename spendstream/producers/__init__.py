"""Producer SDK: one event per LLM call, published to Kafka without blocking the host.

    from spendstream.producers import track

    with track("openai", "gpt-4o-mini", endpoint="/answer") as call:
        resp = client.chat.completions.create(...)
        call.set_response(resp)

The module-level helpers use one process-wide :class:`Emitter` built from ``SPENDSTREAM_*``
settings on first use; create your own ``Emitter`` for anything else.
"""

from __future__ import annotations

import threading
from typing import Any

from ..events import LLMCallEvent
from .asgi import SpendstreamMiddleware
from .emitter import DropReason, Emitter, EmitterStats
from .tracking import CallContext, TrackedCall, call_context, classify_error
from .usage import ExtractedUsage, StreamUsage, extract_usage

__all__ = [
    "CallContext",
    "DropReason",
    "Emitter",
    "EmitterStats",
    "ExtractedUsage",
    "SpendstreamMiddleware",
    "StreamUsage",
    "TrackedCall",
    "call_context",
    "classify_error",
    "emit",
    "extract_usage",
    "flush",
    "get_emitter",
    "track",
]

_default: Emitter | None = None
_lock = threading.Lock()


def get_emitter() -> Emitter:
    """The process-wide emitter (created on first use)."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = Emitter()
    return _default


def emit(event: LLMCallEvent) -> bool:
    return get_emitter().emit(event)


def track(provider: str, model: str, **fields: Any) -> TrackedCall:
    return get_emitter().track(provider, model, **fields)


def flush(timeout: float = 10.0) -> int:
    return get_emitter().flush(timeout) if _default is not None else 0
