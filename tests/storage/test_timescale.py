"""TimescaleDB storage: layout, retention, rollups on compressed chunks, and the same answers as PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.conftest import require_timescale
from tests.storage.analytics_data import add_accounts, copy_points
from tests.storage.test_analytics_rollups import _assert_exact
from tests.storage.test_sessions_billing import NOW, feed, reading, wired
from tests.storage.timescale_stream import answers, compress_everything, play
from usagehub.storage.registry import Registry
from usagehub.storage.retention import set_event_retention

AUG = datetime(2026, 8, 1, tzinfo=UTC)


async def _rows(pool: AsyncConnectionPool, query: str, *params: object) -> list[tuple[object, ...]]:
    async with pool.connection() as conn:
        return await (await conn.execute(query, params)).fetchall()


async def test_installed_but_not_preloaded_stays_plain(plain_pool: AsyncConnectionPool) -> None:
    """Defect 1: an installed extension that is not preloaded must not break migration 0001."""
    require_timescale()
    pool = plain_pool
    assert await _rows(pool, "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'") == [(1,)]
    assert await _rows(pool, "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == [(0,)]
    assert await _rows(pool, "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
                             "WHERE c.relname = 'events'") == [(1,)]
    assert await _rows(pool, "SELECT events_drop_expired(interval '1 day')") == [(0,)]


async def test_layout_hypertables_compression_and_paused_jobs(ts_pool: AsyncConnectionPool) -> None:
    hypers = await _rows(ts_pool, "SELECT hypertable_name, compression_enabled "
                                  "FROM timescaledb_information.hypertables ORDER BY 1")
    # usage_entries is a view over the points since migration 0041 (corrections: a plain table).
    assert hypers == [("events", True), ("session_points", True)]
    settings = await _rows(ts_pool, "SELECT hypertable_name, attname, segmentby_column_index, orderby_column_index "
                                    "FROM timescaledb_information.compression_settings ORDER BY 1, 3 NULLS LAST, 4")
    # events: ordered by ts alone (0044): the identity's event_id and event_seq are each NULL in some rows, and
    # per-batch min/max of a column with NULLs made TimescaleDB miss duplicates in compressed batches.
    assert settings == [("events", "device_id", 1, None), ("events", "meter", 2, None), ("events", "ts", None, 1),
                        ("session_points", "account_id", 1, None),
                        ("session_points", "device_id", 2, None), ("session_points", "start_ts", None, 1),
                        ("session_points", "point_id", None, 2)]
    # Defect 3: no default (ts DESC) index next to the identity index that starts with the time series
    # (0044: a unique index on the id's text, stored as text or as event_seq).
    indexes = await _rows(ts_pool, "SELECT indexname FROM pg_indexes WHERE tablename = 'events'")
    assert indexes == [("events_identity",)]
    # The clone's policies are paused (the fixtures' template pauses them); tests run them explicitly.
    # events are compressed by events_compress_job (0044: compact forms first), the others by the policy.
    jobs = await _rows(ts_pool, "SELECT proc_name, scheduled FROM timescaledb_information.jobs WHERE job_id >= 1000")
    assert sorted(jobs) == [("events_compress_job", False), ("policy_compression", False)]  # type: ignore[comparison-overlap]


async def test_rollups_stay_exact_on_compressed_chunks(ts_pool: AsyncConnectionPool) -> None:
    zones = {"acc-berlin": "Europe/Berlin", "acc-nepal": "Asia/Kathmandu"}
    await add_accounts(ts_pool, zones)
    base = datetime(2026, 9, 1, tzinfo=UTC)
    rows = [(acc, "electricity", f"d{i % 3}", "energy", "usage" if i % 5 else "gauge",
             base + timedelta(minutes=37 * i), Decimal(i % 11) + Decimal("0.125"))
            for i in range(1500) for acc in zones]
    await copy_points(ts_pool, rows)
    assert await compress_everything(ts_pool) >= 3
    await _assert_exact(ts_pool)
    # Late points into compressed chunks, an update, and deletes through session_points_delete.
    await copy_points(ts_pool, [(acc, "electricity", "d9", "energy", "usage", base + timedelta(hours=h), Decimal(3))
                                for h in range(0, 900, 7) for acc in zones])
    await _assert_exact(ts_pool)
    async with ts_pool.connection() as conn:
        await conn.execute("UPDATE session_points SET value = value * 2 WHERE point_id % 7 = 1")
        await _assert_exact(ts_pool)
        gone = await (await conn.execute(
            "SELECT session_points_delete(array(SELECT point_id FROM session_points WHERE point_id % 3 = 0))"
        )).fetchone()
        assert gone is not None and int(str(gone[0])) > 900
        await _assert_exact(ts_pool)
        # Any other DELETE would leave the rollups behind: the guard refuses it.
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            await conn.execute("DELETE FROM session_points WHERE point_id % 5 = 0")
    await _assert_exact(ts_pool)


async def _event_count(pool: AsyncConnectionPool, since: datetime | None = None) -> int:
    rows = await _rows(pool, "SELECT count(*) FROM events WHERE %s::timestamptz IS NULL OR ts >= %s", since, since)
    return int(str(rows[0][0]))


async def test_retention_never_drops_what_unbilled_periods_or_unbound_usage_need(
        ts_pool: AsyncConnectionPool) -> None:
    registry = Registry(ts_pool)
    await registry.upsert_account(account_id="a1", timezone="Europe/Berlin")
    for dev in ("m1", "m9"):
        await registry.upsert_device(device_id=dev, profile_id="acme-em340")
    await registry.bind(device_id="m1", account_id="a1", valid_from=AUG)
    pipeline, billing = wired(ts_pool)
    days = [AUG + timedelta(days=d, hours=9) for d in range(112)]  # Aug 1 .. Nov 20
    unbound_from = datetime(2026, 9, 20, tzinfo=UTC)
    await feed(pipeline, [reading("m1", d, ts, 1000 * d) for d, ts in enumerate(days)]
               + [reading("m9", d, unbound_from + timedelta(days=d), 500 * d) for d in range(5)])
    total = await _event_count(ts_pool)
    assert total == 117
    drop = "SELECT events_drop_expired(interval '30 days', %s)"
    # Every period is open: nothing may go, however short the retention.
    assert await _rows(ts_pool, drop, NOW) == [(0,)]
    assert await _event_count(ts_pool) == total
    await billing.run(tenant="default", period="2026-08", account_id="a1", author="k")
    await billing.run(tenant="default", period="2026-09", account_id="a1", author="k")
    # August and September are billed, but m9's usage since 20 September waits for a binding.
    horizon = await _rows(ts_pool, "SELECT events_retention_horizon(interval '30 days', %s)", NOW)
    assert horizon == [(unbound_from,)]
    dropped = await _rows(ts_pool, drop, NOW)
    assert int(str(dropped[0][0])) >= 5  # the weekly chunks of August and early September
    kept_since = unbound_from
    assert await _event_count(ts_pool) < total
    # Whole chunks go: everything since the horizon stays, nothing a chunk (7 days) older than it does.
    assert await _event_count(ts_pool, kept_since) == sum(1 for ts in days if ts >= kept_since) + 5
    assert await _event_count(ts_pool, kept_since - timedelta(days=7)) < total - 5
    older = await _rows(ts_pool, "SELECT count(*) FROM events WHERE ts < %s", kept_since - timedelta(days=7))
    assert older == [(0,)]
    # The retention setting schedules (and removes) the job that runs this.
    assert await set_event_retention(ts_pool, 400) is True
    jobs = await _rows(ts_pool, "SELECT config ->> 'keep' FROM timescaledb_information.jobs "
                                "WHERE proc_name = 'events_retention_job'")
    assert jobs == [("400 days",)]
    before = await _rows(ts_pool, "SELECT job_id FROM timescaledb_information.jobs "
                                  "WHERE proc_name = 'events_retention_job'")
    assert await set_event_retention(ts_pool, 400) is True  # the next command with the same setting
    assert await _rows(ts_pool, "SELECT job_id FROM timescaledb_information.jobs "
                                "WHERE proc_name = 'events_retention_job'") == before
    assert await set_event_retention(ts_pool, None) is False  # unset: left as it is
    assert len(await _rows(ts_pool, "SELECT 1 FROM timescaledb_information.jobs "
                                    "WHERE proc_name = 'events_retention_job'")) == 1
    assert await set_event_retention(ts_pool, 0) is False
    assert await _rows(ts_pool, "SELECT count(*) FROM timescaledb_information.jobs "
                                "WHERE proc_name = 'events_retention_job'") == [(0,)]


async def test_both_storages_give_identical_graphql_answers(plain_pool: AsyncConnectionPool,
                                                            ts_pool: AsyncConnectionPool) -> None:
    await play(plain_pool, timescale=False)
    await play(ts_pool, timescale=True)
    plain, timescale = await answers(plain_pool), await answers(ts_pool)
    assert all(not isinstance(v, list) for v in plain.values()), [v for v in plain.values() if isinstance(v, list)]
    assert sum(len(str(v)) for v in plain.values()) > 20_000  # the questions have real answers
    for query, answer in plain.items():
        assert timescale[query] == answer, query


PRELOAD_SHOW = """import sys
from pathlib import Path
import psycopg
from usagehub.storage.embedded import embedded_database_url
url = embedded_database_url(Path(sys.argv[1]), timescale=True)
with psycopg.connect(url) as conn:
    print(conn.execute("SHOW shared_preload_libraries").fetchone()[0])
"""


def test_preloaded_embedded_server_stops_with_its_last_process() -> None:
    """serve --timescale: preloading restarts the server once; it still stops when its process exits."""
    require_timescale()
    folder = Path(tempfile.mkdtemp(prefix="usagehub-test-preload-"))
    folder.chmod(0o755)
    try:
        for _ in range(2):  # the first run adds the preload and restarts, the second finds it set
            done = subprocess.run([sys.executable, "-c", PRELOAD_SHOW, str(folder)], capture_output=True, text=True,
                                  timeout=120, check=False)
            assert done.returncode == 0, done.stderr[-2000:]
            assert done.stdout.strip() == "timescaledb"
            assert not (folder / "pg" / "postmaster.pid").exists()  # stopped: no server left behind
        assert "shared_preload_libraries = 'timescaledb'" in (folder / "pg" / "postgresql.auto.conf").read_text()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
