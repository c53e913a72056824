"""Token usage from real provider responses, normalised to the schema's OTel semantics.

Providers disagree on what "input tokens" means: OpenAI's ``prompt_tokens`` already include
``cached_tokens``, Anthropic's ``input_tokens`` exclude ``cache_read_input_tokens`` and
``cache_creation_input_tokens``, Gemini's ``candidatesTokenCount`` excludes
``thoughtsTokenCount``. genai-prices' ``extract_usage`` knows each shape; we use it with the
model name removed (so a fine-tune or a model missing from its catalogue still yields usage) and
map its result onto :class:`~spendstream.events.Usage`, where cache tokens are part of the input
and reasoning tokens part of the output — counted once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..events import Usage

PROVIDER_IDS = {
    "openai": "openai",
    "azure": "openai",
    "azure-openai": "openai",
    "anthropic": "anthropic",
    "google": "google",
    "google-gla": "google",
    "google-vertex": "google",
    "gemini": "google",
}
"""Our ``provider`` values → the genai-prices provider whose response shape they share."""

_MODEL_KEYS = ("model", "modelVersion", "model_version")


@dataclass(frozen=True, slots=True)
class ExtractedUsage:
    usage: Usage
    response_model: str | None


def as_dict(response: Any) -> dict[str, Any]:
    """A provider SDK object (pydantic) or a parsed JSON body, as a plain dict."""
    if isinstance(response, Mapping):
        return dict(response)
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


def _flavor(provider_id: str, body: Mapping[str, Any]) -> str:
    if provider_id != "openai":
        return "default"
    obj = body.get("object")
    usage = body.get("usage") or {}
    if obj == "response" or (isinstance(usage, Mapping) and "input_tokens" in usage):
        return "responses"
    if obj == "list" or (
        isinstance(usage, Mapping) and "completion_tokens" not in usage and "prompt_tokens" in usage
    ):
        return "embeddings"
    return "chat"


def extract_usage(provider: str, response: Any) -> ExtractedUsage:
    """Usage of one complete response (or a final streaming chunk that carries usage).

    Raises ``ValueError`` when the body has no usage in a shape we know.
    """
    from genai_prices import extract_usage as gp_extract

    provider_id = PROVIDER_IDS.get(provider.lower())
    if provider_id is None:
        raise ValueError(f"no usage extractor for provider {provider!r}")
    body = as_dict(response)
    model = next((body[k] for k in _MODEL_KEYS if isinstance(body.get(k), str)), None)
    stripped = {k: v for k, v in body.items() if k not in _MODEL_KEYS}
    try:
        got = gp_extract(stripped, provider_id=provider_id, api_flavor=_flavor(provider_id, body))
    except (LookupError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"no usage in this {provider} response: {exc}") from exc
    # genai-prices infers 0 for a count the response did not report; we keep "not reported"
    # (None) apart from a reported 0, so the worker knows what it must estimate.
    reported = vars(got.usage)

    def count(key: str) -> int | None:
        v = reported.get(key)
        return None if v is None else int(v)

    return ExtractedUsage(
        Usage(
            input_tokens=count("input_tokens"),
            output_tokens=count("output_tokens"),
            cache_read_tokens=count("cache_read_tokens"),
            cache_creation_tokens=count("cache_write_tokens"),
            reasoning_tokens=count("output_reasoning_tokens"),
        ),
        model,
    )


class StreamUsage:
    """Collects usage from a stream of chunks/events; the final counts come at the end.

    - OpenAI chat: the last chunk carries ``usage`` when ``stream_options={"include_usage": true}``.
    - OpenAI responses: the ``response.completed`` event carries the full response.
    - Anthropic: ``message_start`` has input and cache counts, ``message_delta`` the cumulative
      output count (and, in newer API versions, updated input counts).
    - Gemini: every chunk has cumulative ``usageMetadata``; the last wins.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.response_model: str | None = None
        self._final: dict[str, Any] | None = None
        self._anthropic_usage: dict[str, Any] = {}
        self.chunks = 0

    def observe(self, chunk: Any) -> None:
        """Feed one chunk; never raises (a chunk without usage, or of a shape we do not know,
        is simply ignored: the host's stream must not break on our account)."""
        self.chunks += 1
        try:
            self._observe(as_dict(chunk))
        except Exception:
            return

    def _observe(self, body: dict[str, Any]) -> None:
        kind = body.get("type")
        if kind == "message_start" and isinstance(body.get("message"), Mapping):
            msg = body["message"]
            self.response_model = msg.get("model") or self.response_model
            self._anthropic_usage.update(msg.get("usage") or {})
            return
        if kind == "message_delta":
            self._anthropic_usage.update(
                {k: v for k, v in (body.get("usage") or {}).items() if v is not None}
            )
            return
        if kind == "response.completed" and isinstance(body.get("response"), Mapping):
            body = dict(body["response"])
        model = next((body[k] for k in _MODEL_KEYS if isinstance(body.get(k), str)), None)
        self.response_model = model or self.response_model
        if body.get("usage") or body.get("usageMetadata"):
            self._final = body

    def result(self) -> ExtractedUsage | None:
        """The usage seen so far, or None when the stream carried none."""
        body = self._final
        if self._anthropic_usage:
            body = {"type": "message", "usage": self._anthropic_usage}
        if body is None:
            return None
        try:
            got = extract_usage(self.provider, body)
        except ValueError:
            return None
        return ExtractedUsage(got.usage, self.response_model or got.response_model)
