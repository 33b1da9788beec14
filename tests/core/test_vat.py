"""VAT: the shipped rate table, its validation, and per-rate rounding under each market's rule."""

from __future__ import annotations

from datetime import date
from decimal import Decimal as D
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.core.money import Money, RoundingRule, exact, quantize
from usagehub.core.vat import Taxed, VatTable, parse_vat_table, summarize, vat_of
from usagehub.errors import ConfigError, DomainError

SHIPPED = (Path(__file__).resolve().parents[2] / "usagehub/data/vat_rates.yaml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def table() -> VatTable:
    return parse_vat_table(SHIPPED, "vat_rates.yaml")


@pytest.mark.parametrize(
    ("market", "category", "day", "rate"),
    [
        ("DE", "standard", date(2024, 5, 1), "19"),
        ("DE", "reduced", date(2024, 5, 1), "7"),
        ("DE", "standard", date(2020, 8, 1), "16"),
        ("DE", "standard", date(2020, 6, 30), "19"),
        ("DE", "natural_gas", date(2023, 1, 1), "7"),
        ("DE", "natural_gas", date(2024, 4, 1), "19"),
        ("FR", "standard", date(2024, 5, 1), "20"),
        ("FR", "reduced_low", date(2024, 5, 1), "5.5"),
        ("FR", "energy_subscription", date(2025, 7, 31), "5.5"),
        ("FR", "energy_subscription", date(2025, 8, 1), "20"),
        ("GB", "standard", date(2024, 5, 1), "20"),
        ("GB", "domestic_energy", date(2024, 5, 1), "5"),
        ("NL", "standard", date(2024, 5, 1), "21"),
        ("NL", "reduced", date(2018, 12, 31), "6"),
        ("NL", "reduced", date(2019, 1, 1), "9"),
        ("SE", "standard", date(2024, 5, 1), "25"),
        ("SE", "reduced", date(2024, 5, 1), "12"),
        ("ES", "standard", date(2024, 5, 1), "21"),
        ("ES", "reduced", date(2024, 5, 1), "10"),
        ("IT", "standard", date(2024, 5, 1), "22"),
        ("IT", "reduced", date(2024, 5, 1), "10"),
        ("PL", "standard", date(2024, 5, 1), "23"),
        ("PL", "reduced", date(2024, 5, 1), "8"),
        ("CH", "standard", date(2023, 12, 31), "7.7"),
        ("CH", "standard", date(2024, 1, 1), "8.1"),
        ("CH", "standard", date(2017, 6, 1), "8.0"),
        ("CH", "reduced", date(2024, 1, 1), "2.6"),
    ],
)
def test_shipped_rates(table: VatTable, market: str, category: str, day: date, rate: str) -> None:
    assert table.rate_for(market, category, day).rate == D(rate)


def test_every_shipped_rate_names_its_source_and_market_its_rule(table: VatTable) -> None:
    assert set(table.markets) == {"DE", "FR", "GB", "NL", "SE", "ES", "IT", "PL", "CH"}
    for market in table.markets.values():
        assert market.rounding in (RoundingRule.HALF_UP, RoundingRule.HALF_EVEN)
        assert all(len(r.source) > 5 for r in market.rates)
    assert date(2024, 1, 1) in table.change_dates("CH")
    assert table.rounding("DE") is RoundingRule.HALF_UP


def test_lookup_errors(table: VatTable) -> None:
    with pytest.raises(DomainError) as err:
        table.rate_for("XX", "standard", date(2024, 1, 1))
    assert err.value.code == "UNKNOWN_MARKET"
    with pytest.raises(DomainError) as err:
        table.rate_for("DE", "caviar", date(2024, 1, 1))
    assert err.value.code == "NO_VAT_RATE"
    with pytest.raises(DomainError) as err:
        table.rate_for("DE", "standard", date(2010, 1, 1))
    assert err.value.code == "NO_VAT_RATE"


@pytest.mark.parametrize(
    ("text", "field", "line"),
    [
        (
            "markets:\n  DE:\n    name: x\n    rounding: half_up\n    rates:\n"
            "      - {category: s, rate: '19', valid_from: 2020-01-01, source: law}\n"
            "      - {category: s, rate: '16', valid_from: 2020-06-01, source: law}\n",
            "markets.DE.rates",
            5,
        ),
        ("markets:\n  DE:\n    name: x\n    rounding: half_down\n    rates: []\n", "markets.DE.rounding", 4),
        (
            "markets:\n  DE:\n    name: x\n    rounding: half_up\n    rates:\n"
            "      - {category: s, rate: '19', valid_from: 2020-01-01}\n",
            "markets.DE.rates.0.source",
            6,
        ),
        (
            "markets:\n  DE:\n    name: x\n    rounding: half_up\n    colour: red\n    rates:\n"
            "      - {category: s, rate: '19', valid_from: 2020-01-01, source: law}\n",
            "markets.DE.colour",
            5,
        ),
        ("markets:\n  DE:\n    name: x\n    rounding: half_up\n    rates: [}\n", None, 5),
    ],
)
def test_bad_tables_name_field_and_line(text: str, field: str | None, line: int) -> None:
    with pytest.raises(ConfigError) as err:
        parse_vat_table(text, "rates.yaml")
    assert (err.value.file, err.value.field, err.value.line) == ("rates.yaml", field, line)


def test_a_rate_change_is_a_data_update(table: VatTable) -> None:
    updated = SHIPPED.replace(
        '- {category: standard, rate: "21", valid_from: 2015-01-01,\n',
        '- {category: standard, rate: "21", valid_from: 2015-01-01, valid_to: 2030-01-01,\n'
        '         source: "test"}\n      - {category: standard, rate: "22", valid_from: 2030-01-01,\n',
        1,
    )
    new = parse_vat_table(updated, "updated.yaml")
    assert new.rate_for("NL", "standard", date(2030, 1, 1)).rate == 22
    assert new.rate_for("NL", "standard", date(2029, 12, 31)).rate == 21


def taxed(rate: str, *nets: str) -> list[Taxed]:
    return [Taxed(rate=D(rate), category="standard", net=Money.of(n, "EUR")) for n in nets]


def test_vat_is_rounded_once_per_rate_not_per_line() -> None:
    # ten lines of 0.0125 at 20 %: VAT per line 0.0025 rounds to 0.00 (ten times nothing); VAT on the
    # sum, 0.025, rounds once to 0.03 (half up) or 0.02 (half even)
    assert sum(quantize(D("0.0125") * D("0.2"), "EUR", RoundingRule.HALF_UP) for _ in range(10)) == 0
    [group] = summarize(taxed("20", *["0.0125"] * 10), "EUR", RoundingRule.HALF_UP)
    assert (group.taxable_exact.amount, group.taxable.amount, group.vat.amount, group.lines) == (
        D("0.1250"),
        D("0.13"),
        D("0.03"),
        10,
    )
    [even] = summarize(taxed("20", *["0.0125"] * 10), "EUR", RoundingRule.HALF_EVEN)
    assert (even.taxable.amount, even.vat.amount) == (D("0.12"), D("0.02"))


def test_groups_by_rate_and_refuses_other_currencies() -> None:
    groups = summarize(
        [*taxed("19", "10"), *taxed("7", "10"), *taxed("19.0", "5")], "EUR", RoundingRule.HALF_UP
    )
    assert [(g.rate, g.taxable.amount, g.vat.amount, g.lines) for g in groups] == [
        (19, D("15"), D("2.85"), 2),
        (7, D("10"), D("0.70"), 1),
    ]
    with pytest.raises(DomainError) as err:
        summarize([Taxed(rate=D(19), category="s", net=Money.of("1", "GBP"))], "EUR", RoundingRule.HALF_UP)
    assert err.value.code == "CURRENCY_MISMATCH"


def test_rule_on_a_tie() -> None:
    assert vat_of(D("10.25"), D("10"), "EUR", RoundingRule.HALF_UP) == D("1.03")
    assert vat_of(D("10.25"), D("10"), "EUR", RoundingRule.HALF_EVEN) == D("1.02")
    assert vat_of(D("25"), D("10"), "JPY", RoundingRule.HALF_EVEN) == D("2")
    assert vat_of(D("25"), D("10"), "JPY", RoundingRule.HALF_UP) == D("3")


nets = st.lists(
    st.decimals(min_value=D("-100"), max_value=D("10000"), places=5, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=20,
)
rates = st.sampled_from(["0", "2.6", "5", "5.5", "7.7", "8.1", "19", "20", "21", "25"])


@settings(max_examples=200)
@given(
    st.lists(st.tuples(rates, nets), min_size=1, max_size=4),
    st.sampled_from(list(RoundingRule)),
    st.sampled_from(["EUR", "JPY", "KWD"]),
)
def test_summary_rounds_each_rate_once_under_the_rule(
    parts: list[tuple[str, list[D]]], rule: RoundingRule, currency: str
) -> None:
    items = [
        Taxed(rate=D(r), category="c", net=Money(amount=n, currency=currency)) for r, ns in parts for n in ns
    ]
    groups = summarize(items, currency, rule)
    assert [g.rate for g in groups] == sorted({D(r) for r, _ in parts}, reverse=True)
    with exact():
        for group in groups:
            exact_sum = sum((i.net.amount for i in items if i.rate == group.rate), D(0))
            assert group.taxable_exact.amount == exact_sum
            assert group.taxable.amount == quantize(exact_sum, currency, rule)
            assert group.vat.amount == quantize(exact_sum * group.rate / 100, currency, rule)
