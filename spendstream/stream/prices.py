"""Prices, resolved once per (provider, model, day) and applied with integer arithmetic.

genai-prices' ``calc_price`` costs ~100+ µs a call; the stream prices tens of thousands of
events a second. So a :class:`PriceBook` looks a model's price up once per UTC day (per
15 minutes for the few models with time-of-day prices) and keeps it as a :class:`PriceRow` of
integer **picodollars per token** (USD/MTok × 10⁶). Costs are then exact integer sums in
picodollars; a Decimal is made only at the boundary (:meth:`Cost`).

Price semantics (checked against ``calc_price`` in the tests): uncached input at the input
price; cache reads at the cache-read price and cache writes at the cache-write price, each
falling back to the input price when the model has none; non-reasoning output at the output
price; reasoning tokens at the reasoning price, else the output price. Tiered (long-context)
prices apply when the call's total input tokens exceed the tier start. A per-request fee is
added to ``input``.

A user override file (TOML) takes precedence: negotiated prices, private models, effective
dates. See :func:`load_overrides`.

The book's caches are bounded (``PriceBook.max_entries``, default 10,000 per cache, oldest
inserted evicted first: a hot model is re-inserted every slot anyway) and an unknown model is
cached as unknown like any other: model names come from producers, and before this every
distinct name stayed in three dicts forever and cost two genai-prices searches (~0.4–1.2 ms).
Now a (provider, model) is searched in the snapshot once (the snapshot does not change in a
process), so a new unknown name costs one search (~0.2–0.6 ms) and a repeated one a dict lookup.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, Protocol

from ..events import Cost

PICO = 10**12
_PICO_PER_TOKEN = Decimal(10**6)  # USD per MTok → picodollars per token
_PARTS = ("input", "cache_read", "cache_write", "output", "reasoning")


def pico_per_token(price_mtok: Decimal) -> int:
    """USD per million tokens → integer picodollars per token (half-even beyond 1e-12 $)."""
    return int((price_mtok * _PICO_PER_TOKEN).to_integral_value(rounding=ROUND_HALF_EVEN))


def pico_to_usd(pico: int) -> Decimal:
    """Exact: picodollars → USD Decimal with 12 places."""
    return Decimal(pico).scaleb(-12).quantize(Decimal(1).scaleb(-12))


def usd_str(pico: int) -> str:
    """Exact: picodollars → USD as a decimal string with 12 places (``"0.000123000000"``).

    Same value as ``pico_to_usd`` in a fifth of the time: the enriched stream writes six of
    these per event.
    """
    if not pico:
        return "0.000000000000"
    if pico < 0:
        return "-" + usd_str(-pico)
    digits = str(pico).rjust(13, "0")
    return digits[:-12] + "." + digits[-12:]


class Tokens(Protocol):
    """Final token counts as pricing reads them (:class:`~spendstream.events.TokenCounts`
    or the stream's lighter :class:`~spendstream.stream.enrich.FinalTokens`)."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def cache_creation_tokens(self) -> int: ...
    @property
    def reasoning_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...


@dataclass(frozen=True, slots=True)
class TierPrices:
    """Prices per token (picodollars) of one tier; ``start`` is exclusive (input > start)."""

    start: int
    input: int
    cache_read: int
    cache_write: int
    output: int
    reasoning: int


@dataclass(frozen=True, slots=True)
class PriceRow:
    """A model's prices for one day: base tier plus long-context tiers, and provenance."""

    provider: str
    model: str
    base: TierPrices
    tiers: tuple[TierPrices, ...] = ()
    request_pico: int = 0
    source: str = "genai-prices"
    version: str | None = None

    def tier_for(self, input_tokens: int) -> TierPrices:
        for t in reversed(self.tiers):
            if input_tokens > t.start:
                return t
        return self.base

    def cost_pico(self, tok: Tokens) -> tuple[int, int, int, int, int]:
        """(input, cache_read, cache_write, output, reasoning) in picodollars, exact."""
        inp = tok.input_tokens
        t = self.tier_for(inp) if self.tiers else self.base
        cr, cw, rs = tok.cache_read_tokens, tok.cache_creation_tokens, tok.reasoning_tokens
        return (
            (inp - cr - cw) * t.input + self.request_pico,
            cr * t.cache_read,
            cw * t.cache_write,
            (tok.output_tokens - rs) * t.output,
            rs * t.reasoning,
        )

    def cost(self, tok: Tokens) -> Cost:
        parts = self.cost_pico(tok)
        usd = [pico_to_usd(p) for p in parts]
        return Cost(
            input=usd[0],
            cache_read=usd[1],
            cache_write=usd[2],
            output=usd[3],
            reasoning=usd[4],
            total=pico_to_usd(sum(parts)),
            price_source=self.source,
            price_version=self.version,
        )


# --- genai-prices -----------------------------------------------------------------------------


def _tier_prices(mp: Any, idx: int | None) -> TierPrices:
    """Prices of tier ``idx`` (None = base) from a genai-prices ModelPrice, with fallbacks."""
    from genai_prices.types import TieredPrices

    def get(key: str) -> Decimal | None:
        v = getattr(mp, key, None)
        if v is None:
            return None
        if isinstance(v, TieredPrices):
            if idx is None:
                return Decimal(v.base)
            return Decimal(v.tiers[idx].price) if idx < len(v.tiers) else Decimal(v.tiers[-1].price)
        return Decimal(v)

    inp = get("input_mtok") or Decimal(0)
    out = get("output_mtok") or Decimal(0)
    start = 0
    if idx is not None:
        for key in ("input_mtok", "output_mtok"):
            v = getattr(mp, key, None)
            if isinstance(v, TieredPrices) and idx < len(v.tiers):
                start = v.tiers[idx].start
                break
    return TierPrices(
        start=start,
        input=pico_per_token(inp),
        cache_read=pico_per_token(get("cache_read_mtok") or inp),
        cache_write=pico_per_token(get("cache_write_mtok") or inp),
        output=pico_per_token(out),
        reasoning=pico_per_token(get("output_reasoning_mtok") or out),
    )


def _find(provider: str, model: str) -> tuple[Any, Any] | None:
    """(provider, model info) of genai-prices' snapshot, or None: no price known."""
    from genai_prices import data_snapshot

    try:
        return data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except (LookupError, ValueError):
        return None


def _row_from_genai(found: tuple[Any, Any], when: datetime) -> PriceRow:
    from genai_prices import __version__ as gp_version
    from genai_prices.types import TieredPrices

    prov, info = found
    mp = info.get_prices(when)
    n_tiers = max(
        (len(v.tiers) for v in mp.__dict__.values() if isinstance(v, TieredPrices)), default=0
    )
    req = getattr(mp, "requests_kcount", None)
    return PriceRow(
        provider=prov.id,
        model=info.id,
        base=_tier_prices(mp, None),
        tiers=tuple(_tier_prices(mp, i) for i in range(n_tiers)),
        request_pico=int(Decimal(req) * PICO / 1000) if req else 0,
        source="genai-prices",
        version=gp_version,
    )


def _has_time_of_day(found: tuple[Any, Any] | None) -> bool:
    from genai_prices.types import TimeOfDateConstraint

    if found is None:
        return False
    info = found[1]
    prices = info.prices if isinstance(info.prices, list) else []
    return any(isinstance(c.constraint, TimeOfDateConstraint) for c in prices)


# --- overrides --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Override:
    """One price from the override file, valid on ``[effective_from, effective_to)``."""

    provider: str
    model: str
    row: PriceRow
    effective_from: date | None = None
    effective_to: date | None = None

    def applies(self, provider: str, model: str, day: date) -> bool:
        return (
            self.provider == provider
            and self.model == model
            and (self.effective_from is None or day >= self.effective_from)
            and (self.effective_to is None or day < self.effective_to)
        )


def _tier_from_table(t: dict[str, Any], start: int, where: str) -> TierPrices:
    try:
        inp = Decimal(str(t["input_mtok"]))
        out = Decimal(str(t["output_mtok"]))
    except KeyError as exc:
        raise ValueError(f"{where}: {exc.args[0]} is required") from None

    def opt(key: str, default: Decimal) -> Decimal:
        return Decimal(str(t[key])) if key in t else default

    prices = [
        inp,
        opt("cache_read_mtok", inp),
        opt("cache_write_mtok", inp),
        out,
        opt("reasoning_mtok", out),
    ]
    if any(p < 0 for p in prices):
        raise ValueError(f"{where}: prices must be >= 0")
    return TierPrices(start, *(pico_per_token(p) for p in prices))


def load_overrides(path: Path) -> list[Override]:
    """Read a TOML price-override file::

    [[price]]
    provider = "openai"
    model = "gpt-4o"                 # matched against the event's model, exactly
    effective_from = 2026-01-01      # optional, inclusive (UTC day)
    effective_to = 2027-01-01        # optional, exclusive
    input_mtok = "2.00"              # USD per million tokens; strings keep decimals exact
    output_mtok = "8.00"
    cache_read_mtok = "0.50"         # optional, default input_mtok
    cache_write_mtok = "2.50"        # optional, default input_mtok
    reasoning_mtok = "8.00"          # optional, default output_mtok
    request_kcount = "0"             # optional, USD per 1000 requests
    [[price.tier]]                   # optional long-context tiers
    start = 200000                   # applies when input tokens > start
    input_mtok = "4.00"
    output_mtok = "12.00"
    """
    data = tomllib.loads(path.read_text())
    out: list[Override] = []
    for i, p in enumerate(data.get("price", [])):
        where = f"{path}: price #{i + 1}"
        try:
            provider, model = str(p["provider"]), str(p["model"])
        except KeyError as exc:
            raise ValueError(f"{where}: {exc.args[0]} is required") from None
        tiers = tuple(
            _tier_from_table(t, int(t["start"]), f"{where} tier #{j + 1}")
            for j, t in enumerate(p.get("tier", []))
        )
        req = Decimal(str(p.get("request_kcount", "0")))
        row = PriceRow(
            provider,
            model,
            _tier_from_table(p, 0, where),
            tiers,
            request_pico=int(req * PICO / 1000),
            source=f"override:{path.name}",
        )
        out.append(Override(provider, model, row, p.get("effective_from"), p.get("effective_to")))
    return out


# --- the book ---------------------------------------------------------------------------------


class Bounded(dict[Any, Any]):
    """A dict that drops its oldest inserted entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: Any) -> None:
        if key not in self and len(self) >= self.limit:
            for old in list(itertools.islice(iter(self), max(1, self.limit // 10))):
                del self[old]  # a tenth at a time: eviction is rare, not per insert
        super().__setitem__(key, value)


@dataclass
class PriceBook:
    """Caches one :class:`PriceRow` (or None: unknown) per (provider, model, slot)."""

    overrides: Sequence[Override] = ()
    max_entries: int = 10_000
    """Entries per cache (prices per slot, genai-prices searches, hot rows)."""
    lookups: int = 0
    """How many times a price was actually resolved (not served from the cache)."""
    searches: int = 0
    """How many times genai-prices' snapshot was searched for a model."""

    def __post_init__(self) -> None:
        self._cache: dict[tuple[str, str, int], PriceRow | None] = Bounded(self.max_entries)
        self._found: dict[tuple[str, str], tuple[Any, Any] | None] = Bounded(self.max_entries)
        self._hot: dict[tuple[str, str], tuple[int, int, PriceRow | None]] = Bounded(
            self.max_entries
        )

    @classmethod
    def from_file(cls, path: Path | None) -> PriceBook:
        return cls(load_overrides(path) if path else ())

    def row(self, provider: str, model: str, ts: datetime) -> PriceRow | None:
        """The price in force at ``ts`` (None: unknown model)."""
        return self.row_at(provider, model, ts.timestamp())

    def row_at(self, provider: str, model: str, seconds: float) -> PriceRow | None:
        """:meth:`row` for an epoch time, the per-event path: one dict lookup while the
        model's current slot (day, or 15 minutes for time-of-day prices) lasts."""
        hot = self._hot.get((provider, model))
        if hot is not None and hot[0] <= seconds < hot[1]:
            return hot[2]
        ts = datetime.fromtimestamp(seconds, UTC)
        found = self._row(provider, model, ts)
        tod = _has_time_of_day(self._search(provider, model))
        start = self._slot(tod, ts) * 900
        self._hot[(provider, model)] = (start, start + (900 if tod else 86400), found)
        return found

    def _search(self, provider: str, model: str) -> tuple[Any, Any] | None:
        key = (provider, model)
        try:
            return self._found[key]
        except KeyError:
            pass
        self.searches += 1
        found = self._found[key] = _find(provider, model)
        return found

    @staticmethod
    def _slot(tod: bool, ts: datetime) -> int:
        seconds = int(ts.timestamp())
        return seconds // 900 if tod else seconds // 86400 * 96  # 15-min slots, or the day

    def _row(self, provider: str, model: str, ts: datetime) -> PriceRow | None:
        found_model = self._search(provider, model)
        key = (provider, model, self._slot(_has_time_of_day(found_model), ts))
        try:
            return self._cache[key]
        except KeyError:
            pass
        self.lookups += 1
        day = ts.astimezone(UTC).date()
        found = next(
            (o.row for o in reversed(self.overrides) if o.applies(provider, model, day)), None
        )
        if found is None and found_model is not None:
            slot_start = datetime.fromtimestamp(key[2] * 900, UTC)
            found = _row_from_genai(found_model, slot_start)
        self._cache[key] = found
        return found
