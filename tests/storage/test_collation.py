"""A new embedded cluster collates by byte: identifiers compare by ``memcmp``, in code point order."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from usagehub.storage.embedded import embedded_database_url, initdb_environment


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
def test_initdb_alone_collates_by_byte_and_keeps_the_other_categories(every: str | None) -> None:
    environ = {"LANG": "C.UTF-8", "PATH": "/usr/bin", **({"LC_ALL": every} if every else {})}
    env = initdb_environment(environ)
    assert env["LC_COLLATE"] == "C" and "LC_ALL" not in env
    assert env.get("LC_CTYPE") == every  # LC_ALL's value kept for everything but collation
    assert {k: v for k, v in env.items() if not k.startswith("LC_")} == {"LANG": "C.UTF-8", "PATH": "/usr/bin"}
    assert environ.get("LC_ALL") == every and "LC_COLLATE" not in environ  # the caller's mapping untouched


def test_this_process_environment_is_never_changed(tmp_path: Path) -> None:
    # initdb runs in a child with its own environment; a cluster made before keeps its collation
    before = dict(os.environ)
    url = embedded_database_url(tmp_path)
    assert dict(os.environ) == before
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT datcollate FROM pg_database WHERE datname = 'postgres'").fetchone() == ("C",)
