"""The retention policy of raw events: a TimescaleDB job calling events_retention_job (migration 0014)."""

from __future__ import annotations

import logging

import orjson
from psycopg_pool import AsyncConnectionPool

from usagehub.storage.migrations import timescale_available
from usagehub.storage.pool import mapped_errors

log = logging.getLogger(__name__)
_PROC = "events_retention_job"


async def set_event_retention(pool: AsyncConnectionPool, days: int | None) -> bool:
    """Keep raw events ``days`` days (0: forever, None: leave as set); True when that policy is in place.

    Only on TimescaleDB: elsewhere the setting is ignored with a warning. None checks nothing (False).
    """
    if days is None:
        return False
    if not await timescale_available(pool):
        if days:
            log.warning("event_retention_days needs TimescaleDB; raw events are kept")
        return False
    async with mapped_errors(), pool.connection() as conn, conn.transaction():
        cur = await conn.execute("SELECT job_id, config ->> 'keep' FROM timescaledb_information.jobs "
                                 "WHERE proc_name = %s", (_PROC,))
        jobs = {int(str(r[0])): r[1] for r in await cur.fetchall()}
        keep = f"{days} days"
        if days and list(jobs.values()) == [keep]:
            return True  # every command of a hub applies the setting: unchanged, the job keeps its schedule
        for job in jobs:
            await conn.execute("SELECT delete_job(%s)", (job,))
        if days == 0:
            return False
        config = orjson.dumps({"keep": keep}).decode()
        await conn.execute("SELECT add_job(%s::regproc, interval '1 day', config => %s::jsonb)", (_PROC, config))
    log.info("raw events kept %d days (never those of unbilled periods)", days)
    return True
