"""Routing by account: all devices of one account share a partition; a moving device follows its account."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from psycopg_pool import AsyncConnectionPool

from usagehub.core.events import MeterKind, UsageEvent
from usagehub.runtime.scaleout import AccountRouter
from usagehub.storage.registry import Registry

MOVE = datetime(2026, 10, 15, tzinfo=UTC)


def event(device: str, ts: datetime) -> UsageEvent:
    return UsageEvent(device_id=device, event_id="1", meter="energy", ts=ts, value=Decimal(1), unit="kWh",
                      kind=MeterKind.CUMULATIVE, profile_id="acme-em340", service="electricity", received_at=ts)


async def test_router_keys_by_account_at_event_time_across_tenants(pool: AsyncConnectionPool) -> None:
    registry = Registry(pool)
    for tenant, account, devices in (("t1", "home", ["d1", "d2"]), ("t2", "shop", ["d3"])):
        await registry.upsert_account(account_id=account, tenant=tenant)
        for d in devices:
            await registry.upsert_device(device_id=d, tenant=tenant, profile_id="acme-em340")
            await registry.bind(device_id=d, account_id=account, tenant=tenant,
                                valid_from=datetime(2026, 1, 1, tzinfo=UTC), valid_to=MOVE if d == "d2" else None)
    await registry.upsert_account(account_id="home2", tenant="t1")
    await registry.bind(device_id="d2", account_id="home2", tenant="t1", valid_from=MOVE)
    router = AccountRouter(pool)
    before, after = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 20, tzinfo=UTC)
    assert router.key_of(event("d1", before)) == "device:d1"  # nothing loaded yet: by device
    await router.refresh()
    assert router.key_of(event("d1", before)) == router.key_of(event("d2", before)) == "account:home"
    assert router.key_of(event("d2", after)) == "account:home2"
    assert router.key_of(event("d3", after)) == "account:shop"
    assert router.key_of(event("unknown", after)) == "device:unknown"
    # Bound to one account only: keyed by it at any time (no event time needed, so no decoding at ingest).
    assert router.key_of(event("d1", datetime(2025, 1, 1, tzinfo=UTC))) == "account:home"
    assert router.device_key("d1") == "account:home" and router.device_key("d3") == "account:shop"
    assert router.device_key("d2") is None  # moved: the key depends on the event's time
    assert router.key_of(event("d2", datetime(2025, 1, 1, tzinfo=UTC))) == "device:d2"  # unbound then
    assert router.device_key("unknown") == "device:unknown"
    # A binding made later counts at the next refresh (the cache of keys starts over).
    await registry.upsert_device(device_id="late", tenant="t2", profile_id="acme-em340")
    await registry.bind(device_id="late", account_id="shop", tenant="t2", valid_from=MOVE)
    assert router.device_key("late") == "device:late"
    await router.refresh()
    assert router.device_key("late") == "account:shop"


async def test_router_cache_is_bounded(pool: AsyncConnectionPool) -> None:
    router = AccountRouter(pool, max_cached=3)
    for i in range(10):
        assert router.device_key(f"invented-{i}") == f"device:invented-{i}"
    assert len(router._keys) <= 3
