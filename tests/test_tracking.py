"""Call tracking: latency, usage, status on exceptions, context defaults — never raising.

These use an emitter pointed at an address where no broker listens: the event is built and
queued all the same (``call.event``), which is what is asserted here; delivery is tested
against the real broker in test_emitter.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from spendstream.config import Settings
from spendstream.events import Status, Usage
from spendstream.producers import Emitter, call_context
from tests.test_usage import ANTHROPIC_MESSAGE, OPENAI_CHAT


@pytest.fixture
def emitter() -> Iterator[Emitter]:
    s = Settings(kafka_bootstrap_servers="127.0.0.1:1", service="svc-default")
    e = Emitter(s, register_atexit=False)
    yield e
    e.close(timeout=0)


class RateLimitError(Exception):
    status_code = 429


def test_successful_call_carries_usage_latency_and_attribution(emitter: Emitter) -> None:
    with emitter.track(
        "openai",
        "gpt-4o-mini",
        endpoint="/answer",
        team="support",
        user_id="u1",
        tags={"region": "eu"},
    ) as call:
        call.set_response(OPENAI_CHAT)
    ev = call.event
    assert ev is not None
    assert (ev.service, ev.endpoint, ev.team, ev.user_id) == (
        "svc-default",
        "/answer",
        "support",
        "u1",
    )
    assert ev.request_model == "gpt-4o-mini" and ev.response_model == "gpt-4o-mini-2024-07-18"
    assert ev.usage == Usage(
        input_tokens=1200,
        output_tokens=350,
        cache_read_tokens=1024,
        reasoning_tokens=100,
        input_audio_tokens=0,
        output_audio_tokens=0,
    )
    assert ev.status is Status.OK and ev.error_type is None
    assert ev.latency_ms is not None and ev.latency_ms >= 0
    assert ev.tags == {"region": "eu"}
    assert emitter.pending() == 1


class BadRequestError(Exception):
    status_code = 400


@pytest.mark.parametrize(
    ("exc", "status", "error_type", "usage"),
    [
        # refused by the provider before the model ran: exactly $0, not an estimate
        (
            RateLimitError("slow down"),
            Status.RATE_LIMITED,
            "RateLimitError",
            Usage(input_tokens=0, output_tokens=0),
        ),
        (
            BadRequestError("no"),
            Status.ERROR,
            "BadRequestError",
            Usage(input_tokens=0, output_tokens=0),
        ),
        # may have been billed (the model may have run): unknown, the worker estimates it
        (TimeoutError(), Status.TIMEOUT, "TimeoutError", Usage()),
        (ValueError("bad"), Status.ERROR, "ValueError", Usage()),
    ],
)
def test_exception_sets_status_and_is_reraised_untouched(
    emitter: Emitter, exc: Exception, status: Status, error_type: str, usage: Usage
) -> None:
    with (
        pytest.raises(type(exc)) as info,
        emitter.track("anthropic", "claude-sonnet-4-0", endpoint="/x") as call,
    ):
        raise exc
    assert info.value is exc
    assert call.event is not None
    assert call.event.status is status and call.event.error_type == error_type
    assert call.event.usage == usage


def test_context_supplies_defaults_and_explicit_fields_win(emitter: Emitter) -> None:
    with call_context(
        service="billing", endpoint="/invoice", team="finance", user_id="u7", tags={"env": "prod"}
    ):
        with emitter.track("anthropic", "claude-sonnet-4-0") as a:
            a.set_response(ANTHROPIC_MESSAGE)
        with emitter.track("anthropic", "claude-sonnet-4-0", team="other", tags={"k": "v"}) as b:
            pass
    assert a.event is not None and b.event is not None
    assert (a.event.service, a.event.endpoint, a.event.team) == ("billing", "/invoice", "finance")
    assert a.event.usage.input_tokens == 1250
    assert b.event.team == "other" and b.event.tags == {"env": "prod", "k": "v"}
    with emitter.track("openai", "gpt-4o") as c:
        pass
    assert c.event is not None and c.event.service == "svc-default" and c.event.team is None


def test_streaming_sets_ttft_and_final_usage(emitter: Emitter) -> None:
    async def run() -> Any:
        async with emitter.track("openai", "gpt-4o", endpoint="/chat") as call:
            for chunk in [
                {
                    "object": "chat.completion.chunk",
                    "model": "gpt-4o",
                    "choices": [{"delta": {"content": "hi"}}],
                },
                {
                    "object": "chat.completion.chunk",
                    "model": "gpt-4o",
                    "choices": [],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
                },
            ]:
                await asyncio.sleep(0)
                call.observe_chunk(chunk)
        return call

    call = asyncio.run(run())
    assert call.event.usage == Usage(input_tokens=12, output_tokens=3)
    assert call.event.ttft_ms is not None
    assert call.event.latency_ms >= call.event.ttft_ms


def test_traced_decorator_sync_and_async(emitter: Emitter) -> None:
    @emitter.traced("openai", "gpt-4o-mini", endpoint="/sync")
    def sync_call() -> dict[str, Any]:
        return OPENAI_CHAT

    @emitter.traced("anthropic", "claude-sonnet-4-0", endpoint="/async")
    async def async_call() -> dict[str, Any]:
        return ANTHROPIC_MESSAGE

    assert sync_call() is OPENAI_CHAT
    assert asyncio.run(async_call()) is ANTHROPIC_MESSAGE
    assert emitter.pending() == 2


def test_a_bad_field_is_repaired_and_counted_not_raised(emitter: Emitter) -> None:
    with emitter.track("openai", "gpt-4o", endpoint="/x", team="bad\nteam") as call:
        pass
    assert call.event is not None and call.event.team == "bad team"
    assert emitter.stats().repaired == {"field_sanitized": 1}
    assert emitter.stats().dropped == {}


def test_a_bad_timestamp_override_falls_back_to_the_measured_start_and_a_non_event_is_invalid(
    emitter: Emitter,
) -> None:
    before = datetime.now(UTC)
    with emitter.track("openai", "gpt-4o", endpoint="/x", timestamp="not a time") as call:
        pass
    # the event is kept (it used to be dropped as invalid): the start time the tracker measured
    assert call.event is not None and before <= call.event.timestamp <= datetime.now(UTC)
    assert emitter.stats().repaired == {"field_dropped": 1}
    with emitter.track("openai", "gpt-4o", timestamp=datetime(2025, 1, 1)) as naive:
        pass
    assert naive.event is not None and naive.event.timestamp != datetime(2025, 1, 1, tzinfo=UTC)
    assert emitter.stats().repaired == {"field_dropped": 2}
    assert emitter.emit("not an event") is False  # type: ignore[arg-type]
    assert emitter.stats().dropped == {"invalid": 1}


def test_after_close_events_are_counted_as_closed(emitter: Emitter) -> None:
    emitter.close(timeout=0)
    with emitter.track("openai", "gpt-4o", endpoint="/x"):
        pass
    assert emitter.stats().dropped.get("closed") == 1


def test_stats_are_exposed_to_prometheus(emitter: Emitter) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from spendstream.producers.metrics import EmitterCollector

    reg = CollectorRegistry()
    reg.register(EmitterCollector(emitter))
    emitter.emit("junk")  # type: ignore[arg-type]
    with emitter.track("openai", "gpt-4o", endpoint="/x"):
        pass
    text = generate_latest(reg).decode()
    assert 'spendstream_sdk_events_dropped_total{reason="invalid"} 1.0' in text
    assert 'spendstream_sdk_events_dropped_total{reason="buffer_full"} 0.0' in text
    assert "spendstream_sdk_events_queued 1.0" in text
    assert "spendstream_sdk_events_delivered_total 0.0" in text
    assert 'spendstream_sdk_events_repaired_total{reason="field_sanitized"} 0.0' in text
    with emitter.track("openai", "gpt-4o", endpoint="/x", team="tab\tteam"):
        pass
    text = generate_latest(reg).decode()
    assert 'spendstream_sdk_events_repaired_total{reason="field_sanitized"} 1.0' in text
    # two queued events: 4 KiB each while buffered, their encoded records' size once taken
    (line,) = [x for x in text.splitlines() if x.startswith("spendstream_sdk_buffered_bytes ")]
    assert 0 < float(line.split()[1]) <= 8192


TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def test_session_id_from_track_or_an_enclosing_session_block(emitter: Emitter) -> None:
    from spendstream.producers.tracking import session

    with emitter.track("openai", "gpt-4o", session_id="s-explicit") as a:
        pass
    with session("s-outer"):
        with emitter.track("openai", "gpt-4o") as b:
            pass
        with session("s-inner"), emitter.track("openai", "gpt-4o") as c:
            pass

        async def in_a_task() -> Any:
            with emitter.track("openai", "gpt-4o") as d:
                pass
            return d.event

        d_event = asyncio.run(in_a_task())  # a new task copies the context: inherits
        with emitter.track("openai", "gpt-4o", session_id="s-wins") as e:
            pass
    with emitter.track("openai", "gpt-4o") as f:
        pass
    got = [x.event.session_id if x.event else "?" for x in (a, b, c, e, f)]
    assert got == ["s-explicit", "s-outer", "s-inner", "s-wins", None]
    assert d_event is not None and d_event.session_id == "s-outer"


def test_trace_and_span_ids_come_from_the_current_otel_span(emitter: Emitter) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext

    ctx = SpanContext(trace_id=int(TRACE, 16), span_id=int(SPAN, 16), is_remote=False)
    with trace.use_span(NonRecordingSpan(ctx)), emitter.track("openai", "gpt-4o") as a:
        pass
    with emitter.track("openai", "gpt-4o") as b:  # no span current: the API's invalid span
        pass
    with (
        trace.use_span(NonRecordingSpan(ctx)),
        emitter.track("openai", "gpt-4o", trace_id="a" * 32) as c,  # explicit wins
    ):
        pass
    assert a.event is not None and (a.event.trace_id, a.event.span_id) == (TRACE, SPAN)
    assert b.event is not None and (b.event.trace_id, b.event.span_id) == (None, None)
    assert c.event is not None and (c.event.trace_id, c.event.span_id) == ("a" * 32, None)


def test_without_opentelemetry_there_are_no_ids_and_no_error(
    emitter: Emitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from spendstream.producers import tracking

    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import raises ImportError
    monkeypatch.setattr(tracking, "otel_ids", tracking.OTelIds())
    with emitter.track("openai", "gpt-4o") as a:
        pass
    assert a.event is not None and a.event.trace_id is None
    assert tracking.otel_ids.current() == (None, None)


def test_bad_trace_and_span_ids_are_fixed_or_dropped_and_counted(emitter: Emitter) -> None:
    with emitter.track("openai", "gpt-4o", trace_id=f" {TRACE.upper()} ", span_id="0" * 16) as a:
        pass
    assert a.event is not None and (a.event.trace_id, a.event.span_id) == (TRACE, None)
    with emitter.track("openai", "gpt-4o", trace_id="not-a-trace", span_id=SPAN + "x") as b:
        pass
    assert b.event is not None and (b.event.trace_id, b.event.span_id) == (None, None)
    with emitter.track("openai", "gpt-4o", session_id="s\n" + "x" * 300) as c:
        pass
    assert c.event is not None and c.event.session_id == "s " + "x" * 254
    assert emitter.stats().repaired == {"field_sanitized": 2, "field_dropped": 2}
    assert emitter.stats().dropped == {}
