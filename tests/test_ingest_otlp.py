"""The OTLP → LLMCallEvent mapping: exact usage for each attribute convention, both encodings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from spendstream.events import Operation, Status
from spendstream.ingest.otlp import (
    DecodeError,
    MappingConfig,
    decode_json,
    decode_protobuf,
    event_id,
    map_spans,
)

TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
START_NS = 1_764_000_000_123_456_789  # 2025-11-24T16:00:00.123456Z


def _value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, list):
        return {"arrayValue": {"values": [_value(x) for x in v]}}
    return {"stringValue": v}


def span_json(
    attrs: dict[str, Any],
    span_id: str = "eee19b7ec3c1b174",
    parent: str = "",
    status: int = 0,
    duration_ns: int = 842_500_000,
) -> dict[str, Any]:
    return {
        "traceId": TRACE.hex(),
        "spanId": span_id,
        "parentSpanId": parent,
        "name": "chat",
        "kind": 3,
        "startTimeUnixNano": str(START_NS),
        "endTimeUnixNano": str(START_NS + duration_ns),
        "attributes": [{"key": k, "value": _value(v)} for k, v in attrs.items()],
        "status": {"code": status},
    }


def request_json(spans: list[dict[str, Any]], service: str = "support-bot") -> bytes:
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                    },
                    "scopeSpans": [{"scope": {"name": "t"}, "spans": spans}],
                }
            ]
        }
    ).encode()


def request_pb(body_json: bytes) -> bytes:
    """The same request in protobuf (built field by field, not via json_format)."""
    doc = json.loads(body_json)
    req = ExportTraceServiceRequest()
    for rs in doc["resourceSpans"]:
        out_rs = req.resource_spans.add()
        for kv in rs["resource"]["attributes"]:
            a = out_rs.resource.attributes.add()
            a.key, a.value.string_value = kv["key"], kv["value"]["stringValue"]
        out_ss = out_rs.scope_spans.add()
        for sp in rs["scopeSpans"][0]["spans"]:
            s = out_ss.spans.add()
            s.trace_id, s.span_id = bytes.fromhex(sp["traceId"]), bytes.fromhex(sp["spanId"])
            s.parent_span_id = bytes.fromhex(sp["parentSpanId"])
            s.name, s.kind = sp["name"], sp["kind"]
            s.start_time_unix_nano = int(sp["startTimeUnixNano"])
            s.end_time_unix_nano = int(sp["endTimeUnixNano"])
            s.status.code = sp["status"]["code"]
            for kv in sp["attributes"]:
                a = s.attributes.add()
                a.key = kv["key"]
                v = kv["value"]
                if "stringValue" in v:
                    a.value.string_value = v["stringValue"]
                elif "intValue" in v:
                    a.value.int_value = int(v["intValue"])
                elif "doubleValue" in v:
                    a.value.double_value = v["doubleValue"]
                elif "boolValue" in v:
                    a.value.bool_value = v["boolValue"]
    return req.SerializeToString()


def both(body: bytes) -> list[Any]:
    """Map the JSON body and its protobuf twin; they must give the same events."""
    a = map_spans(decode_json(body))
    b = map_spans(decode_protobuf(request_pb(body)))
    assert a.events == b.events and (a.ignored, a.rejected) == (b.ignored, b.rejected)
    return [a]


BASE = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini"}


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        (  # current OTel names (2026: cache_write)
            {
                "gen_ai.provider.name": "openai",
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 350,
                "gen_ai.usage.cache_read.input_tokens": 1024,
                "gen_ai.usage.cache_write.input_tokens": 100,
                "gen_ai.usage.reasoning.output_tokens": 64,
            },
            {
                "input_tokens": 1200,
                "output_tokens": 350,
                "cache_read_tokens": 1024,
                "cache_creation_tokens": 100,
                "reasoning_tokens": 64,
            },
        ),
        (  # 2025 names: gen_ai.system, cache_creation
            {
                "gen_ai.system": "Anthropic",
                "gen_ai.usage.input_tokens": 5000,
                "gen_ai.usage.output_tokens": 20,
                "gen_ai.usage.cache_read.input_tokens": 3000,
                "gen_ai.usage.cache_creation.input_tokens": 1500,
            },
            {
                "input_tokens": 5000,
                "output_tokens": 20,
                "cache_read_tokens": 3000,
                "cache_creation_tokens": 1500,
            },
        ),
        (  # the oldest names: prompt/completion tokens, OpenLLMetry underscore cache names
            {
                "gen_ai.system": "openai",
                "gen_ai.usage.prompt_tokens": 900,
                "gen_ai.usage.completion_tokens": 80,
                "gen_ai.usage.cache_read_input_tokens": 512,
                "gen_ai.usage.cache_creation_input_tokens": 0,
            },
            {
                "input_tokens": 900,
                "output_tokens": 80,
                "cache_read_tokens": 512,
                "cache_creation_tokens": 0,
            },
        ),
        (  # OpenInference
            {
                "llm.provider": "openai",
                "llm.token_count.prompt": 700,
                "llm.token_count.completion": 300,
                "llm.token_count.prompt_details.cache_read": 256,
                "llm.token_count.prompt_details.audio": 40,
                "llm.token_count.completion_details.reasoning": 120,
            },
            {
                "input_tokens": 700,
                "output_tokens": 300,
                "cache_read_tokens": 256,
                "input_audio_tokens": 40,
                "reasoning_tokens": 120,
            },
        ),
        (  # modality parts and an integral double (JavaScript SDKs)
            {
                "gen_ai.provider.name": "openai",
                "gen_ai.usage.input_tokens": 1000.0,
                "gen_ai.usage.output_tokens": 500,
                "gen_ai.usage.audio.input_tokens": 300,
                "gen_ai.usage.image.output_tokens": 200,
                "gen_ai.usage.audio.cache_read.input_tokens": 100,
                "gen_ai.usage.cache_read.input_tokens": 100,
            },
            {
                "input_tokens": 1000,
                "output_tokens": 500,
                "input_audio_tokens": 300,
                "output_image_tokens": 200,
                "cache_audio_read_tokens": 100,
                "cache_read_tokens": 100,
            },
        ),
    ],
)
def test_usage_conventions(attrs: dict[str, Any], expected: dict[str, int]) -> None:
    (res,) = both(request_json([span_json({**BASE, **attrs})]))
    (ev,) = res.events
    assert ev.usage.model_dump(exclude_none=True) == expected
    assert ev.usage_error is None


def test_newest_name_wins_when_both_are_present() -> None:
    attrs = {
        **BASE,
        "gen_ai.system": "openai",
        "gen_ai.usage.cache_creation.input_tokens": 5,
        "gen_ai.usage.cache_write.input_tokens": 7,
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.prompt_tokens": 99,
    }
    (res,) = both(request_json([span_json(attrs)]))
    assert res.events[0].usage.cache_creation_tokens == 7
    assert res.events[0].usage.input_tokens == 10


def test_event_fields() -> None:
    server = span_json(
        {"http.route": "/v1/answer", "enduser.id": "u-1842"}, span_id="aaaaaaaaaaaaaaaa"
    )
    call = span_json(
        {
            **BASE,
            "gen_ai.provider.name": "az.ai.openai",
            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
            "spendstream.team": "cs",
            "openai.response.service_tier": "default",
            "gen_ai.response.time_to_first_chunk": 0.21,
        },
        parent="aaaaaaaaaaaaaaaa",
    )
    (res,) = both(request_json([server, call]))
    assert (res.ignored, res.rejected) == (1, 0)
    (ev,) = res.events
    assert ev.event_id == event_id(TRACE, bytes.fromhex("eee19b7ec3c1b174"))
    assert ev.timestamp == datetime(2025, 11, 24, 16, 0, 0, 123456, tzinfo=UTC)
    assert ev.latency_ms == 842.5
    assert ev.ttft_ms == 210.0
    assert (ev.service, ev.endpoint, ev.provider) == ("support-bot", "/v1/answer", "azure")
    assert (ev.request_model, ev.response_model) == ("gpt-4o-mini", "gpt-4o-mini-2024-07-18")
    assert (ev.team, ev.user_id, ev.service_tier) == ("cs", "u-1842", "standard")
    assert (ev.operation, ev.status, ev.error_type) == (Operation.CHAT, Status.OK, None)


def test_status_and_configurable_endpoint() -> None:
    attrs = {**BASE, "gen_ai.system": "openai", "error.type": "RateLimitError", "rpc.x": "/r"}
    res = map_spans(decode_json(request_json([span_json(attrs, status=2)])))
    (ev,) = res.events
    assert (ev.status, ev.error_type, ev.endpoint) == (
        Status.RATE_LIMITED,
        "RateLimitError",
        "otel",
    )
    cfg = MappingConfig(endpoint_attributes=("rpc.x",))
    (ev2,) = map_spans(decode_json(request_json([span_json(attrs, status=2)])), cfg).events
    assert ev2.endpoint == "/r"


def test_agent_tool_and_plain_spans_are_ignored() -> None:
    spans = [
        span_json({"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "m"}, "01" * 8),
        span_json({"gen_ai.operation.name": "execute_tool"}, "02" * 8),
        span_json({"http.route": "/x"}, "03" * 8),
        span_json({**BASE, "gen_ai.system": "openai"}, "04" * 8),
    ]
    (res,) = both(request_json(spans))
    assert (len(res.events), res.ignored, res.rejected) == (1, 3, 0)


def test_bad_spans_are_rejected_and_good_ones_kept() -> None:
    spans = [
        span_json({**BASE, "gen_ai.usage.input_tokens": -5}, "01" * 8),
        span_json({**BASE, "gen_ai.usage.output_tokens": "twelve"}, "02" * 8),
        span_json({"gen_ai.system": "openai"}, "03" * 8),  # no model
        span_json({**BASE, "gen_ai.usage.output_tokens": 10**9}, "04" * 8),  # > MAX_TOKENS
        span_json({**BASE, "gen_ai.usage.input_tokens": 10}, "05" * 8),
    ]
    res = map_spans(decode_json(request_json(spans)))
    assert (len(res.events), res.rejected) == (1, 4)
    assert res.events[0].usage.input_tokens == 10
    assert "4 GenAI span(s) rejected" in res.message()
    assert "no gen_ai.request.model (x1)" in res.message()


def test_raw_anthropic_input_is_not_priced_from_a_guess() -> None:
    """input_tokens that exclude cache (Anthropic's raw field) contradict OTel: usage_error."""
    attrs = {
        **BASE,
        "gen_ai.system": "anthropic",
        "gen_ai.usage.input_tokens": 20,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 4000,
    }
    (ev,) = map_spans(decode_json(request_json([span_json(attrs)]))).events
    assert ev.usage.model_dump(exclude_none=True) == {"output_tokens": 300}
    assert ev.usage_error is not None and "exceed input_tokens (20)" in ev.usage_error


def test_same_span_same_event_id() -> None:
    body = request_json([span_json({**BASE, "gen_ai.system": "openai"})])
    a = map_spans(decode_json(body)).events[0]
    b = map_spans(decode_json(body)).events[0]
    assert a.event_id == b.event_id == event_id(TRACE, bytes.fromhex("eee19b7ec3c1b174"))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"{not json",
        b'{"resourceSpans": 5}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "' + b"0" * 32 + b'"}]}]}]}',
    ],
)
def test_undecodable_json(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_json(body)


def test_undecodable_protobuf() -> None:
    with pytest.raises(DecodeError):
        decode_protobuf(b"\xff\xff\xff\xff")


def test_a_wrong_span_clock_drops_the_latency_not_the_call() -> None:
    attrs = {**BASE, "gen_ai.system": "openai", "gen_ai.response.time_to_first_chunk": 1e9}
    day_and_more = 86_400_000_000_001
    (ev,) = map_spans(
        decode_json(request_json([span_json(attrs, duration_ns=day_and_more)]))
    ).events
    assert (ev.latency_ms, ev.ttft_ms) == (None, None)
    (ev,) = map_spans(decode_json(request_json([span_json(attrs, duration_ns=-5)]))).events
    assert ev.latency_ms is None


def test_trace_span_and_session_ids() -> None:
    """The span's own ids; the session from the span, an ancestor or the resource, under the
    configured attribute names, cleaned rather than costing the call."""
    server = span_json({"http.route": "/chat", "session.id": "s-parent"}, "aaaaaaaaaaaaaaaa")
    under = span_json({**BASE, "gen_ai.system": "openai"}, "bbbbbbbbbbbbbbbb", "aaaaaaaaaaaaaaaa")
    own = span_json(
        {**BASE, "gen_ai.system": "openai", "gen_ai.conversation.id": "conv\t9" + "x" * 300},
        "cccccccccccccccc",
        "aaaaaaaaaaaaaaaa",
    )
    lone = span_json({**BASE, "gen_ai.system": "openai"}, "dddddddddddddddd")
    (res,) = both(request_json([server, under, own, lone]))
    assert res.rejected == 0
    got = [(e.trace_id, e.span_id, e.session_id) for e in res.events]
    conv = ("conv 9" + "x" * 300)[:256]
    assert got == [
        (TRACE.hex(), "bbbbbbbbbbbbbbbb", "s-parent"),
        (TRACE.hex(), "cccccccccccccccc", conv),
        (TRACE.hex(), "dddddddddddddddd", None),
    ]
    cfg = MappingConfig(session_attributes=("app.chat",))
    tagged = span_json({**BASE, "gen_ai.system": "openai", "app.chat": "c-1", "session.id": "no"})
    (ev,) = map_spans(decode_json(request_json([tagged])), cfg).events
    assert ev.session_id == "c-1"


def test_spendstream_tag_attributes_become_tags_the_span_winning_over_the_resource() -> None:
    doc = json.loads(
        request_json(
            [
                span_json({**BASE, "spendstream.tag.exp": "b", "spendstream.tag.n": 3}, "01" * 8),
                span_json({**BASE, "spendstream.tag.bad key": "x"}, "02" * 8),
            ]
        )
    )
    doc["resourceSpans"][0]["resource"]["attributes"] += [
        {"key": "spendstream.tag.exp", "value": {"stringValue": "a"}},
        {"key": "spendstream.tag.deploy", "value": {"stringValue": "r42"}},
    ]
    (res,) = both(json.dumps(doc).encode())
    (ev,) = res.events  # a non-string tag value is not a tag; a key the schema refuses rejects
    assert ev.tags == {"exp": "b", "deploy": "r42"}
    assert res.rejected == 1 and "tags" in res.message()
