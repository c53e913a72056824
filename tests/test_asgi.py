"""The ASGI middleware attributes calls made while serving a request to its route and caller."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from spendstream.config import Settings
from spendstream.events import LLMCallEvent
from spendstream.producers import Emitter, SpendstreamMiddleware
from tests.test_usage import OPENAI_CHAT


@pytest.fixture
def emitter() -> Iterator[Emitter]:
    e = Emitter(Settings(kafka_bootstrap_servers="127.0.0.1:1"), register_atexit=False)
    yield e
    e.close(timeout=0)


def test_route_template_team_and_user_come_from_the_request(emitter: Emitter) -> None:
    seen: list[LLMCallEvent] = []

    async def item(request: Request) -> JSONResponse:
        async with emitter.track("openai", "gpt-4o-mini") as call:
            call.set_response(OPENAI_CHAT)
        assert call.event is not None
        seen.append(call.event)
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/items/{item_id}", item)])
    app.add_middleware(SpendstreamMiddleware, service="catalog")
    with TestClient(app) as client:
        r = client.get(
            "/items/42", headers={"x-team": "growth", "x-user-id": "u-9", "x-prompt-version": "p3"}
        )
        assert r.status_code == 200
        r = client.get("/items/43")
        assert r.status_code == 200
    first, second = seen
    assert first.endpoint == "/items/{item_id}"  # the template, not /items/42
    assert (first.service, first.team, first.user_id, first.prompt_version) == (
        "catalog",
        "growth",
        "u-9",
        "p3",
    )
    assert first.usage.input_tokens == 1200
    assert second.endpoint == "/items/{item_id}" and second.team is None  # no leak between requests
    assert emitter.pending() == 2


def test_calls_outside_a_request_keep_their_own_fields(emitter: Emitter) -> None:
    with emitter.track("openai", "gpt-4o", endpoint="/batch-job") as call:
        pass
    assert call.event is not None and call.event.endpoint == "/batch-job"


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_session_header_and_traceparent_reach_the_event(emitter: Emitter) -> None:
    """``x-session-id`` (configurable) names the session; ``traceparent`` gives the trace when
    no OpenTelemetry span is current (its span id is the caller's: not taken)."""
    seen: list[LLMCallEvent] = []

    async def answer(request: Request) -> JSONResponse:
        async with emitter.track("openai", "gpt-4o-mini") as call:
            call.set_response(OPENAI_CHAT)
        assert call.event is not None
        seen.append(call.event)
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/answer", answer)])
    app.add_middleware(SpendstreamMiddleware, service="rag", session_header="X-Conversation")
    parent = f"00-{TRACE}-00f067aa0ba902b7-01"
    with TestClient(app) as client:
        client.get("/answer", headers={"x-conversation": "chat-42", "traceparent": parent})
        client.get("/answer", headers={"x-session-id": "ignored", "traceparent": "00-zz-01"})
        client.get("/answer", headers={"x-conversation": "a\tb", "traceparent": f"00-{'0' * 32}"
                                       "-00f067aa0ba902b7-01"})  # fmt: skip
    first, second, third = seen
    assert (first.session_id, first.trace_id, first.span_id) == ("chat-42", TRACE, None)
    assert (second.session_id, second.trace_id) == (None, None)  # not the configured header
    assert (third.session_id, third.trace_id) == ("a b", None)  # repaired; invalid trace id
    assert emitter.stats().repaired == {"field_sanitized": 1}


def test_traceparent_forms() -> None:
    from spendstream.producers.asgi import traceparent_trace_id as tid

    assert tid(f"00-{TRACE}-00f067aa0ba902b7-01") == TRACE
    assert tid(f" 00-{TRACE.upper()}-00F067AA0BA902B7-00 ") == TRACE
    assert tid(f"01-{TRACE}-00f067aa0ba902b7-01-extra") == TRACE  # a later version: prefix read
    assert tid(f"ff-{TRACE}-00f067aa0ba902b7-01") is None  # version ff is invalid
    assert tid(f"00-{TRACE}-00f067aa0ba902b7") is None and tid("") is None and tid(None) is None
