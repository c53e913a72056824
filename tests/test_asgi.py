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
