"""Money: exact amounts, one currency at a time, rounding only by an explicit rule."""

from __future__ import annotations

from decimal import Decimal as D
from decimal import localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core.money import MINOR_UNITS, Money, RoundingRule, decimal_text, minor_unit, quantize, total
from usagehub.errors import DomainError

UP, EVEN = RoundingRule.HALF_UP, RoundingRule.HALF_EVEN


@pytest.mark.parametrize(
    ("amount", "currency", "up", "even"),
    [
        ("0.125", "EUR", "0.13", "0.12"),
        ("0.135", "EUR", "0.14", "0.14"),
        ("-0.125", "EUR", "-0.13", "-0.12"),
        ("2.5", "JPY", "3", "2"),
        ("3.5", "JPY", "4", "4"),
        ("1.0005", "KWD", "1.001", "1.000"),
        ("1.0015", "BHD", "1.002", "1.002"),
        ("0.124999", "GBP", "0.12", "0.12"),
    ],
)
def test_quantize_follows_the_rule_and_minor_unit(amount: str, currency: str, up: str, even: str) -> None:
    assert quantize(D(amount), currency, UP) == D(up)
    assert quantize(D(amount), currency, EVEN) == D(even)
    assert str(quantize(D(amount), currency, UP)) == up  # exponent = minor unit


def test_minor_units_of_shipped_currencies() -> None:
    assert {c: MINOR_UNITS[c] for c in ("EUR", "GBP", "CHF", "SEK", "PLN", "JPY", "KWD", "BHD")} == {
        "EUR": 2,
        "GBP": 2,
        "CHF": 2,
        "SEK": 2,
        "PLN": 2,
        "JPY": 0,
        "KWD": 3,
        "BHD": 3,
    }
    with pytest.raises(DomainError) as err:
        minor_unit("XXX")
    assert err.value.code == "UNKNOWN_CURRENCY"


def test_arithmetic_refuses_mixing_currencies() -> None:
    with pytest.raises(DomainError) as err:
        _ = Money.of("1", "EUR") + Money.of("1", "GBP")
    assert err.value.code == "CURRENCY_MISMATCH"
    with pytest.raises(DomainError):
        _ = Money.of("1", "EUR") - Money.of("1", "CHF")
    with pytest.raises(DomainError):
        Money.of("1", "EUR").compare(Money.of("1", "USD"))


def test_money_is_never_float_nor_infinite() -> None:
    with pytest.raises(DomainError) as err:
        Money.of(0.1, "EUR")  # type: ignore[arg-type]
    assert err.value.code == "NOT_DECIMAL"
    with pytest.raises(DomainError) as err:
        Money(amount=0.1, currency="EUR")  # type: ignore[arg-type]
    assert err.value.code == "NOT_DECIMAL"
    with pytest.raises(DomainError) as err:
        Money(amount=D("Infinity"), currency="EUR")
    assert err.value.code == "NOT_FINITE"


def test_arithmetic_keeps_full_precision_whatever_the_callers_context() -> None:
    with localcontext() as ctx:
        ctx.prec = 3  # a caller's careless context must not round money
        result = Money.of("1000.0001", "EUR") + Money.of("0.00001", "EUR")
        assert result.amount == D("1000.00011")
        assert Money.of("0.1", "EUR").times(D("3.333333")).amount == D("0.3333333")


def test_helpers() -> None:
    assert -Money.of("1.50", "EUR") == Money.of("-1.50", "EUR")
    assert Money.of("1.005", "EUR").rounded(UP) == Money.of("1.01", "EUR")
    assert total([Money.of("1", "EUR"), Money.of("2.5", "EUR")], "EUR").amount == D("3.5")
    assert total([], "SEK") == Money.zero("SEK")
    assert str(Money.of("12.30", "EUR")) == "12.30 EUR"
    assert decimal_text(D("1E+1")) == "10"
    assert decimal_text(D("-0.00")) == "0.00"
    assert decimal_text(D("0")) == "0"
    assert Money.of("2", "EUR").compare(Money.of("1", "EUR")) == 1


amounts = st.decimals(
    min_value=D("-1e9"), max_value=D("1e9"), places=6, allow_nan=False, allow_infinity=False
)
currencies = st.sampled_from(sorted(MINOR_UNITS))


@settings(max_examples=300)
@given(amounts, currencies, st.sampled_from([UP, EVEN]))
def test_rounding_is_within_half_a_minor_unit_and_idempotent(
    amount: D, currency: str, rule: RoundingRule
) -> None:
    step = D(1).scaleb(-minor_unit(currency))
    rounded = quantize(amount, currency, rule)
    assert abs(rounded - amount) <= step / 2
    assert quantize(rounded, currency, rule) == rounded
    assert rounded.as_tuple().exponent == -minor_unit(currency)


@settings(max_examples=300)
@given(amounts, currencies)
def test_half_up_and_half_even_differ_only_on_exact_ties(amount: D, currency: str) -> None:
    step = D(1).scaleb(-minor_unit(currency))
    up, even = quantize(amount, currency, UP), quantize(amount, currency, EVEN)
    if up != even:
        assert abs(amount - up) == step / 2 == abs(amount - even)
        assert (even / step) % 2 == 0  # half-even lands on an even multiple of the minor unit
        assert abs(up) > abs(amount)  # half-up goes away from zero
