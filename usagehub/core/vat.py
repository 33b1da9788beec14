"""VAT: dated rates per market and category, and the invoice-level VAT summary per rate.

The rate table is data (``usagehub/data/vat_rates.yaml``, parsed here from text),
so a rate change is a data update, not a code change. VAT is computed once per
rate on the exact sum of the net amounts at that rate, then rounded once under
the market's rule: rounding each line would drift by a cent.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from usagehub.core.money import Money, RoundingRule, exact, quantize
from usagehub.core.tariffs import parse_document
from usagehub.errors import DomainError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VatRate(_Model):
    """One rate (percent) of a category, in force from ``valid_from`` until ``valid_to`` (exclusive)."""

    category: str
    rate: Decimal = Field(ge=0, le=100)
    valid_from: date
    valid_to: date | None = None
    source: str = Field(min_length=1)

    def covers(self, day: date) -> bool:
        """Whether this rate applies on ``day``."""
        return self.valid_from <= day and (self.valid_to is None or day < self.valid_to)

    @model_validator(mode="after")
    def _dated(self) -> VatRate:
        if self.valid_to is not None and self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be after valid_from")
        return self


class Market(_Model):
    """A country's VAT: its rounding rule and its dated rates per category."""

    name: str
    rounding: RoundingRule
    rounding_source: str = ""
    rates: list[VatRate] = Field(min_length=1)

    @field_validator("rates")
    @classmethod
    def _no_overlap(cls, rates: list[VatRate]) -> list[VatRate]:
        ordered = sorted(rates, key=lambda r: (r.category, r.valid_from))
        for category, group in itertools.groupby(ordered, key=lambda r: r.category):
            for prev, nxt in itertools.pairwise(group):
                if prev.valid_to is None or prev.valid_to > nxt.valid_from:
                    raise ValueError(f"{category} rates from {prev.valid_from} and {nxt.valid_from} overlap")
        return ordered


class VatTable(_Model):
    """All markets' VAT rates."""

    version: int = 1
    markets: dict[str, Market]

    def market(self, code: str) -> Market:
        """The market ``code`` (DomainError ``UNKNOWN_MARKET``)."""
        try:
            return self.markets[code]
        except KeyError:
            raise DomainError("UNKNOWN_MARKET", f"no VAT rates for market {code!r}") from None

    def rate_for(self, market: str, category: str, day: date) -> VatRate:
        """The rate of ``category`` in ``market`` on ``day`` (DomainError ``NO_VAT_RATE``)."""
        for rate in self.market(market).rates:
            if rate.category == category and rate.covers(day):
                return rate
        raise DomainError("NO_VAT_RATE", f"no {category!r} VAT rate in {market} on {day}")

    def rounding(self, market: str) -> RoundingRule:
        """How ``market`` rounds VAT amounts."""
        return self.market(market).rounding

    def change_dates(self, market: str) -> tuple[date, ...]:
        """Every date a rate of ``market`` starts or ends: where rating must cut a period."""
        dates = {r.valid_from for r in self.market(market).rates}
        dates |= {r.valid_to for r in self.market(market).rates if r.valid_to is not None}
        return tuple(sorted(dates))


def parse_vat_table(text: str, source: str) -> VatTable:
    """Parse a VAT rate file (YAML text); errors are ConfigError with file, field and line."""
    return parse_document(text, source, VatTable)


@dataclass(frozen=True, slots=True, kw_only=True)
class Taxed:
    """A net amount taxed at ``rate`` percent (one invoice line, seen by the VAT summary)."""

    rate: Decimal
    category: str
    net: Money


@dataclass(frozen=True, slots=True, kw_only=True)
class VatGroup:
    """The VAT summary of one rate: exact taxable sum, its rounded value, and the VAT rounded once."""

    rate: Decimal
    categories: tuple[str, ...]
    taxable_exact: Money
    taxable: Money
    vat: Money
    lines: int


def vat_of(taxable: Decimal, rate: Decimal, currency: str, rule: RoundingRule) -> Decimal:
    """VAT on an exact taxable amount at ``rate`` percent, rounded once under ``rule``."""
    with exact():
        return quantize(taxable * rate / 100, currency, rule)


def summarize(taxed: Iterable[Taxed], currency: str, rule: RoundingRule) -> tuple[VatGroup, ...]:
    """Group amounts by rate; per rate, sum exactly, then round the taxable amount and the VAT once."""
    groups: dict[Decimal, list[Taxed]] = {}
    for item in taxed:
        if item.net.currency != currency:
            raise DomainError("CURRENCY_MISMATCH", f"a {item.net.currency} amount on a {currency} invoice")
        groups.setdefault(item.rate, []).append(item)   # 19 and 19.0 are one key: equal Decimals hash alike
    result = []
    with exact():
        for rate in sorted(groups, reverse=True):
            members = groups[rate]
            taxable = sum((m.net.amount for m in members), Decimal(0))
            result.append(VatGroup(
                rate=rate, categories=tuple(sorted({m.category for m in members})),
                taxable_exact=Money(amount=taxable, currency=currency),
                taxable=Money(amount=quantize(taxable, currency, rule), currency=currency),
                vat=Money(amount=vat_of(taxable, rate, currency, rule), currency=currency),
                lines=len(members)))
    return tuple(result)
