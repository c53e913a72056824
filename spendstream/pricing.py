"""Price an event or a raw provider response without Kafka: what a user runs to check a bill.

:func:`price` is the worker's own enrichment (same :class:`~spendstream.stream.prices.PriceBook`,
same token rules, same exact integer picodollars) applied to one event in process;
:func:`price_response` first reads the response body the way ``track()`` + ``set_response``
does (into a :class:`~spendstream.producers.emitter.MemoryEmitter`: no broker is started).
:func:`price_lines` is ``spendstream price FILE``: JSON or JSONL of events or of
``{"provider", "model", "response"}`` objects, a result or an error per item.

Nothing here starts a producer, a consumer or a network connection; the price data is
genai-prices' bundled snapshot (plus a ``--prices`` override file when given).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .events import EnrichedEvent, LLMCallEvent, describe_error
from .stream.enrich import Enricher
from .stream.prices import PriceBook

_ENRICHER: Enricher | None = None
RESPONSE_KEYS = ("response", "body", "response_body")
"""Keys of a ``{provider, model, response}`` item holding the provider's response body."""


def _enricher(book: PriceBook | None) -> Enricher:
    """One enricher per process (its price cache is the expensive part); events of any date
    are priced (no future-skew check: a bill may be checked for any day)."""
    global _ENRICHER
    if book is not None:
        return Enricher(book, max_future_skew_s=None)
    if _ENRICHER is None:
        _ENRICHER = Enricher(max_future_skew_s=None)
    return _ENRICHER


def price(
    event: LLMCallEvent | Mapping[str, Any], *, book: PriceBook | None = None
) -> EnrichedEvent:
    """The enriched event (final tokens, exact cost or ``price_unknown`` with its reason) the
    worker would produce for ``event``; a mapping is validated as an event first."""
    ev = event if isinstance(event, LLMCallEvent) else LLMCallEvent.model_validate(event)
    return _enricher(book).enrich(ev, ev.to_json()).to_model()


def price_response(
    provider: str,
    model: str,
    response: Any,
    *,
    book: PriceBook | None = None,
    **fields: Any,
) -> EnrichedEvent:
    """Price a provider's response body (a dict, JSON text, or an SDK object) as ``track()``
    reads it; ``fields`` are ``track()``'s (``timestamp=``, ``operation=``, ``endpoint=``...).
    An unreadable usage is priced as unknown with the reason, never as $0."""
    from .producers.emitter import MemoryEmitter

    mem = MemoryEmitter()
    fields.setdefault("service", "spendstream-price")
    fields.setdefault("endpoint", "price")
    with mem.track(provider, model, **fields) as call:
        call.set_response(response)
    if not mem.events:
        raise ValueError(f"the response could not become an event (emitter stats: {mem.stats()})")
    return price(mem.events[-1], book=book)


@dataclass(frozen=True, slots=True)
class Priced:
    """One item of a file: its 1-based number and the enriched event, or why it was refused."""

    number: int
    enriched: EnrichedEvent | None = None
    error: str | None = None


def _items(text: str) -> Iterator[tuple[int, Any]]:
    """(number, parsed item) of a JSON document (an object or a list) or of JSONL lines; an
    unparseable line yields its error text instead of an item."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            yield 1, ValueError(f"not JSON: {exc}")
            return
        yield from enumerate(data, start=1)
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except ValueError as exc:
            yield n, ValueError(f"not JSON: {exc}")


def _price_item(item: Any, book: PriceBook | None) -> EnrichedEvent:
    if isinstance(item, Exception):
        raise item
    if not isinstance(item, dict):
        raise ValueError(f"expected a JSON object, got {type(item).__name__}")
    body_key = next((k for k in RESPONSE_KEYS if k in item), None)
    if body_key is None:
        return price(item, book=book)
    fields = {k: v for k, v in item.items() if k not in (body_key, "provider", "model")}
    if "timestamp" in fields:
        fields["timestamp"] = datetime.fromisoformat(str(fields["timestamp"])).astimezone(UTC)
    try:
        provider, model = str(item["provider"]), str(item["model"])
    except KeyError as exc:
        raise ValueError(f"a response item needs {exc.args[0]!r}") from None
    return price_response(provider, model, item[body_key], book=book, **fields)


def price_lines(path: Path, book: PriceBook | None = None) -> Iterator[Priced]:
    """Every item of ``path`` priced, or refused with a one-line reason (the rest still go)."""
    for n, item in _items(path.read_text()):
        try:
            yield Priced(n, _price_item(item, book))
        except ValidationError as exc:
            yield Priced(n, error=describe_error(exc))
        except (ValueError, TypeError) as exc:
            yield Priced(n, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def total_usd(results: list[Priced]) -> tuple[Decimal, int]:
    """(sum of known costs, number of calls whose price is unknown) of priced items."""
    known = [r.enriched for r in results if r.enriched is not None]
    total = sum((e.cost.total for e in known if e.cost is not None), Decimal(0))
    return total, sum(1 for e in known if e.cost is None)


__all__ = ["Priced", "price", "price_lines", "price_response", "total_usd"]
