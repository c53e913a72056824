"""A fast, conservative reader of raw wire lines: msgspec in C, the schema's other rules in Python.

Why: pydantic's ``validate_json`` of a ~550-byte event plus the schema's Python validators
(~15 µs) was ~40% of a stream worker's CPU, and building a pydantic model without validating
it (``model_construct``, or its dict-merging core) costs about as much as validating. So the
common line is decoded by a typed msgspec decoder into :class:`WireEvent`, a plain struct with
the attributes and value types of :class:`~spendstream.events.LLMCallEvent` (enums as the
same enum members, the timestamp as an aware UTC ``datetime``, money as ``Decimal``), which
the worker then uses in place of the model. A line it does not take goes to pydantic.

The contract stays the pydantic models. :func:`read_line` may *refuse* a line the schema
accepts (it returns None and the caller validates with pydantic, which then produces the event
or the exact dead-letter text), never *accept* a line the schema refuses nor produce other
values. It takes the forms the SDK writes and their plain neighbours, and leaves to pydantic:

- a line with a ``prompt_text`` or ``response_text`` key (even null): ~1% of calls, priced by
  a tokenizer anyway; the worker strips their text from the enriched event and looks for
  duplicate keys that could hide text (both need the model and its fields-set);
- ``timestamp`` in any form but ``YYYY-MM-DDTHH:MM:SS[.ffffff](Z|±HH:MM)`` (pydantic also takes
  unix numbers, ``t``/space separators, ``±HHMM``, and truncates > 6 fraction digits where
  msgspec's datetime would round them);
- money that is not a plain decimal string (pydantic also takes numbers, ``1e2``, ``+1``,
  ``.5``, ``1_000``, non-ASCII digits), a missing ``event_id`` (pydantic makes a uuid4);
- bools, ints and floats given as strings, and whatever msgspec's parser refuses (lone
  surrogates, ``NaN``, invalid UTF-8, a duplicate key whose first value does not fit).

Control characters: JSON cannot carry a raw C0 character inside a string, so an ASCII line
without a backslash and a DEL byte has none in any string (a C1 character is not ASCII); only
other lines pay the per-field regex. ``tests/test_fastcheck.py`` holds this module
to the schema with generated and mutated lines.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal

import msgspec
from msgspec import Meta

from ..events import (
    _CONTROL,
    _TAG_KEY,
    MAX_LATENCY_MS,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS,
    MAX_TIMESTAMP,
    MAX_TOKENS,
    MAX_USD,
    MIN_TIMESTAMP,
    UNIT_PARTS,
    CacheKind,
    LLMCallEvent,
    Operation,
    ServiceTier,
    Status,
    Usage,
)

if TYPE_CHECKING:  # decoded as strings, replaced by their values once checked (read_line)
    _Stamp = datetime
    _Money = Decimal
else:
    _Stamp = str
    _Money = str

_Name = Annotated[str, Meta(min_length=1, max_length=128)]
_Endpoint = Annotated[str, Meta(min_length=1, max_length=256)]
_Provider = Annotated[str, Meta(min_length=1, max_length=64)]
_Short = Annotated[str, Meta(max_length=256)]
_TraceId = Annotated[str, Meta(min_length=32, max_length=32)]  # hex, nonzero: _ids_ok
_SpanId = Annotated[str, Meta(min_length=16, max_length=16)]
_Tok = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
_Searches = Annotated[int, Meta(ge=0, le=100_000)]
_Ms = Annotated[float, Meta(ge=0, le=MAX_LATENCY_MS)]
_Tags = Annotated[
    dict[str, Annotated[str, Meta(max_length=MAX_TAG_VALUE_CHARS)]], Meta(max_length=MAX_TAGS)
]


class WireUsage(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """:class:`~spendstream.events.Usage`'s fields, as read by :func:`read_line`."""

    input_tokens: _Tok | None = None
    output_tokens: _Tok | None = None
    cache_read_tokens: _Tok | None = None
    cache_creation_tokens: _Tok | None = None
    reasoning_tokens: _Tok | None = None
    cache_write_1h_tokens: _Tok | None = None
    input_audio_tokens: _Tok | None = None
    cache_audio_read_tokens: _Tok | None = None
    output_audio_tokens: _Tok | None = None
    input_image_tokens: _Tok | None = None
    output_image_tokens: _Tok | None = None
    web_searches: _Searches | None = None
    cache_image_read_tokens: _Tok | None = None


class WireEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """:class:`~spendstream.events.LLMCallEvent`'s fields and value types, as read by
    :func:`read_line`: what the worker uses in place of the model on its per-event path.

    ``prompt_text`` and ``response_text`` are not fields (a line with either key is left to
    pydantic): they read as None.
    """

    event_id: uuid.UUID  # msgspec takes the hyphenated and the 32-digit forms, as pydantic
    timestamp: _Stamp
    service: _Name
    endpoint: _Endpoint
    provider: _Provider
    request_model: _Name
    schema_version: Literal[1] = 1
    response_model: _Name | None = None
    operation: Operation = Operation.CHAT
    team: _Name | None = None
    user_id: _Short | None = None
    tags: _Tags = msgspec.field(default_factory=dict)
    prompt_version: _Name | None = None
    session_id: _Short | None = None
    trace_id: _TraceId | None = None
    span_id: _SpanId | None = None
    usage: WireUsage = msgspec.field(default_factory=WireUsage)
    usage_error: _Short | None = None
    service_tier: ServiceTier | None = None
    provider_cost_usd: _Money | None = None
    latency_ms: _Ms | None = None
    ttft_ms: _Ms | None = None
    status: Status = Status.OK
    error_type: _Name | None = None
    cache_hit: bool = False
    cache_kind: CacheKind | None = None
    cache_saved_usd: _Money | None = None
    requested_model: _Name | None = None
    routing_reason: _Short | None = None
    feedback: Annotated[float, Meta(ge=-1, le=1)] | None = None
    groundedness: Annotated[float, Meta(ge=0, le=1)] | None = None
    prompt_text: ClassVar[None] = None
    response_text: ClassVar[None] = None


_TEXT_FIELDS: Final = ("prompt_text", "response_text")
if set(WireEvent.__struct_fields__) | set(_TEXT_FIELDS) != set(LLMCallEvent.model_fields) or set(
    WireUsage.__struct_fields__
) != set(Usage.model_fields):  # pragma: no cover - a schema change must be mirrored here
    raise ImportError("fastcheck's structs no longer mirror the models of events.py")

_decode: Final = msgspec.json.Decoder(WireEvent).decode
_TIMESTAMP: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
"""The timestamps taken here (fullmatch); ``datetime.fromisoformat`` then checks the calendar."""
_PROVIDER: Final = re.compile(r"[a-z0-9][a-z0-9._-]*")
_HEX: Final = re.compile(r"[0-9a-f]+")
_MONEY: Final = re.compile(r"[0-9]{1,7}(?:\.[0-9]{1,30})?")
_NAMED: Final = (
    "service",
    "endpoint",
    "request_model",
    "response_model",
    "team",
    "user_id",
    "prompt_version",
    "session_id",
    "usage_error",
    "error_type",
    "requested_model",
    "routing_reason",
)
"""The fields the schema refuses control characters in (Name, Endpoint, ShortText)."""
_tag_keys: set[str] = set()
"""Tag keys seen valid (a few distinct keys carry most tags); bounded by _MAX_TAG_KEYS."""
_MAX_TAG_KEYS: Final = 4096


def read_line(line: bytes) -> WireEvent | None:
    """The event of one wire line, or None: refused *or not sure* (run pydantic then).

    An accepted line has exactly the field values pydantic's ``validate_json`` gives it.
    """
    try:
        w = _decode(line)
    except Exception:  # DecodeError, ValidationError, UnicodeDecodeError, …: pydantic decides
        return None
    ts = _timestamp(w.timestamp)  # type: ignore[arg-type]  # a str until replaced here
    if ts is None or not _PROVIDER.fullmatch(w.provider) or not _usage_ok(w.usage):
        return None
    if (not line.isascii() or line.find(b"\\") >= 0 or line.find(b"\x7f") >= 0) and _has_control(w):
        return None
    if w.tags and not _tags_ok(w.tags):
        return None
    if (w.trace_id is not None or w.span_id is not None) and not _ids_ok(w):
        return None
    if w.provider_cost_usd is not None or w.cache_saved_usd is not None:
        cost, saved = _money(w.provider_cost_usd), _money(w.cache_saved_usd)
        if cost is False or saved is False:
            return None
        w.provider_cost_usd, w.cache_saved_usd = cost, saved
    hit = w.cache_hit
    if (
        hit != (w.cache_kind is not None)
        or (w.cache_saved_usd is not None and not hit)
        or (w.status is Status.OK and w.error_type is not None)
    ):
        return None  # LLMCallEvent._consistent
    w.timestamp = ts
    return w


def _timestamp(v: str) -> datetime | None:
    """The event time in UTC, or None (a form not taken here, or outside the schema's range)."""
    if not _TIMESTAMP.fullmatch(v):
        return None
    try:
        t = datetime.fromisoformat(v).astimezone(UTC)
    except ValueError:
        return None
    return t if MIN_TIMESTAMP <= t < MAX_TIMESTAMP else None


def _usage_ok(u: WireUsage) -> bool:
    """``Usage``'s model validators: cached within input, reasoning and each unit within its
    whole (the units are checked only when one is reported: most calls report none)."""
    inp, out, rs = u.input_tokens, u.output_tokens, u.reasoning_tokens
    if inp is not None and (u.cache_read_tokens or 0) + (u.cache_creation_tokens or 0) > inp:
        return False
    if out is not None and rs is not None and rs > out:
        return False
    if (
        u.cache_write_1h_tokens is None
        and u.input_audio_tokens is None
        and u.cache_audio_read_tokens is None
        and u.output_audio_tokens is None
        and u.input_image_tokens is None
        and u.output_image_tokens is None
        and u.cache_image_read_tokens is None
    ):
        return True
    for part, whole in UNIT_PARTS:  # Usage._units_within_counts
        p, q = getattr(u, part), getattr(u, whole)
        if p is not None and q is not None and p > q:
            return False
    return True


def _has_control(w: WireEvent) -> bool:
    """Whether a field the schema keeps printable, or a tag value, has a control character."""
    texts = [v for k in _NAMED if (v := getattr(w, k)) is not None]
    texts.extend(w.tags.values())
    return _CONTROL.search("".join(texts)) is not None


def _ids_ok(w: WireEvent) -> bool:
    """``LLMCallEvent._valid_id`` and the id patterns: lowercase hex, not all zero (the lengths
    are msgspec's)."""
    for v in (w.trace_id, w.span_id):
        if v is not None and (not _HEX.fullmatch(v) or not v.strip("0")):
            return False
    return True


def _tags_ok(tags: dict[str, str]) -> bool:
    """``LLMCallEvent._bounded_tags`` on the keys (count and value lengths are msgspec's; the
    values' control characters are checked with the other fields)."""
    for key in tags:
        if key not in _tag_keys:
            if not _TAG_KEY.match(key):
                return False
            if len(_tag_keys) < _MAX_TAG_KEYS:
                _tag_keys.add(key)
    return True


def _money(v: Any) -> Decimal | Literal[False] | None:
    """A money string as the schema reads it; False: not taken here (pydantic decides)."""
    if v is None:
        return None
    if not _MONEY.fullmatch(v):
        return False
    d = Decimal(v)
    return d if d <= MAX_USD else False


def usage_dict(u: Usage | WireUsage) -> dict[str, int]:
    """``Usage.model_dump(exclude_none=True)`` of either type (field order, no None)."""
    if isinstance(u, Usage):
        return u.model_dump(exclude_none=True)
    return {k: v for k in WireUsage.__struct_fields__ if (v := getattr(u, k)) is not None}


__all__ = ["WireEvent", "WireUsage", "read_line", "usage_dict"]
