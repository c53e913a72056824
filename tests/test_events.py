"""Event schema v1: good events round-trip through JSON unchanged, bad ones name the field."""

from __future__ import annotations

import json
import string
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from spendstream.events import (
    MAX_PRICE_SOURCE_CHARS,
    MAX_TAGS,
    MAX_TEXT_CHARS,
    MAX_TOKENS,
    MAX_USD,
    Cost,
    EnrichedEvent,
    LLMCallEvent,
    TokenCounts,
    describe_error,
    example_event,
)


def wire(**overrides: Any) -> dict[str, Any]:
    """The README example as a JSON dict, with fields replaced or (value ...) removed."""
    d: dict[str, Any] = json.loads(example_event().to_json())
    for k, v in overrides.items():
        if v is ...:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def error_fields(data: dict[str, Any]) -> set[str]:
    with pytest.raises(ValidationError) as info:
        LLMCallEvent.model_validate_json(json.dumps(data))
    return {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}


def test_example_round_trips_byte_for_byte() -> None:
    ev = example_event()
    raw = ev.to_json()
    back = LLMCallEvent.from_json(raw)
    assert back == ev
    assert back.to_json() == raw
    assert back.timestamp == datetime(2026, 11, 28, 14, 3, 7, 250000, tzinfo=UTC)
    assert ev.kafka_key() == b"support-bot//v1/answer"


def test_timestamp_with_offset_is_normalised_to_utc() -> None:
    ev = LLMCallEvent.model_validate(wire(timestamp="2026-11-28T15:03:07+01:00"))
    assert ev.timestamp == datetime(2026, 11, 28, 14, 3, 7, tzinfo=UTC)
    assert ev.timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"timestamp": "2026-11-28T14:03:07"}, "timestamp"),  # naive
        ({"timestamp": "1999-12-31T23:59:59Z"}, "timestamp"),
        ({"usage": {"input_tokens": -1}}, "usage.input_tokens"),
        ({"usage": {"output_tokens": MAX_TOKENS + 1}}, "usage.output_tokens"),
        ({"usage": {"input_tokens": "12"}}, "usage.input_tokens"),  # strict: no strings
        ({"usage": {"input_tokens": 12.5}}, "usage.input_tokens"),
        (
            {"usage": {"input_tokens": 100, "cache_read_tokens": 80, "cache_creation_tokens": 30}},
            "usage",
        ),
        ({"usage": {"output_tokens": 10, "reasoning_tokens": 11}}, "usage"),
        ({"usage": {"input_tokens": 1, "cached_tokens": 1}}, "usage.cached_tokens"),
        ({"bogus": 1}, "bogus"),
        ({"prompt_text": "x" * (MAX_TEXT_CHARS + 1)}, "prompt_text"),
        ({"response_text": "x" * (MAX_TEXT_CHARS + 1)}, "response_text"),
        ({"tags": {f"k{i}": "v" for i in range(MAX_TAGS + 1)}}, "tags"),
        ({"tags": {"bad key!": "v"}}, "tags"),
        ({"tags": {"k": 1}}, "tags.k"),
        ({"service": ""}, "service"),
        ({"service": "a\nb"}, "service"),
        ({"provider": "OpenAI"}, "provider"),
        ({"endpoint": ...}, "endpoint"),
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"schema_version": 2}, "schema_version"),
        ({"status": "exploded"}, "status"),
        ({"latency_ms": -5}, "latency_ms"),
        ({"cache_hit": True}, "<event>"),  # cache_kind missing
        ({"error_type": "RateLimitError"}, "<event>"),  # status ok
        ({"feedback": 2}, "feedback"),
        ({"groundedness": -0.1}, "groundedness"),
        # what PostgreSQL (text, jsonb, numeric(30, 12)) or a terminal cannot take
        ({"user_id": "u\x00x"}, "user_id"),
        ({"routing_reason": "cheap\x00"}, "routing_reason"),
        ({"user_id": "\x1b[2J"}, "user_id"),
        ({"routing_reason": "a\x9bb"}, "routing_reason"),  # C1 CSI
        ({"tags": {"k": "v\x00"}}, "tags"),
        ({"tags": {"k": "v\x1b]8;;http://x\x07"}}, "tags"),
        ({"tags": {"region\n": "eu"}}, "tags"),  # Python's $ matched before a final newline
        ({"team": "t\x7f"}, "team"),
        ({"status": "error", "error_type": "E\x00"}, "error_type"),
        ({"cache_hit": True, "cache_kind": "exact", "cache_saved_usd": "1e18"}, "cache_saved_usd"),
        ({"cache_hit": True, "cache_kind": "exact", "cache_saved_usd": "1e300"}, "cache_saved_usd"),
        (
            {"cache_hit": True, "cache_kind": "exact", "cache_saved_usd": "1000000.000000000001"},
            "cache_saved_usd",
        ),
    ],
)
def test_bad_event_error_names_the_field(overrides: dict[str, Any], field: str) -> None:
    data = wire(**overrides)
    fields = error_fields(data)
    if field == "<event>":
        assert fields == {""}
    else:
        assert field in fields


def test_error_description_is_one_readable_line() -> None:
    with pytest.raises(ValidationError) as info:
        LLMCallEvent.model_validate_json(json.dumps(wire(usage={"input_tokens": -1}, bogus=1)))
    text = describe_error(info.value)
    assert "usage.input_tokens: Input should be greater than or equal to 0" in text
    assert "bogus: Extra inputs are not permitted" in text
    assert "upgrade stream workers and sinks before producers" in text


TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def test_session_and_trace_fields_are_optional_and_round_trip() -> None:
    ev = example_event(session_id="sess-1", trace_id=TRACE, span_id=SPAN)
    assert (ev.session_id, ev.trace_id, ev.span_id) == ("sess-1", TRACE, SPAN)
    assert LLMCallEvent.from_json(ev.to_json()) == ev
    assert b"session_id" not in example_event().to_json()  # absent, never null on the wire


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trace_id", TRACE.upper()), ("trace_id", "0" * 32), ("trace_id", TRACE[:-1]),
        ("trace_id", TRACE + "0"), ("trace_id", TRACE + "\n"), ("trace_id", TRACE[:-1] + "g"),
        ("trace_id", "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"), ("trace_id", 5),
        ("span_id", SPAN.upper()), ("span_id", "0" * 16), ("span_id", SPAN + "\n"),
        ("span_id", TRACE), ("span_id", ""),
        ("session_id", "s" * 257), ("session_id", "a\tb"), ("session_id", "a\x85b"),
        ("session_id", 7),
    ],
)  # fmt: skip
def test_bad_session_and_trace_ids_are_refused_by_name(field: str, value: Any) -> None:
    assert error_fields(wire(**{field: value})) == {field}


def test_an_older_reader_dead_letters_a_new_field_naming_it() -> None:
    """A schema-v1 reader that predates a field refuses it (extra="forbid"): the reason names
    the field and says to upgrade readers first (what a pre-issue-17 worker does with
    ``session_id``, shown with a field no reader knows yet)."""
    with pytest.raises(ValidationError) as info:
        LLMCallEvent.model_validate_json(json.dumps(wire(conversation_turn=3)))
    assert describe_error(info.value) == (
        "conversation_turn: Extra inputs are not permitted (not a field of this reader's schema "
        "v1: upgrade stream workers and sinks before producers)"
    )


# --- property tests ---------------------------------------------------------------------------

names = st.text(string.ascii_letters + string.digits + "-_./ ", min_size=1, max_size=40)
tokens = st.integers(0, 200_000)
printable = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=50)
"""Free text the schema stores: any Unicode but control characters (C0, DEL, C1)."""


@st.composite
def usages(draw: st.DrawFn) -> dict[str, int]:
    inp = draw(tokens)
    out = draw(tokens)
    cache_read = draw(st.integers(0, inp))
    cache_create = draw(st.integers(0, inp - cache_read))
    reasoning = draw(st.integers(0, out))
    u = {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_tokens": cache_read,
        "cache_creation_tokens": cache_create,
        "reasoning_tokens": reasoning,
    }
    drop = draw(st.sets(st.sampled_from(sorted(u))))
    return {k: v for k, v in u.items() if k not in drop}


@st.composite
def events(draw: st.DrawFn) -> LLMCallEvent:
    offset = draw(st.integers(-12 * 60, 14 * 60))
    ts = draw(st.datetimes(datetime(2001, 1, 1), datetime(2099, 1, 1)))
    cache_hit = draw(st.booleans())
    status = draw(st.sampled_from(["ok", "error", "timeout", "rate_limited", "cancelled"]))
    return LLMCallEvent.model_validate(
        {
            "event_id": str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
            "timestamp": ts.replace(tzinfo=timezone(timedelta(minutes=offset))),
            "service": draw(names),
            "endpoint": draw(names),
            "provider": draw(st.sampled_from(["openai", "anthropic", "google-gla", "azure"])),
            "request_model": draw(names),
            "team": draw(st.none() | names),
            "user_id": draw(st.none() | printable),
            "session_id": draw(st.none() | printable),
            "trace_id": draw(st.none() | st.integers(1, 2**128 - 1).map(lambda n: f"{n:032x}")),
            "span_id": draw(st.none() | st.integers(1, 2**64 - 1).map(lambda n: f"{n:016x}")),
            "tags": draw(
                st.dictionaries(
                    st.text(string.ascii_letters, min_size=1, max_size=10),
                    printable,
                    max_size=4,
                )
            ),
            "usage": draw(usages()),
            "prompt_text": draw(st.none() | st.text(max_size=200)),
            "latency_ms": draw(st.none() | st.floats(0, 1e6)),
            "status": status,
            "error_type": None if status == "ok" else draw(st.none() | names),
            "cache_hit": cache_hit,
            "cache_kind": draw(st.sampled_from(["exact", "semantic"])) if cache_hit else None,
            "feedback": draw(st.none() | st.floats(-1, 1)),
        }
    )


@given(events())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_valid_event_round_trips_unchanged(ev: LLMCallEvent) -> None:
    back = LLMCallEvent.from_json(ev.to_json())
    assert back == ev
    assert back.timestamp.tzinfo == UTC


REQUIRED_STR = ["service", "endpoint", "provider", "request_model"]


@given(
    field=st.sampled_from([*REQUIRED_STR, "timestamp", "event_id"]),
    value=st.one_of(
        st.integers(),
        st.floats(allow_nan=False),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(), st.integers(), max_size=2),
    ),
)
def test_wrong_type_in_a_field_is_rejected_by_name(field: str, value: Any) -> None:
    if field == "timestamp" and isinstance(value, int | float) and not isinstance(value, bool):
        value = None  # numbers are unix times (valid, UTC) - use a surely wrong value instead
    assert field in error_fields(wire(**{field: value}))


# --- enriched events ----------------------------------------------------------------------------


def cost(**kw: Any) -> Cost:
    base: dict[str, Any] = {
        "input": "0.000024",
        "cache_read": "0.0000768",
        "output": "0.00021",
        "total": "0.0003108",
        "price_source": "genai-prices",
        "price_version": "0.2.3",
    }
    base.update(kw)
    return Cost.model_validate(base)


def test_enriched_round_trip_keeps_decimals_exact() -> None:
    enriched = EnrichedEvent(
        event=example_event(),
        tokens=TokenCounts(input_tokens=1200, output_tokens=350, cache_read_tokens=1024),
        cost=cost(),
    )
    raw = enriched.to_json()
    assert b'"total":"0.0003108"' in raw
    back = EnrichedEvent.from_json(raw)
    assert back == enriched
    assert back.cost is not None and back.cost.total == Decimal("0.0003108")
    assert back.cost.total_micro_usd == 311  # 310.8 micro-dollars, half-even


def test_cost_parts_must_sum_to_total() -> None:
    with pytest.raises(ValidationError, match=r"total 0\.0003109 != sum of parts 0\.0003108"):
        cost(total="0.0003109")


def test_unknown_price_is_explicit_never_zero() -> None:
    tok = TokenCounts(input_tokens=10, output_tokens=5, estimated=True)
    unknown = EnrichedEvent(event=example_event(), tokens=tok, price_unknown=True)
    assert unknown.cost is None
    with pytest.raises(ValidationError, match="exactly one of cost"):
        EnrichedEvent(event=example_event(), tokens=tok)
    with pytest.raises(ValidationError, match="exactly one of cost"):
        EnrichedEvent(event=example_event(), tokens=tok, cost=cost(), price_unknown=True)


def test_token_counts_obey_otel_inclusion() -> None:
    with pytest.raises(ValidationError, match="exceed input_tokens"):
        TokenCounts(input_tokens=10, output_tokens=0, cache_read_tokens=11)
    t = TokenCounts(
        input_tokens=1200,
        output_tokens=350,
        cache_read_tokens=1024,
        cache_creation_tokens=100,
        reasoning_tokens=300,
    )
    assert t.uncached_input_tokens == 76
    assert t.non_reasoning_output_tokens == 50


def test_bounds_are_inclusive_and_text_fields_may_hold_newlines() -> None:
    ev = LLMCallEvent.model_validate(
        wire(
            cache_hit=True,
            cache_kind="exact",
            cache_saved_usd=str(MAX_USD),
            user_id="ünïcødé \u202e user",  # printable, if odd: the report escapes bidi
            tags={"k": "x" * 256},
            prompt_text="line 1\n\tline 2\x00",  # any text: the sink replaces NUL if stored
        )
    )
    assert ev.cache_saved_usd == Decimal(1_000_000)
    cost = Cost(input=MAX_USD, output=Decimal(0), total=MAX_USD,
                price_source="override:" + "p" * (MAX_PRICE_SOURCE_CHARS - 9))  # fmt: skip
    assert len(cost.price_source) == MAX_PRICE_SOURCE_CHARS
    with pytest.raises(ValidationError):
        Cost(input=MAX_USD, output=Decimal(1), total=MAX_USD + 1, price_source="x")
