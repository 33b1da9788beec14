"""Vendor settlement from stored invoices and top-ups: statements kept by digest, re-runs compared."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_rating_support import GRADUATED_DE, account_with_meter, feed_readings, local, wired
from usagehub.core.settlement import parse_vendors, statement_to_csv, statement_to_json
from usagehub.errors import DomainError
from usagehub.storage.rating_settlement import statement_of

BERLIN = "Europe/Berlin"
VENDORS = """
vendors:
  - id: payco
    kind: payment_provider
    currency: EUR
    timezone: Europe/Berlin
    rules:
      - {id: card-fee, type: topup_percent, percent: "1.5"}
  - id: guardco
    kind: service_partner
    currency: EUR
    timezone: Europe/Berlin
    rules:
      - {id: energy-share, type: revenue_percent, product: energy, percent: "10"}
      - {id: per-kwh, type: per_unit, product: energy, unit: kWh, amount: "0.02"}
"""
READINGS = [(local(BERLIN, 2026, 10, 2, 10), 0), (local(BERLIN, 2026, 10, 5, 10), 80_000),
            (local(BERLIN, 2026, 10, 10, 10), 140_000), (local(BERLIN, 2026, 10, 19, 10), 140_000),
            (local(BERLIN, 2026, 10, 20, 10), 260_000), (local(BERLIN, 2026, 10, 30, 10), 260_000),
            (local(BERLIN, 2026, 10, 31, 10), 320_000)]


async def test_settlement_rerun_gives_the_same_statement_and_late_data_a_new_one(
        pool: AsyncConnectionPool) -> None:
    pipeline, _, rating = wired(pool)
    await account_with_meter(pool, "a1", "m1")
    await rating.start()
    await rating.load_plans(GRADUATED_DE, "plans.yaml")
    await rating.register_vendors(parse_vendors(VENDORS, "v").vendors)
    await feed_readings(pipeline, "m1", READINGS[:5])

    first = await rating.settle("guardco", "2026-10", author="k1")
    # 10 % of the invoice's net (exact 84.606451612903...) plus 0.02 x 260 kWh: 8.46064... + 5.20.
    assert first.statement.total.text() == "13.66" and not first.changed and first.runs == 1
    again = await rating.settle("guardco", "2026-10", author="k1")
    assert (again.statement.digest, again.statement_id, again.changed, again.runs) == \
        (first.statement.digest, first.statement_id, False, 2)
    assert statement_to_json(again.statement) == statement_to_json(first.statement)

    # Usage still arriving for the open period changes the invoice, so a re-run gives a new statement.
    await feed_readings(pipeline, "m1", READINGS[5:], first_seq=10)
    third = await rating.settle("guardco", "2026-10")
    assert third.changed and third.previous_digest == first.statement.digest
    assert third.statement.digest != first.statement.digest and third.statement.total.text() == "16.38"

    stored = await rating.statement("guardco", "2026-10")
    assert stored is not None and stored.runs == 3 and stored.statement == third.statement
    assert await rating.statement_export("guardco", "2026-10", "json") == statement_to_json(third.statement)
    assert await rating.statement_export("guardco", "2026-10", "csv") == statement_to_csv(third.statement)
    assert await rating.statement("guardco", "2026-09") is None
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*), count(DISTINCT digest) FROM settlement_statements")
        assert await cur.fetchone() == (2, 2)
    # Drill-down: each line names its invoice line's records.
    refs = {r for line in third.statement.lines for r in line.refs}
    assert refs == {"a1/2026-10/energy"}


async def test_topups_come_from_the_vendor_topups_view(pool: AsyncConnectionPool) -> None:
    _, _, rating = wired(pool)
    await account_with_meter(pool, "a1", "m1")
    await rating.register_vendors(parse_vendors(VENDORS, "v").vendors)
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT * FROM vendor_topups")
        assert [d.name for d in cur.description or []] == \
            ["vendor_id", "account_id", "amount", "currency", "payment_ref", "at"]
        # What the prepaid migration does: the view over a ledger (here: literal rows).
        await conn.execute(
            "CREATE OR REPLACE VIEW vendor_topups AS SELECT * FROM (VALUES "
            "('payco', 'a1', 50.00::numeric, 'EUR', 'pay-1', '2026-10-05T10:00Z'::timestamptz), "
            "('payco', 'a1', 20.00, 'EUR', 'pay-2', '2026-10-20T10:00Z'), "
            "('other', 'a1', 30.00, 'EUR', 'pay-3', '2026-10-21T10:00Z'), "
            "('payco', 'a1', 99.00, 'EUR', 'pay-4', '2026-11-01T10:00Z')) "
            "AS t(vendor_id, account_id, amount, currency, payment_ref, at)")
    run = await rating.settle("payco", "2026-10")
    assert run.statement.total.text() == "1.05"
    assert [(ln.transaction_id, ln.share.amount) for ln in run.statement.lines] == \
        [("topup:payco:pay-1", Decimal("0.7500")), ("topup:payco:pay-2", Decimal("0.3000"))]
    document = json.loads(statement_to_json(run.statement))
    assert statement_of(document) == run.statement
    with pytest.raises(DomainError) as err:
        await rating.settle("nobody", "2026-10")
    assert err.value.code == "UNKNOWN_VENDOR"
