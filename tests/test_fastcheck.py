"""The fast wire reader (stream/fastcheck.py) against the schema it stands in for.

Two properties. *Soundness*: whatever :func:`read_line` takes, pydantic's ``validate_json``
accepts too, with the same value, type and repr in every field (so ``-0.0``, ``Decimal("1.50")``,
tz-aware UTC datetimes and tag order all survive). *Same output*: ``Enricher.process`` with the
reader gives byte-identical enriched JSON, dead letters (bytes, reason naming the field, line)
and window aggregates as with pydantic alone (the worker before the reader). Lines come from
the synthetic generator, a corpus of boundary values and hostile forms, and hypothesis
(mutated fields, wrong types, control characters, huge numbers, missing/extra/duplicate keys,
byte-level damage).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendstream.events import LLMCallEvent, Usage, example_event
from spendstream.producers.synthetic import SyntheticTraffic, TrafficConfig
from spendstream.stream import enrich as enrich_mod
from spendstream.stream.enrich import EnrichedCall, Enricher
from spendstream.stream.fastcheck import WireEvent, WireUsage, read_line
from spendstream.wire import pack

NOW = 1_800_000_000.0  # 2027-01-15: a fixed worker clock (events after it + 300 s are skewed)

# --- value pools ------------------------------------------------------------------------------
STRINGS: list[Any] = [
    "", "a", "a" * 64, "a" * 65, "a" * 128, "a" * 129, "a" * 256, "a" * 257, "abc\n", "\n",
    "a\x00b", "a\x1fb", "a\tb", "a\x7fb", "a\x80b", "a\x85b", "a\x9fb", "a\xa0b", "é-ü", "日本",
    "😀" * 128, "😀" * 129, "a/b", "a\\b", "\u2028", " ", "gpt-4o-mini", "open.ai_x-1",
    "Open-AI", "-openai", "open ai", "openai\n", "x" * 300,
]  # fmt: skip
INTS: list[Any] = [
    -1, 0, 1, 7, 100_000, 100_001, 10_000_000, 10_000_001, 2**63, 10**30, 1.0, 5.5, "5",
    True, False,
]  # fmt: skip
FLOATS: list[Any] = [
    0, -0.0, 0.0, 1, 0.5, 842.5, 86_400_000.0, 86_400_000.001, 1e308, 1e-300, -1, -1.0000001,
    1.0000001, 0.1 + 0.2, "842.5", True, 123456789.123456789,
]  # fmt: skip
MONEY: list[Any] = [
    "0", "1.50", "0001", " 1", "1e2", "+1", ".5", "5.", "0.000000000000000000000000000001",
    "1_000", "١", "-0", "-1", "1000000", "1000000.0000001", "1000000.0", "999999.999999999999",
    5, 0.1, 1e-7, "NaN", "Infinity", "", "12345678.5", "1." + "0" * 30 + "1", "0.30",
]  # fmt: skip
STAMPS: list[Any] = [
    "2026-11-28T14:03:07.250Z", "2026-11-28T14:03:07Z", "2026-11-28T14:03:07.250000Z",
    "2026-11-28T14:03:07.1234567Z", "2026-11-28T14:03:07.9999999Z", "2026-11-28T14:03:07+00:00",
    "2026-11-28T14:03:07-00:00", "2026-11-28T14:03:07.5+05:30", "2026-11-28T14:03:07+23:59",
    "2026-11-28T14:03:07+24:00", "2026-11-28T14:03:07-12:00", "2026-11-28T14:03:07",
    "2026-11-28", "2026-11-28t14:03:07z", "2026-11-28 14:03:07Z", "2026-11-28T14:03Z",
    "2026-11-28T14:03:07+0530", "2026-02-29T14:03:07Z", "2024-02-29T14:03:07Z",
    "2026-11-28T24:00:00Z", "2026-11-28T23:59:60Z", "1999-12-31T23:59:59.999999Z",
    "2000-01-01T00:00:00Z", "2000-01-01T00:30:00+01:00", "2099-12-31T23:59:59.999999Z",
    "2100-01-01T00:00:00Z", "2099-12-31T23:30:00-01:00", 1764338587, 1764338587.25,
    "1764338587", "２０２６-11-28T14:03:07Z", "2026-11-28T14:03:07.Z", "2026-11-28T14:03:07,250Z",
    "2027-01-15T08:05:00Z", "2027-01-15T08:04:59Z", "2027-01-15T08:10:00+00:00",
]  # fmt: skip
UUIDS: list[Any] = [
    "5b6f0b8e-3c0a-4a53-9d4e-0f1f9a4c2e11", "5B6F0B8E-3C0A-4A53-9D4E-0F1F9A4C2E11",
    "5b6f0b8e3c0a4a539d4e0f1f9a4c2e11", "{5b6f0b8e-3c0a-4a53-9d4e-0f1f9a4c2e11}",
    "urn:uuid:5b6f0b8e-3c0a-4a53-9d4e-0f1f9a4c2e11", "5b6f0b8e-3c0a-4a53-9d4e-0f1f9a4c2e1",
    "5b6f0b8e3-c0a-4a53-9d4e-0f1f9a4c2e11", "zb6f0b8e-3c0a-4a53-9d4e-0f1f9a4c2e11", "", 5,
    "00000000-0000-0000-0000-000000000000",
]  # fmt: skip
ENUMS: dict[str, list[Any]] = {
    "operation": ["chat", "embeddings", "rerank", "other", "CHAT", "chat ", "nope", 1],
    "status": ["ok", "error", "timeout", "rate_limited", "cancelled", "OK", "failed"],
    "service_tier": ["standard", "flex", "priority", "batch", "auto", "default"],
    "cache_kind": ["exact", "semantic", "fuzzy"],
}
TAGS: list[Any] = [
    {}, {"a": "b"}, {f"k{i}": "v" for i in range(16)}, {f"k{i}": "v" for i in range(17)},
    {"a" * 64: "v"}, {"a" * 65: "v"}, {"": "v"}, {"abc\n": "v"}, {"a b": "v"}, {"é": "v"},
    {"a": "v" * 256}, {"a": "v" * 257}, {"a": "x\x00"}, {"a": "\x85"}, {"a": "\n"}, {"a": 1},
    {"a": None}, [], {"a": {"b": "c"}}, {"region:eu/1.a_b-c": "Zürich"}, {"a": ""},
]  # fmt: skip
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
IDS: dict[str, list[Any]] = {
    "trace_id": [
        TRACE, TRACE.upper(), "0" * 32, "0" * 31 + "1", TRACE[:-1], TRACE + "0", TRACE + "\n",
        TRACE[:-1] + "g", " " + TRACE[1:], TRACE[:16], "", "4bf92f35-77b3-4da6-a3ce-929d0e0e4736",
        "٤" + TRACE[1:], 5, 0,
    ],
    "span_id": [
        SPAN, SPAN.upper(), "0" * 16, "0" * 15 + "1", SPAN[:-1], SPAN + "0", SPAN + "\n",
        SPAN[:-1] + "g", TRACE, "", "٠" + SPAN[1:], 5,
    ],
}  # fmt: skip
USAGE_FIELDS = list(Usage.model_fields)
EVENT_FIELDS = list(LLMCallEvent.model_fields)
NAME_FIELDS = ["service", "endpoint", "provider", "request_model", "response_model", "team",
               "prompt_version", "error_type", "requested_model", "user_id", "usage_error",
               "routing_reason", "session_id"]  # fmt: skip
FLOAT_FIELDS = ["latency_ms", "ttft_ms", "feedback", "groundedness"]
ODD: list[Any] = [None, [], {}, True, 0, "x"]


def pool(field: str) -> list[Any]:
    """Values worth trying in ``field`` (its own kind's, plus the odd ones every field gets)."""
    own: list[Any] = (
        STRINGS if field in NAME_FIELDS or field in ("prompt_text", "response_text")
        else FLOATS if field in FLOAT_FIELDS
        else MONEY if field in ("provider_cost_usd", "cache_saved_usd")
        else STAMPS if field == "timestamp"
        else UUIDS if field == "event_id"
        else TAGS if field == "tags"
        else ENUMS.get(field, []) if field in ENUMS
        else IDS[field] if field in IDS  # noqa: SIM401
        else [1, 2, "1", 1.0, True] if field == "schema_version"
        else [True, False, 1, 0, "true"] if field == "cache_hit"
        else [{}, {"input_tokens": 5}, {"total_tokens": 5}] if field == "usage"
        else INTS
    )  # fmt: skip
    return own + ODD


def bases() -> list[dict[str, Any]]:
    """Valid events of different shapes, as wire dicts."""
    ex = json.loads(example_event().to_json())
    minimal = {k: ex[k] for k in ("event_id", "timestamp", "service", "endpoint", "provider",
                                  "request_model")}  # fmt: skip
    hit = dict(ex, cache_hit=True, cache_kind="semantic", cache_saved_usd="0.0123",
               usage={"input_tokens": 0, "output_tokens": 0})  # fmt: skip
    failed = dict(ex, status="error", error_type="RateLimitError", provider_cost_usd="0.5",
                  service_tier="flex", feedback=-0.5, groundedness=1)  # fmt: skip
    units = dict(ex, usage={
        "input_tokens": 900, "output_tokens": 300, "cache_read_tokens": 100,
        "cache_creation_tokens": 50, "reasoning_tokens": 20, "cache_write_1h_tokens": 50,
        "input_audio_tokens": 200, "cache_audio_read_tokens": 10, "output_audio_tokens": 30,
        "input_image_tokens": 40, "output_image_tokens": 0, "web_searches": 2,
        "cache_image_read_tokens": 5,
    })  # fmt: skip
    traced = dict(ex, session_id="sess-7f3a", trace_id=TRACE, span_id=SPAN)
    return [ex, minimal, hit, failed, units, traced]


BASES = bases()


# --- the two properties -----------------------------------------------------------------------
def _same_value(name: str, a: Any, b: Any) -> None:
    assert type(a) is type(b) and a == b and repr(a) == repr(b), (name, a, b)


def check_sound(line: bytes) -> WireEvent | None:
    """read_line's answer for ``line``; when it takes it, pydantic must give the same event."""
    got = read_line(line)
    if got is None:
        return None
    model = LLMCallEvent.model_validate_json(line)  # raises if the reader accepted a bad line
    for name in EVENT_FIELDS:
        a, b = getattr(got, name), getattr(model, name)
        if name == "usage":
            assert isinstance(a, WireUsage) and isinstance(b, Usage)
            for u in USAGE_FIELDS:
                _same_value(f"usage.{u}", getattr(a, u), getattr(b, u))
        else:
            _same_value(name, a, b)
    assert list(got.tags.items()) == list(model.tags.items())
    return got


def outputs(line_sets: list[bytes], **kw: Any) -> list[Any]:
    """Everything Enricher.process gives for each record: enriched JSON (text stripped and
    kept), dead letters, window aggregates and the watermark candidate."""
    en = Enricher(now=lambda: NOW, **kw)
    out = []
    for value in line_sets:
        res = en.process(value)
        out.append((
            [(_stable(c, c.to_json()), _stable(c, c.to_json(keep_text=True)), c.ts, c.cost_pico)
             for c in res.calls],
            [(d.raw, d.reason, d.line) for d in res.dead],
            {k: a.to_dict() for k, a in res.aggregate.items()},
            res.aggregate.max_ts,
        ))  # fmt: skip
    return out


def _stable(c: EnrichedCall, out: bytes) -> bytes:
    """``out`` with a uuid4 that pydantic made for a line without ``event_id`` (the text-strip
    path re-serializes the event) replaced by a constant: it differs from run to run."""
    if b'"event_id"' in c.raw:
        return out
    return out.replace(str(c.event.event_id).encode(), b"<uuid4>")


def assert_same_output(records: list[bytes], **kw: Any) -> None:
    """Enricher.process gives the same with the reader as with pydantic alone (the worker
    before the reader)."""
    fast = outputs(records, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(enrich_mod, "read_line", lambda line: None)
        slow = outputs(records, **kw)
    assert fast == slow


# --- deterministic corpora --------------------------------------------------------------------
def single_mutations() -> Iterator[tuple[str, bytes]]:
    """Every base with one field set to each value of its pool, or removed, plus extra and
    duplicate keys and usage boundaries."""
    for bi, base in enumerate(BASES):
        for field in EVENT_FIELDS:
            yield f"{bi}:-{field}", dumps({k: v for k, v in base.items() if k != field})
            for v in pool(field):
                yield f"{bi}:{field}={v!r:.40}", dumps(dict(base, **{field: v}))
        for u in USAGE_FIELDS:
            for v in [*INTS, None]:
                yield f"{bi}:usage.{u}={v!r}", dumps(dict(base, usage={**base.get("usage", {}),
                                                                      u: v}))  # fmt: skip
    ex = BASES[0]
    for key, v in [("x", 1), ("prompt_text", "abc"), ("prompt_text", None), ("response_text", "")]:
        yield f"extra {key}", dumps(dict(ex, **{key: v}))
    for raw in _raw_forms(dumps(ex)):
        yield f"raw {raw[:30]!r}", raw


def _raw_forms(line: bytes) -> list[bytes]:
    """Byte-level variants a dict cannot express: duplicate and escaped keys, whitespace,
    damage."""
    body = line[1:-1]
    return [
        b'{"service":5,' + body + b"}",  # duplicate, the first does not fit: last wins
        b'{"service":"first",' + body + b"}",
        line[:-1] + b',"service":"last"}',
        line[:-1] + b',"service":null}',
        line[:-1] + b',"tags":{"a":"1","b":"2","a":"3"}}',
        line[:-1] + b',"prompt_text":"SECRET","prompt_text":null}',
        line[:-1] + b',"prompt\\u005ftext":null}',
        line[:-1] + b',"usage":{"input_tokens":5},"usage":{"output_tokens":3}}',
        line.replace(b'"service"', b'"\\u0073ervice"'),
        line.replace(b"/v1/answer", b"\\/v1\\/answer"),
        line.replace(b'"support-bot"', b'"support\\u002dbot"'),
        line.replace(b'"support-bot"', b'"support\\u0000bot"'),
        line.replace(b'"support-bot"', b'"support\\ud800bot"'),
        line.replace(b'"support-bot"', b'"support\xffbot"'),
        line.replace(b'"support-bot"', b'"support\xc2\x85bot"'),
        line.replace(b'"support-bot"', b'"support\x7fbot"'),
        line.replace(b'"input_tokens":1200', b'"input_tokens":-0'),
        line.replace(b'"input_tokens":1200', b'"input_tokens":1.2e3'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":NaN'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":1e400'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":-0'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":842.50000000000000000000001'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":8.425e2'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":8425E-1'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":842.4999999999999999999999'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":0.1000000000000000055511151231257827'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":2.2250738585072011e-308'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":4.9e-324'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":1e-400'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":0e0'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":86400000.00000000001'),
        line.replace(b'"latency_ms":842.5', b'"latency_ms":86400000.0000001'),
        line.replace(b'"ttft_ms":210.0', b'"ttft_ms":210'),
        line.replace(b'"input_tokens":1200', b'"input_tokens":01200'),
        line.replace(b'"input_tokens":1200', b'"input_tokens":10000000000000000000000000'),
        line.replace(b'"support-bot"', b'"\\ud83d\\ude00"'),
        line.replace(b'"support-bot"', b'"' + b"\\ud83d\\ude00" * 129 + b'"'),
        line.replace(b",", b" , ").replace(b":", b" : "),
        b" " + line + b"\r",
        b"\xef\xbb\xbf" + line,
        line + b" x",
        line[:-1],
        b"[" + line + b"]",
        b"null",
    ]


def dumps(d: Any, ascii: bool = False) -> bytes:
    return json.dumps(d, ensure_ascii=ascii, separators=(",", ":")).encode()


def synthetic_records(n: int = 3000) -> list[bytes]:
    events = SyntheticTraffic(TrafficConfig(seed=7, rate=200)).events(count=n)
    return [b"\n".join(lines) for _, lines in pack(events)]


def test_the_reader_takes_every_synthetic_line_without_text() -> None:
    lines = [ln for rec in synthetic_records() for ln in rec.split(b"\n")]
    with_text = [ln for ln in lines if b'_text"' in ln]
    taken = [ln for ln in lines if check_sound(ln) is not None]
    assert len(lines) == 3000 and 0 < len(with_text) < 100
    assert len(taken) == 3000 - len(with_text)


def test_synthetic_records_give_the_same_output() -> None:
    records = synthetic_records()
    assert_same_output(records)
    assert_same_output(records, keep_text=True)
    assert_same_output(records, max_future_skew_s=None)


def taken(base: int = 0, usage: dict[str, Any] | None = None, **fields: Any) -> bool:
    """Whether read_line takes a base event with ``fields`` (and usage fields) set."""
    d = dict(BASES[base], **fields)
    if usage is not None:
        d["usage"] = {**d.get("usage", {}), **usage}
    return check_sound(dumps(d)) is not None


def test_the_reader_takes_canonical_neighbours() -> None:
    """Not vacuous: plain forms other producers write are read fast, not only the SDK's."""
    assert taken(timestamp="2026-11-28T14:03:07.5+05:30") and taken(
        timestamp="2026-11-28T14:03:07-00:00"
    )
    assert taken(event_id="5B6F0B8E-3C0A-4A53-9D4E-0F1F9A4C2E11")
    assert taken(event_id="5b6f0b8e3c0a4a539d4e0f1f9a4c2e11")
    assert taken(latency_ms=0) and taken(latency_ms=-0.0) and taken(feedback=-1)
    assert taken(service="😀" * 128) and taken(service="é-ü") and taken(team=None)
    assert taken(2, cache_saved_usd="0001") and taken(2, cache_saved_usd="1000000")
    assert not taken(tags={"abc\n": "v"})  # a tag key ending in a newline is refused (\Z)
    assert taken(tags={f"k{i}": "v" for i in range(16)}) and taken(usage={"web_searches": 100_000})
    assert check_sound(dumps({k: v for k, v in BASES[0].items() if k != "usage"})) is not None


def test_the_reader_leaves_what_it_cannot_decide_to_pydantic() -> None:
    assert not taken(service="a\x85b") and not taken(service="abc\n")
    assert not taken(provider="openai\n") and not taken(provider="Open-AI")
    assert not taken(timestamp="2026-11-28T14:03:07.1234567Z")  # pydantic truncates: slow path
    assert not taken(timestamp=1764338587) and not taken(latency_ms="842.5")
    assert not taken(usage={"input_tokens": 1.0}) and not taken(2, cache_saved_usd="1e2")
    assert not taken(tags={"a": "x\x00"}) and not taken(prompt_text="abc")
    assert not taken(prompt_text=None) and not taken(cache_hit=True)  # no cache_kind


def test_session_and_trace_ids_are_read_as_pydantic_reads_them() -> None:
    """Issue 17's fields: W3C ids (lowercase hex, exact length, not all zero), the session id
    under user_id's rules; what the reader takes it takes with pydantic's value."""
    assert taken(5) and taken(5, trace_id="0" * 31 + "1", span_id="0" * 15 + "1")
    assert taken(session_id="") and taken(session_id="s" * 256) and taken(session_id="日本")
    for bad in IDS["trace_id"][1:3] + IDS["trace_id"][4:]:
        assert not taken(5, trace_id=bad), bad
    for bad in IDS["span_id"][1:3] + IDS["span_id"][4:]:
        assert not taken(5, span_id=bad), bad
    assert not taken(session_id="s" * 257) and not taken(session_id="a\x85b")
    assert not taken(session_id="a\nb") and not taken(session_id=5)
    got = read_line(dumps(BASES[5]))
    assert got is not None and (got.session_id, got.trace_id, got.span_id) == (
        "sess-7f3a",
        TRACE,
        SPAN,
    )


def test_single_mutations_are_sound_and_give_the_same_output() -> None:
    corpus = [line for _, line in single_mutations()]
    fast = sum(1 for line in corpus if check_sound(line) is not None)
    assert len(corpus) > 3000 and fast > len(corpus) // 4
    assert_same_output(corpus)
    assert_same_output(corpus, keep_text=True)


# --- hypothesis -------------------------------------------------------------------------------
@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    """A base event with a few fields changed, removed or added, maybe a duplicate key, maybe
    escaped as ASCII, maybe damaged."""
    d = dict(draw(st.sampled_from(BASES)))
    usage = dict(d.get("usage", {}))
    for _ in range(draw(st.integers(0, 4))):
        field = draw(st.sampled_from([*EVENT_FIELDS, "usage.*", "extra"]))
        if field == "usage.*":
            usage[draw(st.sampled_from(USAGE_FIELDS))] = draw(
                st.one_of(st.sampled_from([*INTS, None]), st.integers(-5, 2 * 10**7))
            )
            d["usage"] = usage
        elif field == "extra":
            d[draw(st.sampled_from(["x", "prompt_text", "response_text", "Service"]))] = draw(
                st.sampled_from(ODD)
            )
        elif draw(st.booleans()):
            d.pop(field, None)
        else:
            d[field] = draw(st.one_of(st.sampled_from(pool(field)), _free(field)))
    line = dumps(d, ascii=draw(st.booleans()))
    if draw(st.integers(0, 5)) == 0:
        line = json.dumps(d, indent=draw(st.sampled_from([None, 1]))).replace("\n", "").encode()
    if draw(st.integers(0, 4)) == 0:
        key = draw(st.sampled_from(EVENT_FIELDS))
        dup = dumps({key: draw(st.sampled_from(pool(key)))})[1:-1]
        line = (
            b"{" + dup + b"," + line[1:] if draw(st.booleans()) else line[:-1] + b"," + dup + b"}"
        )
    if draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, len(line)))
        line = line[:cut] + draw(st.binary(max_size=3)) + line[cut + 1 :]
    return line


def _free(field: str) -> st.SearchStrategy[Any]:
    """Generated values beyond the pools: text with any character, numbers of any size."""
    if field in FLOAT_FIELDS:
        return st.floats(allow_nan=False, allow_infinity=False)
    if field in NAME_FIELDS:
        return st.text(st.characters(codec="utf-8"), max_size=130)
    if field == "timestamp":
        return st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat())
    if field in IDS:
        size = 32 if field == "trace_id" else 16
        return st.text("0123456789abcdefABCDEF\n ", min_size=size - 1, max_size=size + 1)
    if field in ("provider_cost_usd", "cache_saved_usd"):
        return st.decimals(allow_nan=False, allow_infinity=False, places=6).map(str)
    return st.integers(-(2**70), 2**70)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_lines(), min_size=1, max_size=4))
def test_generated_lines_are_sound_and_give_the_same_output(lines: list[bytes]) -> None:
    for line in lines:
        check_sound(line)
    assert_same_output([b"\n".join(lines)])


def test_a_json_array_line_is_a_dead_letter_not_a_crash() -> None:
    """``[1]`` and ``[[…]]`` lines raised in the dead letter's redaction (a poison record for
    the worker); an empty object inside a redacted line stays ``{}``."""
    res = Enricher().process(b"[1]\n[[1,2,3]]\n" + dumps(dict(BASES[0], prompt_text=None, tags={})))
    assert [(d.raw, d.line) for d in res.dead] == [(b"[1]", 0), (b"[[1,2,3]]", 1)]
    assert [d.reason for d in res.dead] == ["<event>: Input should be an object"] * 2
    assert len(res.calls) == 1
    bad = dumps(dict(BASES[0], prompt_text="secret", tags={}, service=""))
    (dead,) = Enricher().process(bad).dead
    assert json.loads(dead.raw)["tags"] == {} and json.loads(dead.raw)["prompt_text_chars"] == 6
