"""Prices, resolved once per (provider, model, service tier, day) and applied with integer
arithmetic.

genai-prices' ``calc_price`` costs ~100+ µs a call; the stream prices tens of thousands of
events a second. So a :class:`PriceBook` looks a model's price up once per UTC day (per
15 minutes for the few models with time-of-day prices) and keeps it as a :class:`PriceRow` of
integer **picodollars per unit** (USD/MTok × 10⁶ per token; USD/K × 10⁹ per search). Costs are
then exact integer sums in picodollars; a Decimal is made only at the boundary (:meth:`Cost`).

Price semantics are genai-prices' own (the property test checks every model of its price book
against ``calc_price``). A call's usage is split into disjoint *atoms* — uncached text input,
text cache reads, 5-minute and 1-hour cache writes, cached audio, uncached audio, input images,
non-reasoning text output, reasoning, output audio, output images, cached images, web
searches — and each atom
is priced at the most specific unit the model prices that covers it: a 1-hour write at
``cache_write_1h_mtok``, else ``cache_write_mtok``, else ``input_mtok``; cached audio at
``cache_audio_read_mtok``, else the cache-read or audio price (genai-prices' join rule makes
that choice unique), and so on. That is exactly genai-prices' leaf decomposition
(``decompose.compute_leaf_values``), resolved once per row instead of per call. Tiered
(long-context) prices apply when the call's total input tokens exceed the tier start; every
unit's tiers are resolved on the union of the starts. A per-request fee is its own part.

The service tier selects genai-prices' *price variant* (``price_context``): flex and priority
are ``{"service_tier": …}``, batch is ``{"processing": "batch"}``; a model without a variant for
the tier keeps its standard prices for it, as ``calc_price`` does — except Anthropic batch,
whose flat 50% genai-prices lacks for many models (:data:`BATCH_HALF_PROVIDERS`; such a row's
``version`` ends in ``+batch50``).

Never a silent $0: a usage whose disjoint parts exceed the whole (audio + image + cached tokens
beyond ``input_tokens``, reasoning + audio + image beyond ``output_tokens``) is priced as unknown
(:meth:`PriceRow.cost_pico` returns None), and a model priced only in units the schema cannot
count (audio hours, characters, pages) has no row. A model listed with no price at all is
free in genai-prices (``:free`` models, "included in the subscription"): exactly $0.

A user override file (TOML) takes precedence: negotiated prices, private models, effective
dates, per service tier. See :func:`load_overrides`.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, Protocol

from ..events import Cost, ServiceTier
from ..money import PICO as PICO
from ..money import pico_to_usd as pico_to_usd
from ..money import usd_str as usd_str

# PICO, pico_to_usd and usd_str are defined in spendstream.money and re-exported here for the
# stream modules that still import them from .prices (enrich, rules, detector, pipeline, app).
_PICO_PER_TOKEN = Decimal(10**6)  # USD per MTok → picodollars per token
PARTS = (
    "input",
    "cache_read",
    "cache_write",
    "output",
    "reasoning",
    "audio",
    "image",
    "web_search",
    "request",
)
"""Cost parts in the order :meth:`PriceRow.cost_pico` returns them (the schema's Cost fields)."""
EXTRA_FIELDS = (
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "cache_audio_read_tokens",
    "output_audio_tokens",
    "input_image_tokens",
    "output_image_tokens",
    "web_searches",
    "cache_image_read_tokens",
)
"""The priced units beyond the five counts, in the order of ``FinalTokens.extra``."""
Parts = tuple[int, int, int, int, int, int, int, int, int]

PRICE_CONTEXT: Mapping[ServiceTier | None, Mapping[str, str] | None] = {
    None: None,
    ServiceTier.STANDARD: None,
    ServiceTier.FLEX: {"service_tier": "flex"},
    ServiceTier.PRIORITY: {"service_tier": "priority"},
    ServiceTier.BATCH: {"processing": "batch"},
}
"""Our service tier → genai-prices' ``price_context`` (the keys its price variants match)."""


def pico_per_token(price_mtok: Decimal) -> int:
    """USD per million tokens → integer picodollars per token (half-even beyond 1e-12 $)."""
    return int((price_mtok * _PICO_PER_TOKEN).to_integral_value(rounding=ROUND_HALF_EVEN))


def pico_per_unit(price: Decimal, per: int) -> int:
    """USD per ``per`` units (a genai-prices unit's ``per``) → integer picodollars per unit."""
    return int((price * PICO / per).to_integral_value(rounding=ROUND_HALF_EVEN))


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


class FastTokens(Tokens, Protocol):
    """:class:`Tokens` plus ``extra``: the :data:`EXTRA_FIELDS` counts, or None when all are 0
    (the common call, priced with five multiplications)."""

    @property
    def extra(self) -> tuple[int, ...] | None: ...


def extra_of(tok: Tokens) -> tuple[int, ...] | None:
    """The :data:`EXTRA_FIELDS` counts of ``tok`` (0 when absent), None when all are 0."""
    ext = tuple(getattr(tok, f, 0) or 0 for f in EXTRA_FIELDS)
    return ext if any(ext) else None


@dataclass(frozen=True, slots=True)
class TierPrices:
    """Picodollars per atom of one tier; ``start`` is exclusive (input > start).

    One price per disjoint atom of a call's usage (module docstring): the first five are the
    historical ones; the rest default to them (1-hour writes at the cache-write price, audio and
    images at the input/output price, cached audio at the cache-read price, no search fee).
    """

    start: int
    input: int
    cache_read: int
    cache_write: int
    output: int
    reasoning: int
    cache_write_1h: int | None = None
    cache_audio_read: int | None = None
    input_audio: int | None = None
    output_audio: int | None = None
    input_image: int | None = None
    output_image: int | None = None
    web_search: int = 0
    cache_image_read: int | None = None

    def __post_init__(self) -> None:
        for name, default in (
            ("cache_write_1h", self.cache_write),
            ("cache_audio_read", self.cache_read),
            ("cache_image_read", self.cache_read),
            ("input_audio", self.input),
            ("output_audio", self.output),
            ("input_image", self.input),
            ("output_image", self.output),
        ):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)


@dataclass(frozen=True, slots=True)
class PriceRow:
    """A model's prices for one day and tier: base plus long-context tiers, and provenance."""

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

    def cost_pico(self, tok: FastTokens) -> Parts | None:
        """The :data:`PARTS` in picodollars, exact; None: the usage's parts exceed its whole."""
        inp = tok.input_tokens
        t = self.tier_for(inp) if self.tiers else self.base
        cr, cw, rs = tok.cache_read_tokens, tok.cache_creation_tokens, tok.reasoning_tokens
        ext = tok.extra
        if ext is None:
            return (
                (inp - cr - cw) * t.input,
                cr * t.cache_read,
                cw * t.cache_write,
                (tok.output_tokens - rs) * t.output,
                rs * t.reasoning,
                0,
                0,
                0,
                self.request_pico,
            )
        return self._cost_units(t, inp, cr, cw, tok.output_tokens, rs, ext)

    def _cost_units(
        self, t: TierPrices, inp: int, cr: int, cw: int, out: int, rs: int, ext: tuple[int, ...]
    ) -> Parts | None:
        """The rare path: a call with 1-hour writes, audio, images or web searches."""
        cw1h, ia, car, oa, iimg, oimg, ws, cir = ext
        text_in = inp - cr - cw - (ia - car) - (iimg - cir)
        text_out = out - rs - oa - oimg
        if text_in < 0 or text_out < 0 or ia < car or iimg < cir or cr < car + cir:
            return None
        assert t.cache_write_1h is not None and t.cache_audio_read is not None  # __post_init__
        assert t.input_audio is not None and t.output_audio is not None
        assert t.input_image is not None and t.output_image is not None
        assert t.cache_image_read is not None
        return (
            text_in * t.input,
            (cr - car - cir) * t.cache_read,
            (cw - cw1h) * t.cache_write + cw1h * t.cache_write_1h,
            text_out * t.output,
            rs * t.reasoning,
            car * t.cache_audio_read + (ia - car) * t.input_audio + oa * t.output_audio,
            cir * t.cache_image_read + (iimg - cir) * t.input_image + oimg * t.output_image,
            ws * t.web_search,
            self.request_pico,
        )

    def cost(self, tok: Tokens) -> Cost:
        """:meth:`cost_pico` as the schema's :class:`Cost` (slow path); raises ValueError
        when the usage's parts exceed its whole (the stream prices that call as unknown)."""
        fast = _Fast(
            tok.input_tokens,
            tok.output_tokens,
            tok.cache_read_tokens,
            tok.cache_creation_tokens,
            tok.reasoning_tokens,
            extra_of(tok),
        )
        parts = self.cost_pico(fast)
        if parts is None:
            raise ValueError(f"usage parts exceed the whole: {fast}")
        usd = dict(zip(PARTS, (pico_to_usd(p) for p in parts), strict=True))
        return Cost(
            **usd,
            total=pico_to_usd(sum(parts)),
            price_source=self.source,
            price_version=self.version,
        )


@dataclass(frozen=True, slots=True)
class _Fast:
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    reasoning_tokens: int
    extra: tuple[int, ...] | None


# --- genai-prices -----------------------------------------------------------------------------

_ATOMS = (
    ("input", "input_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("cache_write", "cache_write_tokens"),
    ("output", "output_tokens"),
    ("reasoning", "output_reasoning_tokens"),
    ("cache_write_1h", "cache_write_1h_tokens"),
    ("cache_audio_read", "cache_audio_read_tokens"),
    ("input_audio", "input_audio_tokens"),
    ("output_audio", "output_audio_tokens"),
    ("input_image", "input_image_tokens"),
    ("output_image", "output_image_tokens"),
    ("web_search", "web_searches"),
    ("cache_image_read", "cache_image_read_tokens"),
)
"""TierPrices field → the genai-prices usage key whose dimensions the atom has."""


def _applicable(value: Any, start: int | None) -> Decimal:
    """A price (Decimal or TieredPrices) for input tokens just above ``start`` (None: base)."""
    from genai_prices.types import TieredPrices

    if not isinstance(value, TieredPrices):
        return Decimal(value)
    price = Decimal(value.base)
    for tier in value.tiers:
        if start is not None and tier.start <= start:
            price = Decimal(tier.price)
    return price


def _atom_units(priced: Mapping[str, Any]) -> dict[str, Any]:
    """TierPrices field → the most specific priced unit covering that atom (absent: none)."""
    from genai_prices.units import _get_registry

    units = _get_registry().units
    out: dict[str, Any] = {}
    for field, usage_key in _ATOMS:
        dims = units[usage_key].dimensions.items()
        covering = [u for u in priced.values() if u.dimensions.items() <= dims]
        if covering:
            out[field] = max(covering, key=lambda u: len(u.dimensions))
    return out


def _priced_units(mp: Any) -> dict[str, tuple[Any, Any]] | None:
    """usage key → (unit, price) of a resolved ModelPrice; None if ``calc_price`` refuses it."""
    from genai_prices.units import _get_registry
    from genai_prices.validation import validate_priced_units

    registry = _get_registry()
    priced: dict[str, tuple[Any, Any]] = {}
    for key, value in mp.__dict__.items():
        if key.startswith("_") or value is None:
            continue
        try:
            unit = registry.unit_for_price_key(key)
        except KeyError:
            continue  # calc_price warns and ignores an unknown price key too
        priced[unit.usage_key] = (unit, value)
    try:
        validate_priced_units([u for u, _ in priced.values()], registry)
    except ValueError:
        return None
    return priced


def _tier(
    priced: Mapping[str, tuple[Any, Any]],
    atoms: Mapping[str, Any],
    s: int | None,
    token_factor: Decimal = Decimal(1),
) -> TierPrices:
    """One tier's atom prices; ``token_factor`` scales token prices (not per-search fees)."""
    prices: dict[str, int] = {}
    for field, _ in _ATOMS:
        unit = atoms.get(field)
        if unit is None:
            prices[field] = 0
            continue
        price = _applicable(priced[unit.usage_key][1], s)
        if unit.dimensions.get("family") == "tokens":
            price *= token_factor
        prices[field] = pico_per_unit(price, unit.per)
    return TierPrices(start=s or 0, **prices)


BATCH_HALF_PROVIDERS = frozenset({"anthropic"})
"""Providers whose batch API is a flat 50% off every token price of every model (Anthropic's
Message Batches: input, output, cache writes and reads): a batch call of a model genai-prices
0.2.3 has no active batch variant for (claude-sonnet-4-0, claude-opus-4-1, claude-3-7-sonnet,
claude-3-5-haiku, …; the newer ones only from 2026-10-14) is priced at half the standard token
prices instead of the full standard price ``calc_price`` would charge (2x the bill)."""


def _batch_factor(found: tuple[Any, Any], when: datetime, tier: ServiceTier | None) -> Decimal:
    """0.5 where genai-prices lacks the batch price of a BATCH_HALF_PROVIDERS model, else 1."""
    prov, info = found
    if tier is not ServiceTier.BATCH or prov.id not in BATCH_HALF_PROVIDERS:
        return Decimal(1)
    ctx = PRICE_CONTEXT[tier] or {}
    for v in info.price_variants or ():
        if v.constraint is not None and not v.constraint.active(when):
            continue
        if all(ctx.get(k) == val for k, val in v.when.items()):
            return Decimal(1)
    return Decimal("0.5")


def _find(provider: str, model: str) -> tuple[Any, Any] | None:
    """(provider, model info) of genai-prices' snapshot, or None: no price known."""
    from genai_prices import data_snapshot

    try:
        return data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except (LookupError, ValueError):
        return None


def resolved_price(found: tuple[Any, Any], when: datetime, tier: ServiceTier | None) -> Any:
    """genai-prices' ModelPrice in force at ``when`` for ``tier`` (``calc_price``'s choice: a
    model found through another provider's fallback gets no variant)."""
    prov, info = found
    ctx = PRICE_CONTEXT[tier]
    if ctx and not any(info is m for m in prov.models):
        ctx = None
    return info.get_prices(when, ctx)


def _row_from_genai(
    found: tuple[Any, Any], when: datetime, tier: ServiceTier | None = None
) -> PriceRow | None:
    from genai_prices import __version__ as gp_version
    from genai_prices.types import TieredPrices

    prov, info = found
    priced = _priced_units(resolved_price(found, when, tier))
    if priced is None:
        return None
    atoms = _atom_units({k: u for k, (u, _) in priced.items() if k != "requests"})
    req = priced.get("requests")
    if priced and not atoms and req is None:
        return None  # priced only in units we cannot count: unknown, never $0
    # (no price at all is genai-prices' spelling of free: ":free" models, subscriptions)
    starts = sorted(
        {t.start for _, v in priced.values() if isinstance(v, TieredPrices) for t in v.tiers}
    )
    half = _batch_factor(found, when, tier)
    return PriceRow(
        provider=prov.id,
        model=info.id,
        base=_tier(priced, atoms, None, half),
        tiers=tuple(_tier(priced, atoms, s, half) for s in starts),
        request_pico=pico_per_unit(_applicable(req[1], None), req[0].per) if req else 0,
        source="genai-prices",
        version=gp_version if half == 1 else f"{gp_version}+batch50",
    )


def _has_time_of_day(found: tuple[Any, Any] | None) -> bool:
    from genai_prices.types import TimeOfDateConstraint

    if found is None:
        return False
    info = found[1]
    prices = info.prices if isinstance(info.prices, list) else []
    variants = info.price_variants or []
    return any(isinstance(c.constraint, TimeOfDateConstraint) for c in (*prices, *variants))


# --- overrides --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Override:
    """One price from the override file, valid on ``[effective_from, effective_to)`` for
    ``service_tier`` (None: every tier)."""

    provider: str
    model: str
    row: PriceRow
    effective_from: date | None = None
    effective_to: date | None = None
    service_tier: ServiceTier | None = None

    def applies(
        self, provider: str, model: str, day: date, tier: ServiceTier | None = None
    ) -> bool:
        return (
            self.provider == provider
            and self.model == model
            and (self.effective_from is None or day >= self.effective_from)
            and (self.effective_to is None or day < self.effective_to)
            and (self.service_tier is None or self.service_tier == (tier or ServiceTier.STANDARD))
        )


_OPTIONAL_MTOK = (
    ("cache_write_1h", "cache_write_1h_mtok"),
    ("cache_audio_read", "cache_audio_read_mtok"),
    ("cache_image_read", "cache_image_read_mtok"),
    ("input_audio", "input_audio_mtok"),
    ("output_audio", "output_audio_mtok"),
    ("input_image", "input_image_mtok"),
    ("output_image", "output_image_mtok"),
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
    extra = {f: Decimal(str(t[k])) for f, k in _OPTIONAL_MTOK if k in t}
    search = opt("web_search_kcount", Decimal(0))
    if any(p < 0 for p in (*prices, *extra.values(), search)):
        raise ValueError(f"{where}: prices must be >= 0")
    units: dict[str, Any] = {f: pico_per_token(p) for f, p in extra.items()}
    units["web_search"] = pico_per_unit(search, 1000)
    return TierPrices(start, *(pico_per_token(p) for p in prices), **units)


def load_overrides(path: Path) -> list[Override]:
    """Read a TOML price-override file::

    [[price]]
    provider = "openai"
    model = "gpt-4o"                 # matched against the event's model, exactly
    effective_from = 2026-01-01      # optional, inclusive (UTC day)
    effective_to = 2027-01-01        # optional, exclusive
    service_tier = "batch"           # optional: only calls of this tier (default: every tier)
    input_mtok = "2.00"              # USD per million tokens; strings keep decimals exact
    output_mtok = "8.00"
    cache_read_mtok = "0.50"         # optional, default input_mtok
    cache_write_mtok = "2.50"        # optional, default input_mtok
    cache_write_1h_mtok = "4.00"     # optional, default cache_write_mtok
    reasoning_mtok = "8.00"          # optional, default output_mtok
    input_audio_mtok = "40"          # optional, default input_mtok (output_audio_mtok: output)
    cache_audio_read_mtok = "2.5"    # optional, default cache_read_mtok (cache_image_read_mtok too)
    input_image_mtok = "5"           # optional, default input_mtok (output_image_mtok: output)
    web_search_kcount = "10"         # optional, USD per 1000 web searches, default 0
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
            tier = ServiceTier(p["service_tier"]) if "service_tier" in p else None
        except KeyError as exc:
            raise ValueError(f"{where}: {exc.args[0]} is required") from None
        except ValueError:
            raise ValueError(f"{where}: service_tier must be one of {list(ServiceTier)}") from None
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
            request_pico=pico_per_unit(req, 1000),
            source=f"override:{path.name}",
        )
        out.append(
            Override(provider, model, row, p.get("effective_from"), p.get("effective_to"), tier)
        )
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
    """Caches one :class:`PriceRow` (or None: unknown) per (provider, model, tier, slot)."""

    overrides: Sequence[Override] = ()
    max_entries: int = 10_000
    """Entries per cache (prices per slot, genai-prices searches, hot rows)."""
    lookups: int = 0
    """How many times a price was actually resolved (not served from the cache)."""
    searches: int = 0
    """How many times genai-prices' snapshot was searched for a model."""

    def __post_init__(self) -> None:
        self._cache: dict[tuple[str, str, ServiceTier | None, int], PriceRow | None] = Bounded(
            self.max_entries
        )
        self._found: dict[tuple[str, str], tuple[Any, Any] | None] = Bounded(self.max_entries)
        self._hot: dict[tuple[str, ...], tuple[int, int, PriceRow | None]] = Bounded(
            self.max_entries
        )

    @classmethod
    def from_file(cls, path: Path | None) -> PriceBook:
        return cls(load_overrides(path) if path else ())

    def row(
        self, provider: str, model: str, ts: datetime, tier: ServiceTier | None = None
    ) -> PriceRow | None:
        """The price in force at ``ts`` for ``tier`` (None: standard; result None: unknown)."""
        return self.row_at(provider, model, ts.timestamp(), tier)

    def row_at(
        self, provider: str, model: str, seconds: float, tier: ServiceTier | None = None
    ) -> PriceRow | None:
        """:meth:`row` for an epoch time, the per-event path: one dict lookup while the
        model's current slot (day, or 15 minutes for time-of-day prices) lasts."""
        if tier is None:  # the common call: the lookup of before tiers existed
            hot = self._hot.get((provider, model))
            if hot is not None and hot[0] <= seconds < hot[1]:
                return hot[2]
        return self._row_at_tier(provider, model, seconds, tier)

    def _row_at_tier(
        self, provider: str, model: str, seconds: float, tier: ServiceTier | None
    ) -> PriceRow | None:
        if tier is ServiceTier.STANDARD:
            tier = None
        hk: tuple[str, ...] = (provider, model) if tier is None else (provider, model, tier)
        hot = self._hot.get(hk)
        if hot is not None and hot[0] <= seconds < hot[1]:
            return hot[2]
        ts = datetime.fromtimestamp(seconds, UTC)
        found = self._row(provider, model, ts, tier)
        tod = _has_time_of_day(self._search(provider, model))
        start = self._slot(tod, ts) * 900
        self._hot[hk] = (start, start + (900 if tod else 86400), found)
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

    def _row(
        self, provider: str, model: str, ts: datetime, tier: ServiceTier | None
    ) -> PriceRow | None:
        found_model = self._search(provider, model)
        key = (provider, model, tier, self._slot(_has_time_of_day(found_model), ts))
        try:
            return self._cache[key]
        except KeyError:
            pass
        self.lookups += 1
        day = ts.astimezone(UTC).date()
        found = next(
            (o.row for o in reversed(self.overrides) if o.applies(provider, model, day, tier)),
            None,
        )
        if found is None and found_model is not None:
            slot_start = datetime.fromtimestamp(key[3] * 900, UTC)
            found = _row_from_genai(found_model, slot_start, tier)
        self._cache[key] = found
        return found
