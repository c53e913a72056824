"""Raw record → enriched events, dead letters and per-window aggregates.

One Kafka record of the raw topic (a ``jsonl/1`` envelope) is processed as a unit: every line
is validated against the schema; valid events get final token counts (provider usage wins,
tiktoken estimates fill gaps, flagged) and an exact cost from the :class:`PriceBook`; invalid
lines become dead letters carrying their original bytes and the reason.

The enriched JSON is assembled from the validated raw line plus the computed parts instead of
re-serializing the whole model: it parses to the same :class:`EnrichedEvent` (tested), at a
fraction of the cost. Prompt/response text is dropped from the enriched event unless
``keep_text`` is set.

Reading a line: :func:`~.fastcheck.read_line` (msgspec, ~3 µs) takes the common line and gives
a :class:`~.fastcheck.WireEvent` (the model's fields and value types, no pydantic object);
every other line is validated by pydantic (~10 µs), which also writes every dead letter's
reason, so reasons name the same field as before. ``EnrichedCall.event`` is therefore either
type; ``LLMCallEvent.from_json(call.raw)`` is the model of a call when one is needed.

Admission checks beyond the schema, kept off the common path:

- *Future skew*: an event dated more than ``max_future_skew_s`` (default 300 s) ahead of the
  worker's clock is dead-lettered: one event dated 2099 used to move its partition's watermark
  for good, making every real event "late". One clock read per record, one compare per event.
- *Duplicate keys*: ``{"prompt_text":"SECRET",…,"prompt_text":null}`` validates (last key
  wins) and the raw line would be forwarded verbatim. The exact check (a ``json.loads`` with a
  pairs hook, ~7 µs for a 640-byte line, about what validation costs) only runs for a line
  that would be forwarded verbatim and whose event has a text field that was given but is null
  (pydantic's fields-set: two set lookups, ~0.1 µs; scanning the bytes for ``text"`` and
  ``\\u`` cost ~0.9 µs an event). A key spelled with escapes (``prompt\\u005ftext``) is caught
  too: the key is decoded before it is set. Duplicates that cannot hide text (``team`` twice)
  are not looked for: every reader here takes the last one, as the worker did.
- *Dead letters keep no text*: unless ``keep_text``, a dead letter's ``prompt_text`` /
  ``response_text`` are replaced by ``prompt_text_chars`` / ``response_text_chars`` (their
  lengths). A line that is not a JSON object is kept only up to the first ``_text"`` and at
  most :data:`MAX_DLQ_UNPARSED_BYTES`: enough to see what a producer sent, not a prompt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from ..events import EnrichedEvent, LLMCallEvent, Operation, TokenCounts, Usage, describe_error
from ..money import usd_str
from . import tokens as tk
from .fastcheck import WireEvent, WireUsage, read_line, usage_dict
from .prices import EXTRA_FIELDS, Parts, PriceBook, PriceRow
from .windows import RecordAggregate

Event = LLMCallEvent | WireEvent
"""An event as the per-event path holds it: the schema's model, or the :class:`WireEvent` of a
line :func:`~.fastcheck.read_line` took (same fields and values, no pydantic object)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A line (or whole record) that is not a valid event: original bytes and why."""

    raw: bytes
    reason: str
    line: int | None
    """Index of the line in the record; None when the record itself is unreadable."""


@dataclass(frozen=True, slots=True)
class FinalTokens:
    """Final token counts of one call, as :class:`TokenCounts` (the schema) holds them.

    The per-event path builds these instead of the pydantic model (~0.5 µs vs ~5 µs); the
    invariants TokenCounts checks hold by construction in :func:`final_tokens`.
    """

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False
    extra: tuple[int, ...] | None = None
    """The priced units beyond the five counts (:data:`~.prices.EXTRA_FIELDS`: 1-hour cache
    writes, audio, images, web searches), None when all are 0: most calls, priced with five
    multiplications."""

    def units(self) -> dict[str, int]:
        """The non-zero :data:`~.prices.EXTRA_FIELDS` counts by name."""
        if self.extra is None:
            return {}
        return {k: n for k, n in zip(EXTRA_FIELDS, self.extra, strict=True) if n}

    def to_model(self) -> TokenCounts:
        return TokenCounts(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_creation_tokens=self.cache_creation_tokens,
            reasoning_tokens=self.reasoning_tokens,
            estimated=self.estimated,
            **self.units(),
        )


@dataclass(slots=True)
class EnrichedCall:
    """An event with final tokens and its cost in picodollars (None: price unknown)."""

    event: Event
    tokens: FinalTokens
    parts_pico: Parts | None
    """The cost parts (:data:`~.prices.PARTS`); None: the cost is unknown."""
    row: PriceRow | None
    raw: bytes
    ts: float
    """Event time, epoch seconds (computed once: pricing and windows both need it)."""
    unknown_reason: str | None = None
    """Why a priced model's cost is still unknown (``usage_error``, inconsistent parts)."""

    @property
    def cost_pico(self) -> int:
        return sum(self.parts_pico) if self.parts_pico else 0

    def to_model(self) -> EnrichedEvent:
        """The schema object (slow path; the stream writes :meth:`to_json`)."""
        return EnrichedEvent.model_validate_json(self.to_json(keep_text=True))

    def to_json(self, keep_text: bool = False) -> bytes:
        ev = self.event  # a WireEvent has no text: its line is forwarded as it came
        if (
            not keep_text
            and isinstance(ev, LLMCallEvent)
            and (ev.prompt_text is not None or ev.response_text is not None)
        ):
            event_json = ev.model_copy(
                update={"prompt_text": None, "response_text": None}
            ).to_json()
        else:
            event_json = self.raw
        t = self.tokens
        units = "" if t.extra is None else "".join(f'"{k}":{n},' for k, n in t.units().items())
        head = (
            f',"tokens":{{"input_tokens":{t.input_tokens},"output_tokens":{t.output_tokens},'
            f'"cache_read_tokens":{t.cache_read_tokens},'
            f'"cache_creation_tokens":{t.cache_creation_tokens},'
            f'"reasoning_tokens":{t.reasoning_tokens},{units}'
            f'"estimated":{"true" if t.estimated else "false"}}}'
        )
        p, row = self.parts_pico, self.row
        if p is None or row is None:
            why = self.unknown_reason
            reason = f',"price_unknown_reason":{json.dumps(why[:256])}' if why else ""
            tail = f'{head}{reason},"price_unknown":true,"schema_version":1}}'
            return b'{"event":' + event_json + tail.encode()
        # zero parts other than input and output are left out (the schema's default is 0)
        cost = (
            f'{{"input":"{usd_str(p[0])}",'
            + (f'"cache_read":"{usd_str(p[1])}",' if p[1] else "")
            + (f'"cache_write":"{usd_str(p[2])}",' if p[2] else "")
            + f'"output":"{usd_str(p[3])}",'
            + (f'"reasoning":"{usd_str(p[4])}",' if p[4] else "")
            + (_rare_parts(p) if p[5] or p[6] or p[7] or p[8] else "")
        )
        tail = (
            f'{head},"cost":{cost}"total":"{usd_str(sum(p))}",{_cost_tail(row.source, row.version)}'
            ',"price_unknown":false,"schema_version":1}'
        )
        return b'{"event":' + event_json + tail.encode()


def _rare_parts(p: Parts) -> str:
    """The audio, image, web-search and request parts that are not 0, as JSON members."""
    return "".join(
        f'"{name}":"{usd_str(v)}",'
        for name, v in zip(("audio", "image", "web_search", "request"), p[5:], strict=True)
        if v
    )


@lru_cache(maxsize=256)
def _cost_tail(source: str, version: str | None) -> str:
    """The end of the cost object, JSON-escaped: an override file may be named anything."""
    tail = '"currency":"USD","price_source":' + json.dumps(source, ensure_ascii=False)
    if version:
        tail += ',"price_version":' + json.dumps(version, ensure_ascii=False)
    return tail + "}"


TEXT_FIELDS = ("prompt_text", "response_text")
MAX_DLQ_UNPARSED_BYTES = 1024
"""How much of a line that is not a JSON object a dead letter keeps (without keep_text)."""


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen.add(k)


def duplicate_key(line: bytes) -> str | None:
    """The first key that appears twice in one JSON object of ``line`` (None: none does)."""
    try:
        json.loads(line, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        return str(exc.args[0])
    except (ValueError, RecursionError):
        return None  # not JSON: the schema has already said so
    return None


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's members in order, duplicates kept (a JSON array stays a plain list)."""


def _object(pairs: list[tuple[str, Any]]) -> _Pairs:
    return _Pairs(pairs)


def redact(line: bytes, keep_text: bool) -> bytes:
    """What a dead letter keeps of ``line``: the line, minus prompt/response text unless
    ``keep_text`` (lengths kept as ``<field>_chars``); see the module docstring."""
    if keep_text:
        return line
    try:
        top = json.loads(line, object_pairs_hook=_object)
    except (ValueError, RecursionError):
        top = None
    if not isinstance(top, _Pairs):  # not a JSON object: a bounded prefix before any text key
        cut = line.find(b'_text"')
        return line[: min(MAX_DLQ_UNPARSED_BYTES, cut if cut >= 0 else len(line))]
    if not any(k in TEXT_FIELDS for k, _ in top):
        return line
    out: dict[str, Any] = {}
    for k, v in top:
        if k in TEXT_FIELDS:
            if v is not None:
                n = len(v) if isinstance(v, str) else len(json.dumps(_plain(v)))
                out[f"{k}_chars"] = out.get(f"{k}_chars", 0) + n
        else:
            out[k] = _plain(v)
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()


def redact_record(value: bytes, keep_text: bool) -> bytes:
    """:func:`redact` for each line of a record dead-lettered whole (a bad wire header)."""
    if keep_text:
        return value
    return b"\n".join(redact(line, False) if line.strip() else line for line in value.split(b"\n"))


def _plain(v: Any) -> Any:
    """A value parsed with :func:`_object` back to plain JSON types."""
    if isinstance(v, _Pairs):  # ``{}`` too (it used to come back as ``[]``)
        return {k: _plain(x) for k, x in v}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


OUTPUTLESS = frozenset({Operation.EMBEDDINGS, Operation.RERANK})
"""Operations that produce no output tokens: a reported input alone is the whole usage."""


def _extra(u: Usage | WireUsage) -> tuple[int, ...] | None:
    """The EXTRA_FIELDS counts of ``u`` (None when none is reported: the common call)."""
    if (
        u.cache_write_1h_tokens is None
        and u.input_audio_tokens is None
        and u.cache_audio_read_tokens is None
        and u.output_audio_tokens is None
        and u.input_image_tokens is None
        and u.output_image_tokens is None
        and u.web_searches is None
        and u.cache_image_read_tokens is None
    ):
        return None
    ext = tuple(getattr(u, f) or 0 for f in EXTRA_FIELDS)
    return ext if any(ext) else None


def final_tokens(ev: Event) -> FinalTokens:
    """Provider-reported counts win; a missing count is estimated (or 0) and flagged.

    An embedding or rerank call whose input was reported has 0 output tokens, exactly (it
    produces none): not an estimate.
    """
    u = ev.usage
    estimated = False
    cache_read = u.cache_read_tokens or 0
    cache_write = u.cache_creation_tokens or 0
    reasoning = u.reasoning_tokens or 0
    inp = u.input_tokens
    if inp is None:
        estimated = True
        est = 0
        if ev.prompt_text:
            est = tk.estimate_input(
                ev.provider,
                ev.response_model or ev.request_model,
                ev.prompt_text,
                ev.operation.value,
            )
        inp = max(est, cache_read + cache_write)
    out = u.output_tokens
    if out is None and ev.operation in OUTPUTLESS and u.input_tokens is not None:
        out = 0
    if out is None:
        estimated = True
        est = 0
        if ev.response_text:
            est = tk.estimate_output(
                ev.provider, ev.response_model or ev.request_model, ev.response_text
            )
        out = max(est, reasoning)
    return FinalTokens(inp, out, cache_read, cache_write, reasoning, estimated, _extra(u))


@dataclass
class RecordResult:
    calls: list[EnrichedCall] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    aggregate: RecordAggregate = field(default_factory=RecordAggregate)


_validate_json = LLMCallEvent.__pydantic_validator__.validate_json


class Enricher:
    """Validates and enriches records; keeps the price cache for the worker's lifetime.

    ``keep_text`` is the worker's setting (dead letters keep text only when it is on);
    ``max_future_skew_s`` (None: no check) bounds how far ahead of ``now()`` an event may be
    dated; ``now`` is the clock (epoch seconds), injectable so tests are deterministic.
    """

    def __init__(
        self,
        book: PriceBook | None = None,
        *,
        keep_text: bool = False,
        max_future_skew_s: float | None = 300.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.book = book or PriceBook()
        self.keep_text = keep_text
        self.max_future_skew_s = max_future_skew_s
        self.now = now

    def price(self, ev: Event, seconds: float | None = None) -> PriceRow | None:
        """The price row of the call's model at its time and service tier (None: unknown)."""
        t = ev.timestamp.timestamp() if seconds is None else seconds
        tier = ev.service_tier
        if ev.response_model:
            row = self.book.row_at(ev.provider, ev.response_model, t, tier)
            if row is not None:
                return row
        return self.book.row_at(ev.provider, ev.request_model, t, tier)

    def enrich(self, ev: Event, raw: bytes, t: float | None = None) -> EnrichedCall:
        """Final tokens and cost of one call. A ``usage_error`` call is priced as unknown
        (its counts are not the provider's): never an estimate of zero tokens."""
        toks = final_tokens(ev)
        t = ev.timestamp.timestamp() if t is None else t
        row = self.price(ev, t)
        if row is None:
            return EnrichedCall(ev, toks, None, None, raw, t)
        if ev.usage_error is not None:
            return EnrichedCall(ev, toks, None, row, raw, t, f"usage unreadable: {ev.usage_error}")
        parts = row.cost_pico(toks)
        if parts is None:
            why = f"usage parts exceed the whole: {usage_dict(ev.usage)}"
            return EnrichedCall(ev, toks, None, row, raw, t, why)
        return EnrichedCall(ev, toks, parts, row, raw, t)

    def total_pico(self, events: Iterable[LLMCallEvent]) -> int:
        """What ``events`` cost, priced as a worker prices them: what the books must add up to
        (the demo and the tests check PostgreSQL against it)."""
        return sum(self.enrich(e, e.to_json()).cost_pico for e in events)

    def process(self, value: bytes | None) -> RecordResult:
        """One raw record: enrich every valid line, dead-letter the rest, aggregate."""
        res = RecordResult()
        validate = _validate_json  # the schema's own validator, minus a wrapper call per line
        if not value:
            res.dead.append(DeadLetter(value or b"", "empty record", None))
            return res
        skew = self.max_future_skew_s
        latest = float("inf") if skew is None else self.now() + skew  # one clock read a record
        for i, line in enumerate(value.split(b"\n")):
            if not line.strip():
                continue
            ev: Event | None = read_line(line)  # the common line; None: pydantic decides
            null_text = False  # a text key given as null may hide a duplicate
            if ev is None:
                try:
                    ev = model = validate(line)
                except ValidationError as exc:
                    res.dead.append(self._dead(line, describe_error(exc), i))
                    continue
                except ValueError as exc:
                    res.dead.append(self._dead(line, f"undecodable: {exc}", i))
                    continue
                given = model.__pydantic_fields_set__
                null_text = ("prompt_text" in given and model.prompt_text is None) or (
                    "response_text" in given and model.response_text is None
                )
            t = ev.timestamp.timestamp()
            # rare path only: beyond the skew, or bytes a duplicate text key could hide in
            if (t > latest or null_text) and (why := self._refused(ev, line, t)):
                res.dead.append(self._dead(line, why, i))
                continue
            try:
                call = self.enrich(ev, line, t)
            except Exception as exc:  # a bug or a tokenizer failure must not stop the stream
                reason = f"enrichment failed: {type(exc).__name__}: {exc}"
                res.dead.append(self._dead(line, reason, i))
                continue
            res.calls.append(call)
        res.aggregate.add_calls(res.calls)
        return res

    def _refused(self, ev: Event, line: bytes, t: float) -> str | None:
        """Why a schema-valid line is still dead-lettered (the rare path), or None."""
        now = self.now()
        if self.max_future_skew_s is not None and t > now + self.max_future_skew_s:
            clock = datetime.fromtimestamp(now, UTC).isoformat()
            return (
                f"timestamp {ev.timestamp.isoformat()} is ahead of the worker clock by "
                f"{t - now:.0f} s (worker clock {clock}; max_future_skew_s="
                f"{self.max_future_skew_s:g})"
            )
        if self.keep_text or (ev.prompt_text is None and ev.response_text is None):
            # the raw line would be forwarded verbatim: a duplicate must not hide in it
            dup = duplicate_key(line)
            if dup is not None:
                return f"duplicate key {dup!r}: JSON readers disagree on which value counts"
        return None

    def _dead(self, line: bytes, reason: str, i: int) -> DeadLetter:
        return DeadLetter(redact(line, self.keep_text), reason, i)


__all__ = [
    "DeadLetter",
    "EnrichedCall",
    "Enricher",
    "FinalTokens",
    "RecordResult",
    "duplicate_key",
    "final_tokens",
    "redact",
    "redact_record",
]
