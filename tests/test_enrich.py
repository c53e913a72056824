"""Enrichment and dead letters, in process: every line is either enriched or dead-lettered
with its original bytes and a reason — nothing is lost, nothing raises."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendstream.events import EnrichedEvent, LLMCallEvent, example_event
from spendstream.stream.enrich import Enricher, final_tokens
from spendstream.stream.rules import RuleConfig, ScopeRules
from spendstream.stream.windows import Agg

ENRICHER = Enricher()


def test_fast_json_is_the_schema_object() -> None:
    ev = example_event()
    call = ENRICHER.enrich(ev, ev.to_json())
    model = EnrichedEvent.from_json(call.to_json())
    assert model.event == ev
    assert model.cost is not None and model.cost.total == Decimal("0.0003132")
    assert model.tokens.input_tokens == 1200 and not model.tokens.estimated
    assert model == call.to_model()


def test_missing_usage_is_estimated_and_text_is_dropped() -> None:
    ev = example_event(
        usage={}, prompt_text="What is the capital of France?", response_text="Paris."
    )
    tok = final_tokens(ev)
    assert tok.estimated
    assert tok.input_tokens == 7 + 7  # 7 text tokens + OpenAI chat overhead 7
    assert tok.output_tokens == 2
    enriched = EnrichedEvent.from_json(ENRICHER.enrich(ev, ev.to_json()).to_json())
    assert enriched.event.prompt_text is None and enriched.event.response_text is None
    kept = EnrichedEvent.from_json(ENRICHER.enrich(ev, ev.to_json()).to_json(keep_text=True))
    assert kept.event.prompt_text == "What is the capital of France?"


def test_unknown_model_is_flagged_never_zero() -> None:
    ev = example_event(request_model="acme-private-1", response_model=None)
    enriched = EnrichedEvent.from_json(ENRICHER.enrich(ev, ev.to_json()).to_json())
    assert enriched.price_unknown and enriched.cost is None


garbage = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.builds(lambda s, n: s[:n], st.just(example_event().to_json()), st.integers(0, 400)),
    st.dictionaries(
        st.sampled_from(["service", "usage", "timestamp", "event_id", "x"]),
        st.one_of(st.integers(), st.text(max_size=5), st.none(), st.lists(st.integers())),
        max_size=4,
    ).map(lambda d: json.dumps(d).encode()),
    st.just(b'{"service": "' + b"x" * 300_000 + b'"}'),
    st.just(b"\xff\xfe\xfd"),
)


@given(st.lists(st.tuples(st.booleans(), garbage), min_size=1, max_size=30))
@settings(
    max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
def test_every_line_is_enriched_or_dead_lettered_with_its_bytes(
    items: list[tuple[bool, bytes]],
) -> None:
    good = example_event().to_json()
    lines = [good if ok else g.replace(b"\n", b" ") for ok, g in items]
    value = b"\n".join(lines)
    res = ENRICHER.process(value)
    if not value:
        assert res.calls == []
        assert [(d.line, d.reason) for d in res.dead] == [(None, "empty record")]
        return
    expected_good = []
    expected_bad = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            LLMCallEvent.model_validate_json(line)
            expected_good.append(i)
        except ValueError:
            expected_bad.append(i)
    assert len(res.calls) == len(expected_good)
    assert [d.line for d in res.dead] == expected_bad
    for d in res.dead:
        line = lines[d.line or 0]
        assert d.reason
        if d.raw != line:  # only a line that is no JSON object, with a text key or over 1 KiB
            assert line.startswith(d.raw) and len(d.raw) <= 1024
            assert b'_text"' in line or len(line) > 1024


def test_spend_spike_fires_once_and_resolves() -> None:
    rules = ScopeRules(RuleConfig())
    state: dict[str, Any] = {}
    alerts = []
    normal = [10_000_000_000 + (i % 5) * 1_000_000_000 for i in range(40)]  # ~$0.01 a minute
    spikes = [200_000_000_000] * 10  # $0.20 a minute
    for minute, spend in enumerate(normal + spikes + normal[:10]):
        agg = Agg()
        agg.spend, agg.calls = spend, 10
        alerts += rules.close_minute("endpoint:svc/x", state, minute, agg)
    assert [(a.status, a.rule) for a in alerts] == [
        ("firing", "spend_spike"),
        ("resolved", "spend_spike"),
    ]
    assert alerts[0].first_seen.timestamp() == 40 * 60  # the first spiking minute
    assert alerts[1].window_start.timestamp() >= 50 * 60
    assert alerts[0].alert_id == alerts[1].alert_id


# --- admission beyond the schema, and what a dead letter keeps ---------------------------------

NOW = datetime(2026, 11, 28, 14, 0, tzinfo=UTC).timestamp()


def at(seconds_ahead: float, **extra: Any) -> bytes:
    ts = datetime.fromtimestamp(NOW + seconds_ahead, UTC)
    return example_event(timestamp=ts, **extra).to_json()


def test_events_beyond_the_future_skew_are_dead_lettered_with_the_skew_in_the_reason() -> None:
    en = Enricher(max_future_skew_s=300, now=lambda: NOW)
    res = en.process(b"\n".join([at(-3600), at(300), at(300.5), at(86_400 * 365), at(0)]))
    assert [c.ts - NOW for c in res.calls] == [-3600, 300, 0]
    assert [d.line for d in res.dead] == [2, 3]
    assert res.dead[0].reason == (
        "timestamp 2026-11-28T14:05:00.500000+00:00 is ahead of the worker clock by 300 s "
        "(worker clock 2026-11-28T14:00:00+00:00; max_future_skew_s=300)"
    )
    assert "ahead of the worker clock by 31536000 s" in res.dead[1].reason
    assert res.aggregate.max_ts == NOW + 300  # a dead letter never moves the watermark
    off = Enricher(max_future_skew_s=None, now=lambda: NOW)
    assert len(off.process(at(86_400 * 365)).calls) == 1


def with_keys(line: bytes, extra: bytes) -> bytes:
    return line[:-1] + b"," + extra + b"}"


def test_duplicate_keys_that_could_hide_text_are_dead_lettered_and_plain_nulls_are_not() -> None:
    good = example_event().to_json()
    lines = [
        with_keys(good, b'"prompt_text":"SECRET","prompt_text":null'),
        with_keys(good, b'"prompt_text":"SECRET","prompt\\u005ftext":null'),  # escaped key
        with_keys(good, b'"response_text":"SECRET","response_text":null'),
        with_keys(good, b'"prompt_text":null'),  # not a duplicate
        good.replace(b'"u-1842"', b'"prompt_text"'),  # the key's bytes as a value
        with_keys(good, b'"team":"a","team":"b"'),  # no text field: not looked for (last wins)
    ]
    res = Enricher().process(b"\n".join(lines))
    assert [(d.line, d.reason) for d in res.dead] == [
        (0, "duplicate key 'prompt_text': JSON readers disagree on which value counts"),
        (1, "duplicate key 'prompt_text': JSON readers disagree on which value counts"),
        (2, "duplicate key 'response_text': JSON readers disagree on which value counts"),
    ]
    assert len(res.calls) == 3
    assert all(b"SECRET" not in c.to_json() and b"SECRET" not in d.raw
               for c in res.calls for d in res.dead)  # fmt: skip


def test_dead_letters_keep_text_lengths_not_text_unless_keep_text() -> None:
    bad = with_keys(
        example_event().to_json().replace(b'"u-1842"', b'"u\\u0000"'),
        b'"prompt_text":"what is the secret?","response_text":"42"',
    )
    stripped = json.loads(Enricher().process(bad).dead[0].raw)
    assert "prompt_text" not in stripped and "response_text" not in stripped
    assert (stripped["prompt_text_chars"], stripped["response_text_chars"]) == (19, 2)
    assert stripped["user_id"] == "u\x00" and stripped["service"] == "support-bot"
    assert Enricher(keep_text=True).process(bad).dead[0].raw == bad


def test_a_line_that_is_not_json_keeps_a_bounded_prefix_before_any_text_key() -> None:
    truncated = b'{"service":"s","prompt_text":"SECRET and more'
    noise = b"x" * 5000
    res = Enricher().process(truncated + b"\n" + noise + b"\n" + b'"a JSON string"')
    assert [d.raw for d in res.dead] == [b'{"service":"s","prompt', b"x" * 1024, b'"a JSON string"']
    assert Enricher(keep_text=True).process(truncated).dead[0].raw == truncated


def test_a_record_dead_lettered_whole_keeps_no_text_of_any_line() -> None:
    from spendstream.stream.enrich import redact_record

    lines = [example_event(prompt_text=f"secret {i}").to_json() for i in range(3)]
    value = b"\n".join([lines[0], b"", lines[1], b"{not json", lines[2]])
    out = redact_record(value, keep_text=False).split(b"\n")
    assert len(out) == 5 and out[1] == b"" and out[3] == b"{not json"
    assert [json.loads(out[i]).get("prompt_text_chars") for i in (0, 2, 4)] == [8, 8, 8]
    assert b"secret" not in b"\n".join(out)
    assert redact_record(value, keep_text=True) == value


REALTIME_TS = "2026-12-01T12:00:00Z"


def test_usage_error_prices_as_unknown_with_the_reason_and_is_counted() -> None:
    from spendstream.stream.metrics import PipelineMetrics

    ev = example_event(usage={"input_tokens": 1200}, usage_error="cached_tokens > prompt_tokens")
    call = ENRICHER.enrich(ev, ev.to_json())
    assert call.parts_pico is None and call.cost_pico == 0
    model = EnrichedEvent.from_json(call.to_json())
    assert model.price_unknown and model.cost is None
    assert model.price_unknown_reason == "usage unreadable: cached_tokens > prompt_tokens"
    assert model.tokens.input_tokens == 1200  # what could be read is kept
    m = PipelineMetrics()
    m.add_calls([call, call, ENRICHER.enrich(example_event(), example_event().to_json())])
    assert m.usage_unreadable == {"openai": 2}
    assert sum(m.price_unknown.values()) == 2


def test_embeddings_with_reported_input_are_exact_not_estimated() -> None:
    # text-embedding-3-small: $0.02/MTok; 1,000 tokens = $0.00002
    ev = example_event(
        operation="embeddings",
        request_model="text-embedding-3-small",
        response_model=None,
        usage={"input_tokens": 1000},
    )
    call = ENRICHER.enrich(ev, ev.to_json())
    assert (call.tokens.output_tokens, call.tokens.estimated) == (0, False)
    assert call.cost_pico == 1000 * 20_000  # 20,000 pico per token


def test_new_units_and_tier_reach_the_enriched_json_and_metrics() -> None:
    from spendstream.stream.metrics import PipelineMetrics

    # gpt-realtime, as in test_prices: 1,500 text + 2,000 cached text + 1,000 cached audio
    # + 5,000 audio + 500 image in, 500 text + 1,500 audio out = $0.2737
    usage = {"input_tokens": 10_000, "output_tokens": 2_000, "cache_read_tokens": 3_000,
             "input_audio_tokens": 6_000, "cache_audio_read_tokens": 1_000,
             "input_image_tokens": 500, "output_audio_tokens": 1_500}  # fmt: skip
    ev = example_event(
        timestamp=REALTIME_TS, request_model="gpt-realtime", response_model=None, usage=usage
    )
    call = ENRICHER.enrich(ev, ev.to_json())
    model = EnrichedEvent.from_json(call.to_json())
    assert model == call.to_model()
    assert model.cost is not None
    assert (model.cost.audio, model.cost.image) == (Decimal("0.2564"), Decimal("0.0025"))
    assert model.cost.total == Decimal("0.2737")
    assert model.tokens.input_audio_tokens == 6000 and model.tokens.output_audio_tokens == 1500
    m = PipelineMetrics()
    m.add_calls([call])
    by_type = {typ: n for (_, typ), n in m.tokens.items()}
    assert by_type == {"input": 10_000, "output": 2_000, "cache_read": 3_000,
                       "audio_input": 6_000, "audio_cache_read": 1_000, "audio_output": 1_500,
                       "image_input": 500}  # fmt: skip
    # flex on gpt-5: 1,200 in (1,024 cached) / 350 out at $0.625 / $0.0625 / $5 per MTok
    flex = example_event(
        timestamp=REALTIME_TS, request_model="gpt-5", response_model=None, service_tier="flex"
    )
    c = ENRICHER.enrich(flex, flex.to_json())
    assert c.cost_pico == 176 * 625_000 + 1024 * 62_500 + 350 * 5_000_000  # $0.001924


def test_older_enriched_json_still_parses() -> None:
    old = (
        b'{"event":' + example_event().to_json() + b',"tokens":{"input_tokens":1200,'
        b'"output_tokens":350,"cache_read_tokens":1024,"cache_creation_tokens":0,'
        b'"reasoning_tokens":0,"estimated":false},"cost":{"input":"0.0000264",'
        b'"cache_read":"0.0000768","output":"0.00021","total":"0.0003132","currency":"USD",'
        b'"price_source":"genai-prices"},"price_unknown":false,"schema_version":1}'
    )
    model = EnrichedEvent.from_json(old)
    assert model.cost is not None and model.cost.audio == 0 and model.tokens.web_searches == 0
