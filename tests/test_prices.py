"""Exact costs: hand-computed cases, agreement with genai-prices' calc_price, overrides."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from spendstream.events import TokenCounts
from spendstream.stream.prices import PriceBook, load_overrides, pico_per_token

TS = datetime(2026, 6, 1, 12, tzinfo=UTC)


def D(s: str) -> Decimal:
    return Decimal(s)


def test_cached_input_hand_computed() -> None:
    # gpt-4o-mini: $0.15/MTok input, $0.075/MTok cached input, $0.60/MTok output
    row = PriceBook().row("openai", "gpt-4o-mini", TS)
    assert row is not None
    cost = row.cost(TokenCounts(input_tokens=1200, output_tokens=350, cache_read_tokens=1024))
    assert cost.input == D("0.0000264")  # 176 uncached × 0.15e-6
    assert cost.cache_read == D("0.0000768")  # 1024 × 0.075e-6
    assert cost.output == D("0.00021")  # 350 × 0.6e-6
    assert cost.total == D("0.0003132")
    assert cost.price_source == "genai-prices"


def test_cache_write_hand_computed() -> None:
    # claude-sonnet-4: $3 input, $3.75 cache write, $0.30 cache read, $15 output per MTok
    row = PriceBook().row("anthropic", "claude-sonnet-4-0", TS)
    assert row is not None
    tok = TokenCounts(
        input_tokens=1250, output_tokens=300, cache_read_tokens=1000, cache_creation_tokens=200
    )
    cost = row.cost(tok)
    assert (cost.input, cost.cache_write, cost.cache_read, cost.output) == (
        D("0.00015"),
        D("0.00075"),
        D("0.0003"),
        D("0.0045"),
    )
    assert cost.total == D("0.0057")


def test_reasoning_tokens_billed_once_at_output_price() -> None:
    # o3-mini: $1.10 input, $4.40 output per MTok; 900 output of which 700 reasoning
    row = PriceBook().row("openai", "o3-mini", TS)
    assert row is not None
    cost = row.cost(TokenCounts(input_tokens=500, output_tokens=900, reasoning_tokens=700))
    assert cost.output == D("0.00088")  # 200 × 4.4e-6
    assert cost.reasoning == D("0.00308")  # 700 × 4.4e-6
    assert cost.total == D("0.00055") + D("0.00088") + D("0.00308")


def test_long_context_tier_above_200k_tokens() -> None:
    # gemini-2.5-pro: $1.25 / $10 per MTok up to 200k input tokens, $2.50 / $15 above
    row = PriceBook().row("google", "gemini-2.5-pro", TS)
    assert row is not None
    small = row.cost(TokenCounts(input_tokens=200_000, output_tokens=1000))
    big = row.cost(TokenCounts(input_tokens=250_000, output_tokens=1000))
    assert small.total == D("0.25") + D("0.01")
    assert big.total == D("0.625") + D("0.015")


def test_unknown_model_has_no_price() -> None:
    assert PriceBook().row("openai", "my-private-model", TS) is None


MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("openai", "gpt-4.1-mini"),
    ("openai", "o3-mini"),
    ("openai", "text-embedding-3-small"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("anthropic", "claude-sonnet-4-0"),
    ("anthropic", "claude-opus-4-1"),
    ("google", "gemini-2.5-flash"),
    ("google", "gemini-2.5-pro"),
]


@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_total_equals_genai_prices_calc_price(provider: str, model: str) -> None:
    rng = random.Random(hash(model) & 0xFFFF)
    book = PriceBook()
    for _ in range(200):
        inp = rng.choice([rng.randint(0, 5000), rng.randint(150_000, 400_000)])
        out = rng.randint(0, 4000)
        cr = rng.randint(0, inp)
        cw = rng.randint(0, inp - cr) if provider == "anthropic" else 0
        rs = rng.randint(0, out) if model.startswith("o3") else 0
        ts = datetime(2026, rng.randint(1, 12), rng.randint(1, 28), tzinfo=UTC)
        row = book.row(provider, model, ts)
        assert row is not None
        ours = row.cost(
            TokenCounts(
                input_tokens=inp,
                output_tokens=out,
                cache_read_tokens=cr,
                cache_creation_tokens=cw,
                reasoning_tokens=rs,
            )
        )
        ref = calc_price(
            GPUsage(
                input_tokens=inp,
                output_tokens=out,
                cache_read_tokens=cr,
                cache_write_tokens=cw,
                output_reasoning_tokens=rs,
            ),
            model,
            provider_id=provider,
            genai_request_timestamp=ts,
        )
        assert ours.total == ref.total_price, (inp, out, cr, cw, rs)


def test_price_resolved_once_per_model_and_day() -> None:
    book = PriceBook()
    for minute in range(0, 24 * 60, 7):
        book.row("openai", "gpt-4o", TS.replace(hour=minute // 60, minute=minute % 60))
    assert book.lookups == 1
    book.row("openai", "gpt-4o", TS.replace(day=2))
    assert book.lookups == 2


OVERRIDES = """
[[price]]
provider = "openai"
model = "gpt-4o"
effective_from = 2026-06-01
input_mtok = "2.00"
output_mtok = "8.00"
cache_read_mtok = "0.50"

[[price]]
provider = "internal"
model = "acme-llm-70b"
input_mtok = "0.40"
output_mtok = "0.80"
request_kcount = "1.00"
[[price.tier]]
start = 100000
input_mtok = "0.80"
output_mtok = "1.60"
"""


def test_override_file_negotiated_private_and_dated(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(OVERRIDES)
    book = PriceBook(load_overrides(path))
    tok = TokenCounts(input_tokens=1000, output_tokens=100, cache_read_tokens=400)
    neg = book.row("openai", "gpt-4o", TS)  # 2026-06-01: negotiated price applies
    assert neg is not None and neg.source == "override:prices.toml"
    assert neg.cost(tok).total == D("0.0012") + D("0.0002") + D("0.0008")
    before = book.row("openai", "gpt-4o", datetime(2026, 5, 31, tzinfo=UTC))
    assert before is not None and before.source == "genai-prices"  # list price before
    private = book.row("internal", "acme-llm-70b", TS)
    assert private is not None
    # $1 per 1000 requests = $0.001 per call, its own part (it was added to input before)
    assert private.cost(TokenCounts(input_tokens=1000, output_tokens=100)).total == (
        D("0.0004") + D("0.001") + D("0.00008")
    )
    long = private.cost(TokenCounts(input_tokens=100_001, output_tokens=0))
    assert (long.input, long.request) == (D("0.0800008"), D("0.001"))  # 100,001 × $0.80/MTok


def test_bad_override_file_names_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[price]]\nprovider = "openai"\nmodel = "x"\ninput_mtok = "1"\n')
    with pytest.raises(ValueError, match="price #1: output_mtok is required"):
        load_overrides(path)


def test_pico_conversion_is_exact() -> None:
    assert pico_per_token(D("0.15")) == 150_000
    assert pico_per_token(D("0.075")) == 75_000
    assert pico_per_token(D("15")) == 15_000_000
