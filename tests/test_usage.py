"""Usage extraction from provider response bodies in each provider's documented shape.

Expected numbers are worked out by hand from the bodies, in the schema's OTel semantics:
input includes cache reads and writes, output includes reasoning, nothing counted twice.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from spendstream.events import Usage
from spendstream.producers.usage import StreamUsage, extract_usage

OPENAI_CHAT = {
    "id": "chatcmpl-abc123",
    "object": "chat.completion",
    "created": 1764338587,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 350,
        "total_tokens": 1550,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 100,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
}


def test_openai_chat_completion_cached_and_reasoning() -> None:
    got = extract_usage("openai", OPENAI_CHAT)
    assert got.usage == Usage(
        input_tokens=1200,
        output_tokens=350,
        cache_read_tokens=1024,
        reasoning_tokens=100,
        input_audio_tokens=0,  # reported as 0: kept apart from "not reported"
        output_audio_tokens=0,
    )
    assert got.error is None and got.service_tier is None
    assert got.response_model == "gpt-4o-mini-2024-07-18"


def test_openai_responses_api() -> None:
    body = {
        "id": "resp_1",
        "object": "response",
        "model": "o3-2025-04-16",
        "status": "completed",
        "usage": {
            "input_tokens": 500,
            "input_tokens_details": {"cached_tokens": 100},
            "output_tokens": 900,
            "output_tokens_details": {"reasoning_tokens": 700},
            "total_tokens": 1400,
        },
    }
    got = extract_usage("openai", body)
    assert got.usage == Usage(
        input_tokens=500, output_tokens=900, cache_read_tokens=100, reasoning_tokens=700
    )
    assert got.response_model == "o3-2025-04-16"


def test_openai_embeddings() -> None:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    # an embedding has no output: 0 exactly, not "unknown" (the worker would flag an estimate)
    assert extract_usage("openai", body).usage == Usage(input_tokens=8, output_tokens=0)


def test_openai_stream_final_usage_chunk() -> None:
    chunks: list[dict[str, Any]] = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "delta": {"content": w}}],
            "usage": None,
        }
        for w in ("Hel", "lo")
    ]
    chunks.append(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-2024-08-06",
            "choices": [],
            "usage": {
                "prompt_tokens": 40,
                "completion_tokens": 2,
                "total_tokens": 42,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        }
    )
    s = StreamUsage("openai")
    for c in chunks:
        s.observe(c)
    got = s.result()
    assert got is not None
    assert got.usage == Usage(input_tokens=40, output_tokens=2, cache_read_tokens=0)
    assert got.response_model == "gpt-4o-2024-08-06"


def test_openai_stream_without_usage_yields_none() -> None:
    s = StreamUsage("openai")
    s.observe({"object": "chat.completion.chunk", "choices": [{"delta": {"content": "x"}}]})
    assert s.result() is None


ANTHROPIC_MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [{"type": "text", "text": "Hi"}],
    "stop_reason": "end_turn",
    "usage": {
        "input_tokens": 50,
        "cache_creation_input_tokens": 200,
        "cache_read_input_tokens": 1000,
        "output_tokens": 300,
    },
}


def test_anthropic_input_tokens_exclude_cache_so_they_are_added() -> None:
    got = extract_usage("anthropic", ANTHROPIC_MESSAGE)
    # Anthropic's input_tokens (50) exclude both cache counts: 50 + 200 + 1000 = 1250
    assert got.usage == Usage(
        input_tokens=1250, output_tokens=300, cache_read_tokens=1000, cache_creation_tokens=200
    )
    assert got.response_model == "claude-sonnet-4-20250514"


def test_anthropic_stream_message_start_and_delta() -> None:
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": "claude-3-5-haiku-20241022",
                "content": [],
                "usage": {
                    "input_tokens": 25,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 2048,
                    "output_tokens": 1,
                },
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 15},
        },
        {"type": "message_stop"},
    ]
    s = StreamUsage("anthropic")
    for e in events:
        s.observe(e)
    got = s.result()
    assert got is not None
    assert got.usage == Usage(
        input_tokens=2073, output_tokens=15, cache_read_tokens=2048, cache_creation_tokens=0
    )
    assert got.response_model == "claude-3-5-haiku-20241022"


GEMINI = {
    "candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}}],
    "modelVersion": "gemini-2.5-flash",
    "usageMetadata": {
        "promptTokenCount": 1000,
        "candidatesTokenCount": 200,
        "thoughtsTokenCount": 150,
        "cachedContentTokenCount": 600,
        "totalTokenCount": 1350,
    },
}


def test_gemini_thoughts_are_added_to_output_and_cache_is_inside_prompt() -> None:
    got = extract_usage("google", GEMINI)
    assert got.usage == Usage(
        input_tokens=1000, output_tokens=350, cache_read_tokens=600, reasoning_tokens=150
    )
    assert got.response_model == "gemini-2.5-flash"


def test_gemini_tool_use_prompt_tokens_count_as_input() -> None:
    body = {
        "usageMetadata": {
            "promptTokenCount": 100,
            "candidatesTokenCount": 10,
            "toolUsePromptTokenCount": 40,
            "totalTokenCount": 150,
        }
    }
    assert extract_usage("google-vertex", body).usage == Usage(input_tokens=140, output_tokens=10)


def test_gemini_stream_last_cumulative_usage_wins() -> None:
    s = StreamUsage("google")
    for cand in (5, 17, 30):
        s.observe(
            {
                "candidates": [],
                "modelVersion": "gemini-2.5-pro",
                "usageMetadata": {
                    "promptTokenCount": 80,
                    "candidatesTokenCount": cand,
                    "totalTokenCount": 80 + cand,
                },
            }
        )
    got = s.result()
    assert got is not None and got.usage == Usage(input_tokens=80, output_tokens=30)


def test_fine_tuned_or_unpriced_model_still_yields_usage() -> None:
    body = {**OPENAI_CHAT, "model": "ft:gpt-4o-mini-2024-07-18:acme::9x8y7z"}
    got = extract_usage("azure", body)
    assert got.usage.input_tokens == 1200
    assert got.response_model == "ft:gpt-4o-mini-2024-07-18:acme::9x8y7z"


def test_sdk_objects_are_read_through_model_dump() -> None:
    class Details(BaseModel):
        cached_tokens: int

    class U(BaseModel):
        prompt_tokens: int
        completion_tokens: int
        total_tokens: int
        prompt_tokens_details: Details | None = None

    class ChatCompletion(BaseModel):
        object: str = "chat.completion"
        model: str
        usage: U

    obj = ChatCompletion(
        model="gpt-4o",
        usage=U(
            prompt_tokens=10,
            completion_tokens=4,
            total_tokens=14,
            prompt_tokens_details=Details(cached_tokens=8),
        ),
    )
    assert extract_usage("openai", obj).usage == Usage(
        input_tokens=10, output_tokens=4, cache_read_tokens=8
    )


@pytest.mark.parametrize(
    ("provider", "body", "match"),
    [
        ("openai", {"model": "gpt-4o"}, "no usage"),
        ("anthropic", {"type": "message"}, "no usage"),
    ],
)
def test_unusable_input_is_a_clear_error(provider: str, body: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        extract_usage(provider, body)


def test_stream_chunks_of_unknown_shape_never_raise_into_the_host() -> None:
    class Exploding:
        def model_dump(self, **_kw: Any) -> dict[str, Any]:
            raise RuntimeError("serializer failed")

    s = StreamUsage("anthropic")
    s.observe(Exploding())
    s.observe({"type": "message_delta", "usage": "not a mapping"})
    s.observe({"type": "message_start", "message": {"usage": ["nope"]}})
    assert s.chunks == 3
    assert s.result() is None


def _genai_provider_ids() -> list[str]:
    from genai_prices.data_snapshot import get_snapshot

    return sorted(p.id for p in get_snapshot().providers)


def test_every_genai_prices_provider_id_is_accepted_and_yields_usage() -> None:
    """ "no usage extractor" used to leave six providers' calls with empty usage ($0 estimated):
    every id genai-prices knows is a valid schema provider and reads an OpenAI-shaped body."""
    from datetime import UTC, datetime

    from spendstream.events import LLMCallEvent

    ids = _genai_provider_ids()
    assert len(ids) >= 40 and {"aws", "deepseek", "mistral", "x-ai", "groq", "openrouter"} <= set(
        ids
    )
    body = {
        "model": "m",
        "usage": {"prompt_tokens": 1200, "completion_tokens": 350,
                  "prompt_tokens_details": {"cached_tokens": 1024},
                  "completion_tokens_details": {"reasoning_tokens": 100}},
    }  # fmt: skip
    for pid in ids:
        got = extract_usage(pid, body)
        # xAI's completion_tokens exclude reasoning: 350 + 100; everyone else's include it
        out = 450 if pid == "x-ai" else 350
        assert got.usage == Usage(
            input_tokens=1200, output_tokens=out, cache_read_tokens=1024, reasoning_tokens=100
        ), pid
        assert got.error is None
        LLMCallEvent(
            timestamp=datetime.now(UTC), service="s", endpoint="/", provider=pid, request_model="m"
        )


@pytest.mark.parametrize(
    ("alias", "genai_id"),
    [("bedrock", "aws"), ("amazon-bedrock", "aws"), ("xai", "x-ai"), ("gemini", "google"),
     ("google-vertex", "google"), ("azure-openai", "azure"), ("together-ai", "together"),
     ("fireworks-ai", "fireworks"), ("mistralai", "mistral"), ("DeepSeek", "deepseek"),
     ("my-own-gateway", "my-own-gateway")],
)  # fmt: skip
def test_provider_aliases_resolve_to_genai_prices_ids(alias: str, genai_id: str) -> None:
    from spendstream.producers.usage import provider_id

    assert provider_id(alias) == genai_id


@pytest.mark.parametrize(
    ("chunk", "content"),
    [
        ({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}, False),
        ({"type": "ping"}, False),
        ({"type": "content_block_start", "index": 0, "content_block": {"text": ""}}, False),
        ({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "a"}}, True),
        ({"type": "response.created", "response": {}}, False),
        ({"type": "response.output_text.delta", "delta": "a"}, True),
        ({"type": "response.output_text.delta", "delta": ""}, False),
        ({"type": "content.delta", "delta": ""}, False),
        ({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, False),
        ({"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]}, True),
        ({"choices": [], "usage": {"prompt_tokens": 1}}, False),
        ({"candidates": [{"content": {"parts": [{"text": "a"}]}}]}, True),
        ({"messageStart": {"role": "assistant"}}, False),
        ({"contentBlockDelta": {"delta": {"text": "a"}}}, True),
        ("a token", True),
    ],
)
def test_only_content_sets_the_first_token(chunk: Any, content: bool) -> None:
    assert StreamUsage("openai").observe(chunk) is content


def test_a_unit_part_above_its_count_is_dropped_the_count_kept() -> None:
    from spendstream.producers.repair import repair_usage

    got = repair_usage({"input_tokens": 10, "output_tokens": 5, "input_audio_tokens": 50,
                        "cache_creation_tokens": 4, "cache_write_1h_tokens": 9})  # fmt: skip
    assert got == Usage(input_tokens=10, output_tokens=5, cache_creation_tokens=4)


def test_a_payload_with_a_bad_count_keeps_the_rest_and_says_why() -> None:
    got = extract_usage(
        "anthropic",
        {"type": "message", "usage": {"input_tokens": 10, "output_tokens": -3,
                                      "cache_read_input_tokens": 5}},
    )  # fmt: skip
    assert got.usage == Usage(input_tokens=15, cache_read_tokens=5)
    assert got.error == "not a token count: usage.output_tokens"


def test_openrouter_cost_out_of_range_is_refused_and_said() -> None:
    got = extract_usage(
        "openrouter", {"usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": "1e400"}}
    )
    assert got.provider_cost_usd is None and got.error == "usage.cost is out of range"


def test_gemini_live_usage_names_its_output_response_tokens() -> None:
    # Live API server message (ai.google.dev/api/live#usagemetadata): responseTokenCount and
    # responseTokensDetails instead of candidates*
    msg = {
        "usageMetadata": {
            "promptTokenCount": 900,
            "responseTokenCount": 400,
            "totalTokenCount": 1300,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": 100},
                {"modality": "AUDIO", "tokenCount": 800},
            ],
            "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 400}],
        }
    }
    got = extract_usage("google", msg)
    assert got.usage == Usage(
        input_tokens=900, output_tokens=400, input_audio_tokens=800, output_audio_tokens=400
    )
    assert got.error is None


def test_realtime_cached_image_tokens_are_read_and_priced_at_the_cached_image_rate() -> None:
    from spendstream.events import example_event
    from spendstream.stream.enrich import Enricher

    details = {
        "text_tokens": 200, "audio_tokens": 600, "image_tokens": 400, "cached_tokens": 640,
        "cached_tokens_details": {"text_tokens": 128, "audio_tokens": 256, "image_tokens": 256},
    }  # fmt: skip
    usage = {
        "total_tokens": 1500, "input_tokens": 1200, "output_tokens": 300,
        "input_token_details": details,
        "output_token_details": {"text_tokens": 60, "audio_tokens": 240},
    }  # fmt: skip
    response = {"id": "r", "object": "realtime.response", "status": "completed", "usage": usage}
    body = {"type": "response.done", "response": response}
    got = extract_usage("openai", body).usage
    assert got == Usage(
        input_tokens=1200, output_tokens=300, cache_read_tokens=640, input_audio_tokens=600,
        cache_audio_read_tokens=256, input_image_tokens=400, cache_image_read_tokens=256,
        output_audio_tokens=240,
    )  # fmt: skip
    ev = example_event(request_model="gpt-realtime", response_model=None, operation="audio",
                       usage=got.model_dump(exclude_none=True))  # fmt: skip
    # gpt-realtime list prices per M: text in $4, cached $0.40; audio in $32, cached $0.40;
    # image in $5, cached $0.50; text out $16, audio out $64.
    # 72 x 4 + 128 x 0.4 + 344 x 32 + 256 x 0.4 + 144 x 5 + 256 x 0.5 + 60 x 16 + 240 x 64
    # = 288 + 51.2 + 11008 + 102.4 + 720 + 128 + 960 + 15360 = 28617.6 per M = $0.0286176
    assert Enricher().enrich(ev, ev.to_json()).cost_pico == 28_617_600_000
