"""Cost of the entitlement check (pipeline/identity.py) in the decode step, beside plain decoding.

Same messages, same process, one embedded PostgreSQL holding 1,000 meters and 50 gateways:
  baseline  ProfileSet.decode (what the decode step did before the check)
  warm      Entitlements.decode with the registry facts cached (the steady state)
  cold      Entitlements.decode with an empty cache every batch (one registry query per batch)
for single-meter MQTT messages and for gateway messages of 50 readings, in batches of 2,000 messages.

Run: .venv/bin/python bench/identity.py [MESSAGES]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.scratch import scratch  # noqa: E402
from usagehub.core.decode import ProfileSet  # noqa: E402
from usagehub.core.events import RawMessage, UsageEvent  # noqa: E402
from usagehub.pipeline.identity import Entitlements  # noqa: E402
from usagehub.runtime.config import SHIPPED_PROFILES  # noqa: E402
from usagehub.runtime.profile_files import load_profiles  # noqa: E402
from usagehub.storage.embedded import embedded_database_url  # noqa: E402
from usagehub.storage.events import QuarantineItem  # noqa: E402
from usagehub.storage.migrations import migrate  # noqa: E402
from usagehub.storage.pool import open_pool  # noqa: E402

METERS, GATEWAYS, BATCH = 1000, 50, 2000


@dataclass(slots=True)
class Item:
    message: RawMessage
    events: list[UsageEvent] = field(default_factory=list)
    quarantine: QuarantineItem | None = None


def single(n: int) -> list[RawMessage]:
    now = datetime.now(UTC)
    ts = (now - timedelta(hours=1)).isoformat()
    return [RawMessage(transport="mqtt", topic=f"meters/m{k % METERS:04d}/reading", received_at=now,
                       payload=orjson.dumps({"seq": k, "ts": ts, "energy_wh": k, "boot": 1})) for k in range(n)]


def gateway(n: int) -> list[RawMessage]:
    now = datetime.now(UTC)
    ts = (now - timedelta(hours=1)).isoformat()
    out = []
    for c in range(n // 50):
        readings = [{"meter": f"g{(c + i) % METERS:04d}", "seq": c, "ts": ts, "energy_wh": i} for i in range(50)]
        out.append(RawMessage(transport="mqtt", topic=f"gateways/gw{c % GATEWAYS:02d}/batch", received_at=now,
                              payload=orjson.dumps({"readings": readings})))
    return out


async def setup(pool: object) -> None:
    async with pool.connection() as conn:  # type: ignore[attr-defined]
        await conn.execute(
            "INSERT INTO devices (device_id, profile_id) SELECT 'm' || lpad(i::text, 4, '0'), 'acme-em340' "
            "FROM generate_series(0, %s) i", (METERS - 1,))
        await conn.execute("INSERT INTO devices (device_id) SELECT 'g' || lpad(i::text, 4, '0') "
                           "FROM generate_series(0, %s) i", (METERS - 1,))
        await conn.execute(
            "INSERT INTO devices (device_id, profile_id) SELECT 'gw' || lpad(i::text, 2, '0'), "
            "'acme-dc100-gateway' FROM generate_series(0, %s) i", (GATEWAYS - 1,))
        await conn.execute("INSERT INTO gateway_devices SELECT g.device_id, m.device_id FROM devices g "
                           "JOIN devices m ON m.device_id LIKE 'g0%%' OR m.device_id LIKE 'g1%%' "
                           "WHERE g.device_id LIKE 'gw%%'")


async def run(messages: list[RawMessage], check: Entitlements | None, profiles: ProfileSet,
              cold: bool = False) -> float:
    """Messages per second through the decode step."""
    started = time.perf_counter()
    for i in range(0, len(messages), BATCH):
        chunk = messages[i:i + BATCH]
        if check is None:
            for m in chunk:
                profiles.decode(m)
            continue
        if cold:
            check.facts._cache.clear()
        items = [Item(m) for m in chunk]
        await check.decode(items)
        assert not any(it.quarantine for it in items), next(it.quarantine for it in items if it.quarantine)
    return len(messages) / (time.perf_counter() - started)


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40_000
    tmp = scratch("usagehub-bench-identity-")
    pool = await open_pool(embedded_database_url(tmp / "db"), max_size=2)
    await migrate(pool)
    await setup(pool)
    profiles = ProfileSet(load_profiles(SHIPPED_PROFILES))
    check = Entitlements(pool, profiles, ttl_s=3600)
    print(f"{'case':34} {'messages/s':>11} {'readings/s':>11}  (median of 5, {n} messages)")
    for name, msgs, per in (("single meter", single(n), 1), ("gateway, 50 readings", gateway(n), 50)):
        await run(msgs[:BATCH], check, profiles)  # warm the caches
        for label, chk, cold in (("baseline decode", None, False), ("decode + check, warm", check, False),
                                 ("decode + check, cold", check, True)):
            rates = [await run(msgs, chk, profiles, cold) for _ in range(5)]
            rate = statistics.median(rates)
            print(f"{name + ': ' + label:34} {rate:11,.0f} {rate * per:11,.0f}")
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
