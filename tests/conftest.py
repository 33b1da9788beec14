"""Shared fixtures: an embedded PostgreSQL per session, a fresh migrated database per test, Mosquitto."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.peers import free_port, require_binary
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def _with_db(url: str, dbname: str) -> str:
    conninfo = psycopg.conninfo.conninfo_to_dict(url)
    conninfo["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**conninfo)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of a session-wide embedded PostgreSQL (or USAGEHUB_TEST_DATABASE_URL)."""
    if os.environ.get("USAGEHUB_TEST_DATABASE_URL"):
        return os.environ["USAGEHUB_TEST_DATABASE_URL"]
    folder = Path(tempfile.mkdtemp(prefix="usagehub-test-pg-"))
    os.chmod(folder, 0o755)
    return embedded_database_url(folder)


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> str:
    """A database with every migration applied, cloned by each test."""
    name = f"uh_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    async def go() -> None:
        pool = await open_pool(_with_db(pg_server_url, name), min_size=1, max_size=2)
        await migrate(pool)
        await pool.close()

    asyncio.run(go())
    return name


@pytest.fixture
def database_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    name = f"uh_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _with_db(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """An open pool on the test's database."""
    p = await open_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()


class Mosquitto:
    """A real Mosquitto broker on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_binary("mosquitto")
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 1000000\nmax_inflight_messages 0\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        import socket

        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto broker for one test."""
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()
