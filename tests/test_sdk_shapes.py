"""Real SDK objects (openai, anthropic) through ``track()``: every shape keeps its usage.

The provider is the only thing faked: the SDKs' own types are built from documented response
bodies (``model_validate``) or come out of the SDK's own client and stream helpers reading a
local transport (no network). Events land in a :class:`MemoryEmitter` and are priced by the
worker's :class:`Enricher`. Expected counts and costs are worked out by hand beside each case.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from spendstream.events import ServiceTier, Status, Usage
from spendstream.money import pico_to_usd
from spendstream.producers import MemoryEmitter, track, use_emitter
from spendstream.stream.enrich import Enricher

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")


@pytest.fixture
def mem() -> Iterator[MemoryEmitter]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an SDK object must not make us warn into the host
        with use_emitter(MemoryEmitter()) as m:
            yield m


class Clock:
    """A perf_counter that advances only when told: TTFT without sleeping."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "perf_counter", c)  # the tracker's clock, for this test only
    return c


def _sse(events: list[dict[str, Any]]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def _openai_chunks(chunks: list[dict[str, Any]]) -> bytes:
    return ("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n").encode()


def _client(body: bytes, content_type: str) -> Any:
    headers = {"content-type": content_type}
    transport = httpx.MockTransport(lambda _r: httpx.Response(200, headers=headers, content=body))
    return openai.OpenAI(
        api_key="test",
        base_url="http://llm.invalid/v1",
        http_client=httpx.Client(transport=transport),
    )


def _anthropic_client(body: bytes, content_type: str) -> Any:
    httpx2 = pytest.importorskip("httpx2")  # the anthropic SDK's HTTP client
    headers = {"content-type": content_type}
    transport = httpx2.MockTransport(lambda _r: httpx2.Response(200, headers=headers, content=body))
    return anthropic.Anthropic(
        api_key="test",
        base_url="http://llm.invalid",
        http_client=httpx2.Client(transport=transport),
    )


def cost(ev: Any) -> Decimal:
    call = Enricher().enrich(ev, ev.to_json())
    assert call.parts_pico is not None, "price unknown"
    return pico_to_usd(call.cost_pico)


CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1764338587,
    "model": "gpt-4o-mini-2024-07-18",
    "service_tier": "default",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {
        "prompt_tokens": 2000,
        "completion_tokens": 300,
        "total_tokens": 2300,
        "prompt_tokens_details": {"cached_tokens": 1024},
    },
}


def test_chat_completion_object_and_its_service_tier(mem: MemoryEmitter) -> None:
    obj = openai.types.chat.ChatCompletion.model_validate(CHAT)
    with track("openai", "gpt-4o-mini") as call:
        call.set_response(obj)
    (ev,) = mem.events
    assert ev.usage == Usage(input_tokens=2000, output_tokens=300, cache_read_tokens=1024)
    assert ev.service_tier is ServiceTier.STANDARD  # "default" is the standard tier
    assert ev.response_model == "gpt-4o-mini-2024-07-18" and ev.usage_error is None
    # 976 x $0.15/M + 1024 x $0.075/M + 300 x $0.60/M = 0.0001464 + 0.0000768 + 0.00018
    assert cost(ev) == Decimal("0.0004032")


def test_with_raw_response_is_read_and_the_host_still_parses_it(mem: MemoryEmitter) -> None:
    client = _client(json.dumps(CHAT).encode(), "application/json")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    with track("openai", "gpt-4o-mini") as call:
        call.set_response(raw)
    (ev,) = mem.events
    assert ev.usage == Usage(input_tokens=2000, output_tokens=300, cache_read_tokens=1024)
    assert raw.parse().usage.prompt_tokens == 2000  # parse() is cached: the host reads it too


def test_chat_completions_stream_helper_events_carry_usage_model_and_ttft(
    mem: MemoryEmitter, clock: Clock
) -> None:
    base = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-2024-08-06",
    }
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42},
        },
    ]
    client = _client(_openai_chunks(chunks), "text/event-stream")
    with (
        track("openai", "gpt-4o", operation="chat") as call,
        client.chat.completions.stream(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream_options={"include_usage": True},
        ) as stream,
    ):
        for event in stream:  # ChunkEvent, ContentDeltaEvent, ContentDoneEvent ...
            if (
                event.type == "chunk"
                and event.chunk.choices
                and event.chunk.choices[0].delta.content
            ):
                clock.now += 0.25  # the first content arrives 250 ms after the start
            call.observe_chunk(event)
        clock.now += 0.5
    (ev,) = mem.events
    assert ev.usage == Usage(input_tokens=40, output_tokens=2)
    assert ev.response_model == "gpt-4o-2024-08-06"
    assert ev.ttft_ms == 250.0 and ev.latency_ms == 1000.0


RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1764338587.0,
    "model": "gpt-4.1-mini-2025-04-14",
    "output": [],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "status": "incomplete",
    "incomplete_details": {"reason": "max_output_tokens"},
    "usage": {
        "input_tokens": 1500,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 256,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 1756,
    },
}


@pytest.mark.parametrize(
    ("cls", "kind", "status"),
    [
        ("ResponseIncompleteEvent", "response.incomplete", "incomplete"),
        ("ResponseFailedEvent", "response.failed", "failed"),
        ("ResponseCompletedEvent", "response.completed", "completed"),
    ],
)
def test_a_responses_stream_ending_incomplete_or_failed_keeps_its_usage(
    mem: MemoryEmitter, clock: Clock, cls: str, kind: str, status: str
) -> None:
    types = openai.types.responses
    created = types.ResponseCreatedEvent.model_validate(
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {**RESPONSE, "status": "in_progress", "usage": None},
        }
    )
    delta = types.ResponseTextDeltaEvent.model_validate(
        {
            "type": "response.output_text.delta",
            "sequence_number": 1,
            "item_id": "m1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Once",
            "logprobs": [],
        }
    )
    end = getattr(types, cls).model_validate(
        {"type": kind, "sequence_number": 2, "response": {**RESPONSE, "status": status}}
    )
    with track("openai", "gpt-4.1-mini", operation="responses") as call:
        clock.now += 0.1
        call.observe_chunk(created)  # not content: TTFT is not set here
        clock.now += 0.2
        call.observe_chunk(delta)
        call.observe_chunk(end)
    (ev,) = mem.events
    assert ev.usage == Usage(
        input_tokens=1500,
        output_tokens=256,
        cache_read_tokens=0,
        cache_creation_tokens=0,
        reasoning_tokens=0,
    )
    assert ev.ttft_ms == pytest.approx(300.0)
    # 1500 x $0.40/M + 256 x $1.60/M = 0.0006 + 0.0004096
    assert cost(ev) == Decimal("0.0010096")


MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [{"type": "text", "text": "Found it."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 100,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 5000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        "output_tokens": 400,
        "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 0},
        "service_tier": "standard",
    },
}


def test_anthropic_message_with_1h_cache_writes_and_web_searches(mem: MemoryEmitter) -> None:
    obj = anthropic.types.Message.model_validate(MESSAGE)
    with track("anthropic", "claude-sonnet-4-0") as call:
        call.set_response(obj)
    (ev,) = mem.events
    # input_tokens exclude the cache: 100 + 3000 + 5000
    assert ev.usage == Usage(
        input_tokens=8100,
        output_tokens=400,
        cache_read_tokens=5000,
        cache_creation_tokens=3000,
        cache_write_1h_tokens=2000,
        web_searches=3,
    )
    assert ev.service_tier is ServiceTier.STANDARD


def _anthropic_events(with_delta: bool) -> list[dict[str, Any]]:
    start = {**MESSAGE, "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 1000}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    ]
    if with_delta:
        events += [
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {
                    "output_tokens": 42,
                    "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 0},
                },
            },
            {"type": "message_stop"},
        ]
    return events


def test_anthropic_stream_cut_before_message_delta_leaves_output_unknown(
    mem: MemoryEmitter, clock: Clock
) -> None:
    adapter = anthropic.types.RawMessageStreamEvent
    from pydantic import TypeAdapter

    events = [TypeAdapter(adapter).validate_python(e) for e in _anthropic_events(False)]
    with track("anthropic", "claude-sonnet-4-0") as call:
        clock.now += 0.4
        call.observe_chunk(events[0])  # message_start: not content
        call.observe_chunk(events[1])  # an empty text block: not content either
        clock.now += 0.1
        call.observe_chunk(events[2])
        call.set(response_text="Hi")
    (ev,) = mem.events
    # message_start's output_tokens=1 is a placeholder, not a count: left to the estimate
    assert ev.usage == Usage(input_tokens=1025, cache_read_tokens=1000)
    assert ev.ttft_ms == pytest.approx(500.0)
    call_ = Enricher().enrich(ev, ev.to_json())
    assert call_.tokens.estimated is True and call_.tokens.input_tokens == 1025


def test_anthropic_messages_stream_helper_through_the_sdk_client(mem: MemoryEmitter) -> None:
    client = _anthropic_client(_sse(_anthropic_events(True)), "text/event-stream")
    with (
        track("anthropic", "claude-sonnet-4-0") as call,
        client.messages.stream(
            model="claude-sonnet-4-0", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        for event in stream:  # raw events plus TextEvent and the final MessageStopEvent
            call.observe_chunk(event)
    (ev,) = mem.events
    assert ev.usage == Usage(
        input_tokens=1025, output_tokens=42, cache_read_tokens=1000, web_searches=1
    )
    assert ev.response_model == "claude-sonnet-4-20250514"


def test_realtime_response_done_event(mem: MemoryEmitter) -> None:
    from openai.types.realtime import ResponseDoneEvent

    done = ResponseDoneEvent.model_validate(
        {
            "type": "response.done",
            "event_id": "ev_1",
            "response": {
                "id": "resp_rt",
                "object": "realtime.response",
                "status": "completed",
                "output": [],
                "usage": {
                    "total_tokens": 1500,
                    "input_tokens": 1200,
                    "output_tokens": 300,
                    "input_token_details": {
                        "text_tokens": 200,
                        "audio_tokens": 1000,
                        "image_tokens": 0,
                        "cached_tokens": 640,
                        "cached_tokens_details": {
                            "text_tokens": 128,
                            "audio_tokens": 512,
                            "image_tokens": 0,
                        },
                    },
                    "output_token_details": {"text_tokens": 60, "audio_tokens": 240},
                },
            },
        }
    )
    with track("openai", "gpt-realtime", operation="audio") as call:
        call.observe_chunk(done)
    (ev,) = mem.events
    assert ev.usage == Usage(
        input_tokens=1200,
        output_tokens=300,
        cache_read_tokens=640,
        input_audio_tokens=1000,
        cache_audio_read_tokens=512,
        input_image_tokens=0,
        cache_image_read_tokens=0,
        output_audio_tokens=240,
    )


def test_embeddings_object_is_exact_not_estimated(mem: MemoryEmitter) -> None:
    obj = openai.types.CreateEmbeddingResponse.model_validate(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 5000, "total_tokens": 5000},
        }
    )
    with track("openai", "text-embedding-3-small", operation="embeddings") as call:
        call.set_response(obj)
    (ev,) = mem.events
    assert ev.usage == Usage(input_tokens=5000, output_tokens=0)
    enriched = Enricher().enrich(ev, ev.to_json())
    assert enriched.tokens.estimated is False
    assert cost(ev) == Decimal("0.0001")  # 5000 x $0.02/M


def test_a_call_the_provider_refused_costs_exactly_zero(mem: MemoryEmitter) -> None:
    req = httpx.Request("POST", "http://llm.invalid/v1/chat/completions")
    err = openai.BadRequestError(
        "context too long", response=httpx.Response(400, request=req), body=None
    )
    with pytest.raises(openai.BadRequestError), track("openai", "gpt-4o"):
        raise err
    (ev,) = mem.events
    assert ev.status is Status.ERROR and ev.usage == Usage(input_tokens=0, output_tokens=0)
    enriched = Enricher().enrich(ev, ev.to_json())
    assert enriched.tokens.estimated is False and enriched.cost_pico == 0


def test_an_unreadable_payload_is_sent_with_usage_error_and_counted(mem: MemoryEmitter) -> None:
    body = {
        **CHAT,
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 50},
        },
    }
    with track("openai", "gpt-4o-mini") as call:
        call.set_response(body)
    with track("mistral", "mistral-large-latest") as call2:
        call2.set_response({"model": "x", "usage": {"tokens_in": 3, "tokens_out": 4}})
    a, b = mem.events
    # what could be read is kept (the parts), the inconsistent whole is left out
    assert a.usage == Usage(output_tokens=5, cache_read_tokens=50)
    assert a.usage_error is not None and "exceed input_tokens" in a.usage_error
    assert (
        b.usage == Usage() and b.usage_error == "unknown usage shape (keys: tokens_in, tokens_out)"
    )
    assert mem.stats().usage_unreadable == {"openai": 1, "mistral": 1}


def test_unreadable_usage_is_a_prometheus_counter(mem: MemoryEmitter) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from spendstream.producers.metrics import EmitterCollector

    reg = CollectorRegistry()
    reg.register(EmitterCollector(mem))
    with track("x-ai", "grok-3") as call:
        call.set_response({"usage": {"prompt_tokens": "many", "completion_tokens": 3}})
    text = generate_latest(reg).decode()
    assert 'spendstream_sdk_usage_unreadable_total{provider="x-ai"} 1.0' in text
    (ev,) = mem.events
    assert ev.usage_error == "not a token count: usage.prompt_tokens"


def test_track_overrides_event_time_and_timings(mem: MemoryEmitter) -> None:
    when = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    with track("openai", "gpt-4o", timestamp=when, latency_ms=1234.5, ttft_ms=210.0) as call:
        call.set_response(CHAT)
    (ev,) = mem.events
    assert (ev.timestamp, ev.latency_ms, ev.ttft_ms) == (when, 1234.5, 210.0)
    assert mem.stats().repaired == {} and mem.stats().delivered == 1


# --- on the real stack: SDK -> Kafka -> worker -> PostgreSQL ----------------------------------
def _deepseek_cost(ts: datetime) -> Decimal:
    """genai-prices 0.2.3's deepseek-chat prices depend on the time of day (UTC): 00:30-16:30
    $0.27 miss / $0.07 hit / $1.10 out, else $0.135 / $0.035 / $0.55."""
    minutes = ts.hour * 60 + ts.minute
    if 30 <= minutes < 16 * 60 + 30:
        return Decimal("0.00037")  # 400 x 0.27/M + 600 x 0.07/M + 200 x 1.10/M
    return Decimal("0.000185")  # 400 x 0.135/M + 600 x 0.035/M + 200 x 0.55/M


@pytest.mark.stack
def test_bedrock_deepseek_and_xai_calls_land_in_postgres_at_their_exact_cost(
    stack: Any, tmp_path: Any
) -> None:
    from spendstream.producers import Emitter
    from tests.books import migrated_db, query
    from tests.stream_helpers import sink_process, wait_for, workers

    golden = {c["id"]: c for c in _golden_cases()}
    s, env = migrated_db(stack, "sdkcost")
    ts = datetime.now(UTC) - timedelta(seconds=5)
    calls = [
        ("bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0",
         "bedrock-converse-claude-cache-read",
         Decimal("0.0004576")),  # 4 x 0.80/M + 1030 x 0.08/M + 93 x 4/M
        ("deepseek", "deepseek-chat", "deepseek-cache-hit", _deepseek_cost(ts)),
        ("xai", "grok-3-mini", "xai-reasoning-excluded-from-completion",
         Decimal("0.000205")),  # 100 x 0.30/M + (50 + 300 reasoning) x 0.50/M
    ]  # fmt: skip
    emitter = Emitter(s, register_atexit=False)
    with workers(env, 1, tmp_path), sink_process(env, tmp_path):
        for provider, model, case, _ in calls:
            with emitter.track(provider, model, endpoint="/e2e", timestamp=ts) as call:
                call.set_response(golden[case]["response"])
        assert emitter.flush(30) == 0
        emitter.close(5)
        sql = "SELECT count(*) FROM llm_calls"
        wait_for(lambda: query(s, sql) == 3, 120, "3 rows in PostgreSQL")
    for provider, _, _, expected in calls:
        got = query(s, "SELECT cost_usd FROM llm_calls WHERE provider = $1", provider)
        assert Decimal(got) == expected, provider
    assert query(s, "SELECT count(*) FROM llm_calls WHERE tokens_estimated") == 0


def _golden_cases() -> list[dict[str, Any]]:
    from tests.test_golden_costs import CASES

    return CASES
