"""Fixtures shared by the storage tests that compare TimescaleDB with plain PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from psycopg_pool import AsyncConnectionPool

from usagehub.storage.pool import open_pool


@pytest.fixture
async def ts_pool(timescale_database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """An open pool on a fresh, migrated TimescaleDB database."""
    p = await open_pool(timescale_database_url, min_size=1, max_size=4)
    yield p
    await p.close()


@pytest.fixture
async def plain_pool(plain_database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """An open pool on a fresh, migrated plain PostgreSQL database (TimescaleDB installed, not preloaded)."""
    p = await open_pool(plain_database_url, min_size=1, max_size=4)
    yield p
    await p.close()
