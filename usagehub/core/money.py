"""Money: an exact ``Decimal`` amount in one currency, rounded only where a rule says so.

Intermediate amounts (quantity x unit price, tier slices, pro-rated charges) keep
full precision; :func:`quantize` rounds to the currency's minor unit under a
market's :class:`RoundingRule` once, at invoice or statement level.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import (
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from enum import StrEnum

from usagehub.errors import DomainError

# ISO 4217 minor units of the currencies usagehub ships with. JPY/KRW have none,
# the Gulf dinars three; everything else here has cents.
MINOR_UNITS: dict[str, int] = {
    "EUR": 2, "GBP": 2, "USD": 2, "CHF": 2, "SEK": 2, "NOK": 2, "DKK": 2, "PLN": 2,
    "CZK": 2, "HUF": 2, "RON": 2, "CAD": 2, "AUD": 2, "NZD": 2, "ZAR": 2, "BRL": 2,
    "MXN": 2, "INR": 2, "SGD": 2, "HKD": 2, "CNY": 2, "TRY": 2, "AED": 2, "SAR": 2,
    "JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0,
    "KWD": 3, "BHD": 3, "OMR": 3, "JOD": 3, "TND": 3,
}

# 60 significant digits: products and sums of meter quantities and tariff prices
# stay exact in practice, and the context is ours, not whatever a caller set.
EXACT = Context(prec=60, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])


@contextmanager
def exact() -> Iterator[None]:
    """Run a block under usagehub's wide, explicit decimal context."""
    with localcontext(EXACT):
        yield


class RoundingRule(StrEnum):
    """How a market rounds half a minor unit: away from zero, or to the even neighbour."""

    HALF_UP = "half_up"
    HALF_EVEN = "half_even"

    @property
    def decimal_mode(self) -> str:
        """The ``decimal`` module's rounding constant for this rule."""
        return ROUND_HALF_UP if self is RoundingRule.HALF_UP else ROUND_HALF_EVEN


def minor_unit(currency: str) -> int:
    """Digits after the decimal point of ``currency`` (ISO 4217)."""
    try:
        return MINOR_UNITS[currency]
    except KeyError:
        raise DomainError("UNKNOWN_CURRENCY", f"currency {currency!r} is not supported") from None


def quantize(amount: Decimal, currency: str, rule: RoundingRule) -> Decimal:
    """Round ``amount`` to the minor unit of ``currency`` under ``rule`` (the one place money is rounded)."""
    step = Decimal(1).scaleb(-minor_unit(currency))
    with exact():
        return amount.quantize(step, rounding=rule.decimal_mode)


def _check_amount(amount: object) -> Decimal:
    if not isinstance(amount, Decimal):
        raise DomainError("NOT_DECIMAL", f"money amounts are Decimal, got {type(amount).__name__}")
    if not amount.is_finite():
        raise DomainError("NOT_FINITE", f"money amount {amount} is not finite")
    return amount


@dataclass(frozen=True, slots=True, kw_only=True)
class Money:
    """An exact amount in one currency; arithmetic refuses to mix currencies."""

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        _check_amount(self.amount)
        minor_unit(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        """Nothing, in ``currency``."""
        return cls(amount=Decimal(0), currency=currency)

    @classmethod
    def of(cls, amount: str | int | Decimal, currency: str) -> Money:
        """Build from a decimal string, int or Decimal (never a float)."""
        if isinstance(amount, float):
            raise DomainError("NOT_DECIMAL", "money is never built from a float")
        return cls(amount=Decimal(amount), currency=currency)

    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise DomainError("NOT_MONEY", f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise DomainError("CURRENCY_MISMATCH", f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        with exact():
            return Money(amount=self.amount + other.amount, currency=self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        with exact():
            return Money(amount=self.amount - other.amount, currency=self.currency)

    def __neg__(self) -> Money:
        return Money(amount=-self.amount, currency=self.currency)

    def times(self, factor: Decimal | int) -> Money:
        """This amount multiplied by an exact factor (a quantity, a percentage as a fraction)."""
        with exact():
            return Money(amount=self.amount * _check_amount(Decimal(factor)), currency=self.currency)

    def rounded(self, rule: RoundingRule) -> Money:
        """This amount rounded to the currency's minor unit under ``rule``."""
        return Money(amount=quantize(self.amount, self.currency, rule), currency=self.currency)

    def compare(self, other: Money) -> int:
        """-1, 0 or 1 as this amount is below, equal to or above ``other`` (same currency)."""
        self._same(other)
        return (self.amount > other.amount) - (self.amount < other.amount)

    def text(self) -> str:
        """The amount as a plain decimal string (no exponent), for APIs and exports."""
        return decimal_text(self.amount)

    def __str__(self) -> str:
        return f"{self.text()} {self.currency}"


def total(amounts: Iterable[Money], currency: str) -> Money:
    """The exact sum of ``amounts``, all in ``currency`` (zero when empty)."""
    result = Money.zero(currency)
    for item in amounts:
        result = result + item
    return result


def decimal_text(value: Decimal) -> str:
    """A Decimal as plain positional text: ``1E+1`` becomes ``10``, ``-0`` becomes ``0``."""
    if value == 0:
        return "0" if value.as_tuple().exponent >= 0 else format(abs(value), "f")  # type: ignore[operator]
    return format(value, "f")
