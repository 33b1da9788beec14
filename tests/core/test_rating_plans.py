"""Tariff files: a mistake is refused at load time with its file, field and line."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from usagehub.core.tariffs import PlanBook, parse_plans
from usagehub.errors import ConfigError

HEAD = """plans:
  - id: p
    product: electricity
    market: DE
    currency: EUR
    unit: kWh
    versions:
"""


def versions(body: str) -> str:
    return HEAD + body


@pytest.mark.parametrize(
    ("text", "field", "line", "message"),
    [
        (
            versions(
                "      - valid_from: 2024-01-01\n"
                "        components: [{type: flat, price: '1'}]\n"
                "      - valid_from: 2024-02-01\n"
                "        components: [{type: flat, price: '2'}]\n"
            ),
            "plans.0.versions",
            7,
            "overlap",
        ),
        (
            versions(
                "      - valid_from: 2024-01-01\n"
                "        components:\n"
                "          - {type: graduated, tiers: [{up_to: 300, price: '1'}, {up_to: 100, price: '2'}, "
                "{price: '3'}]}\n"
            ),
            "plans.0.versions.0.components.0.graduated.tiers",
            10,
            "increasing",
        ),
        (
            versions(
                "      - valid_from: 2024-01-01\n"
                "        components:\n"
                "          - {type: volume, tiers: [{up_to: 100, price: '1'}]}\n"
            ),
            "plans.0.versions.0.components.0.volume.tiers",
            10,
            "last tier",
        ),
        (
            versions(
                "      - valid_from: 2024-01-01\n"
                "        components:\n"
                "          - type: tou\n"
                "            windows:\n"
                "              - {name: a, price: '1', days: [mon], start: '08:00', end: '12:00'}\n"
                "              - {name: b, price: '1', days: [mon, tue], start: '11:00', end: '13:00'}\n"
            ),
            "plans.0.versions.0.components.0.tou",
            10,
            "overlap on mon",
        ),
        (
            versions(
                "      - valid_from: 2024-01-01\n"
                "        components:\n"
                "          - type: tou\n"
                "            windows:\n"
                "              - {name: a, price: '1', days: [mon], start: '22:00', end: '06:00'}\n"
            ),
            "plans.0.versions.0.components.0.tou.windows.0",
            12,
            "split an overnight window",
        ),
        (
            versions(
                "      - valid_from: 2024-01-01\n"
                "        components:\n"
                "          - type: tou\n"
                "            windows:\n"
                "              - {name: a, price: '1', days: [mon], start: '8:00', end: '24:00'}\n"
            ),
            "plans.0.versions.0.components.0.tou.windows.0.start",
            12,
            "HH:MM",
        ),
        (
            versions(
                "      - valid_from: 2024-01-01\n"
                "        components: [{type: flat, price: '1'}, {type: volume, tiers: [{price: '1'}]}]\n"
            ),
            "plans.0.versions.0",
            8,
            "at most one usage price",
        ),
        (
            versions(
                "      - valid_from: 2024-01-01\n"
                "        components: [{type: flat, price: '1', colour: red}]\n"
            ),
            "plans.0.versions.0.components.0.flat.colour",
            9,
            "Extra inputs",
        ),
        (
            versions(
                "      - valid_from: 2024-01-01\n"
                "        components: [{type: standing_charge, amount: '-1'}]\n"
            ),
            "plans.0.versions.0.components.0.standing_charge.amount",
            9,
            "negative",
        ),
        (
            versions(
                "      - {valid_from: 2024-02-01, valid_to: 2024-01-01,\n"
                "         components: [{type: flat, price: '1'}]}\n"
            ),
            "plans.0.versions.0",
            8,
            "after valid_from",
        ),
        (
            versions(
                "      - valid_from: 2024-01-01\n"
                "        components: [{type: tou, calendar: nope, windows: "
                "[{name: a, price: '1', days: [mon], start: '00:00', end: '24:00'}]}]\n"
            ),
            "(document)",
            1,
            "unknown calendar",
        ),
        (
            HEAD.replace("EUR", "XYZ")
            + "      - {valid_from: 2024-01-01, components: [{type: flat, price: '1'}]}\n",
            "plans.0.currency",
            5,
            "not supported",
        ),
        ("plans: [", None, 1, "not valid YAML"),
        ("- just a list\n", None, 1, "mapping"),
    ],
)
def test_bad_plans_are_refused_with_field_and_line(
    text: str, field: str | None, line: int, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_plans(text, "tariffs/de.yaml")
    assert err.value.file == "tariffs/de.yaml"
    assert (err.value.field, err.value.line) == (field, line)
    assert message in str(err.value)


def test_books_merge_and_refuse_duplicate_ids() -> None:
    one = parse_plans(
        versions("      - {valid_from: 2024-01-01, components: [{type: flat, price: '1'}]}\n"), "a"
    )
    other = parse_plans("calendars: {x: [2024-12-25]}\nplans: []\n", "b")
    merged = one.merged(other)
    assert [p.id for p in merged.plans] == ["p"] and merged.holidays("x") and not merged.holidays(None)
    with pytest.raises(ValueError, match="duplicate plan ids: p"):
        one.merged(one)


def test_a_book_round_trips_through_json_for_storage() -> None:
    book = parse_plans(
        versions(
            "      - valid_from: 2024-01-01\n"
            "        valid_to: 2024-06-01\n"
            "        components: [{type: flat, price: '0.1234'}, {type: minimum, amount: '5'}]\n"
            "      - valid_from: 2024-06-01\n"
            "        components: [{type: standing_charge, amount: '0.5', per: day}]\n"
        ),
        "rt.yaml",
    )
    again = PlanBook.model_validate_json(book.model_dump_json())
    assert again == book
    assert again.plans[0].versions[0].usage_price is not None
    assert again.plans[0].versions[0].usage_price.price == D("0.1234")  # type: ignore[union-attr]
    assert again.plans[0].versions[1].standing_charge is not None
    assert again.plans[0].versions[1].usage_price is None
