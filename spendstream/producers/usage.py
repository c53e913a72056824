"""Token usage from real provider responses, normalised to the schema's OTel semantics.

Providers disagree on what "input tokens" means, and the README's provider table lists each
shape. In short: OpenAI-compatible ``prompt_tokens`` already include ``cached_tokens``;
Anthropic's ``input_tokens`` and Bedrock Converse's ``inputTokens`` *exclude* cache reads and
writes (we add them); Gemini's ``candidatesTokenCount`` excludes ``thoughtsTokenCount`` and its
``promptTokenCount`` excludes ``toolUsePromptTokenCount`` (we add both); xAI's
``completion_tokens`` exclude ``reasoning_tokens`` (we add them). In :class:`Usage` cache tokens
are part of the input, reasoning part of the output, audio/image tokens part of the count they
name — each counted once.

The readers here work from the *shape* of the body (``usage`` keys, the stream event type), not
from the provider name, so every provider id genai-prices knows (and any OpenAI-compatible
one) yields usage; the provider only switches its known quirks on. genai-prices' own
extractors need the caller to name an ``api_flavor``, infer 0 for a count the body did not
report (we keep "not reported", so the worker estimates only what is missing) and miss
DeepSeek's ``prompt_cache_hit_tokens``; tests cross-check our counts with them where they
are right.

A usage payload that is present but unreadable (an unknown shape, a count that is not a
count, parts above their whole) is never turned into zero tokens: :class:`ExtractedUsage`
carries what could be read plus ``error``, which the tracker sends as ``usage_error`` (the
worker prices such a call as unknown and alerts). Only a body with no usage at all raises
:class:`NoUsage`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from ..events import MAX_TOKENS, MAX_USD, ServiceTier, Usage
from .repair import repair_usage

PROVIDER_ALIASES = {
    "azure-openai": "azure",
    "bedrock": "aws",
    "aws-bedrock": "aws",
    "amazon-bedrock": "aws",
    "gemini": "google",
    "google-gla": "google",
    "google-vertex": "google",
    "vertex": "google",
    "vertexai": "google",
    "xai": "x-ai",
    "grok": "x-ai",
    "together-ai": "together",
    "togetherai": "together",
    "fireworks-ai": "fireworks",
    "mistralai": "mistral",
    "voyage": "voyageai",
    "moonshot": "moonshotai",
    "zhipu": "zhipuai",
}
"""Our common ``provider`` spellings → genai-prices' provider id (whose quirks apply)."""

_MODEL_KEYS = ("model", "modelVersion", "model_version")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
_OPENAI_TIERS = {
    "default": ServiceTier.STANDARD,
    "standard": ServiceTier.STANDARD,
    "on_demand": ServiceTier.STANDARD,
    "flex": ServiceTier.FLEX,
    "priority": ServiceTier.PRIORITY,
    "batch": ServiceTier.BATCH,
}
"""Reported ``service_tier`` values we know the price of; others (``auto``, ``scale``) → None."""


class NoUsage(ValueError):
    """The body carries no usage payload at all (e.g. a stream without ``include_usage``)."""


@dataclass(frozen=True, slots=True)
class ExtractedUsage:
    usage: Usage
    response_model: str | None
    service_tier: ServiceTier | None = None
    provider_cost_usd: Decimal | None = None
    """A cost the provider reported itself (OpenRouter ``usage.cost``), stored beside ours."""
    error: str | None = None
    """Why the usage payload could not be read in full (``usage`` holds what could be)."""


@functools.lru_cache(maxsize=1024)
def provider_id(provider: str) -> str:
    """genai-prices' id for our ``provider`` value (aliases and its own matching rules)."""
    p = provider.strip().lower()
    if p in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[p]
    try:
        from genai_prices.data_snapshot import find_provider_by_id, get_snapshot

        found = find_provider_by_id(get_snapshot().providers, p)
    except Exception:  # genai-prices' data failed to load: the shapes still work
        found = None
    return found.id if found is not None else p


def as_dict(response: Any) -> dict[str, Any]:
    """A provider SDK object (pydantic), a ``with_raw_response`` object or a parsed JSON body,
    as a plain dict."""
    if isinstance(response, Mapping):
        return dict(response)
    if hasattr(response, "http_response") and callable(getattr(response, "parse", None)):
        return as_dict(_parse_raw(response))
    dump = getattr(response, "model_dump", None)
    if callable(dump):
        # by_alias: google-genai models dump camelCase (usageMetadata) like the REST body.
        # warnings=False: openai's responses.stream() events hold ParsedResponse objects where
        # the field type says Response, and pydantic's serializer warns about each — a
        # UserWarning into the host, an exception under -W error (pytest's filterwarnings).
        try:
            out = dump(mode="json", by_alias=True, exclude_none=True, warnings=False)
        except TypeError:  # a model_dump without that argument (an SDK's own override)
            out = dump(mode="json", by_alias=True, exclude_none=True)
        if isinstance(out, dict):
            return out
    to_dict = getattr(response, "to_dict", None)
    if callable(to_dict):
        out = to_dict()
        if isinstance(out, dict):
            return out
    raise TypeError(f"cannot read usage from a {type(response).__name__}")


def _parse_raw(raw: Any) -> Any:
    """The parsed body of an openai/anthropic ``with_raw_response`` object.

    ``parse()`` caches its result, so the host's own ``parse()`` gets the same object and the
    body is read once. A streaming raw response is refused (reading it would consume the
    host's stream: feed its chunks to ``observe_chunk``), so is an async one (``parse()`` is a
    coroutine there: pass ``await raw.parse()``).
    """
    if getattr(raw, "_stream", False):
        raise TypeError("a streaming raw response: feed its chunks to observe_chunk()")
    parsed = raw.parse()
    if hasattr(parsed, "__await__"):
        close = getattr(parsed, "close", None)
        if callable(close):
            close()
        raise TypeError("an async raw response: pass the result of `await raw.parse()`")
    return parsed


def _unwrap(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The object that holds usage inside an envelope (stream helper events, realtime)."""
    for _ in range(3):
        kind = body.get("type")
        inner: Any = None
        if kind == "chunk":  # openai chat.completions.stream() ChunkEvent
            inner = body.get("chunk")
        elif kind == "message_stop" or kind == "message_start":  # anthropic stream helpers
            inner = body.get("message")
        elif isinstance(kind, str) and kind.startswith("response.") and "response" in body:
            inner = body.get("response")  # completed / incomplete / failed / realtime done
        elif kind == "message-end" and isinstance(body.get("delta"), Mapping):
            inner = body["delta"]  # cohere v2 stream
        elif isinstance(body.get("metadata"), Mapping) and "usage" in body["metadata"]:
            inner = body["metadata"]  # bedrock ConverseStream metadata event
        elif isinstance(body.get("result"), Mapping) and "usage" not in body:
            inner = body["result"]  # cloudflare workers ai
        if not isinstance(inner, Mapping):
            return body
        body = inner
    return body


def _batch_result(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The response inside one line of a batch's results, or None if ``body`` is not one.

    OpenAI Batch output: ``{"custom_id", "response": {"status_code", "body": {...}}}`` (the
    body says ``service_tier: "default"``, yet it is billed at the batch price); Anthropic
    Message Batches results: ``{"custom_id", "result": {"type": "succeeded", "message"}}``.
    """
    if "custom_id" not in body:
        return None
    resp, res = body.get("response"), body.get("result")
    inner: Any = None
    if isinstance(resp, Mapping):
        inner = resp.get("body")
    elif isinstance(res, Mapping):
        inner = res.get("message")
    return inner if isinstance(inner, Mapping) else None


def model_of(body: Mapping[str, Any]) -> str | None:
    return next((body[k] for k in _MODEL_KEYS if isinstance(body.get(k), str) and body[k]), None)


class _Counts:
    """Reads counts from a usage mapping, remembering which paths held a non-count."""

    def __init__(self, usage: Mapping[str, Any]) -> None:
        self.usage = usage
        self.bad: list[str] = []

    def get(self, *path: str) -> int | None:
        v: Any = self.usage
        for step in path:
            if not isinstance(v, Mapping):
                return None
            v = v.get(step)
        if v is None:
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_TOKENS:
            self.bad.append(".".join(path))
            return None
        return v

    def modality(self, key: str, name: str) -> int | None:
        """Sum of ``tokenCount`` of the entries of list ``key`` whose modality is ``name``."""
        items = self.usage.get(key)
        if not isinstance(items, list):
            return None
        total: int | None = None
        for i, item in enumerate(items):
            if isinstance(item, Mapping) and item.get("modality") == name:
                n = _Counts(item).get("tokenCount")
                if n is None:
                    self.bad.append(f"{key}[{i}].tokenCount")
                    continue
                total = (total or 0) + n
        return total


def _add(*values: int | None) -> int | None:
    """Sum of the reported values; None when none was reported."""
    got = [v for v in values if v is not None]
    return sum(got) if got else None


def _usage_payload(body: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """(shape, usage mapping) of the body, or None when it has no usage payload."""
    meta = body.get("usageMetadata")
    if isinstance(meta, Mapping):
        return "gemini", meta
    usage = body.get("usage")
    groq = body.get("x_groq")
    if usage is None and isinstance(groq, Mapping):
        usage = groq.get("usage")  # groq streams: the last chunk's x_groq.usage
    if usage is None and isinstance(body.get("meta"), Mapping):
        usage = body["meta"]  # cohere embed/rerank: meta.billed_units
        if "billed_units" not in usage:
            return None
    if usage is None and isinstance(body.get("usage_info"), Mapping):
        return "pages", body["usage_info"]  # mistral OCR: pages_processed
    if usage is None:
        return None
    if not isinstance(usage, Mapping):
        return "invalid", {}
    return _shape(body, usage), usage


def _shape(body: Mapping[str, Any], u: Mapping[str, Any]) -> str:
    if "inputTokens" in u or "outputTokens" in u:
        return "bedrock"
    if "billed_units" in u or isinstance(u.get("tokens"), Mapping):
        return "cohere"
    if "prompt_tokens" in u or "completion_tokens" in u:
        return "openai_chat"
    if "input_token_details" in u or "output_token_details" in u:
        return "openai_realtime"
    if "input_tokens" in u or "output_tokens" in u:
        anthropic = any(k.startswith("cache_") or k == "server_tool_use" for k in u)
        if body.get("type") == "message" or anthropic:
            return "anthropic"
        return "openai_responses"
    if "total_tokens" in u and len(u.keys() - {"total_tokens", "object"}) == 0:
        return "total_only"  # voyage embeddings: usage.total_tokens
    if u.get("type") == "duration":
        return "duration"
    return "unknown"


def _openai_chat(c: _Counts, family: str) -> dict[str, int | None]:
    inp, out = c.get("prompt_tokens"), c.get("completion_tokens")
    cached = c.get("prompt_tokens_details", "cached_tokens")
    if cached is None:
        cached = c.get("prompt_cache_hit_tokens") if family == "deepseek" else None
    if cached is None:
        cached = c.get("cached_tokens")  # together, some openai-compatible servers
    reasoning = c.get("completion_tokens_details", "reasoning_tokens")
    if family == "x-ai" and reasoning is not None and out is not None:
        out += reasoning  # xAI's completion_tokens exclude reasoning
    top_reasoning = c.get("reasoning_tokens")  # a top-level count (perplexity, databricks)
    if top_reasoning is not None and reasoning is None:
        reasoning = top_reasoning
        if family in ("perplexity", "x-ai") and out is not None:
            out += top_reasoning  # reported beside completion_tokens, not inside them
    if family == "perplexity":  # citation tokens are billed output-side (as genai-prices)
        out = _add(out, c.get("citation_tokens")) if out is not None else None
    if out is None and inp is not None and "completion_tokens" not in c.usage:
        out = 0  # embeddings: prompt_tokens only, there is no output
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_tokens": cached,
        "cache_creation_tokens": c.get("prompt_tokens_details", "cache_write_tokens"),
        "reasoning_tokens": reasoning,
        "input_audio_tokens": c.get("prompt_tokens_details", "audio_tokens"),
        "output_audio_tokens": c.get("completion_tokens_details", "audio_tokens"),
        "web_searches": c.get("num_search_queries") if family == "perplexity" else None,
    }


def _openai_responses(c: _Counts, body: Mapping[str, Any]) -> dict[str, int | None]:
    out_image = c.get("output_tokens_details", "image_tokens")
    if out_image is None and isinstance(body.get("data"), list) and "output" not in body:
        out_image = c.get("output_tokens")  # images.generate: every output token is an image
    output = body.get("output")
    searches = None
    if isinstance(output, list):  # each web_search_call item is one billed search
        searches = sum(
            1 for o in output if isinstance(o, Mapping) and o.get("type") == "web_search_call"
        )
    return {
        "input_tokens": c.get("input_tokens"),
        "output_tokens": c.get("output_tokens"),
        "cache_read_tokens": c.get("input_tokens_details", "cached_tokens"),
        "cache_creation_tokens": c.get("input_tokens_details", "cache_write_tokens"),
        "reasoning_tokens": c.get("output_tokens_details", "reasoning_tokens"),
        "input_image_tokens": c.get("input_tokens_details", "image_tokens"),
        "output_image_tokens": out_image,
        "web_searches": searches or None,
    }


def _openai_realtime(c: _Counts) -> dict[str, int | None]:
    """Realtime ``response.done`` and gpt-4o-transcribe usage (``*_token_details``)."""
    return {
        "input_tokens": c.get("input_tokens"),
        "output_tokens": c.get("output_tokens"),
        "cache_read_tokens": c.get("input_token_details", "cached_tokens"),
        "input_audio_tokens": c.get("input_token_details", "audio_tokens"),
        "cache_audio_read_tokens": c.get(
            "input_token_details", "cached_tokens_details", "audio_tokens"
        ),
        "input_image_tokens": c.get("input_token_details", "image_tokens"),
        "cache_image_read_tokens": c.get(
            "input_token_details", "cached_tokens_details", "image_tokens"
        ),
        "output_audio_tokens": c.get("output_token_details", "audio_tokens"),
    }


def _anthropic(c: _Counts) -> dict[str, int | None]:
    """Anthropic's ``input_tokens`` exclude both cache counts: the whole is their sum."""
    write = c.get("cache_creation_input_tokens")
    w5, w1h = (
        c.get("cache_creation", "ephemeral_5m_input_tokens"),
        c.get("cache_creation", "ephemeral_1h_input_tokens"),
    )
    if write is None:
        write = _add(w5, w1h)
    read = c.get("cache_read_input_tokens")
    base = c.get("input_tokens")
    return {
        "input_tokens": None if base is None else base + (write or 0) + (read or 0),
        "output_tokens": c.get("output_tokens"),
        "cache_read_tokens": read,
        "cache_creation_tokens": write,
        "cache_write_1h_tokens": w1h,
        "reasoning_tokens": c.get("output_tokens_details", "thinking_tokens"),
        "web_searches": c.get("server_tool_use", "web_search_requests"),
    }


def _bedrock(c: _Counts) -> dict[str, int | None]:
    """Converse: ``inputTokens`` exclude ``cacheRead/WriteInputTokens`` (totalTokens sums all)."""
    read, write = c.get("cacheReadInputTokens"), c.get("cacheWriteInputTokens")
    base = c.get("inputTokens")
    w1h = None
    details = c.usage.get("cacheDetails")
    if isinstance(details, list):
        w1h = _add(
            *(
                _Counts(d).get("inputTokens")
                for d in details
                if isinstance(d, Mapping) and d.get("ttl") == "1h"
            )
        )
    return {
        "input_tokens": None if base is None else base + (read or 0) + (write or 0),
        "output_tokens": c.get("outputTokens"),
        "cache_read_tokens": read,
        "cache_creation_tokens": write,
        "cache_write_1h_tokens": w1h,
    }


def _gemini(c: _Counts, body: Mapping[str, Any]) -> dict[str, int | None]:
    """``promptTokenCount`` includes the cache, not the tool-use prompt; candidates exclude
    thoughts. A missing ``candidatesTokenCount`` (no output) is derived from the total. A
    prompt grounded with Google Search (``groundingMetadata.webSearchQueries``) is one billed
    search: Gemini 2.x bills grounded prompts, whatever the number of queries (the free daily
    allowance is not known here: list price)."""
    prompt, tool = c.get("promptTokenCount"), c.get("toolUsePromptTokenCount")
    cand, thoughts = c.get("candidatesTokenCount"), c.get("thoughtsTokenCount")
    out_details = "candidatesTokensDetails"
    if cand is None and "responseTokenCount" in c.usage:  # the Live API's names
        cand, out_details = c.get("responseTokenCount"), "responseTokensDetails"
    total = c.get("totalTokenCount")
    if cand is None and total is not None and prompt is not None:
        rest = total - prompt - (tool or 0) - (thoughts or 0)
        cand = rest if rest >= 0 else None
    inp = None if prompt is None else prompt + (tool or 0)
    m = c.modality
    grounded = any(
        isinstance(cand, Mapping)
        and isinstance(cand.get("groundingMetadata"), Mapping)
        and bool(cand["groundingMetadata"].get("webSearchQueries"))
        for cand in (body.get("candidates") or [])
    )
    return {
        "web_searches": 1 if grounded else None,  # billed per grounded prompt, not per query
        "input_tokens": inp,
        "output_tokens": None if cand is None else cand + (thoughts or 0),
        "cache_read_tokens": c.get("cachedContentTokenCount"),
        "reasoning_tokens": thoughts,
        "input_audio_tokens": _add(
            m("promptTokensDetails", "AUDIO"), m("toolUsePromptTokensDetails", "AUDIO")
        ),
        "cache_audio_read_tokens": m("cacheTokensDetails", "AUDIO"),
        "input_image_tokens": _add(
            m("promptTokensDetails", "IMAGE"), m("toolUsePromptTokensDetails", "IMAGE")
        ),
        "output_audio_tokens": m(out_details, "AUDIO"),
        "output_image_tokens": m(out_details, "IMAGE"),
    }


def _cohere(c: _Counts) -> dict[str, int | None]:
    """``billed_units`` is what Cohere bills (``tokens`` adds its own system prompt)."""
    key = "billed_units" if isinstance(c.usage.get("billed_units"), Mapping) else "tokens"
    inp, out = c.get(key, "input_tokens"), c.get(key, "output_tokens")
    if out is None and inp is not None and key == "billed_units":
        out = 0 if "output_tokens" not in c.usage[key] else None  # embed: no output
    return {"input_tokens": inp, "output_tokens": out, "cache_read_tokens": c.get("cached_tokens")}


def _counts(shape: str, c: _Counts, body: Mapping[str, Any], family: str) -> dict[str, Any]:
    if shape == "openai_chat":
        return _openai_chat(c, family)
    if shape == "openai_responses":
        return _openai_responses(c, body)
    if shape == "openai_realtime":
        return _openai_realtime(c)
    if shape == "anthropic":
        return _anthropic(c)
    if shape == "bedrock":
        return _bedrock(c)
    if shape == "gemini":
        return _gemini(c, body)
    if shape == "cohere":
        return _cohere(c)
    if shape == "total_only":
        return {"input_tokens": c.get("total_tokens"), "output_tokens": 0}
    return {}


def _tier(body: Mapping[str, Any], usage: Mapping[str, Any]) -> ServiceTier | None:
    for raw in (usage.get("service_tier"), body.get("service_tier")):
        if isinstance(raw, str) and raw.lower() in _OPENAI_TIERS:
            return _OPENAI_TIERS[raw.lower()]
    return None


def _cost(usage: Mapping[str, Any]) -> tuple[Decimal | None, str | None]:
    """OpenRouter's ``usage.cost`` (USD credits) as a Decimal, or why it was refused."""
    raw = usage.get("cost")
    if raw is None or isinstance(raw, bool):
        return None, None
    try:
        cost = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return None, "usage.cost is not a number"
    if not cost.is_finite() or not 0 <= cost <= MAX_USD:
        return None, "usage.cost is out of range"
    return cost, None


def _why(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    return str(err["msg"]).removeprefix("Value error, ")


def _unknown_keys(usage: Mapping[str, Any]) -> str:
    names = [k for k in usage if isinstance(k, str) and _NAME.match(k)][:6]
    return ", ".join(names) or "none readable"


def extract_usage(provider: str, response: Any) -> ExtractedUsage:
    """Usage of one complete response (or a stream event / final chunk that carries usage).

    Raises :class:`NoUsage` (a ValueError) when the body has no usage payload at all and
    ``TypeError`` when the object cannot be read as a body; an unreadable payload is returned
    with ``error`` set (see the module docstring).
    """
    whole = as_dict(response)
    batch = _batch_result(whole)
    body = _unwrap(whole if batch is None else batch)
    found = _usage_payload(body)
    model = model_of(body)
    if found is None:
        raise NoUsage(f"no usage in this {provider} response")
    shape, usage = found
    family = provider_id(provider)
    c = _Counts(usage)
    counts = _counts(shape, c, body, family)
    cost, cost_error = _cost(usage) if family == "openrouter" or "cost" in usage else (None, None)
    error = cost_error
    if shape == "invalid":
        error = "usage is not an object"
    elif shape == "duration":
        error = "usage is reported in seconds of audio, which spendstream does not price"
    elif shape == "pages":
        error = "usage is reported in document pages, which spendstream does not price"
    elif shape == "unknown":
        error = f"unknown usage shape (keys: {_unknown_keys(usage)})"
    elif c.bad:
        error = f"not a token count: usage.{c.bad[0]}"
    elif counts.get("input_tokens") is None and counts.get("output_tokens") is None:
        error = "usage has neither an input nor an output count"
    try:
        parsed = Usage(**counts)
    except ValidationError as exc:
        parsed = repair_usage(counts)
        error = error or f"inconsistent usage: {_why(exc)}"[:250]
    tier = ServiceTier.BATCH if batch is not None else _tier(body, usage)
    return ExtractedUsage(parsed, model, tier, cost, error)


_CONTENT_DELTAS = (
    "content_block_delta",  # anthropic raw stream
    "text",  # anthropic messages.stream() helpers
    "thinking",
    "input_json",
    "content.delta",  # openai chat.completions.stream() helpers
    "refusal.delta",
    "tool_calls.function.arguments.delta",
    "content-delta",  # cohere v2
    "tool-call-delta",
)


def has_content(body: Mapping[str, Any]) -> bool:
    """Whether a stream chunk/event carries output (text, audio, a tool call), i.e. may set
    the time to first token; ``message_start``, ``response.created`` and usage-only chunks do
    not. A chunk of no shape we know counts as content (the tracker's former rule)."""
    kind = body.get("type")
    if isinstance(kind, str):
        if kind == "chunk" and isinstance(body.get("chunk"), Mapping):
            return has_content(body["chunk"])
        if kind in _CONTENT_DELTAS or (kind.startswith("response.") and kind.endswith(".delta")):
            # an empty delta (the helpers' first content.delta is "") is no token yet
            return not any(body.get(k) == "" for k in ("delta", "text", "partial_json"))
        return False
    choices = body.get("choices")
    if isinstance(choices, list):  # openai-compatible chat chunk
        return any(_delta_has_content(ch) for ch in choices)
    candidates = body.get("candidates")
    if isinstance(candidates, list):  # gemini
        return any(
            isinstance(cand, Mapping)
            and isinstance(cand.get("content"), Mapping)
            and bool(cand["content"].get("parts"))
            for cand in candidates
        )
    if "contentBlockDelta" in body:  # bedrock ConverseStream
        return True
    known = ("usage", "usageMetadata", "metadata", "messageStart", "messageStop", "id", "object")
    return not any(k in body for k in known)


def _delta_has_content(choice: Any) -> bool:
    if not isinstance(choice, Mapping):
        return False
    delta = choice.get("delta") or choice.get("message") or {}
    if not isinstance(delta, Mapping):
        return False
    return any(delta.get(k) for k in ("content", "tool_calls", "refusal", "audio", "function_call"))


class StreamUsage:
    """Collects usage from a stream of chunks/events; the final counts come at the end.

    - OpenAI chat: the last chunk carries ``usage`` when ``stream_options={"include_usage": true}``
      (``chat.completions.stream()`` helper events carry it in ``.chunk``).
    - OpenAI responses: ``response.completed`` / ``response.incomplete`` / ``response.failed``
      carry the full response; Realtime ``response.done`` its usage.
    - Anthropic: ``message_start`` has input and cache counts and a placeholder output count,
      ``message_delta`` the cumulative output count (and, in newer API versions, updated input
      counts). A stream cut off before ``message_delta`` leaves the output unknown (the worker
      estimates it, flagged), never the placeholder as exact.
    - Gemini: every chunk has cumulative ``usageMetadata``; the last wins. Bedrock
      ConverseStream: the ``metadata`` event.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.response_model: str | None = None
        self._final: dict[str, Any] | None = None
        self._anthropic_usage: dict[str, Any] = {}
        self._anthropic_final = False
        self.chunks = 0

    def observe(self, chunk: Any) -> bool:
        """Feed one chunk; True if it carried content. Never raises (a chunk without usage,
        or of a shape we do not know, is simply ignored: the host's stream must not break on
        our account)."""
        self.chunks += 1
        if isinstance(chunk, (str, bytes)):
            return bool(chunk)
        try:
            body = as_dict(chunk)
            content = has_content(body)
            self._observe(body)
        except Exception:
            return False
        return content

    def _observe(self, body: dict[str, Any]) -> None:
        kind = body.get("type")
        if kind == "message_start" and isinstance(body.get("message"), Mapping):
            msg = body["message"]
            self.response_model = msg.get("model") or self.response_model
            self._merge_anthropic(msg.get("usage"))
            return
        if kind == "message_delta":
            self._merge_anthropic(body.get("usage"))
            self._anthropic_final = True
            return
        inner = _unwrap(body)
        self.response_model = model_of(inner) or self.response_model
        if kind == "message_stop" and isinstance(inner.get("usage"), Mapping):
            self._merge_anthropic(inner["usage"])  # the helper's snapshot: final counts
            self._anthropic_final = True
            return
        if _usage_payload(inner) is not None:
            self._final = dict(inner)

    def _merge_anthropic(self, usage: Any) -> None:
        if isinstance(usage, Mapping):
            self._anthropic_usage.update({k: v for k, v in usage.items() if v is not None})

    def result(self) -> ExtractedUsage | None:
        """The usage seen so far, or None when the stream carried none."""
        body = self._final
        if self._anthropic_usage:
            usage = dict(self._anthropic_usage)
            if not self._anthropic_final:
                usage.pop("output_tokens", None)  # message_start's placeholder, not a count
            body = {"type": "message", "usage": usage}
        if body is None:
            return None
        try:
            got = extract_usage(self.provider, body)
        except (ValueError, TypeError):
            return None
        if (
            self._anthropic_usage
            and not self._anthropic_final
            and got.error == "usage has neither an input nor an output count"
        ):
            got = ExtractedUsage(got.usage, got.response_model, got.service_tier)
        return ExtractedUsage(
            got.usage,
            self.response_model or got.response_model,
            got.service_tier,
            got.provider_cost_usd,
            got.error,
        )
