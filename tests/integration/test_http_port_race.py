"""A hub whose HTTP port is taken after its pre-start check (before uvicorn binds) exits naming the port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.integration.hubproc import ROOT
from tests.peers import free_port, time_scale

pytestmark = pytest.mark.integration

MIGRATION_LOCK = 7_311_001  # usagehub.storage.migrations._LOCK_KEY: the hub waits on it after its port check


def _waiting_on_migration_lock(conn: psycopg.Connection, dbname: str) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event = 'advisory'",
                       (dbname,)).fetchone()
    return row is not None and row[0] > 0


def test_http_port_taken_between_the_check_and_the_bind_ends_the_hub_naming_the_port(
        database_url: str, tmp_path: Path) -> None:
    port = free_port()
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))  # the hub stops in migrate(), checked
        dbname = holder.info.dbname
        hub = subprocess.Popen(
            [sys.executable, "-m", "usagehub", "serve", "--database-url", database_url, "--data-dir",
             str(tmp_path / "data"), "--http-port", str(port), "--embedded-broker-port", str(free_port()),
             "--session-workers", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=dict(os.environ))
        try:
            deadline = time.monotonic() + 60 * time_scale()
            while not _waiting_on_migration_lock(holder, dbname):
                assert hub.poll() is None, hub.communicate()[0]
                assert time.monotonic() < deadline, "the hub never reached its migrations"
                time.sleep(0.05)
            with socket.socket() as taker:  # another process takes the port now, after the hub's check
                taker.bind(("127.0.0.1", port))
                taker.listen()
                holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
                try:
                    out, _ = hub.communicate(timeout=60 * time_scale())
                except subprocess.TimeoutExpired:
                    pytest.fail("the hub kept running without its HTTP port")
        finally:
            if hub.poll() is None:
                hub.kill()
                hub.wait(10)
    assert hub.returncode == 2, out
    assert f"port {port} on 127.0.0.1 (GraphQL/HTTP) is already in use; choose another with --http-port" in out, out
    assert "Traceback" not in out, out
