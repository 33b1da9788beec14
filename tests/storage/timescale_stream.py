"""One event stream and one set of GraphQL questions, to run against each storage and compare."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg_pool import AsyncConnectionPool

from tests.storage.test_sessions_billing import alarm, feed, reading, wired
from usagehub.analytics.service import AnalyticsService
from usagehub.graphql.context import Context, Services
from usagehub.graphql.schema import build_schema
from usagehub.pipeline.rebind import rebind
from usagehub.storage.keys import Principal
from usagehub.storage.queries import Reads
from usagehub.storage.registry import Registry

AUG = datetime(2026, 8, 1, tzinfo=UTC)
REBIND_AT = datetime(2026, 10, 15, 6, tzinfo=UTC)


async def compress_everything(pool: AsyncConnectionPool) -> int:
    """Compress every chunk of every hypertable (TimescaleDB only); the number compressed."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(compress_chunk(c, if_not_compressed => true)) FROM show_chunks('events') c "
            "UNION ALL SELECT count(compress_chunk(c, if_not_compressed => true)) FROM show_chunks('session_points') c")
        return sum(int(str(r[0])) for r in await cur.fetchall())


async def play(pool: AsyncConnectionPool, *, timescale: bool) -> None:
    """Accounts in three zones, meters and an alarm panel, in-order, late, duplicate and re-bound data.

    On TimescaleDB every chunk is compressed half-way, so the second half (late data, duplicates,
    a billing run, a correction, a retroactive re-binding) writes into compressed chunks.
    """
    registry = Registry(pool)
    for account, zone, market in (("a1", "Europe/Berlin", "DE"), ("a2", "America/New_York", "US"),
                                  ("a3", "Asia/Kolkata", "IN")):
        await registry.upsert_account(account_id=account, timezone=zone, market=market)
    for dev, profile in (("m1", "acme-em340"), ("m2", "acme-em340"), ("m3", "acme-em340"), ("ax", "acme-alarm-ax")):
        await registry.upsert_device(device_id=dev, profile_id=profile)
    for dev, account in (("m1", "a1"), ("m2", "a2"), ("m3", "a3"), ("ax", "a1")):
        await registry.bind(device_id=dev, account_id=account, valid_from=AUG)
    pipeline, billing = wired(pool)
    hours = [AUG + timedelta(hours=7 * i) for i in range(330)]  # ~96 days, every 7 hours
    in_order = [reading(dev, i, ts, (i * 37 * (k + 1)) % 400_000 + i * 10)
                for k, dev in enumerate(("m1", "m2", "m3")) for i, ts in enumerate(hours) if i % 3]
    alarms = [alarm("ax", f"e{i}", ts, "alarm" if i % 4 else "door_open") for i, ts in enumerate(hours[::5])]
    await feed(pipeline, in_order + alarms)
    if timescale:
        assert await compress_everything(pool) > 0
    late = [reading(dev, i, ts, (i * 37 * (k + 1)) % 400_000 + i * 10)
            for k, dev in enumerate(("m1", "m2", "m3")) for i, ts in enumerate(hours) if i % 3 == 0]
    await feed(pipeline, late[::2])
    await feed(pipeline, in_order[:50] + late[::2][:20])  # duplicates: counted once
    await billing.run(tenant="default", period="2026-09", account_id=None, author="k")
    await feed(pipeline, [*late[1::2], alarm("ax", "late", AUG + timedelta(days=40))])
    await billing.correct(tenant="default", device_id="m2", meter="energy", ts=AUG + timedelta(days=50),
                          quantity=Decimal("-1.25"), reason="swap", author="k")
    await registry.bind(device_id="m3", account_id="a1", valid_from=REBIND_AT)
    async with pool.connection() as conn, conn.transaction():
        await rebind(billing.engine, conn, "m3", REBIND_AT)


QUESTIONS = [
    '{ billingRecords(accountId: "%s", first: 100) { edges { node { id period quantity unit status kind '
    'version } } } }',
    '{ sessions(accountId: "%s", first: 200) { edges { node { id service start end closedReason devices '
    'aggregates { product value samples seconds } } } } }',
    '{ usage(accountId: "%s", since: "2026-08-01T00:00:00Z", until: "2026-12-01T00:00:00Z", bucket: DAY) '
    '{ start meter quantity unit } }',
    '{ usage(accountId: "%s", since: "2026-09-01T00:00:00Z", until: "2026-09-08T00:00:00Z", bucket: HOUR) '
    '{ start meter quantity unit } }',
    '{ consumptionSeries(scope: ACCOUNT, key: "%s", since: "2026-08-01", until: "2026-12-01", bucket: DAY '
    'product: "energy") '
    '{ start quantity activity accounts } }',
    '{ consumptionSeries(scope: ACCOUNT, key: "%s", since: "2026-08-01", until: "2026-12-01", bucket: HOUR '
    'product: "energy") '
    '{ start quantity activity accounts } }',
    '{ consumptionSeries(scope: ACCOUNT, key: "%s", since: "2026-08-01", until: "2026-12-01", bucket: MONTH '
    'product: "energy") '
    '{ start quantity activity accounts } }',
    '{ meterInspection(accountId: "%s") { deviceId meter lastValue periodTotal } }',
]
FLEET = [
    '{ consumptionSeries(scope: FLEET, since: "2026-08-01", until: "2026-12-01", bucket: WEEK '
    'product: "energy") '
    '{ start quantity activity accounts } }',
    '{ consumptionSeries(scope: MARKET, key: "DE", since: "2026-08-01", until: "2026-12-01", bucket: DAY '
    'product: "energy") '
    '{ start quantity activity accounts } }',
    '{ consumptionSeries(scope: DEVICE, key: "m3", since: "2026-08-01", until: "2026-12-01", bucket: DAY '
    'product: "energy") '
    '{ start quantity activity accounts } }',
    '{ topConsumers(product: "energy", since: "2026-08-01", until: "2026-12-01", first: 5) '
    '{ accountId market quantity } }',
    '{ events(deviceId: "m1", first: 500) { edges { node { ts meter eventId value } } } }',
    '{ events(deviceId: "ax", first: 500) { edges { node { ts meter eventId value } } } }',
]


async def answers(pool: AsyncConnectionPool) -> dict[str, Any]:
    """Every question's answer (data or error), by question."""
    _, billing = wired(pool)
    services = Services(registry=Registry(pool), reads=Reads(pool), ingest_totals={}, replay=None,  # type: ignore[arg-type]
                        extra={}, billing=billing, analytics=AnalyticsService(pool))
    schema = build_schema()
    ctx = Context(services=services, principal=Principal(key_id="k-admin", role="admin", tenant="default"))
    out: dict[str, Any] = {}
    for query in [q % a for q in QUESTIONS for a in ("a1", "a2", "a3")] + FLEET:
        result = await schema.execute(query, context_value=ctx)
        out[query] = result.data if not result.errors else [str(e) for e in result.errors]
    return out
