"""Repairing a call the schema refuses, so the call is still recorded (issue 13).

The hostile-input probes found one bad value dropping the whole event — usage and cost
included — or raising into the host: a tab in ``x-prompt-version`` (the call went unrecorded,
so it evaded spend tracking and budgets), a prompt over 256 Ki characters, ``track("OpenAI")``,
``operation="chat.completions"``, ``set_usage(input_tokens=10, cache_read_tokens=50)``. The
rule here: fix what can be fixed without guessing (control characters replaced by a space,
over-long values cut to the schema's bound, provider ids lowercased, operation aliases
mapped), drop just the field that is still invalid, and count every repair by reason.

The repair runs only after :class:`~spendstream.events.LLMCallEvent` refused the fields, so a
valid call pays nothing for it; what it changes is named by field, never by value (no prompt,
header or user text reaches the host's log).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from ..events import (
    MAX_TAG_KEY_CHARS,
    MAX_TAG_VALUE_CHARS,
    MAX_TAGS,
    MAX_TEXT_CHARS,
    MAX_TOKENS,
    LLMCallEvent,
    Operation,
    Usage,
)


class RepairReason(StrEnum):
    """Why an event was changed before it was emitted (a bounded metric label)."""

    TEXT_TRUNCATED = "text_truncated"
    """prompt_text/response_text cut to MAX_TEXT_CHARS or TEXT_BUDGET_BYTES (usage kept)."""
    FIELD_SANITIZED = "field_sanitized"
    """Control characters replaced by a space, or the value cut to the schema's length."""
    FIELD_DROPPED = "field_dropped"
    """A value still invalid after sanitising: that field left out, the event kept."""
    USAGE_REPAIRED = "usage_repaired"
    """Inconsistent or invalid token counts dropped (the worker estimates them, flagged)."""
    OPERATION_UNKNOWN = "operation_unknown"
    """An operation name that is no alias of a known one, recorded as ``other``."""


TEXT_BUDGET_BYTES = 393_216
"""Largest JSON-encoded size of one text field (384 KiB): both texts and the rest of an event
stay below librdkafka's 1,000,000-byte message.max.bytes, so a long prompt never costs the
call its record (256 Ki emoji are 1 MiB of UTF-8; 256 Ki control characters 1.5 MiB)."""
_FIT_CHECK_CHARS = TEXT_BUDGET_BYTES // 6
"""Below this many characters a text cannot exceed the budget (\\uXXXX is 6 bytes)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_PROVIDER_BAD = re.compile(r"[^a-z0-9._-]+")
_TAG_KEY = re.compile(rf"^[A-Za-z0-9_.:/-]{{1,{MAX_TAG_KEY_CHARS}}}$")
_IDS = {"trace_id": 32, "span_id": 16}
"""W3C id fields and their hex length: an id is either exactly right or useless (a guessed
id would join the call to someone else's trace), so a bad one is dropped, never cut."""
_HEX = re.compile(r"[0-9a-f]+\Z")
_REQUIRED = {"service": "unknown", "endpoint": "unknown", "request_model": "unknown"}
_TEXT_FIELDS = ("prompt_text", "response_text")
_USAGE_KEYS = tuple(Usage.model_fields)
_UNIT_PARTS = (
    ("cache_write_1h_tokens", "cache_creation_tokens"),
    ("cache_audio_read_tokens", "cache_read_tokens"),
    ("cache_audio_read_tokens", "input_audio_tokens"),
    ("input_audio_tokens", "input_tokens"),
    ("input_image_tokens", "input_tokens"),
    ("output_audio_tokens", "output_tokens"),
    ("output_image_tokens", "output_tokens"),
)
"""(part, whole) of the priced units (issue 14): a part only refines how its whole is priced,
so when it exceeds the whole the part is the count left out (the whole is still billed)."""

OPERATION_ALIASES: dict[str, Operation] = {
    "chat.completions": Operation.CHAT,
    "chat.completions.create": Operation.CHAT,
    "chat_completions": Operation.CHAT,
    "completions": Operation.TEXT_COMPLETION,
    "completions.create": Operation.TEXT_COMPLETION,
    "messages": Operation.CHAT,
    "messages.create": Operation.CHAT,
    "responses.create": Operation.RESPONSES,
    "embeddings.create": Operation.EMBEDDINGS,
    "embedding": Operation.EMBEDDINGS,
    "images.generate": Operation.IMAGE_GENERATION,
    "generate_content": Operation.GENERATE_CONTENT,
    "generatecontent": Operation.GENERATE_CONTENT,
}
"""SDK method names people pass as ``operation`` → the OTel operation they mean."""

Repairs = list[tuple[RepairReason, str]]
"""(reason, field name) pairs: what was changed, never the value."""


def clean_text(value: str, max_chars: int | None = None) -> str:
    """Control characters → one space, outer whitespace stripped, cut to ``max_chars``."""
    out = _CONTROL.sub(" ", value).strip()
    return out if max_chars is None else out[:max_chars].rstrip()


def normalise_provider(value: Any) -> Any:
    """``" OpenAI "`` → ``"openai"``: the schema's provider ids are lowercase (hot path)."""
    return value.strip().lower() if isinstance(value, str) else value


def _provider(value: Any) -> str:
    text = _PROVIDER_BAD.sub("-", str(value).strip().lower()).strip("._-")[:64]
    return text or "unknown"


def operation_of(value: Any) -> tuple[Operation, bool]:
    """The Operation ``value`` names (aliases included); ``(other, True)`` when unknown."""
    if isinstance(value, Operation):
        return value, False
    text = str(value).strip().lower()
    try:
        return Operation(text), False
    except ValueError:
        pass
    known = OPERATION_ALIASES.get(text)
    return (known, False) if known is not None else (Operation.OTHER, True)


def fit_text(value: str) -> str:
    """``value`` cut to MAX_TEXT_CHARS characters and TEXT_BUDGET_BYTES of encoded JSON."""
    out = value[:MAX_TEXT_CHARS]
    while len(out) > _FIT_CHECK_CHARS:
        size = len(json.dumps(out, ensure_ascii=False).encode())
        if size <= TEXT_BUDGET_BYTES:
            break
        out = out[: int(len(out) * TEXT_BUDGET_BYTES / size * 0.98)]
    return out


def fit_texts(fields: dict[str, Any], repairs: Repairs) -> None:
    """Truncate over-long texts in place (only texts long enough to need a look)."""
    for name in _TEXT_FIELDS:
        value = fields.get(name)
        if isinstance(value, str) and len(value) > _FIT_CHECK_CHARS:
            fitted = fit_text(value)
            if len(fitted) != len(value):
                fields[name] = fitted
                repairs.append((RepairReason.TEXT_TRUNCATED, name))


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS
    return value if ok else None


def repair_usage(tokens: Mapping[str, Any]) -> Usage:
    """Usage from counts the schema refused, keeping every count that can be trusted.

    An invalid count (negative, not an int, above MAX_TOKENS) is dropped. A priced-unit part
    (audio, image, 1-hour writes) above its count is dropped. When the cache/reasoning parts exceed
    the whole (cache tokens above ``input_tokens``, reasoning above ``output_tokens``) the
    *whole* is dropped and the parts kept: the worker then sets it to max(estimate, parts) and
    flags the call ``estimated``, a lower bound instead of a guess at which number was wrong.
    """
    got = {k: _count(tokens.get(k)) for k in _USAGE_KEYS}
    for part, whole in _UNIT_PARTS:  # a unit part above its count: the part is dropped
        p, w = got[part], got[whole]
        if p is not None and w is not None and p > w:
            got[part] = None
    cached = (got["cache_read_tokens"] or 0) + (got["cache_creation_tokens"] or 0)
    if got["input_tokens"] is not None and cached > got["input_tokens"]:
        got["input_tokens"] = None
    reasoning = got["reasoning_tokens"]
    output = got["output_tokens"]
    if output is not None and reasoning is not None and reasoning > output:
        got["output_tokens"] = None
    try:
        return Usage(**got)
    except ValidationError:  # a rule this repair does not know: keep nothing rather than raise
        return Usage()


def _clean_tags(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, str] = {}
    for key, val in value.items():
        if len(out) >= MAX_TAGS:
            break
        if isinstance(key, str) and _TAG_KEY.match(key) and isinstance(val, str):
            out[key] = clean_text(val, MAX_TAG_VALUE_CHARS)
    return out


class _EventRepair:
    """One pass of fixes per validation error; a field fixed twice without success is dropped."""

    def __init__(self, fields: dict[str, Any], repairs: Repairs) -> None:
        self.fields = fields
        self.repairs = repairs
        self.tries: dict[str, int] = {}

    def fix(self, err: Mapping[str, Any]) -> bool:
        loc = err.get("loc") or ()
        if not loc:
            return self._fix_model(str(err.get("msg", "")))
        name = str(loc[0])
        if name not in self.fields:
            return False
        tries = self.tries[name] = self.tries.get(name, 0) + 1
        if tries > 2:
            return self._drop(name)
        value = self.fields[name]
        if name == "usage":
            raw = value.model_dump() if isinstance(value, Usage) else value
            self.fields[name] = repair_usage(raw if isinstance(raw, Mapping) else {})
            return self._note(RepairReason.USAGE_REPAIRED, name)
        if name == "tags" and tries == 1:
            self.fields[name] = _clean_tags(value)
            return self._note(RepairReason.FIELD_SANITIZED, name)
        if name in _IDS:
            return self._fix_id(name, value, tries)
        if name == "provider":
            self.fields[name] = _provider(value)
            return self._note(RepairReason.FIELD_SANITIZED, name)
        if name in _TEXT_FIELDS and isinstance(value, str) and tries == 1:
            self.fields[name] = fit_text(value)
            return self._note(RepairReason.TEXT_TRUNCATED, name)
        if isinstance(value, str) and tries == 1 and str(err.get("type", "")).startswith("string"):
            max_len = (err.get("ctx") or {}).get("max_length")
            self.fields[name] = clean_text(value, max_len if isinstance(max_len, int) else None)
            return self._note(RepairReason.FIELD_SANITIZED, name)
        return self._drop(name)

    def _fix_id(self, name: str, value: Any, tries: int) -> bool:
        """An upper-case or padded id is the same id (OTel's own format is lowercase hex);
        anything else (wrong length, not hex, the all-zero invalid id) is dropped."""
        fixed = value.strip().lower() if isinstance(value, str) else ""
        same_id = len(fixed) == _IDS[name] and _HEX.match(fixed) and fixed.strip("0")
        if tries == 1 and fixed != value and same_id:
            self.fields[name] = fixed
            return self._note(RepairReason.FIELD_SANITIZED, name)
        return self._drop(name)

    def _fix_model(self, msg: str) -> bool:
        if "error_type" in msg:
            return self._drop("error_type")
        if "cache_saved_usd" in msg:
            return self._drop("cache_saved_usd")
        if "cache_kind" in msg:
            self.fields["cache_hit"] = self.fields.get("cache_kind") is not None
            return self._note(RepairReason.FIELD_SANITIZED, "cache_hit")
        return False

    def _drop(self, name: str) -> bool:
        if name in _REQUIRED:
            self.fields[name] = _REQUIRED[name]
        elif name in self.fields:
            del self.fields[name]
        else:
            return False
        return self._note(RepairReason.FIELD_DROPPED, name)

    def _note(self, reason: RepairReason, name: str) -> bool:
        self.repairs.append((reason, name))
        return True


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(map(str, loc)) or "<event>"


def build_event(fields: dict[str, Any], repairs: Repairs) -> tuple[LLMCallEvent | None, str]:
    """The event for ``fields``, repaired if the schema refuses them; (None, why) if hopeless.

    ``why`` lists the refused fields and the schema's messages, never their values.
    """
    fixer = _EventRepair(fields, repairs)
    why = ""
    for _ in range(8):
        try:
            return LLMCallEvent(**fields), ""
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=True)
            why = "; ".join(f"{_where(e['loc'])}: {e['type']}" for e in errors)
            if not any([fixer.fix(e) for e in errors]):
                break
    return None, why
