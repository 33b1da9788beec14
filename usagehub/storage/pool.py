"""The one async connection pool and the mapping of psycopg errors to StorageError."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from usagehub.errors import IntegrityViolation, StorageError, StorageUnavailable

Connection = psycopg.AsyncConnection[tuple[object, ...]]


async def _in_utc(conn: psycopg.AsyncConnection[Any]) -> None:
    """Sessions in UTC: times come back with ``timezone.utc``, as decoded events carry it.

    With the server's own zone (``Etc/UTC`` on Debian) psycopg attaches a ZoneInfo, and every comparison or
    hash of an event's identity against a stored one (new events, first claims) called into it: about 8 µs per
    event, 3 % of the hub. No SQL here depends on the session zone (account zones are always explicit).
    """
    await conn.execute("SET TimeZone = 'UTC'")
    set_json_loads(_json_loads, conn)


def _json_loads(data: str | bytes) -> Any:
    """json/jsonb values (session state, walk marks) parsed by orjson: a fifth of the stdlib's cost.

    orjson refuses integers past 64 bits, which the stdlib (and PostgreSQL) accept: those take the stdlib.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


async def open_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> AsyncConnectionPool:
    """An open pool on ``url``; raises StorageUnavailable when the database cannot be reached."""
    pool: AsyncConnectionPool = AsyncConnectionPool(
        url, min_size=min_size, max_size=max_size, open=False, timeout=15,
        kwargs={"autocommit": True, "application_name": "usagehub"}, configure=_in_utc,
    )
    try:
        await pool.open(wait=True, timeout=15)
    except Exception as err:
        await pool.close()
        raise StorageUnavailable(f"cannot connect to the database: {err}") from err
    return pool


@contextlib.asynccontextmanager
async def mapped_errors() -> AsyncIterator[None]:
    """Turn psycopg exceptions into the StorageError family at the storage boundary."""
    try:
        yield
    except psycopg.errors.IntegrityError as err:
        raise IntegrityViolation(str(err).splitlines()[0]) from err
    except psycopg.OperationalError as err:
        raise StorageUnavailable(str(err).splitlines()[0] if str(err) else "database unavailable") from err
    except psycopg.Error as err:
        raise StorageError(str(err).splitlines()[0] if str(err) else type(err).__name__) from err
