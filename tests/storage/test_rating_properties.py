"""Properties of the stored path: the invoice adds up, and the order usage arrived in never matters.

Each example drives the real Pipeline into the test's PostgreSQL with fresh
accounts (one database per test, not per example); hypothesis runs the examples
synchronously, so each one runs its coroutine on its own loop in a worker thread.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.storage.test_rating_support import GRADUATED_DE, Reading, account_with_meter, feed_readings, local, wired
from usagehub.core.invoice import InvoicePreview
from usagehub.storage.pool import open_pool

T = TypeVar("T")
_COUNTER = itertools.count()
BERLIN = "Europe/Berlin"


def run(coro: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a fresh loop in a worker thread (hypothesis calls us synchronously)."""
    async def main() -> T:
        return await coro()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def shape(preview: InvoicePreview) -> list[Any]:
    """What must not depend on arrival order: every line and total, without the account's name."""
    return [[(ln.rated.plan_version, ln.rated.component, ln.rated.detail, ln.rated.quantity, ln.rated.net,
              ln.rated.supply_from) for ln in preview.lines],
            [(g.rate, g.taxable, g.vat) for g in preview.vat], preview.net_total, preview.vat_total, preview.gross]


def check_totals(preview: InvoicePreview) -> None:
    """Totals equal the lines plus VAT: exact nets per rate, each rounded once, and gross = net + VAT."""
    exact = sum((ln.rated.net.amount for ln in (*preview.lines, *preview.adjustments)), Decimal(0))
    assert sum((g.taxable_exact.amount for g in preview.vat), Decimal(0)) == exact
    assert preview.net_total.amount == sum((g.taxable.amount for g in preview.vat), Decimal(0))
    assert preview.vat_total.amount == sum((g.vat.amount for g in preview.vat), Decimal(0))
    assert preview.gross == preview.net_total + preview.vat_total
    assert abs(preview.net_total.amount - exact) <= Decimal("0.005") * len(preview.vat)


async def scenario(url: str, readings: list[Reading], order: list[int]) -> tuple[InvoicePreview, InvoicePreview]:
    n = next(_COUNTER)
    pool = await open_pool(url, min_size=1, max_size=2)
    try:
        pipeline, _, rating = wired(pool)
        await rating.load_plans(GRADUATED_DE, "plans.yaml")   # idempotent: one revision in all
        await rating.start()
        in_order, shuffled = f"o{n}", f"s{n}"
        await account_with_meter(pool, in_order, f"mo{n}")
        await account_with_meter(pool, shuffled, f"ms{n}")
        await feed_readings(pipeline, f"mo{n}", readings)
        for i in order:   # one reading per batch: late readings split deltas already stored
            await feed_readings(pipeline, f"ms{n}", [readings[i]], first_seq=i)
        return ((await rating.invoice_preview(in_order, "2026-10")).preview,
                (await rating.invoice_preview(shuffled, "2026-10")).preview)
    finally:
        await pool.close()


_hours = st.lists(st.integers(min_value=1, max_value=30 * 24 - 1), min_size=2, max_size=6, unique=True)
_steps = st.lists(st.integers(min_value=0, max_value=90_000), min_size=6, max_size=6)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hours=_hours, steps=_steps, data=st.data())
def test_invoice_adds_up_and_does_not_depend_on_arrival_order(database_url: str, hours: list[int],
                                                              steps: list[int], data: st.DataObject) -> None:
    start: datetime = local(BERLIN, 2026, 10, 1, 0)
    times = sorted(start + timedelta(hours=h) for h in hours)
    readings = [(ts, sum(steps[:i])) for i, ts in enumerate(times)]
    order = data.draw(st.permutations(range(len(readings))))
    ordered, shuffled = run(lambda: scenario(database_url, readings, list(order)))
    check_totals(ordered)
    check_totals(shuffled)
    assert shape(shuffled) == shape(ordered)
