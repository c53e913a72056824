"""ASGI middleware (Starlette/FastAPI compatible, no dependency on either).

It does what an inline observability middleware does — attribute every LLM call made while
serving a request to the request's endpoint, team and user — but emits events through the
non-blocking SDK instead of writing to a database inside the request.

The endpoint is the matched route template (``/items/{item_id}``, bounded) when the framework
puts the route in the ASGI scope (Starlette does, after routing), else the raw path.

Header values are the caller's: a tab in ``x-prompt-version`` used to make the call go
unrecorded. They are read as at most 512 bytes here and checked when the event is built
(:mod:`.repair`: control characters replaced, cut to the schema's length, or the field left
out — counted, the call kept). The middleware also flushes the SDK at ASGI lifespan shutdown:
uvicorn re-raises SIGTERM after its shutdown, so ``atexit`` never runs and, with
``PRODUCER_LINGER_MS=1000``, 3 of 3 final events were lost.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from .tracking import CallContext, _context

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")

if TYPE_CHECKING:
    from .emitter import Emitter

log = logging.getLogger("spendstream.producer")

_HEADER_MAX_BYTES = 512
"""Header bytes read (the longest field a header fills, user_id, holds 256 characters)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def traceparent_trace_id(value: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header (version 00 form), None if malformed or
    the all-zero invalid id: when OpenTelemetry is not installed, calls still join the trace
    the caller started (the header's span is the caller's, so no span id is taken)."""
    m = _TRACEPARENT.match(value.strip().lower()) if value else None
    if m is None or value is None or value.strip()[:2].lower() == "ff":
        return None
    trace_id = m.group(1)
    return trace_id if trace_id.strip("0") else None


def route_template(scope: Scope) -> str | None:
    """The matched route's path template, or the raw path."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str) and template:
        return str(scope.get("root_path", "")) + template
    path = scope.get("path")
    return path if isinstance(path, str) else None


class SpendstreamMiddleware:
    """``app.add_middleware(SpendstreamMiddleware, service="billing")`` or wrap any ASGI app.

    Headers name the team, the user and the session (``x-team``, ``x-user-id``,
    ``x-session-id`` by default; ``session_header=None`` turns the last off); a header is only
    trusted if your gateway sets it. A W3C ``traceparent`` header gives the trace id when no
    OpenTelemetry span is current. At lifespan shutdown it waits up to
    ``flush_timeout_s`` for ``emitter`` (default: the process-wide one) to deliver what is
    queued; ``flush_timeout_s=None`` turns that off.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str | None = None,
        team_header: str = "x-team",
        user_header: str = "x-user-id",
        prompt_version_header: str | None = "x-prompt-version",
        session_header: str | None = "x-session-id",
        tags: dict[str, str] | None = None,
        emitter: Emitter | None = None,
        flush_timeout_s: float | None = 5.0,
    ) -> None:
        self.app = app
        self.emitter = emitter
        self.flush_timeout_s = flush_timeout_s
        self.service = service
        self.team_header = team_header.lower().encode()
        self.user_header = user_header.lower().encode()
        self.prompt_header = (
            prompt_version_header.lower().encode() if prompt_version_header else None
        )
        self.session_header = session_header.lower().encode() if session_header else None
        self.tags = tags or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "lifespan" and self.flush_timeout_s is not None:
            await self.app(scope, receive, self._flushing_send(send))
            return
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or []}

        def header(name: bytes | None) -> str | None:
            raw = headers.get(name) if name else None
            return raw[:_HEADER_MAX_BYTES].decode("latin-1") if raw else None

        ctx = CallContext(
            service=self.service,
            endpoint=scope.get("path"),
            team=header(self.team_header),
            user_id=header(self.user_header),
            prompt_version=header(self.prompt_header),
            session_id=header(self.session_header),
            trace_id=traceparent_trace_id(header(b"traceparent")),
            tags=self.tags,
            endpoint_resolver=lambda: route_template(scope),
        )
        token = _context.set(ctx)
        try:
            await self.app(scope, receive, send)
        finally:
            _context.reset(token)

    def _flushing_send(self, send: Send) -> Send:
        async def flushing_send(message: Message) -> None:
            if message.get("type") == "lifespan.shutdown.complete":
                await self.flush()
            await send(message)

        return flushing_send

    async def flush(self) -> int:
        """Deliver what the emitter holds (never raises); returns events still pending."""
        try:
            if self.emitter is not None:
                return await self.emitter.aflush(self.flush_timeout_s or 0.0)
            from . import aflush

            return await aflush(self.flush_timeout_s or 0.0)
        except Exception as exc:
            log.warning("spendstream: flush at shutdown failed: %s", type(exc).__name__)
            return -1
