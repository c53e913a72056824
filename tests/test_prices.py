"""Exact costs: hand-computed cases, agreement with genai-prices' calc_price, overrides."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from spendstream.events import ServiceTier, TokenCounts
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


TS_DEC = datetime(2026, 12, 1, 12, tzinfo=UTC)  # after genai-prices' tier verification dates
GPT5 = TokenCounts(input_tokens=10_000, output_tokens=1_000, cache_read_tokens=2_000,
                   reasoning_tokens=600)  # fmt: skip


@pytest.mark.parametrize(
    ("tier", "total"),
    [
        # standard $1.25 in / $0.125 cached / $10 out per MTok:
        # 8,000 × 1.25e-6 + 2,000 × 0.125e-6 + 1,000 × 10e-6 = 0.01 + 0.00025 + 0.01
        (None, "0.02025"),
        (ServiceTier.STANDARD, "0.02025"),
        # flex $0.625 / $0.0625 / $5: 0.005 + 0.000125 + 0.005 (half; it was priced 2x)
        (ServiceTier.FLEX, "0.010125"),
        # priority $2.5 / $0.25 / $20: 0.02 + 0.0005 + 0.02
        (ServiceTier.PRIORITY, "0.0405"),
        # OpenAI Batch $0.625 / $0.0625 / $5, as flex
        (ServiceTier.BATCH, "0.010125"),
    ],
)
def test_service_tier_selects_the_price_variant(tier: ServiceTier | None, total: str) -> None:
    row = PriceBook().row("openai", "gpt-5", TS_DEC, tier)
    assert row is not None
    assert row.cost(GPT5).total == D(total)


# claude-sonnet-4: $3 in, $0.30 cache read, $3.75 5-minute write, $6 1-hour write, $15 out per
# MTok, $10 per 1000 web searches. 10,000 input = 1,000 uncached + 4,000 read + 2,000 5-minute
# + 3,000 1-hour writes; 500 output; 3 searches.
SONNET = TokenCounts(
    input_tokens=10_000,
    output_tokens=500,
    cache_read_tokens=4_000,
    cache_creation_tokens=5_000,
    cache_write_1h_tokens=3_000,
    web_searches=3,
)


def test_one_hour_cache_writes_and_web_searches_hand_computed() -> None:
    row = PriceBook().row("anthropic", "claude-sonnet-4-0", TS_DEC)
    assert row is not None
    c = row.cost(SONNET)
    assert c.input == D("0.003")  # 1,000 × 3e-6
    assert c.cache_read == D("0.0012")  # 4,000 × 0.3e-6
    assert c.cache_write == D("0.0255")  # 2,000 × 3.75e-6 + 3,000 × 6e-6 (was all at 3.75)
    assert c.output == D("0.0075")  # 500 × 15e-6
    assert c.web_search == D("0.03")  # 3 × $0.01 (was dropped)
    assert c.total == D("0.0672")


def test_anthropic_batch_is_half_where_genai_prices_has_no_batch_price() -> None:
    row = PriceBook().row("anthropic", "claude-sonnet-4-0", TS_DEC, ServiceTier.BATCH)
    assert row is not None and row.version is not None and row.version.endswith("+batch50")
    c = row.cost(SONNET)
    # tokens at half: 0.0015 + 0.0006 + 0.01275 + 0.00375; searches stay $0.01 each
    assert (c.total, c.web_search) == (D("0.0486"), D("0.03"))
    ref = calc_price(
        GPUsage(input_tokens=10_000, output_tokens=500, cache_read_tokens=4_000,
                cache_write_tokens=5_000, cache_write_1h_tokens=3_000),
        "claude-sonnet-4-0", provider_id="anthropic", genai_request_timestamp=TS_DEC,
        price_context={"processing": "batch"},
    )  # fmt: skip
    assert ref.total_price == D("0.0372")  # genai-prices: the full standard price (2x the bill)


def test_realtime_audio_and_image_units_hand_computed() -> None:
    # gpt-realtime: $4 text in, $0.40 cached text, $32 audio in, $0.40 cached audio, $5 image
    # in, $16 text out, $64 audio out per MTok. Input 10,000 = 1,500 text + 2,000 cached text
    # + 1,000 cached audio + 5,000 audio + 500 image; output 2,000 = 500 text + 1,500 audio.
    row = PriceBook().row("openai", "gpt-realtime", TS_DEC)
    assert row is not None
    tok = TokenCounts(input_tokens=10_000, output_tokens=2_000, cache_read_tokens=3_000,
                      input_audio_tokens=6_000, cache_audio_read_tokens=1_000,
                      input_image_tokens=500, output_audio_tokens=1_500)  # fmt: skip
    c = row.cost(tok)
    assert (c.input, c.cache_read, c.output) == (D("0.006"), D("0.0008"), D("0.008"))
    assert c.audio == D("0.2564")  # 1,000 × 0.4e-6 + 5,000 × 32e-6 + 1,500 × 64e-6
    assert c.image == D("0.0025")  # 500 × 5e-6
    assert c.total == D("0.2737")  # before: 10,000 × ... as text, 0.0632 (4.3x under)


def test_parts_beyond_the_whole_are_not_priced() -> None:
    row = PriceBook().row("openai", "gpt-realtime", TS_DEC)
    assert row is not None
    bad = TokenCounts(input_tokens=100, output_tokens=0, input_audio_tokens=100,
                      input_image_tokens=100)  # fmt: skip
    with pytest.raises(ValueError, match="parts exceed"):
        row.cost(bad)


def test_priced_only_in_uncountable_units_is_unknown_and_free_is_zero() -> None:
    book = PriceBook()
    assert book.row("groq", "whisper-large-v3", TS_DEC) is None  # audio hours: not countable
    free = book.row("google", "gemma-3", TS_DEC)  # listed without a price: free in genai-prices
    assert free is not None
    assert free.cost(TokenCounts(input_tokens=1000, output_tokens=10)).total == 0


def test_cached_image_tokens_hand_computed() -> None:
    # gpt-realtime: $5/MTok image input, $0.50 cached image; 1,000 input = 500 text + 200 cached
    # image + 300 image: 500 × 4e-6 + 200 × 0.5e-6 + 300 × 5e-6 = 0.002 + 0.0001 + 0.0015
    row = PriceBook().row("openai", "gpt-realtime", TS_DEC)
    assert row is not None
    tok = TokenCounts(input_tokens=1000, output_tokens=0, cache_read_tokens=200,
                      input_image_tokens=500, cache_image_read_tokens=200)  # fmt: skip
    c = row.cost(tok)
    assert (c.input, c.cache_read, c.image, c.total) == (
        D("0.002"), D("0"), D("0.0016"), D("0.0036")
    )  # fmt: skip
