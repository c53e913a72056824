"""OTLP traces → :class:`~spendstream.events.LLMCallEvent`: a pure mapping, no I/O.

Both OTLP/HTTP encodings are read into one small view of each span (:class:`SpanView`):
protobuf through ``opentelemetry-proto``, and OTLP/JSON as the OTLP spec defines it (camelCase
keys, trace/span ids as *hex* strings, int64 values as strings or numbers, enum values as
integers) — ``google.protobuf.json_format`` cannot read it, since it expects base64 ids.

**Which spans count.** A span is a GenAI call when it carries ``gen_ai.*`` model/provider
attributes (or OpenInference's ``llm.model_name``/``openinference.span.kind=LLM``).
Agent, tool and workflow spans (``gen_ai.operation.name`` ``invoke_agent``, ``execute_tool``,
``create_agent``, ...) and every other span are *ignored* (counted): they wrap LLM calls that
have their own spans, so taking them would count the spend twice. A GenAI span that cannot
become a valid event (no model, a token count that is not a count, a timestamp out of range) is
*rejected* with a reason; the OTLP response reports the count (partial success).

**Token semantics.** OTel GenAI and the event schema agree: ``gen_ai.usage.input_tokens``
*includes* cache reads and cache writes, ``output_tokens`` *includes* reasoning tokens, and the
modality counts (``gen_ai.usage.audio.input_tokens`` ...) are parts of the whole. So the counts
are copied, never added together. Attribute names, newest first (the first present wins):

======================  ==========================================================================
schema field            span attributes
======================  ==========================================================================
input_tokens            gen_ai.usage.input_tokens, gen_ai.usage.prompt_tokens,
                        llm.token_count.prompt
output_tokens           gen_ai.usage.output_tokens, gen_ai.usage.completion_tokens,
                        llm.token_count.completion
cache_read_tokens       gen_ai.usage.cache_read.input_tokens, gen_ai.usage.cache_read_input_tokens,
                        llm.token_count.prompt_details.cache_read
cache_creation_tokens   gen_ai.usage.cache_write.input_tokens (2026 name),
                        gen_ai.usage.cache_creation.input_tokens,
                        gen_ai.usage.cache_creation_input_tokens,
                        llm.token_count.prompt_details.cache_write
reasoning_tokens        gen_ai.usage.reasoning.output_tokens, gen_ai.usage.reasoning_tokens,
                        llm.token_count.completion_details.reasoning
input/output audio,     gen_ai.usage.{audio,image}.{input,output}_tokens,
image; cached audio,    gen_ai.usage.{audio,image}.cache_read.input_tokens,
image                   llm.token_count.{prompt,completion}_details.audio
======================  ==========================================================================

**Where producers are known to differ** (checked in their sources):

- ``opentelemetry-instrumentation-openai-v2`` (2.4b0) sets only ``input_tokens`` (OpenAI's
  ``prompt_tokens``, cache included) and ``output_tokens`` (``completion_tokens``, reasoning
  included) on chat-completion spans: ``prompt_tokens_details.cached_tokens`` and
  ``completion_tokens_details.reasoning_tokens`` never reach the span. The totals are right;
  the cache discount is lost, so such a call is priced as if nothing was cached (an
  over-estimate, never an under-count). Only chat completions and embeddings are wrapped;
  its Responses-API extractor (which would set ``gen_ai.usage.cache_read.input_tokens``) is
  not wired to a method in that release.
- OpenLLMetry's ``opentelemetry-instrumentation-anthropic`` (0.62, tested) sets
  ``gen_ai.usage.input_tokens`` to Anthropic's ``input_tokens + cache_read_input_tokens +
  cache_creation_input_tokens`` — OTel semantics (the 1-hour/5-minute split of the cache
  writes is not on the span: all writes are priced as 5-minute writes). Anthropic's *raw*
  ``usage.input_tokens`` *excludes* cache tokens, and an instrumentation that copies it as
  is (a hand-written one may; older OpenLLMetry releases were not checked) breaks OTel
  semantics. When the cache parts then exceed the reported input the span cannot be
  conformant: it is sent with ``usage_error`` (priced as unknown and alerted, never guessed),
  see :func:`_usage`. A raw count whose cache parts happen to be *smaller* than the uncached
  input cannot be told apart from a conformant one; it is under-priced.
- OpenInference's ``llm.token_count.prompt`` is the total prompt (its ``prompt_details``
  counts are parts of it), the same convention as OTel.
- OpenLLMetry's ``gen_ai.system`` is capitalised (``"Anthropic"``) and older conventions use
  ``az.ai.openai``/``aws.bedrock``/``gcp.vertex_ai``: :data:`PROVIDER_NAMES` maps them to the
  provider ids genai-prices prices.

**Sessions and traces.** ``trace_id``/``span_id`` are the span's own (hex, as W3C writes
them), so the calls of one request across services share a ``trace_id``. ``session_id`` is
the first of :attr:`MappingConfig.session_attributes` on the span, its ancestors or the
resource (OTel ``session.id``, GenAI ``gen_ai.conversation.id``, OpenLLMetry's association
property, Langfuse's, the Vercel AI SDK's metadata): control characters become spaces and it
is cut to 256 characters, so an odd session id never costs the call.

``event_id`` is ``uuid5(trace_id + span_id)``: an exporter's retry of the same batch yields
the same events, which the stores deduplicate.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import sha1
from typing import Any, Final

from pydantic import ValidationError

from ..events import (
    _CONTROL,
    MAX_LATENCY_MS,
    LLMCallEvent,
    Operation,
    Status,
    describe_error,
)

SPAN_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://spendstream.dev/otlp/span")
_NS_BYTES: Final = SPAN_NAMESPACE.bytes
"""Namespace of span-derived event ids (fixed forever: changing it re-counts retries)."""
MAX_REASONS: Final = 5
"""Distinct rejection reasons quoted in an OTLP partial-success message."""
MAX_ATTRIBUTE_CHARS: Final = 4096
"""A string attribute longer than this is not read (a prompt in an attribute can be MiBs)."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_NOT_CALLS: Final = frozenset(
    {"invoke_agent", "create_agent", "execute_tool", "invoke_workflow", "retrieval"}
)
"""gen_ai.operation.name values of spans that wrap LLM calls rather than being one."""

PROVIDER_NAMES: Final[Mapping[str, str]] = {
    "az.ai.openai": "azure",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "azure_openai": "azure",
    "aws.bedrock": "aws",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "vertex_ai": "google",
    "gemini": "google",
    "x_ai": "x-ai",
    "xai": "x-ai",
    "mistral_ai": "mistral",
    "mistralai": "mistral",
    "ibm.watsonx.ai": "ibm",
    "together_ai": "together",
}
"""OTel/OpenLLMetry provider spellings (lower-cased) → the ids genai-prices uses."""

_OPERATIONS: Final[Mapping[str, Operation]] = {
    **{op.value: op for op in Operation},
    "completion": Operation.TEXT_COMPLETION,
    "embedding": Operation.EMBEDDINGS,
    "rerank": Operation.RERANK,
}

_TIERS: Final[Mapping[str, str]] = {
    "default": "standard",
    "standard": "standard",
    "on_demand": "standard",
    "flex": "flex",
    "priority": "priority",
    "batch": "batch",
}

USAGE_ATTRIBUTES: Final[Mapping[str, tuple[str, ...]]] = {
    "input_tokens": (
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
        "llm.token_count.prompt",
    ),
    "output_tokens": (
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
    ),
    "cache_read_tokens": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "llm.token_count.prompt_details.cache_read",
    ),
    "cache_creation_tokens": (
        "gen_ai.usage.cache_write.input_tokens",
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "llm.token_count.prompt_details.cache_write",
    ),
    "reasoning_tokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
    ),
    "input_audio_tokens": (
        "gen_ai.usage.audio.input_tokens",
        "llm.token_count.prompt_details.audio",
    ),
    "output_audio_tokens": (
        "gen_ai.usage.audio.output_tokens",
        "llm.token_count.completion_details.audio",
    ),
    "cache_audio_read_tokens": ("gen_ai.usage.audio.cache_read.input_tokens",),
    "input_image_tokens": ("gen_ai.usage.image.input_tokens",),
    "output_image_tokens": ("gen_ai.usage.image.output_tokens",),
    "cache_image_read_tokens": ("gen_ai.usage.image.cache_read.input_tokens",),
}
"""Schema usage field → span attributes, newest name first (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class MappingConfig:
    """Which attributes name the endpoint, team and user (span first, then its ancestors in
    the same export, then the resource): the GenAI client span rarely carries ``http.route``,
    the server span around it does."""

    endpoint_attributes: tuple[str, ...] = (
        "spendstream.endpoint",
        "http.route",
        "url.template",
        "url.path",
        "rpc.method",
        "messaging.destination.name",
        "code.function.name",
    )
    team_attributes: tuple[str, ...] = ("spendstream.team", "team", "tenant.id")
    user_attributes: tuple[str, ...] = ("user.id", "enduser.id", "gen_ai.user.id")
    session_attributes: tuple[str, ...] = (
        "spendstream.session_id",
        "session.id",
        "gen_ai.conversation.id",
        "traceloop.association.properties.session_id",
        "langfuse.session.id",
        "ai.telemetry.metadata.sessionId",
    )
    default_endpoint: str = "otel"
    """Endpoint of a call none of whose spans names one."""
    default_service: str = "unknown-service"
    """Service of a resource without ``service.name`` (the gateway uses the key's service)."""


@dataclass(frozen=True, slots=True)
class SpanView:
    """The parts of one OTLP span the mapping reads, from either encoding."""

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    name: str
    start_ns: int
    end_ns: int
    status_code: int
    """0 unset, 1 ok, 2 error (OTLP ``Status.StatusCode``)."""
    status_message: str
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]


@dataclass
class MapResult:
    """What one export request became."""

    events: list[LLMCallEvent] = field(default_factory=list)
    ignored: int = 0
    """Spans that are not LLM calls (HTTP, DB, agent, tool spans ...)."""
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def message(self) -> str:
        """The OTLP partial-success ``error_message``: counts and the commonest reasons."""
        if not self.rejected:
            return ""
        top = "; ".join(f"{r} (x{n})" for r, n in self.reasons.most_common(MAX_REASONS))
        return f"{self.rejected} GenAI span(s) rejected: {top}"


class DecodeError(ValueError):
    """The body is not an OTLP ExportTraceServiceRequest in the claimed encoding."""


# --- decoding -------------------------------------------------------------------------------
def decode_protobuf(body: bytes) -> list[SpanView]:
    """Spans of a binary ExportTraceServiceRequest; raises :class:`DecodeError`."""
    from google.protobuf.message import DecodeError as PbDecodeError  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(body)
    except (PbDecodeError, RuntimeError, ValueError) as exc:  # RuntimeError: recursion limit
        raise DecodeError(f"not an OTLP protobuf ExportTraceServiceRequest: {exc}") from None
    out: list[SpanView] = []
    for rs in req.resource_spans:
        resource = {kv.key: _pb_value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for sp in ss.spans:
                out.append(
                    SpanView(
                        trace_id=sp.trace_id,
                        span_id=sp.span_id,
                        parent_span_id=sp.parent_span_id,
                        name=sp.name,
                        start_ns=sp.start_time_unix_nano,
                        end_ns=sp.end_time_unix_nano,
                        status_code=sp.status.code,
                        status_message=sp.status.message,
                        attributes=_pb_attributes(sp.attributes),
                        resource=resource,
                    )
                )
    return out


_SCALARS: Final = frozenset(("string_value", "int_value", "bool_value", "double_value"))


def _pb_attributes(kvs: Any) -> dict[str, Any]:
    """A span's attributes; scalars read inline (one call per attribute less: the dict
    comprehension over ``_pb_value`` was ~12% of the gateway's CPU in a py-spy profile)."""
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = getattr(v, kind) if kind in _SCALARS else _pb_value(v)
    return out


def _pb_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_pb_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return None  # maps are never a value the mapping reads
    return getattr(v, kind)


def decode_json(body: bytes) -> list[SpanView]:
    """Spans of an OTLP/JSON ExportTraceServiceRequest; raises :class:`DecodeError`."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DecodeError("an OTLP/JSON request is a JSON object with resourceSpans")
    try:
        return list(_json_spans(doc))
    except (TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise DecodeError(f"not an OTLP/JSON ExportTraceServiceRequest: {exc}") from None


def _json_spans(doc: Mapping[str, Any]) -> Iterator[SpanView]:
    for rs in _list(doc.get("resourceSpans")):
        resource = _json_attrs(_obj(_obj(rs).get("resource")).get("attributes"))
        for ss in _list(rs.get("scopeSpans")):
            for sp in _list(_obj(ss).get("spans")):
                sp = _obj(sp)
                status = _obj(sp.get("status"))
                yield SpanView(
                    trace_id=_hex_id(sp.get("traceId"), 16, "traceId"),
                    span_id=_hex_id(sp.get("spanId"), 8, "spanId"),
                    parent_span_id=_hex_id(sp.get("parentSpanId"), 8, "parentSpanId", True),
                    name=str(sp.get("name") or ""),
                    start_ns=_uint(sp.get("startTimeUnixNano")),
                    end_ns=_uint(sp.get("endTimeUnixNano")),
                    status_code=_enum(status.get("code")),
                    status_message=str(status.get("message") or ""),
                    attributes=_json_attrs(sp.get("attributes")),
                    resource=resource,
                )


def _list(v: Any) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise TypeError(f"expected a list, got {type(v).__name__}")
    return v


def _obj(v: Any) -> Mapping[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise TypeError(f"expected an object, got {type(v).__name__}")
    return v


def _hex_id(v: Any, size: int, what: str, optional: bool = False) -> bytes:
    if v in (None, "") and optional:
        return b""
    if not isinstance(v, str) or len(v) != 2 * size:
        raise ValueError(f"{what} must be {2 * size} hex characters")
    return bytes.fromhex(v)


def _uint(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise TypeError("a *UnixNano field is an integer or a decimal string")
    n = int(v)
    if not 0 <= n < 2**64:
        raise ValueError("a *UnixNano field is outside uint64")
    return n


def _enum(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    names = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
    if isinstance(v, str) and v in names:
        return names[v]
    raise ValueError(f"status.code {v!r} is not a StatusCode")


def _json_attrs(v: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in _list(v):
        kv = _obj(kv)
        key = kv.get("key")
        if isinstance(key, str):
            out[key] = _json_value(_obj(kv.get("value")))
    return out


def _json_value(v: Mapping[str, Any]) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        raw = v["intValue"]
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            return _Bad(raw)
        try:
            return int(raw)
        except ValueError:
            return _Bad(raw)
    if "boolValue" in v:
        return v["boolValue"]
    if "doubleValue" in v:
        return v["doubleValue"]
    if "arrayValue" in v:
        return [_json_value(_obj(x)) for x in _list(_obj(v["arrayValue"]).get("values"))]
    return None


@dataclass(frozen=True, slots=True)
class _Bad:
    """An attribute value of the wrong type (an intValue that is not an integer)."""

    raw: Any


# --- mapping --------------------------------------------------------------------------------
def map_spans(spans: Iterable[SpanView], config: MappingConfig | None = None) -> MapResult:
    """Turn a request's spans into events; every span is an event, ignored or rejected."""
    cfg = config or MappingConfig()
    spans = list(spans)
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    result = MapResult()
    for span in spans:
        if not is_llm_call(span.attributes):
            result.ignored += 1
            continue
        try:
            result.events.append(span_event(span, cfg, by_id))
        except (ValueError, TypeError) as exc:
            result.rejected += 1
            reason = describe_error(exc) if isinstance(exc, ValidationError) else str(exc)
            result.reasons[reason[:200]] += 1
    return result


def is_llm_call(attrs: Mapping[str, Any]) -> bool:
    """A GenAI model call (not an agent/tool span, not a non-GenAI span)."""
    op = attrs.get("gen_ai.operation.name")
    if isinstance(op, str) and op in _NOT_CALLS:
        return False
    if attrs.get("openinference.span.kind") not in (None, "LLM", "EMBEDDING"):
        return False
    return not _MODEL_KEYS.isdisjoint(attrs.keys())


_MODEL_KEYS: Final = frozenset(
    ("gen_ai.request.model", "gen_ai.response.model", "gen_ai.provider.name", "gen_ai.system",
     "llm.model_name")
)  # fmt: skip
"""Any of these marks a model call (one set test in C instead of a generator: 7% of the
gateway's CPU in a py-spy profile of bench/ingest_throughput)."""


def event_id(trace_id: bytes, span_id: bytes) -> uuid.UUID:
    """The event id of a span: the same span exported twice is the same event."""
    # uuid.uuid5 spelled out (same bytes): its str -> bytes round trip and version checks
    # were ~10% of the gateway's CPU (py-spy, bench/ingest_throughput)
    digest = sha1(_NS_BYTES + (trace_id.hex() + span_id.hex()).encode(), usedforsecurity=False)
    return uuid.UUID(bytes=digest.digest()[:16], version=5)


def span_event(
    span: SpanView,
    cfg: MappingConfig,
    by_id: Mapping[tuple[bytes, bytes], SpanView] | None = None,
) -> LLMCallEvent:
    """One GenAI span as an event; raises ValueError/ValidationError naming the problem."""
    a = span.attributes
    if len(span.trace_id) != 16 or len(span.span_id) != 8 or not any(span.trace_id):
        raise ValueError("trace_id/span_id missing or of the wrong size")
    model = _text(a, "gen_ai.request.model", "llm.model_name", "gen_ai.response.model")
    if model is None:
        raise ValueError("no gen_ai.request.model")
    if span.start_ns == 0:
        raise ValueError("startTimeUnixNano is 0")
    status, error_type = _status(span)
    usage, usage_error = _usage(a)
    fields: dict[str, Any] = {
        "event_id": event_id(span.trace_id, span.span_id),
        "timestamp": _EPOCH + timedelta(microseconds=span.start_ns // 1000),
        "service": _text(span.resource, "service.name") or cfg.default_service,
        "endpoint": _lookup(span, cfg.endpoint_attributes, by_id) or cfg.default_endpoint,
        "provider": provider_id(a),
        "request_model": model,
        "response_model": _text(a, "gen_ai.response.model"),
        "operation": _operation(a),
        "team": _lookup(span, cfg.team_attributes, by_id),
        "user_id": _lookup(span, cfg.user_attributes, by_id),
        "session_id": _session(_lookup(span, cfg.session_attributes, by_id)),
        "tags": _tags(span) or None,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex() if any(span.span_id) else None,
        "usage": usage,
        "usage_error": usage_error,
        "service_tier": _tier(a),
        "latency_ms": _latency_ms(span),
        "ttft_ms": _ttft_ms(a),
        "status": status,
        "error_type": error_type,
    }
    return LLMCallEvent.model_validate({k: v for k, v in fields.items() if v is not None})


TAG_PREFIX: Final = "spendstream.tag."
"""Attributes ``spendstream.tag.<key>`` (resource, then span: the span's wins) become the event's
tags, so an OTel service can tag a deploy or an experiment as the SDK's ``tags=`` does; a tag the
schema refuses (bad key, > 16 tags) rejects the span with the field named."""


def _tags(span: SpanView) -> dict[str, str]:
    out: dict[str, str] = {}
    for attrs in (span.resource, span.attributes):
        for k, v in attrs.items():
            if k.startswith(TAG_PREFIX) and isinstance(v, str):
                out[k[len(TAG_PREFIX) :]] = v
    return out


def _text(attrs: Mapping[str, Any], *keys: str) -> str | None:
    for k in keys:
        v = attrs.get(k)
        if isinstance(v, str) and v and len(v) <= MAX_ATTRIBUTE_CHARS:
            return v
    return None


def _session(v: str | None) -> str | None:
    """A session id the schema takes (printable, <= 256 characters), None if nothing is left."""
    if v is None:
        return None
    return _CONTROL.sub(" ", v)[:256].strip() or None


def _lookup(
    span: SpanView, keys: tuple[str, ...], by_id: Mapping[tuple[bytes, bytes], SpanView] | None
) -> str | None:
    """First of ``keys`` on the span, then on its ancestors in the same request, then on the
    resource (bounded walk: a parent cycle in hostile input cannot loop)."""
    node: SpanView | None = span
    for _ in range(32):
        if node is None:
            break
        if (v := _text(node.attributes, *keys)) is not None:
            return v
        node = (by_id or {}).get((node.trace_id, node.parent_span_id))
    return _text(span.resource, *keys)


def provider_id(attrs: Mapping[str, Any]) -> str:
    """``gen_ai.provider.name`` (or the older ``gen_ai.system``) as a genai-prices id."""
    raw = _text(attrs, "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
    if raw is None:
        return "unknown"
    low = raw.strip().lower()
    low = PROVIDER_NAMES.get(low, low)
    clean = "".join(c if c.isalnum() or c in "._-" else "-" for c in low if c.isascii())
    return clean.strip("-._")[:64] or "unknown"


def _operation(attrs: Mapping[str, Any]) -> Operation:
    op = _text(attrs, "gen_ai.operation.name", "llm.request.type")
    if op is None:
        if attrs.get("openinference.span.kind") == "EMBEDDING":
            return Operation.EMBEDDINGS
        return Operation.CHAT
    return _OPERATIONS.get(op.lower(), Operation.OTHER)


def _tier(attrs: Mapping[str, Any]) -> str | None:
    raw = _text(
        attrs,
        "openai.response.service_tier",
        "gen_ai.openai.response.service_tier",
        "gen_ai.response.service_tier",
    )
    return _TIERS.get(raw.lower()) if raw else None


def _latency_ms(span: SpanView) -> float | None:
    """Span duration; None when the span's clock is off (end before start, over a day):
    a wrong duration is no reason to lose the call's spend."""
    ms = (span.end_ns - span.start_ns) / 1e6
    return ms if 0 <= ms <= MAX_LATENCY_MS else None


def _ttft_ms(attrs: Mapping[str, Any]) -> float | None:
    v = attrs.get("gen_ai.response.time_to_first_chunk")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0:
        return float(v) * 1000.0 if v * 1000.0 <= MAX_LATENCY_MS else None
    return None


def _status(span: SpanView) -> tuple[Status, str | None]:
    """OTLP status (and ``error.type``) → the schema's status; unset counts as ok."""
    if span.status_code != 2:
        return Status.OK, None
    err = _text(span.attributes, "error.type") or "error"
    low = err.lower()
    if "timeout" in low or "timedout" in low:
        status = Status.TIMEOUT
    elif "ratelimit" in low.replace("_", "") or low == "429":
        status = Status.RATE_LIMITED
    elif "cancel" in low:
        status = Status.CANCELLED
    else:
        status = Status.ERROR
    return status, err[:128]


def _count(attrs: Mapping[str, Any], key: str) -> int | None:
    v = attrs.get(key)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer() and v >= 0:
        return int(v)  # JavaScript SDKs may send an integral double
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        shown = v.raw if isinstance(v, _Bad) else v
        raise ValueError(f"{key} is not a token count: {str(shown)[:40]!r}")
    return v


def _usage(attrs: Mapping[str, Any]) -> tuple[dict[str, int], str | None]:
    """Usage counts copied under OTel semantics; a wrong type rejects the span (ValueError).

    Cache parts above the input (or reasoning above the output) cannot be OTel: the producer
    reported a provider's raw uncached input (Anthropic). The call is kept with ``usage_error``
    and only the counts that are consistent, so it is priced as unknown and alerted, never
    priced from a guess.
    """
    usage: dict[str, int] = {}
    for name, keys in USAGE_ATTRIBUTES.items():
        for key in keys:
            n = _count(attrs, key)
            if n is not None:
                usage[name] = n
                break
    cached = usage.get("cache_read_tokens", 0) + usage.get("cache_creation_tokens", 0)
    inp, out = usage.get("input_tokens"), usage.get("output_tokens")
    if inp is not None and cached > inp:
        for k in ("input_tokens", "cache_read_tokens", "cache_creation_tokens"):
            usage.pop(k, None)
        return usage, (
            f"cache tokens ({cached}) exceed input_tokens ({inp}): the producer reports input "
            "excluding cache (not OTel semantics)"
        )
    if out is not None and usage.get("reasoning_tokens", 0) > out:
        reasoning = usage.pop("reasoning_tokens")
        usage.pop("output_tokens")
        return usage, f"reasoning tokens ({reasoning}) exceed output_tokens ({out})"
    return usage, None
