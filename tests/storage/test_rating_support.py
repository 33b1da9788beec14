"""Shared helpers of the rating storage tests: a wired pipeline, register readings, accounts with meters.

Usage is driven through the real Pipeline with the shipped ``acme-em340`` profile
(a cumulative energy register in Wh, product ``energy`` in kWh).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
from psycopg_pool import AsyncConnectionPool

from tests.storage.test_sessions_billing import feed
from usagehub.billing.service import BillingService
from usagehub.core.calendars import BillingPeriod
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.core.rating import UsageItem
from usagehub.pipeline.pipeline import Pipeline, PipelineSettings
from usagehub.pipeline.sessions import SessionEngine
from usagehub.pipeline.usage import UsageWriter
from usagehub.rating.service import RatingService
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles
from usagehub.storage.registry import KnownDevices, Registry

NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
BOUND_FROM = datetime(2026, 8, 1, tzinfo=UTC)
_PROFILES = ProfileSet(load_profiles(SHIPPED_PROFILES))

# A reading is (instant, register value in Wh).
Reading = tuple[datetime, int]


def wired(pool: AsyncConnectionPool) -> tuple[Pipeline, BillingService, RatingService]:
    """The pipeline as build_pipeline wires it (fixed clock), its billing service and a rating service."""
    pipeline = Pipeline(pool, _PROFILES, KnownDevices(pool), PipelineSettings(batch_max_wait_ms=5))
    usage = UsageWriter(_PROFILES)
    engine = SessionEngine(_PROFILES, entries=lambda: usage.last_entries, clock=lambda: NOW)
    pipeline.hooks += [usage.apply, engine.apply]
    return pipeline, BillingService(pool, engine), RatingService(pool, clock=lambda: NOW)


def reading(device: str, seq: int, ts: datetime, wh: int) -> RawMessage:
    """One EM340 register reading over MQTT."""
    body = {"seq": seq, "ts": ts.isoformat(), "energy_wh": wh, "boot": 1}
    return RawMessage(transport="mqtt", topic=f"meters/{device}/reading", payload=orjson.dumps(body),
                      received_at=NOW)


async def feed_readings(pipeline: Pipeline, device: str, readings: list[Reading], *, first_seq: int = 0) -> None:
    """Feed register readings of one device (seq numbers in reading order)."""
    await feed(pipeline, [reading(device, first_seq + i, ts, wh) for i, (ts, wh) in enumerate(readings)])


async def account_with_meter(pool: AsyncConnectionPool, account: str, device: str, *, market: str = "DE",
                             currency: str = "EUR", timezone: str = "Europe/Berlin",
                             tenant: str = "default") -> None:
    """An account holding one EM340 meter since August 2026."""
    registry = Registry(pool)
    await registry.upsert_account(account_id=account, market=market, currency=currency, timezone=timezone,
                                  tenant=tenant)
    await registry.upsert_device(device_id=device, profile_id="acme-em340", tenant=tenant)
    await registry.bind(device_id=device, account_id=account, valid_from=BOUND_FROM, tenant=tenant)


def items_of(readings: list[Reading], account: str, record_id: str) -> list[UsageItem]:
    """What the stored path should rate: each delta (a, b] at its midpoint, in kWh."""
    out = []
    for (a, wa), (b, wb) in itertools.pairwise(readings):
        if wb != wa:
            out.append(UsageItem(account_id=account, product="energy", ts=a + (b - a) / 2,
                                 quantity=Decimal(wb - wa) * Decimal("0.001"), unit="kWh", record_id=record_id))
    return out


def month(label: str, tz: str) -> BillingPeriod:
    """The local month ``YYYY-MM`` in zone ``tz``."""
    from zoneinfo import ZoneInfo

    year, mon = (int(x) for x in label.split("-"))
    zone = ZoneInfo(tz)
    nxt = (year + mon // 12, mon % 12 + 1)
    return BillingPeriod(start=datetime(year, mon, 1, tzinfo=zone).astimezone(UTC),
                         end=datetime(nxt[0], nxt[1], 1, tzinfo=zone).astimezone(UTC))


def local(tz: str, *args: int) -> datetime:
    """A local wall time in ``tz`` as an aware UTC instant."""
    from zoneinfo import ZoneInfo

    return datetime(*args, tzinfo=ZoneInfo(tz)).astimezone(UTC)  # type: ignore[arg-type,misc]


def hours(n: float) -> timedelta:
    """A duration of ``n`` hours."""
    return timedelta(hours=n)


GRADUATED_DE = """
plans:
  - id: energy-de
    product: energy
    market: DE
    currency: EUR
    unit: kWh
    vat_category: standard
    versions:
      - valid_from: 2026-01-01
        valid_to: 2026-10-16
        components:
          - {type: graduated, tiers: [{up_to: 100, price: "0.30"}, {up_to: 300, price: "0.25"}, {price: "0.20"}]}
          - {type: standing_charge, amount: "12.00", per: period}
      - valid_from: 2026-10-16
        components:
          - {type: graduated, tiers: [{up_to: 100, price: "0.32"}, {up_to: 300, price: "0.27"}, {price: "0.22"}]}
          - {type: standing_charge, amount: "12.40", per: period}
"""

TOU_GB_TEXT = """
calendars:
  test-holidays: [2026-10-14]
plans:
  - id: energy-gb-eco7
    product: energy
    market: GB
    currency: GBP
    unit: kWh
    vat_category: domestic_energy
    versions:
      - valid_from: 2026-01-01
        components:
          - type: tou
            calendar: test-holidays
            windows:
              - name: night
                price: "0.15"
                days: [mon, tue, wed, thu, fri, sat, sun, holiday]
                start: "00:00"
                end: "07:00"
              - {name: day, price: "0.30", days: [mon, tue, wed, thu, fri], start: "07:00", end: "24:00"}
              - {name: weekend, price: "0.22", days: [sat, sun, holiday], start: "07:00", end: "24:00"}
"""
