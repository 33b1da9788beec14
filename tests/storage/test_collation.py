"""A new embedded cluster collates by byte: identifiers compare by ``memcmp``, in code point order."""

from __future__ import annotations

import os

import pytest
from psycopg_pool import AsyncConnectionPool

from usagehub.storage.embedded import _byte_order_collation


async def test_a_new_cluster_compares_ids_by_byte_in_code_point_order(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        row = await (await conn.execute(
            "SELECT datcollate FROM pg_database WHERE datname = current_database()")).fetchone()
        assert row == ("C",)
        ids = ["m-é", "M-1", "m-1", "m-€", "m-z", "m-Z", "m-ä", "m-10", "m-9"]
        got = await (await conn.execute("SELECT x FROM unnest(%s::text[]) AS x ORDER BY x", (ids,))).fetchall()
        assert [r[0] for r in got] == sorted(ids)  # Python sorts str by code point
        # character classes are the environment's, not ASCII only
        assert await (await conn.execute("SELECT upper('m-é-ä')")).fetchone() == ("M-É-Ä",)


@pytest.mark.parametrize("every", [None, "C.UTF-8"])
def test_only_initdb_sees_byte_order_and_the_rest_of_the_environment_stays(
        monkeypatch: pytest.MonkeyPatch, every: str | None) -> None:
    monkeypatch.delenv("LC_COLLATE", raising=False)
    monkeypatch.delenv("LC_CTYPE", raising=False)
    if every is None:
        monkeypatch.delenv("LC_ALL", raising=False)
    else:
        monkeypatch.setenv("LC_ALL", every)
    before = dict(os.environ)
    with _byte_order_collation(fresh=True):
        assert os.environ["LC_COLLATE"] == "C" and "LC_ALL" not in os.environ
        assert os.environ.get("LC_CTYPE") == every  # LC_ALL's value kept for everything but collation
    assert dict(os.environ) == before
    with _byte_order_collation(fresh=False):  # a cluster made before keeps its collation
        assert dict(os.environ) == before
