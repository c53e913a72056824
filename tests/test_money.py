"""spendstream.money: exact USD ↔ picodollars; what is not a whole picodollar is refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spendstream.money import (
    PICO,
    pico_to_usd,
    usd_str,
    usd_to_pico,
    usd_to_pico_rounded,
)

PICOS = st.integers(min_value=-(10**45), max_value=10**45)


def test_exact_values() -> None:
    assert PICO == 1_000_000_000_000
    assert usd_to_pico(Decimal("1")) == PICO
    assert usd_to_pico(Decimal("0.000000000001")) == 1
    assert usd_to_pico(Decimal("123.456789012345")) == 123_456_789_012_345
    assert usd_to_pico("0.10") == 100_000_000_000
    assert usd_to_pico(3) == 3 * PICO
    assert usd_to_pico(Decimal("-2.5")) == -2_500_000_000_000
    assert usd_to_pico(Decimal("1.000000000000000000")) == PICO  # trailing zeros are exact
    assert usd_to_pico(Decimal("1E+3")) == 1000 * PICO
    assert usd_to_pico(Decimal("0E-30")) == 0
    assert usd_to_pico(Decimal("-0")) == 0


def test_exact_beyond_decimal_precision() -> None:
    """Past the default context's 28 digits Decimal arithmetic rounds; the conversions don't."""
    big = 10**40 + 1
    assert usd_to_pico(pico_to_usd(big)) == big
    assert str(pico_to_usd(big)) == "10000000000000000000000000000.000000000001"
    with pytest.raises(ValueError, match="picodollars"):
        usd_to_pico(Decimal("1." + "0" * 30 + "1"))


@pytest.mark.parametrize(
    "usd", [Decimal("0.0000000000001"), Decimal("1.0000000000005"), "1e-13", Decimal("-1e-20")]
)
def test_sub_picodollar_raises(usd: Decimal | str) -> None:
    """``int(x.scaleb(12))`` made 1e-13 USD into 0 silently; a book must not lose it."""
    with pytest.raises(ValueError, match="picodollars"):
        usd_to_pico(usd)


@pytest.mark.parametrize("usd", [Decimal("NaN"), Decimal("Infinity"), "abc", "-inf"])
def test_not_an_amount_raises(usd: Decimal | str) -> None:
    with pytest.raises(ValueError):
        usd_to_pico(usd)


def test_float_refused() -> None:
    """0.1 as a float is 0.1000000000000000055… USD: the caller must say which decimal."""
    with pytest.raises(TypeError):
        usd_to_pico(0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        usd_to_pico(True)


def test_rounded_is_half_even_at_the_picodollar() -> None:
    assert usd_to_pico_rounded(Decimal("0.0000000000005")) == 0
    assert usd_to_pico_rounded(Decimal("0.0000000000015")) == 2
    assert usd_to_pico_rounded(Decimal("0.00000000000150001")) == 2
    assert usd_to_pico_rounded(Decimal("0.0000000000014999")) == 1
    assert usd_to_pico_rounded(Decimal("2.5")) == 2_500_000_000_000


def test_pico_to_usd_and_str() -> None:
    assert pico_to_usd(1) == Decimal("0.000000000001")
    assert str(pico_to_usd(123_000_000)) == "0.000123000000"
    assert str(pico_to_usd(0)) == "0E-12"  # value 0, 12 places: Decimal's own spelling
    assert usd_str(0) == "0.000000000000"
    assert usd_str(123_000_000) == "0.000123000000"
    assert usd_str(-1) == "-0.000000000001"
    assert usd_str(12_345 * PICO + 6) == "12345.000000000006"


@given(PICOS)
def test_round_trips(pico: int) -> None:
    usd = pico_to_usd(pico)
    assert usd_to_pico(usd) == pico
    assert usd_to_pico_rounded(usd) == pico
    assert usd_to_pico(usd_str(pico)) == pico
    assert Decimal(usd_str(pico)) == usd
    assert usd.as_tuple().exponent == -12


@given(st.decimals(allow_nan=False, allow_infinity=False, places=12, max_value=10**15,
                   min_value=-(10**15)))  # fmt: skip
def test_every_12_place_decimal_is_exact(usd: Decimal) -> None:
    assert pico_to_usd(usd_to_pico(usd)) == usd


@given(st.decimals(allow_nan=False, allow_infinity=False, places=20, max_value=10**6,
                   min_value=-(10**6)))  # fmt: skip
def test_beyond_12_places_exact_or_refused(usd: Decimal) -> None:
    """Either the value is a whole number of picodollars, or usd_to_pico says so."""
    whole = usd.scaleb(12) == usd.scaleb(12).to_integral_value()
    if whole:
        assert pico_to_usd(usd_to_pico(usd)) == usd
    else:
        with pytest.raises(ValueError):
            usd_to_pico(usd)
    assert abs(usd_to_pico_rounded(usd) - usd.scaleb(12)) <= Decimal("0.5")


@given(st.lists(st.integers(min_value=-(10**20), max_value=10**20), max_size=50))
def test_sums_stay_exact(picos: list[int]) -> None:
    """Summing picodollars then converting equals summing the USD Decimals (within Decimal's
    28 digits; beyond, the Decimal sum rounds and the integer one does not)."""
    assert pico_to_usd(sum(picos)) == sum((pico_to_usd(p) for p in picos), Decimal(0))
