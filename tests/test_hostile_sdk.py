"""Issue 13's SDK probes: the host never sees an exception or a warning, the call is recorded.

Each probe emits through a real emitter to a fresh topic on the local stack's broker and reads
the event back from Kafka: what arrives (exact fields), what was counted (repairs, drops) and
what was logged (never prompt or header text). Expected values are worked out by hand from the
input and the documented rules (control characters → one space, schema lengths, the byte
bound's 4 KiB + text charge), not taken from the code under test.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import spendstream.producers as sdk
from spendstream.config import Settings, get_settings
from spendstream.events import MAX_TEXT_CHARS, LLMCallEvent, Operation, Status, Usage
from spendstream.producers import Emitter, SpendstreamMiddleware
from spendstream.producers.repair import TEXT_BUDGET_BYTES
from tests.kafka_helpers import fresh_topic, read_events
from tests.stream_helpers import wait_for

pytestmark = pytest.mark.stack

UNREACHABLE = Settings(kafka_bootstrap_servers="127.0.0.1:1", service="probe")
"""A broker address where nothing listens (the broker-down case)."""


@pytest.fixture
def topic(stack: Settings) -> str:
    return fresh_topic(stack, "hostile", partitions=1)


@pytest.fixture
def emitter(stack: Settings, topic: str) -> Iterator[Emitter]:
    e = Emitter(stack.model_copy(update={"service": "probe"}), topic=topic, register_atexit=False)
    yield e
    e.close(timeout=5)


def arrived(stack: Settings, topic: str, emitter: Emitter, n: int) -> list[LLMCallEvent]:
    assert emitter.flush(30) == 0
    got = read_events(stack, topic, n, settle_s=0.5)
    assert got.bad == []
    return got.events


@pytest.fixture
def strict_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --- text ------------------------------------------------------------------------------------
def test_over_long_prompt_is_cut_to_the_schema_limit_usage_kept_and_never_logged(
    stack: Settings, topic: str, emitter: Emitter, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = "SECRET-PROMPT " + "a" * 300_000
    with emitter.track("openai", "gpt-4o-mini", endpoint="/long") as call:
        call.set(prompt_text=prompt, response_text="fine")
        call.set_usage(input_tokens=75_004, output_tokens=2)
    (ev,) = arrived(stack, topic, emitter, 1)
    assert ev.prompt_text == prompt[:262_144] and len(ev.prompt_text) == MAX_TEXT_CHARS
    assert ev.response_text == "fine"
    assert ev.usage == Usage(input_tokens=75_004, output_tokens=2)
    assert emitter.stats().repaired == {"text_truncated": 1}
    assert emitter.stats().dropped == {}
    assert "SECRET" not in caplog.text and "aaaa" not in caplog.text


def test_a_prompt_within_the_character_limit_but_over_a_record_is_cut_not_dropped(
    stack: Settings, topic: str, emitter: Emitter
) -> None:
    prompt = "\U0001f4b8" * 262_144  # 256 Ki characters, 1 MiB of UTF-8: over message.max.bytes
    with emitter.track("anthropic", "claude-sonnet-4-0", endpoint="/emoji") as call:
        call.set(prompt_text=prompt)
        call.set_usage(input_tokens=9, output_tokens=1)
    (ev,) = arrived(stack, topic, emitter, 1)
    assert ev.prompt_text is not None and prompt.startswith(ev.prompt_text)
    encoded = len(ev.prompt_text.encode())
    assert 0.9 * TEXT_BUDGET_BYTES <= encoded <= TEXT_BUDGET_BYTES  # cut to the budget, no less
    assert ev.usage == Usage(input_tokens=9, output_tokens=1)
    assert emitter.stats().dropped == {} and emitter.stats().repaired == {"text_truncated": 1}


# --- headers and context ---------------------------------------------------------------------
async def _request(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> None:
    scope = {"type": "http", "method": "GET", "path": path, "headers": headers}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(_message: Any) -> None:
        return None

    await app(scope, receive, send)


def test_hostile_header_values_and_raw_path_are_sanitised_and_the_call_recorded(
    stack: Settings, topic: str, emitter: Emitter, caplog: pytest.LogCaptureFixture
) -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        async with emitter.track("openai", "gpt-4o-mini") as call:
            call.set_usage(input_tokens=100, output_tokens=10)

    app = SpendstreamMiddleware(inner, service="catalog", emitter=emitter)
    headers = [
        (b"x-prompt-version", b"v1\tx"),
        (b"x-team", b"T" * 300),
        (b"x-user-id", b"\x1b[31mu-7\x00"),
    ]
    asyncio.run(_request(app, "/raw/\x01item", headers))
    (ev,) = arrived(stack, topic, emitter, 1)
    assert ev.prompt_version == "v1 x"
    assert ev.team == "T" * 128  # Name's max length
    assert ev.user_id == "[31mu-7"  # ESC → space, NUL → space, outer spaces stripped
    assert ev.endpoint == "/raw/ item"
    assert (ev.service, ev.status, ev.usage.input_tokens) == ("catalog", Status.OK, 100)
    assert emitter.stats().repaired == {"field_sanitized": 1}  # one event, one reason
    assert emitter.stats().dropped == {}
    assert "v1\tx" not in caplog.text and "TTTT" not in caplog.text and "u-7" not in caplog.text


def test_a_header_with_nothing_printable_leaves_just_that_field_out(
    stack: Settings, topic: str, emitter: Emitter
) -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        with emitter.track("openai", "gpt-4o-mini", endpoint="/x"):
            pass

    app = SpendstreamMiddleware(inner, emitter=emitter)
    asyncio.run(_request(app, "/x", [(b"x-team", b"\t\x01\x7f"), (b"x-prompt-version", b"p2")]))
    (ev,) = arrived(stack, topic, emitter, 1)
    assert ev.team is None and ev.prompt_version == "p2" and ev.endpoint == "/x"
    assert emitter.stats().repaired == {"field_sanitized": 1, "field_dropped": 1}


def test_call_context_values_are_sanitised_like_headers(
    stack: Settings, topic: str, emitter: Emitter
) -> None:
    tags = {"env": "prod\x00", "bad key": "v"}
    with (
        sdk.call_context(team="fin\nance", user_id="u\r\n1", tags=tags),
        emitter.track("openai", "gpt-4o", endpoint="/ctx"),
    ):
        pass
    (ev,) = arrived(stack, topic, emitter, 1)
    assert (ev.team, ev.user_id) == ("fin ance", "u 1")
    assert ev.tags == {"env": "prod"}


# --- provider, operation, usage --------------------------------------------------------------
def test_provider_ids_are_normalised_in_track(
    stack: Settings, topic: str, emitter: Emitter
) -> None:
    with emitter.track(" OpenAI ", "gpt-4o", endpoint="/p"):
        pass
    with emitter.track("Azure OpenAI!", "gpt-4o", endpoint="/p"):
        pass
    events = arrived(stack, topic, emitter, 2)
    assert [e.provider for e in events] == ["openai", "azure-openai"]
    assert emitter.stats().repaired == {"field_sanitized": 1}  # case alone is not a repair


@pytest.mark.parametrize(
    ("operation", "expected", "repaired"),
    [
        ("chat.completions", Operation.CHAT, {}),
        ("responses.create", Operation.RESPONSES, {}),
        ("embeddings.create", Operation.EMBEDDINGS, {}),
        ("Embeddings", Operation.EMBEDDINGS, {}),
        ("frobnicate", Operation.OTHER, {"operation_unknown": 1}),
    ],
)
def test_unknown_operations_never_stop_the_call(
    stack: Settings,
    topic: str,
    emitter: Emitter,
    strict_warnings: None,
    operation: str,
    expected: Operation,
    repaired: dict[str, int],
) -> None:
    ran = []
    with emitter.track("openai", "gpt-4o", endpoint="/op", operation=operation):
        ran.append(True)  # the LLM call is made
    assert ran == [True]
    (ev,) = arrived(stack, topic, emitter, 1)
    assert ev.operation is expected
    assert emitter.stats().repaired == repaired


def test_inconsistent_usage_never_raises_and_a_successful_call_stays_ok(
    stack: Settings, topic: str, emitter: Emitter, strict_warnings: None
) -> None:
    with emitter.track("anthropic", "claude-sonnet-4-0", endpoint="/u") as call:
        call.set_usage(input_tokens=10, cache_read_tokens=50, output_tokens=7)
    with emitter.track("openai", "o3", endpoint="/u") as call:
        call.set_usage(input_tokens=5, output_tokens=3, reasoning_tokens=9)
    with emitter.track("openai", "o3", endpoint="/u") as call:
        call.set_usage(input_tokens=-1, output_tokens=3)
    a, b, c = sorted(arrived(stack, topic, emitter, 3), key=lambda e: e.timestamp)
    assert a.status is Status.OK and a.error_type is None
    # the whole that is smaller than its parts is dropped; the worker estimates it, flagged
    assert a.usage == Usage(output_tokens=7, cache_read_tokens=50)
    assert b.usage == Usage(input_tokens=5, reasoning_tokens=9)
    assert c.usage == Usage(output_tokens=3)
    assert emitter.stats().repaired == {"usage_repaired": 3}


def test_unknown_field_and_inconsistent_flags_leave_only_those_out(
    stack: Settings, topic: str, emitter: Emitter
) -> None:
    with emitter.track("openai", "gpt-4o", endpoint="/f", tem="typo", feedback=7) as call:
        call.set(error_type="NotAnError", cache_saved_usd="0.5")
    (ev,) = arrived(stack, topic, emitter, 1)
    assert ev.status is Status.OK and ev.error_type is None
    assert ev.feedback is None and ev.cache_saved_usd is None and not ev.cache_hit
    assert emitter.stats().repaired == {"field_dropped": 1}


# --- the real provider SDKs, under -W error ----------------------------------------------------
def _sse(events: list[dict[str, Any]]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def _transport(body: bytes, lib: Any = httpx) -> Any:
    """A local transport answering every request with ``body`` as an SSE stream (no network)."""
    headers = {"content-type": "text/event-stream"}
    return lib.MockTransport(lambda _req: lib.Response(200, headers=headers, content=body))


OPENAI_RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1764338587.0,
    "model": "gpt-4o-2024-08-06",
    "output": [
        {
            "type": "message",
            "id": "m1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "hi", "annotations": []}],
        }
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "status": "completed",
    "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 20},
        "total_tokens": 123,
    },
}


def test_openai_responses_stream_events_raise_no_warning_and_carry_usage(
    stack: Settings, topic: str, emitter: Emitter, strict_warnings: None
) -> None:
    openai = pytest.importorskip("openai")
    started = dict(OPENAI_RESPONSE, status="in_progress", output=[], usage=None)
    body = _sse(
        [
            {"type": "response.created", "sequence_number": 0, "response": started},
            {
                "type": "response.output_item.added",
                "sequence_number": 1,
                "output_index": 0,
                "item": {
                    "type": "message",
                    "id": "m1",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                },
            },
            {
                "type": "response.content_part.added",
                "sequence_number": 2,
                "item_id": "m1",
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            },
            {
                "type": "response.output_text.delta",
                "sequence_number": 3,
                "item_id": "m1",
                "output_index": 0,
                "content_index": 0,
                "delta": "hi",
                "logprobs": [],
            },
            {"type": "response.completed", "sequence_number": 4, "response": OPENAI_RESPONSE},
        ]
    )
    client = openai.OpenAI(
        api_key="test",
        base_url="http://llm.invalid/v1",
        http_client=httpx.Client(transport=_transport(body)),
    )
    with (
        emitter.track("openai", "gpt-4o", endpoint="/stream", operation="responses") as call,
        client.responses.stream(model="gpt-4o", input="hi") as stream,
    ):
        for event in stream:
            call.observe_chunk(event)
    (ev,) = arrived(stack, topic, emitter, 1)
    assert ev.usage == Usage(
        input_tokens=36, output_tokens=87, cache_read_tokens=4, reasoning_tokens=20
    )
    assert ev.response_model == "gpt-4o-2024-08-06" and ev.status is Status.OK
    assert ev.ttft_ms is not None


def test_anthropic_message_stream_raises_no_warning_and_carries_usage(
    stack: Settings, topic: str, emitter: Emitter, strict_warnings: None
) -> None:
    anthropic = pytest.importorskip("anthropic")
    message: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "output_tokens": 1,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 200,
        },
    }
    body = _sse(
        [
            {"type": "message_start", "message": message},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hello"},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 15},
            },
            {"type": "message_stop"},
        ]
    )
    httpx2 = pytest.importorskip("httpx2")  # the anthropic SDK's HTTP client
    client = anthropic.Anthropic(
        api_key="test",
        base_url="http://llm.invalid",
        http_client=httpx2.Client(transport=_transport(body, httpx2)),
    )
    with (
        emitter.track("Anthropic", "claude-sonnet-4-0", endpoint="/stream") as call,
        client.messages.stream(
            model="claude-sonnet-4-0", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        for event in stream:
            call.observe_chunk(event)
    (ev,) = arrived(stack, topic, emitter, 1)
    # Anthropic's input_tokens exclude the cache: 25 + 1000 + 200 in OTel semantics
    assert ev.usage == Usage(
        input_tokens=1225, output_tokens=15, cache_read_tokens=1000, cache_creation_tokens=200
    )
    assert (ev.provider, ev.response_model) == ("anthropic", "claude-sonnet-4-20250514")


# --- bad configuration -----------------------------------------------------------------------
def test_a_bad_producer_setting_never_raises_into_track(
    stack: Settings, caplog: pytest.LogCaptureFixture, strict_warnings: None
) -> None:
    e = Emitter(stack, producer_config={"linger.ms": "soon"}, register_atexit=False)
    ran = []
    with e.track("openai", "gpt-4o", endpoint="/cfg") as call:
        ran.append(True)
    assert ran == [True] and call.event is not None
    assert e.stats().dropped == {"bad_config": 1}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "bad producer config" in errors[0].getMessage()
    assert e.close(timeout=0) == 0


def test_invalid_spendstream_variables_never_raise_into_module_level_track(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SPENDSTREAM_PRODUCER_BUFFER_EVENTS", "lots")
    monkeypatch.setattr(sdk, "_default", None)
    get_settings.cache_clear()
    try:
        with sdk.track("openai", "gpt-4o", endpoint="/env") as call:
            pass
        emitter = sdk.get_emitter()
        assert call.event is not None
        assert emitter.stats().dropped == {"bad_config": 1}
        assert "producer_buffer_events" in caplog.text and "lots" not in caplog.text
        emitter.close(timeout=0)
    finally:
        get_settings.cache_clear()


# --- the byte bound ----------------------------------------------------------------------------
def _big_event(i: int, chars: int) -> LLMCallEvent:
    return LLMCallEvent(
        timestamp="2026-12-01T12:00:00Z",
        service="probe",
        endpoint="/big",
        provider="openai",
        request_model="gpt-4o",
        prompt_text=f"{i:08d}" + "p" * (chars - 8),
    )


def test_buffer_is_bounded_in_bytes_with_the_broker_unreachable() -> None:
    s = UNREACHABLE.model_copy(
        update={"producer_buffer_bytes": 8 * 1024 * 1024, "producer_linger_ms": 10_000}
    )
    e = Emitter(s, register_atexit=False)  # linger 10 s: the thread does not drain meanwhile
    try:
        accepted = sum(e.emit(_big_event(i, 262_144)) for i in range(100))
        # each costs 4 KiB + 262,144 ASCII characters = 266,240 bytes; 31 fit in 8 MiB
        assert accepted == 31
        assert e.stats().dropped == {"buffer_full": 69}
        # charged 266,240 each while buffered, the encoded record (>= the prompt) once taken
        assert 31 * 262_144 < e.stats().buffered_bytes <= 31 * 266_240
        # a small event still fits in what is left (8,388,608 - 8,253,440 bytes)
        assert e.emit(_big_event(100, 1_000)) is True
    finally:
        e.close(timeout=0)
    assert e.stats().dropped == {"buffer_full": 69, "closed": 32}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_thousand_large_prompts_with_the_broker_down_grow_the_host_by_the_bound_only() -> None:
    e = Emitter(UNREACHABLE, register_atexit=False)  # every producer setting at its default
    try:
        before = _rss()
        accepted = sum(e.emit(_big_event(i, 262_144)) for i in range(1000))
        grown = _rss() - before
        # the default 64 MiB: 266,240 bytes an event buffered, its record (> 262,144) once taken
        assert 64 * 2**20 // 266_240 <= accepted < 64 * 2**20 // 262_144
        assert e.stats().dropped == {"buffer_full": 1000 - accepted}
        # measured: +253 MB when only the event count bounded the buffer (issue 13: +254 MB);
        # now ~100 MiB at the peak (records being encoded are copies) settling at ~65 MiB
        assert grown < 128 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"
        wait_for(lambda: _rss() - before < 80 * 2**20, 10, "RSS back near the bound", interval=0.05)
    finally:
        e.close(timeout=0)


# --- logging drops -----------------------------------------------------------------------------
def test_the_first_delivery_failure_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    s = UNREACHABLE.model_copy(update={"producer_message_timeout_ms": 1000})
    e = Emitter(s, register_atexit=False)  # drop log interval: the default 60 s
    try:
        caplog.set_level(logging.WARNING, "spendstream.producer")
        t0 = time.monotonic()
        assert e.emit(_big_event(0, 10))

        def logged() -> bool:
            return "delivery_failed=1" in caplog.text

        wait_for(logged, 15, "the first delivery failure in the log", interval=0.05)
        assert time.monotonic() - t0 < 15  # not 60 s after start
    finally:
        e.close(timeout=0)


def test_drops_are_logged_once_per_reason_per_interval_and_summed_at_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 1 MiB holds 3 events of 266,240 bytes (4 KiB + 262,144 characters), wherever they are
    s = UNREACHABLE.model_copy(update={"producer_buffer_bytes": 1024 * 1024})
    e = Emitter(s, register_atexit=False)
    caplog.set_level(logging.INFO, "spendstream.producer")
    accepted = sum(e.emit(_big_event(i, 262_144)) for i in range(10))
    assert accepted == 3

    def drop_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "buffer_full=" in r.getMessage()]

    wait_for(lambda: len(drop_lines()) == 1, 5, "the first buffer_full drop logged", interval=0.05)
    accepted += sum(e.emit(_big_event(i, 262_144)) for i in range(10, 20))
    assert accepted == 3
    assert e.stats().dropped == {"buffer_full": 17}
    assert len(drop_lines()) == 1  # the next 60 s of drops of this reason wait their turn
    e.close(timeout=0)
    summary = [r.getMessage() for r in caplog.records if "emitter closed" in r.getMessage()]
    assert summary == [
        "spendstream: emitter closed: 0 call events delivered, 20 dropped "
        "(buffer_full=17, closed=3), 0 repaired (none); last Kafka error: "
        + str(e.stats().last_error)
    ]


# --- flushing under ASGI servers ---------------------------------------------------------------
def _app(emitter: Emitter, **kw: Any) -> Starlette:
    async def answer(request: Request) -> JSONResponse:
        async with emitter.track("openai", "gpt-4o-mini") as call:
            call.set_usage(input_tokens=10, output_tokens=2)
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/answer", answer)], **kw)


def test_the_middleware_flushes_at_lifespan_shutdown(stack: Settings, topic: str) -> None:
    slow = stack.model_copy(update={"producer_linger_ms": 10_000, "service": "asgi"})
    e = Emitter(slow, topic=topic, register_atexit=False)
    app = _app(e)
    app.add_middleware(SpendstreamMiddleware, emitter=e)
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/answer").status_code == 200
        assert e.stats().delivered == 0  # lingering for 10 s
    assert e.stats().delivered == 3  # delivered by the lifespan shutdown, no flush() call
    got = read_events(stack, topic, 3, settle_s=0.5)
    assert [ev.endpoint for ev in got.events] == ["/answer"] * 3
    e.close(timeout=1)


def test_spendstream_lifespan_flushes_the_process_wide_emitter(
    stack: Settings, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = stack.model_copy(update={"producer_linger_ms": 10_000, "service": "asgi"})
    e = Emitter(slow, topic=topic, register_atexit=False)
    monkeypatch.setattr(sdk, "_default", e)
    with TestClient(_app(e, lifespan=sdk.spendstream_lifespan)) as client:
        for _ in range(3):
            assert client.get("/answer").status_code == 200
        assert e.stats().delivered == 0
    assert e.stats().delivered == 3
    assert asyncio.run(sdk.aflush(1)) == 0
    got = read_events(stack, topic, 3, settle_s=0.5)
    assert len({ev.event_id for ev in got.events}) == 3
    assert [ev.service for ev in got.events] == ["asgi"] * 3
    e.close(timeout=1)


def test_module_level_aflush_without_an_emitter_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk, "_default", None)
    assert asyncio.run(sdk.aflush(1)) == 0


UVICORN_APP = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from spendstream.producers import SpendstreamMiddleware, track


async def answer(request):
    with track("openai", "gpt-4o-mini") as call:
        call.set_usage(input_tokens=10, output_tokens=2)
    return JSONResponse({"ok": True})


async def health(request):
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/answer", answer), Route("/health", health)])
app.add_middleware(SpendstreamMiddleware, service="uvicorn-probe")
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_uvicorn_sigterm_right_after_the_last_calls_loses_none_of_them(
    stack: Settings, topic: str, tmp_path: Any
) -> None:
    """uvicorn re-raises SIGTERM after its shutdown, so atexit never flushes: the middleware's
    lifespan flush is what delivers the lingering events (3 of 3 were lost before)."""
    pytest.importorskip("uvicorn")
    import signal
    import subprocess
    import sys

    (tmp_path / "probe_app.py").write_text(UVICORN_APP)
    port = _free_port()
    env = {
        **os.environ,
        "SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap_servers,
        "SPENDSTREAM_TOPIC_RAW": topic,
        "SPENDSTREAM_PRODUCER_LINGER_MS": "1000",
    }
    cmd = [sys.executable, "-m", "uvicorn", "probe_app:app", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--app-dir", str(tmp_path), "--lifespan", "on", "--log-level", "warning"],
        env=env,
    )
    try:

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 30, "uvicorn serving", interval=0.05)
        for _ in range(3):
            assert httpx.get(f"http://127.0.0.1:{port}/answer", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)  # within the 1 s linger of the last event
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    got = read_events(stack, topic, 3, deadline_s=20, settle_s=0.5)
    assert [(e.service, e.endpoint) for e in got.events] == [("uvicorn-probe", "/answer")] * 3
    assert len({e.event_id for e in got.events}) == 3
