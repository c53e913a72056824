"""ASGI middleware (Starlette/FastAPI compatible, no dependency on either).

It does what an inline observability middleware does — attribute every LLM call made while
serving a request to the request's endpoint, team and user — but emits events through the
non-blocking SDK instead of writing to a database inside the request.

The endpoint is the matched route template (``/items/{item_id}``, bounded) when the framework
puts the route in the ASGI scope (Starlette does, after routing), else the raw path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .tracking import CallContext, _context

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


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

    Headers name the team and the user (``x-team``, ``x-user-id`` by default); a header is
    only trusted if your gateway sets it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: str | None = None,
        team_header: str = "x-team",
        user_header: str = "x-user-id",
        prompt_version_header: str | None = "x-prompt-version",
        tags: dict[str, str] | None = None,
    ) -> None:
        self.app = app
        self.service = service
        self.team_header = team_header.lower().encode()
        self.user_header = user_header.lower().encode()
        self.prompt_header = (
            prompt_version_header.lower().encode() if prompt_version_header else None
        )
        self.tags = tags or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or []}

        def header(name: bytes | None) -> str | None:
            raw = headers.get(name) if name else None
            return raw.decode("latin-1")[:128] if raw else None

        ctx = CallContext(
            service=self.service,
            endpoint=scope.get("path"),
            team=header(self.team_header),
            user_id=header(self.user_header),
            prompt_version=header(self.prompt_header),
            tags=self.tags,
            endpoint_resolver=lambda: route_template(scope),
        )
        token = _context.set(ctx)
        try:
            await self.app(scope, receive, send)
        finally:
            _context.reset(token)
