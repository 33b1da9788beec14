"""The rating catalogue in storage: plan revisions (append-only), VAT tables, and the prepaid pricing port."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_rating_support import (
    GRADUATED_DE,
    TOU_GB_TEXT,
    account_with_meter,
    feed_readings,
    local,
    wired,
)
from usagehub.errors import ConfigError, DomainError
from usagehub.storage.rating_catalog import shipped_vat_text

BERLIN = "Europe/Berlin"


async def test_plans_are_revisions_and_versions_in_force_cannot_change(pool: AsyncConnectionPool) -> None:
    _, _, rating = wired(pool)   # today is 2026-11-21
    first = await rating.load_plans(GRADUATED_DE, "plans.yaml")
    assert [(c.plan_id, c.revision, c.changed) for c in first] == [("energy-de", 1, True)]
    again = await rating.load_plans(GRADUATED_DE, "plans.yaml")
    assert [(c.revision, c.changed) for c in again] == [(1, False)]

    # Changing a price of the version in force since 2026-10-16 is refused ...
    changed = GRADUATED_DE.replace('{up_to: 100, price: "0.32"}', '{up_to: 100, price: "0.33"}')
    with pytest.raises(DomainError) as err:
        await rating.load_plans(changed, "plans.yaml")
    assert err.value.code == "PLAN_VERSION_CHANGED"
    # ... closing it in the past too; closing it in the future and adding a version is a new revision.
    past = GRADUATED_DE.replace("      - valid_from: 2026-10-16\n",
                                "      - valid_from: 2026-10-16\n        valid_to: 2026-11-01\n")
    with pytest.raises(DomainError):
        await rating.load_plans(past, "plans.yaml")
    future = GRADUATED_DE.replace("      - valid_from: 2026-10-16\n",
                                  "      - valid_from: 2026-10-16\n        valid_to: 2027-01-01\n") + """
      - valid_from: 2027-01-01
        components:
          - {type: flat, price: "0.35"}
"""
    assert [(c.revision, c.changed) for c in await rating.load_plans(future, "plans.yaml")] == [(2, True)]
    (plan,) = await rating.plans(product="energy", market="DE")
    assert plan.revision == 2 and [v.valid_from.isoformat() for v in plan.plan.versions] == \
        ["2026-01-01", "2026-10-16", "2027-01-01"]
    with pytest.raises(DomainError) as err:
        await rating.load_plans(future.replace("market: DE", "market: AT"), "plans.yaml")
    assert err.value.code == "PLAN_IDENTITY_CHANGED"

    # The database keeps the history: revisions cannot be edited or deleted.
    async with pool.connection() as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute("UPDATE price_plans SET market = 'AT'")
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute("DELETE FROM price_plan_versions")
        cur = await conn.execute("SELECT count(*) FROM price_plan_versions WHERE plan_id = 'energy-de' "
                                 "AND revision = 2 AND valid_from <= '2026-12-01' "
                                 "AND coalesce(valid_to, 'infinity') > '2026-12-01'")
        assert await cur.fetchone() == (1,)


async def test_replace_retires_plans_the_file_does_not_name(pool: AsyncConnectionPool) -> None:
    _, _, rating = wired(pool)
    await rating.load_plans(GRADUATED_DE, "de.yaml")
    await rating.load_plans(TOU_GB_TEXT, "gb.yaml")
    assert {p.plan.id for p in await rating.plans()} == {"energy-de", "energy-gb-eco7"}
    changes = await rating.load_plans(TOU_GB_TEXT, "gb.yaml", replace=True)
    assert [(c.plan_id, c.retired) for c in changes if c.changed] == [("energy-de", True)]
    assert {p.plan.id for p in await rating.plans()} == {"energy-gb-eco7"}


async def test_a_bad_plan_file_names_file_field_and_line(pool: AsyncConnectionPool) -> None:
    _, _, rating = wired(pool)
    with pytest.raises(ConfigError) as err:
        await rating.load_plans(GRADUATED_DE.replace('price: "0.25"', 'price: "cheap"'), "bad.yaml")
    assert err.value.file == "bad.yaml" and err.value.line == 13   # the text starts with a newline


async def test_vat_ships_as_data_and_is_replaced_from_a_file(pool: AsyncConnectionPool) -> None:
    _, _, rating = wired(pool)
    assert await rating.start() is True
    assert await rating.start() is False   # loaded once, on the first start
    table = await rating.vat_table()
    assert table.rate_for("FR", "energy_subscription", local("UTC", 2025, 7, 31).date()).rate == Decimal("5.5")
    update = shipped_vat_text().replace('{category: standard, rate: "21", valid_from: 2015-01-01,',
                                        '{category: standard, rate: "22", valid_from: 2015-01-01,')
    revision, changed = await rating.load_vat(update, "nl-update.yaml")
    assert changed and revision == 2
    assert (await rating.vat_table()).rate_for("NL", "standard", local("UTC", 2026, 1, 1).date()).rate == 22
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT rate, source FROM vat_rates WHERE revision = 2 AND market = 'NL' "
                                 "AND category = 'standard'")
        row = await cur.fetchone()
        assert row is not None and row[0] == 22 and "omzetbelasting" in str(row[1])


async def test_usage_charge_prices_at_the_tier_reached_plus_vat(pool: AsyncConnectionPool) -> None:
    pipeline, _, rating = wired(pool)
    await account_with_meter(pool, "a1", "m1")
    await rating.start()
    await rating.load_plans(GRADUATED_DE, "plans.yaml")
    # 95 kWh used on 3 October: the next 10 kWh on the 5th cross from tier 1 into tier 2.
    await feed_readings(pipeline, "m1", [(local(BERLIN, 2026, 10, 3, 10), 0),
                                         (local(BERLIN, 2026, 10, 3, 11), 95_000)])
    async with pool.connection() as conn:
        gross = await rating.usage_charge(conn, account_id="a1", product="energy", quantity=Decimal(10),
                                          at=local(BERLIN, 2026, 10, 5, 12))
        assert gross == (5 * Decimal("0.30") + 5 * Decimal("0.25")) * Decimal("1.19")   # exact: 3.2725
        # Usage before `at` only: at 3 October 10:00 nothing was used yet.
        first = await rating.usage_charge(conn, account_id="a1", product="energy", quantity=Decimal("0.5"),
                                          at=local(BERLIN, 2026, 10, 3, 10))
        assert first == Decimal("0.5") * Decimal("0.30") * Decimal("1.19")
        # After the plan change (16 October) the new version's prices apply (95 kWh: still tier 1).
        later = await rating.usage_charge(conn, account_id="a1", product="energy", quantity=Decimal(1),
                                          at=local(BERLIN, 2026, 10, 20))
        assert later == Decimal("0.32") * Decimal("1.19")
        for product, code in (("water", "NO_PLAN"),):
            with pytest.raises(DomainError) as err:
                await rating.usage_charge(conn, account_id="a1", product=product, quantity=Decimal(1),
                                          at=local(BERLIN, 2026, 10, 20))
            assert err.value.code == code
        with pytest.raises(DomainError) as err:
            await rating.usage_charge(conn, account_id="a1", product="energy", quantity=Decimal(1),
                                      at=local(BERLIN, 2025, 12, 31))
        assert err.value.code == "NO_PLAN_IN_FORCE"
