"""Raw record → enriched events, dead letters and per-window aggregates.

One Kafka record of the raw topic (a ``jsonl/1`` envelope) is processed as a unit: every line
is validated against the schema; valid events get final token counts (provider usage wins,
tiktoken estimates fill gaps, flagged) and an exact cost from the :class:`PriceBook`; invalid
lines become dead letters carrying their original bytes and the reason.

The enriched JSON is assembled from the validated raw line plus the computed parts instead of
re-serializing the whole model: it parses to the same :class:`EnrichedEvent` (tested), at a
fraction of the cost. Prompt/response text is dropped from the enriched event unless
``keep_text`` is set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from ..events import EnrichedEvent, LLMCallEvent, TokenCounts, describe_error
from . import tokens as tk
from .prices import PriceBook, PriceRow, usd_str
from .windows import RecordAggregate


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

    def to_model(self) -> TokenCounts:
        return TokenCounts(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_creation_tokens=self.cache_creation_tokens,
            reasoning_tokens=self.reasoning_tokens,
            estimated=self.estimated,
        )


@dataclass(slots=True)
class EnrichedCall:
    """An event with final tokens and its cost in picodollars (None: price unknown)."""

    event: LLMCallEvent
    tokens: FinalTokens
    parts_pico: tuple[int, int, int, int, int] | None
    row: PriceRow | None
    raw: bytes
    ts: float
    """Event time, epoch seconds (computed once: pricing and windows both need it)."""

    @property
    def cost_pico(self) -> int:
        return sum(self.parts_pico) if self.parts_pico else 0

    def to_model(self) -> EnrichedEvent:
        """The schema object (slow path; the stream writes :meth:`to_json`)."""
        return EnrichedEvent.model_validate_json(self.to_json(keep_text=True))

    def to_json(self, keep_text: bool = False) -> bytes:
        ev = self.event
        if not keep_text and (ev.prompt_text is not None or ev.response_text is not None):
            event_json = ev.model_copy(
                update={"prompt_text": None, "response_text": None}
            ).to_json()
        else:
            event_json = self.raw
        t = self.tokens
        tok = (
            f'{{"input_tokens":{t.input_tokens},"output_tokens":{t.output_tokens},'
            f'"cache_read_tokens":{t.cache_read_tokens},'
            f'"cache_creation_tokens":{t.cache_creation_tokens},'
            f'"reasoning_tokens":{t.reasoning_tokens},'
            f'"estimated":{"true" if t.estimated else "false"}}}'
        )
        if self.parts_pico is None or self.row is None:
            tail = ',"price_unknown":true,"schema_version":1}'
            return b'{"event":' + event_json + (',"tokens":' + tok + tail).encode()
        p = self.parts_pico
        version = f',"price_version":"{self.row.version}"' if self.row.version else ""
        # zero cache and reasoning parts are left out (the schema's default is 0)
        cost = (
            f'{{"input":"{usd_str(p[0])}",'
            + (f'"cache_read":"{usd_str(p[1])}",' if p[1] else "")
            + (f'"cache_write":"{usd_str(p[2])}",' if p[2] else "")
            + f'"output":"{usd_str(p[3])}",'
            + (f'"reasoning":"{usd_str(p[4])}",' if p[4] else "")
            + f'"total":"{usd_str(sum(p))}",'
            f'"currency":"USD","price_source":"{self.row.source}"{version}}}'
        )
        return (
            b'{"event":'
            + event_json
            + (
                ',"tokens":'
                + tok
                + ',"cost":'
                + cost
                + ',"price_unknown":false,"schema_version":1}'
            ).encode()
        )


def final_tokens(ev: LLMCallEvent) -> FinalTokens:
    """Provider-reported counts win; a missing count is estimated (or 0) and flagged."""
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
    if out is None:
        estimated = True
        est = 0
        if ev.response_text:
            est = tk.estimate_output(
                ev.provider, ev.response_model or ev.request_model, ev.response_text
            )
        out = max(est, reasoning)
    return FinalTokens(inp, out, cache_read, cache_write, reasoning, estimated)


@dataclass
class RecordResult:
    calls: list[EnrichedCall] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    aggregate: RecordAggregate = field(default_factory=RecordAggregate)


_validate_json = LLMCallEvent.__pydantic_validator__.validate_json


class Enricher:
    """Validates and enriches records; keeps the price cache for the worker's lifetime."""

    def __init__(self, book: PriceBook | None = None) -> None:
        self.book = book or PriceBook()

    def price(self, ev: LLMCallEvent, seconds: float | None = None) -> PriceRow | None:
        t = ev.timestamp.timestamp() if seconds is None else seconds
        if ev.response_model:
            row = self.book.row_at(ev.provider, ev.response_model, t)
            if row is not None:
                return row
        return self.book.row_at(ev.provider, ev.request_model, t)

    def enrich(self, ev: LLMCallEvent, raw: bytes) -> EnrichedCall:
        toks = final_tokens(ev)
        t = ev.timestamp.timestamp()
        row = self.price(ev, t)
        parts = row.cost_pico(toks) if row is not None else None
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
        for i, line in enumerate(value.split(b"\n")):
            if not line.strip():
                continue
            try:
                ev = validate(line)
            except ValidationError as exc:
                res.dead.append(DeadLetter(line, describe_error(exc), i))
                continue
            except ValueError as exc:
                res.dead.append(DeadLetter(line, f"undecodable: {exc}", i))
                continue
            try:
                call = self.enrich(ev, line)
            except Exception as exc:  # a bug or a tokenizer failure must not stop the stream
                res.dead.append(
                    DeadLetter(line, f"enrichment failed: {type(exc).__name__}: {exc}", i)
                )
                continue
            res.calls.append(call)
        res.aggregate.add_calls(res.calls)
        return res


__all__ = [
    "DeadLetter",
    "EnrichedCall",
    "Enricher",
    "FinalTokens",
    "RecordResult",
    "final_tokens",
]
