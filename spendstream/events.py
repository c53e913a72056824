"""Event schema v1: the one contract every room of spendstream imports.

One event type flows one way: a producer emits an :class:`LLMCallEvent` to the raw topic, the
stream worker turns it into an :class:`EnrichedEvent` (final token counts and exact USD cost) on
the enriched topic, and windows and sinks read that. Nothing re-parses these dicts by hand.

Token fields follow the OpenTelemetry GenAI semantics: ``input_tokens`` *includes* cache-read and
cache-creation tokens, ``output_tokens`` *includes* reasoning tokens. Counting cached tokens a
second time on top of ``input_tokens`` is the most common cost bug in peer projects, so the
validators reject usage where the parts exceed the whole.

Wire format: UTF-8 JSON of ``model_dump(mode="json", exclude_none=True)``; decimals travel as
strings so money stays exact. The Kafka key of a raw event is :meth:`LLMCallEvent.kafka_key`.

Compatibility: fields are added to v1 only as optional ones (issue 17: ``session_id``,
``trace_id``, ``span_id``), absent from the wire when unset, so a newer reader takes every older
event unchanged. An older reader refuses a field it does not know (``extra="forbid"``: a typo
must not silently lose data), so its worker dead-letters such an event with a reason naming the
field and saying to upgrade readers first (:func:`describe_error`): deploy workers and sinks
before producers.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION: Final = 1

# --- documented limits (README "Event schema") ------------------------------------------------
MAX_TOKENS: Final = 10_000_000
"""Upper bound for any token count of one call; larger values are a producer bug, not usage."""
MAX_TEXT_CHARS: Final = 262_144
"""prompt_text / response_text limit (256 Ki characters): enough to estimate tokens of a
~60k-token prompt while keeping one Kafka record well under the broker's 1 MiB default."""
MAX_TAGS: Final = 16
MAX_TAG_KEY_CHARS: Final = 64
MAX_TAG_VALUE_CHARS: Final = 256
MAX_LATENCY_MS: Final = 86_400_000.0
MIN_TIMESTAMP: Final = datetime(2000, 1, 1, tzinfo=UTC)
MAX_TIMESTAMP: Final = datetime(2100, 1, 1, tzinfo=UTC)
"""The schema's absolute range; the worker also refuses events dated more than
``Settings.max_future_skew_s`` ahead of its own clock (one wrong host clock must not move the
watermark of a partition)."""
MAX_USD: Final = Decimal(1_000_000)
"""Upper bound of any money field of one call (``cache_saved_usd``, every cost part). The dearest
call the price data allows (MAX_TOKENS at ~$600/Mtok) costs ~$6,000, so this is >100x any real
call; it keeps a value far inside the ``numeric(30, 12)`` columns (< 1e18) and exact enough as a
Prometheus float (1e300 made every scrape fail with OverflowError)."""
MAX_PRICE_SOURCE_CHARS: Final = 300
"""``override:`` plus a file name of up to 255 bytes (NAME_MAX): a long override-file name used
to fail the enriched event's validation in the sink (then 64 characters)."""

# Control characters (C0, DEL, C1) are refused in every stored free-text field: PostgreSQL text
# and jsonb cannot hold NUL (COPY failed on the whole batch), and ESC/CSI sequences would reach
# terminals through `spendstream report`. prompt_text/response_text may hold any text (tabs and
# newlines are normal there); the sink replaces a NUL in them when keep_text stores them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]+$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_NO_CONTROL)]
"""A label-like name (service, model, team): bounded and printable, since it may become a
Prometheus label value or a PostgreSQL key."""
Endpoint = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_NO_CONTROL)]
Provider = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")
]
ShortText = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]
LongText = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
TraceId = Annotated[str, StringConstraints(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")]
"""W3C Trace Context / OTel trace id: 32 lowercase hex digits, not all zero (the invalid id)."""
SpanId = Annotated[str, StringConstraints(min_length=16, max_length=16, pattern=r"^[0-9a-f]{16}$")]
"""W3C Trace Context / OTel span id: 16 lowercase hex digits, not all zero."""
TokenCount = Annotated[int, Field(ge=0, le=MAX_TOKENS, strict=True)]
Money = Annotated[Decimal, Field(ge=0, le=MAX_USD, allow_inf_nan=False)]

_TAG_KEY = re.compile(rf"[A-Za-z0-9_.:/-]{{1,{MAX_TAG_KEY_CHARS}}}\Z")
r"""Matched from the start; ``\Z``, not ``$``: Python's ``$`` also matches before a final
newline, so ``"region\n"`` passed and put a control character in a stored tag key."""


UNIT_PARTS: Final = (
    ("cache_write_1h_tokens", "cache_creation_tokens"),
    ("input_audio_tokens", "input_tokens"),
    ("cache_audio_read_tokens", "cache_read_tokens"),
    ("cache_audio_read_tokens", "input_audio_tokens"),
    ("cache_image_read_tokens", "cache_read_tokens"),
    ("cache_image_read_tokens", "input_image_tokens"),
    ("output_audio_tokens", "output_tokens"),
    ("input_image_tokens", "input_tokens"),
    ("output_image_tokens", "output_tokens"),
)
"""(part, whole): each priced usage unit lies within the count it is a part of (``Usage``; the
stream's fast reader checks the same pairs)."""


class Operation(StrEnum):
    """OTel ``gen_ai.operation.name`` values plus the ones our producers see."""

    CHAT = "chat"
    TEXT_COMPLETION = "text_completion"
    GENERATE_CONTENT = "generate_content"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    IMAGE_GENERATION = "image_generation"
    AUDIO = "audio"
    RERANK = "rerank"
    OTHER = "other"


class Status(StrEnum):
    """Outcome of the call; bounded so it can be a metric label."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    CANCELLED = "cancelled"


class ServiceTier(StrEnum):
    """The provider's processing tier of the call; it changes the price of every unit.

    OpenAI ``service_tier`` (``default`` is ``standard``; ``auto`` is resolved by the response's
    own ``service_tier``), Anthropic ``usage.service_tier``, and batch APIs (OpenAI Batch,
    Anthropic Message Batches) as ``batch``.
    """

    STANDARD = "standard"
    FLEX = "flex"
    PRIORITY = "priority"
    BATCH = "batch"


class CacheKind(StrEnum):
    """Which tier of spendstream's response cache answered (no provider call was made)."""

    EXACT = "exact"
    SEMANTIC = "semantic"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Usage(_Strict):
    """Token usage as the provider reported it, normalised to OTel GenAI semantics.

    Every field is optional: a missing count is estimated by the stream worker (and flagged),
    never assumed to be zero.
    """

    input_tokens: TokenCount | None = None
    """All input tokens, *including* cache reads and cache writes."""
    output_tokens: TokenCount | None = None
    """All output tokens, *including* reasoning tokens."""
    cache_read_tokens: TokenCount | None = None
    cache_creation_tokens: TokenCount | None = None
    """Cache writes of any TTL (Anthropic 5-minute and 1-hour)."""
    reasoning_tokens: TokenCount | None = None
    # Priced units beyond the five counts (issue 14), each a *part* of the count it names, as in
    # genai-prices' usage keys: they change how the whole is priced, never add to it.
    cache_write_1h_tokens: TokenCount | None = None
    """The part of ``cache_creation_tokens`` written with a 1-hour TTL (priced 2x input vs
    1.25x for 5 minutes); the rest of the cache writes are 5-minute writes."""
    input_audio_tokens: TokenCount | None = None
    """Audio part of ``input_tokens`` (cached audio included)."""
    cache_audio_read_tokens: TokenCount | None = None
    """Audio part of ``cache_read_tokens``."""
    output_audio_tokens: TokenCount | None = None
    """Audio part of ``output_tokens``."""
    input_image_tokens: TokenCount | None = None
    """Image part of ``input_tokens``."""
    output_image_tokens: TokenCount | None = None
    """Image part of ``output_tokens``."""
    web_searches: Annotated[int, Field(ge=0, le=100_000, strict=True)] | None = None
    """Server-side web searches the call ran (priced per search)."""
    cache_image_read_tokens: TokenCount | None = None
    """Image part of ``cache_read_tokens`` (also part of ``input_image_tokens``): OpenAI
    Realtime and gpt-image price cached image input apart ($0.50 vs $5/MTok on gpt-realtime)."""

    @model_validator(mode="after")
    def _units_within_counts(self) -> Self:
        for part, whole in UNIT_PARTS:
            p, w = getattr(self, part), getattr(self, whole)
            if p is not None and w is not None and p > w:
                raise ValueError(f"{part} ({p}) exceed {whole} ({w}); it is a part of it")
        return self

    @model_validator(mode="after")
    def _parts_within_whole(self) -> Self:
        cached = (self.cache_read_tokens or 0) + (self.cache_creation_tokens or 0)
        if self.input_tokens is not None and cached > self.input_tokens:
            raise ValueError(
                f"cache_read_tokens + cache_creation_tokens ({cached}) exceed input_tokens "
                f"({self.input_tokens}); input_tokens must include cached tokens (OTel semantics)"
            )
        if (
            self.output_tokens is not None
            and self.reasoning_tokens is not None
            and self.reasoning_tokens > self.output_tokens
        ):
            raise ValueError(
                f"reasoning_tokens ({self.reasoning_tokens}) exceed output_tokens "
                f"({self.output_tokens}); output_tokens must include reasoning tokens"
            )
        return self


class LLMCallEvent(_Strict):
    """One LLM API call, as emitted by a service. ``event_id`` is the idempotency key."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    timestamp: AwareDatetime
    """Event time: when the call started, timezone-aware; normalised to UTC."""
    schema_version: Literal[1] = SCHEMA_VERSION

    service: Name
    endpoint: Endpoint
    provider: Provider
    request_model: Name
    response_model: Name | None = None
    operation: Operation = Operation.CHAT

    team: Name | None = None
    """Team or tenant the spend is attributed to."""
    user_id: ShortText | None = None
    """End user; never a metric label, only stored per call."""
    tags: dict[str, str] = Field(default_factory=dict)
    prompt_version: Name | None = None
    session_id: ShortText | None = None
    """User session or agent conversation the call belongs to (same rules as ``user_id``);
    never a metric label, only stored per call and grouped by ``report --by session``."""
    trace_id: TraceId | None = None
    """The distributed trace (one request across services) the call was made in."""
    span_id: SpanId | None = None
    """The span of the call itself (the gateway's GenAI span, or the SDK's current span)."""

    usage: Usage = Field(default_factory=Usage)
    usage_error: ShortText | None = None
    """Why the provider's usage could not be read (an unknown shape, a payload that fails
    validation): the call is priced as unknown and alerted, never estimated as zero tokens."""
    service_tier: ServiceTier | None = None
    """Processing tier (standard, flex, priority, batch); None is the provider's standard."""
    provider_cost_usd: Money | None = None
    """The cost the provider itself reported (OpenRouter ``usage.cost``): stored beside ours."""
    prompt_text: LongText | None = None
    """Only for token estimation when usage is missing; not stored unless configured."""
    response_text: LongText | None = None

    latency_ms: Annotated[float, Field(ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)] | None = None
    ttft_ms: Annotated[float, Field(ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)] | None = None
    status: Status = Status.OK
    error_type: Name | None = None

    cache_hit: bool = False
    cache_kind: CacheKind | None = None
    cache_saved_usd: Money | None = None
    """On a cache hit: what the cached call cost, i.e. the spend the hit avoided (estimate)."""

    requested_model: Name | None = None
    """The model the caller asked for before the router chose ``request_model``."""
    routing_reason: ShortText | None = None

    feedback: Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)] | None = None
    """User feedback in [-1, 1] (thumbs down .. up)."""
    groundedness: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None

    @field_validator("timestamp")
    @classmethod
    def _utc_in_range(cls, v: datetime) -> datetime:
        v = v.astimezone(UTC)
        if not MIN_TIMESTAMP <= v < MAX_TIMESTAMP:
            raise ValueError(f"timestamp {v.isoformat()} is outside 2000-01-01..2100-01-01")
        return v

    @field_validator("trace_id", "span_id")
    @classmethod
    def _valid_id(cls, v: str | None) -> str | None:
        if v is not None and not v.strip("0"):
            raise ValueError("an all-zero trace/span id is the W3C invalid id")
        return v

    @field_validator("tags")
    @classmethod
    def _bounded_tags(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags, got {len(v)}")
        for key, value in v.items():
            if not _TAG_KEY.match(key):
                raise ValueError(
                    f"tag key {key[:80]!r} must match [A-Za-z0-9_.:/-]{{1,{MAX_TAG_KEY_CHARS}}}"
                )
            if len(value) > MAX_TAG_VALUE_CHARS:
                raise ValueError(f"tag {key!r} value longer than {MAX_TAG_VALUE_CHARS} characters")
            if _CONTROL.search(value):
                raise ValueError(f"tag {key!r} value contains a control character")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.cache_hit != (self.cache_kind is not None):
            raise ValueError("cache_kind must be set exactly when cache_hit is true")
        if self.cache_saved_usd is not None and not self.cache_hit:
            raise ValueError("cache_saved_usd is set but cache_hit is false")
        if self.status is Status.OK and self.error_type is not None:
            raise ValueError("error_type is set but status is 'ok'")
        return self

    def kafka_key(self) -> bytes:
        """``service/endpoint``: one endpoint's calls share a partition and keep their order.

        The endpoint is the scope users attribute spend to and where a model switch shows up,
        so its windows and model-mix baseline live in one worker without a repartition; the
        wider scopes (team, model, global) are re-keyed by the stream worker.
        """
        return f"{self.service}/{self.endpoint}".encode()

    def to_json(self) -> bytes:
        """Wire bytes (UTF-8 JSON, ``None`` fields omitted)."""
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> LLMCallEvent:
        """Parse wire bytes; raises :class:`pydantic.ValidationError` naming the bad field."""
        return cls.model_validate_json(data)


class TokenCounts(_Strict):
    """Final token counts used for pricing; every field is known (OTel semantics as in Usage)."""

    input_tokens: TokenCount
    output_tokens: TokenCount
    cache_read_tokens: TokenCount = 0
    cache_creation_tokens: TokenCount = 0
    reasoning_tokens: TokenCount = 0
    # the priced units of Usage (parts of the counts they name), 0 when not reported
    cache_write_1h_tokens: TokenCount = 0
    input_audio_tokens: TokenCount = 0
    cache_audio_read_tokens: TokenCount = 0
    output_audio_tokens: TokenCount = 0
    input_image_tokens: TokenCount = 0
    output_image_tokens: TokenCount = 0
    web_searches: Annotated[int, Field(ge=0, le=100_000, strict=True)] = 0
    cache_image_read_tokens: TokenCount = 0
    estimated: bool = False
    """True when any count came from a tokenizer or heuristic instead of the provider."""

    @model_validator(mode="after")
    def _parts_within_whole(self) -> Self:
        Usage.model_validate(self.model_dump(exclude={"estimated"}))
        return self

    @property
    def uncached_input_tokens(self) -> int:
        return self.input_tokens - self.cache_read_tokens - self.cache_creation_tokens

    @property
    def non_reasoning_output_tokens(self) -> int:
        return self.output_tokens - self.reasoning_tokens


class Cost(_Strict):
    """Exact USD cost, split into disjoint parts that sum to ``total``.

    ``input`` prices uncached text input tokens only; ``cache_read`` (text) and ``cache_write``
    (5-minute and 1-hour) the cached ones; ``output`` non-reasoning text output tokens;
    ``reasoning`` the reasoning tokens; ``audio`` every audio token (input, cached input and
    output), ``image`` every image token; ``web_search`` the per-search fees; ``request`` a
    per-request fee. The last four are new in issue 14 and default to 0, so older enriched JSON
    still parses (the request fee used to be part of ``input``).
    """

    input: Money
    cache_read: Money = Decimal(0)
    cache_write: Money = Decimal(0)
    output: Money
    reasoning: Money = Decimal(0)
    audio: Money = Decimal(0)
    image: Money = Decimal(0)
    web_search: Money = Decimal(0)
    request: Money = Decimal(0)
    total: Money
    currency: Literal["USD"] = "USD"
    price_source: Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_PRICE_SOURCE_CHARS, pattern=r"^[^\x00]+$"),
    ]
    """Where the price came from: ``genai-prices`` or ``override:<file>``."""
    price_version: ShortText | None = None
    """Snapshot/version of the price data, so a cost can be re-derived later."""

    @model_validator(mode="after")
    def _total_is_sum(self) -> Self:
        parts = (
            self.input
            + self.cache_read
            + self.cache_write
            + self.output
            + self.reasoning
            + self.audio
            + self.image
            + self.web_search
            + self.request
        )
        if parts != self.total:
            raise ValueError(f"total {self.total} != sum of parts {parts}")
        return self

    @property
    def total_micro_usd(self) -> int:
        """Total in integer micro-dollars, rounded half-even: the unit windows and sinks add."""
        return int((self.total * 1_000_000).quantize(Decimal(1), rounding="ROUND_HALF_EVEN"))


class EnrichedEvent(_Strict):
    """A validated call with final token counts and its cost, or an explicit unknown price."""

    event: LLMCallEvent
    tokens: TokenCounts
    cost: Cost | None = None
    price_unknown: bool = False
    """True when no price exists for the model: the cost is unknown, never a silent $0."""
    price_unknown_reason: ShortText | None = None
    """Why the cost is unknown when the model is priced: the usage was unreadable at the
    producer (``usage_error``) or its parts exceed the whole (None: no price for the model)."""
    schema_version: Literal[1] = SCHEMA_VERSION

    @model_validator(mode="after")
    def _cost_or_unknown(self) -> Self:
        if self.price_unknown == (self.cost is not None):
            raise ValueError("exactly one of cost and price_unknown=true must be given")
        return self

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> EnrichedEvent:
        return cls.model_validate_json(data)


def describe_error(exc: ValidationError) -> str:
    """One line per problem, ``field.path: message``; the text a DLQ record carries."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "<event>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg += (  # e.g. a field a newer producer writes, read by an older worker
                f" (not a field of this reader's schema v{SCHEMA_VERSION}: upgrade stream "
                "workers and sinks before producers)"
            )
        if err["type"] == "string_pattern_mismatch" and "\\x00-\\x1f" in str(
            (err.get("ctx") or {}).get("pattern", "")
        ):
            msg = "contains a control character (C0, DEL or C1), which is never stored"
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def example_event(**overrides: Any) -> LLMCallEvent:
    """A complete, valid event (the README's wire example); handy in tests and docs."""
    base: dict[str, Any] = {
        "event_id": "5b6f0b8e-3c0a-4a53-9d4e-0f1f9a4c2e11",
        "timestamp": "2026-11-28T14:03:07.250Z",
        "service": "support-bot",
        "endpoint": "/v1/answer",
        "provider": "openai",
        "request_model": "gpt-4o-mini",
        "response_model": "gpt-4o-mini-2024-07-18",
        "operation": "chat",
        "team": "customer-success",
        "user_id": "u-1842",
        "tags": {"region": "eu-west-1"},
        "prompt_version": "answer-v7",
        "usage": {
            "input_tokens": 1200,
            "output_tokens": 350,
            "cache_read_tokens": 1024,
            "cache_creation_tokens": 0,
            "reasoning_tokens": 0,
        },
        "latency_ms": 842.5,
        "ttft_ms": 210.0,
        "status": "ok",
        "cache_hit": False,
        "requested_model": "gpt-4o",
        "routing_reason": "complexity<0.31: cheap model",
    }
    base.update(overrides)
    return LLMCallEvent.model_validate(base)
