"""Every alert source the console lists, through the real pipeline and decoders: DC-09/Contact ID trouble codes,
SNMP traps mapped by profile (tamper, mains failure — not its restoration), and prepaid low balance, block and
restore; each stored in the tenant of its device or account."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from tests.core.codecs.test_binary_profiles import _dc09
from tests.storage.test_pipeline import feed
from tests.storage.test_rating_support import _PROFILES, wired
from usagehub.adapters.base import Outcome
from usagehub.core.codecs.snmp import encode_payload
from usagehub.core.events import RawMessage
from usagehub.operations.service import OperationsService
from usagehub.pipeline.alerts import AlertStage
from usagehub.storage.registry import Registry

TS = datetime(2024, 5, 1, 11, 59, tzinfo=UTC)  # the DC-09 frames' own time
TAMPER, MAINS_FAIL, MAINS_BACK, DOOR = (f"1.3.6.1.4.1.32473.1.0.{n}" for n in (2, 3, 4, 1))


def dc09(data: str, seq: str) -> RawMessage:
    return RawMessage(transport="binary", topic="sia-dc09-panel", payload=_dc09(data, seq), received_at=TS,
                      meta={"profile": "sia-dc09-panel"})


def trap(oid: str, n: int) -> RawMessage:
    ts = TS + timedelta(minutes=n)
    body = {"kind": "trap", "ts": ts.isoformat(), "source": "192.0.2.7:162", "version": "2c", "inform": False,
            "request_id": n, "trap": oid, "varbinds": {}, "types": {}, "device_id": "panel-1"}
    return RawMessage(transport="snmp-trap", topic=oid, payload=encode_payload(body), received_at=ts,
                      source="192.0.2.7:162", meta={"device_id": "panel-1", "profile": "security-panel-traps"})


async def setup(pool: AsyncConnectionPool) -> OperationsService:
    registry = Registry(pool)
    for account, tenant in (("a1", "default"), ("b1", "elsewhere")):
        await registry.upsert_account(account_id=account, market="DE", currency="EUR", timezone="Europe/Berlin",
                                      tenant=tenant)
    for device, profile, account, tenant in (("4242", "sia-dc09-panel", "a1", "default"),
                                             ("panel-1", "security-panel-traps", "b1", "elsewhere")):
        await registry.upsert_device(device_id=device, profile_id=profile, tenant=tenant)
        await registry.bind(device_id=device, account_id=account, valid_from=TS - timedelta(days=30),
                            tenant=tenant)
    return OperationsService(pool, _PROFILES)


async def test_dc09_trouble_codes_and_mapped_snmp_traps_raise_alerts_in_their_tenant(pool: AsyncConnectionPool
                                                                                      ) -> None:
    ops = await setup(pool)
    pipeline, _, _ = wired(pool)
    pipeline.hooks.append(AlertStage(_PROFILES).apply)
    outcomes = await feed(pipeline, [dc09("Nri1/BA007", "0001"), dc09("Nri1/AT000", "0002"),  # alarm, AC trouble
                                     dc09("Nri1/AT000", "0002"),  # the same frame again: one alert
                                     trap(DOOR, 1), trap(TAMPER, 2), trap(MAINS_FAIL, 3), trap(MAINS_BACK, 4)])
    assert Outcome.QUARANTINED not in outcomes, outcomes

    mine = await ops.alerts(tenant="default")
    assert [(a.kind, a.severity, a.device_id, a.account_id) for a in mine] == [("fault", "warning", "4242", "a1")]
    assert "troubles" in mine[0].message
    theirs = await ops.alerts(tenant="elsewhere")
    assert sorted((a.kind, a.severity, a.message.split(":")[1].split()[0]) for a in theirs) == [
        ("fault", "warning", "mains_failure"), ("tamper", "critical", "tamper")]  # restored and door: none
    assert {a.account_id for a in theirs} == {"b1"}


async def test_low_balance_block_and_restore_are_alerts_of_the_accounts_tenant(pool: AsyncConnectionPool) -> None:
    ops = await setup(pool)
    async with pool.connection() as conn:
        for kind in ("low_balance", "blocked", "restored"):
            await conn.execute("INSERT INTO prepaid_events (account_id, kind, balance, funds, currency) "
                               "VALUES ('b1', %s, 1.5, 1.5, 'EUR')", (kind,))
    theirs = {a.kind: a for a in await ops.alerts(tenant="elsewhere")}
    assert {k: a.severity for k, a in theirs.items()} == {"low_balance": "warning", "blocked": "critical",
                                                         "restored": "info"}
    assert "1.5 EUR" in theirs["low_balance"].message and theirs["restored"].account_id == "b1"
    assert await ops.alerts(tenant="default") == []
    csv = await ops.alerts_csv(tenant="elsewhere")
    assert csv.count("\n") == 4 and ",low_balance," in csv and ",restored," in csv
