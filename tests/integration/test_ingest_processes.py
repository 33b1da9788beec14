"""``serve --ingest-processes 2`` against Mosquitto: two tenants bill exactly through the children, a killed
child is replaced without losing or doubling anything, nothing is acknowledged before a child commits, and
a caller on the hub's socket without its secret is turned away."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import struct
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import psutil
import psycopg
import pytest

from tests.conftest import SHARED, Mosquitto
from tests.integration.hubproc import HubProcess, usagehub
from tests.integration.test_bus_serve_workers import two_free_ports, worker_accepted
from tests.integration.test_crash import _publish
from tests.peers import time_scale
from usagehub.runtime.ingest_processes import FOLDER_PREFIX

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TENANTS = {"t1": ["d00", "d01", "d02"], "t2": ["d03", "d04"]}
INGEST = ["--ingest-processes", "2", "--session-workers", "0"]


def _seed(tmp: Path, tenant: str, devices: list[str]) -> Path:
    lines = [f"tenant: {tenant}", "accounts:", f"  - {{id: acct-{tenant}}}", "devices:"]
    lines += [f"  - {{id: {d}, profile: acme-em340}}" for d in devices]
    lines += ["bindings:"]
    lines += [f'  - {{device: {d}, account: acct-{tenant}, valid_from: "2026-01-01T00:00:00Z"}}' for d in devices]
    path = tmp / f"seed-{tenant}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _messages(rng: random.Random, readings: int = 150) -> tuple[list[str], dict[str, Decimal]]:
    """Readings of every device, shuffled, ~10 % published twice; the kWh each tenant's account adds."""
    lines: list[str] = []
    expected = dict.fromkeys(TENANTS, Decimal(0))
    for tenant, devices in TENANTS.items():
        for device in devices:
            first = register = rng.randrange(1000, 10**6)
            for k in range(1, readings + 1):
                register += rng.randrange(0, 500) if k > 1 else 0
                body = {"seq": k, "ts": f"2026-10-{1 + k // 96:02d}T{(k % 96) // 4:02d}:{15 * (k % 4):02d}:00Z",
                        "energy_wh": register, "boot": 1}
                lines.append(f"meters/{device}/reading\t{orjson.dumps(body).decode()}")
            expected[tenant] += Decimal(register - first) / 1000
    dups = rng.sample(lines, len(lines) // 10)
    rng.shuffle(lines)
    return lines + dups, expected


def _children(hub: HubProcess) -> list[psutil.Process]:
    """The hub's live ingest processes, by index."""
    return hub.children("ingest-worker")


def _wait_children(hub: HubProcess, count: int, not_pids: tuple[int, ...] = ()) -> list[psutil.Process]:
    deadline = time.monotonic() + 30 * time_scale()
    while True:
        live = [c for c in _children(hub) if c.pid not in not_pids]
        if len(live) == count:
            return live
        assert time.monotonic() < deadline, hub.log.read_text()[-3000:]
        time.sleep(0.1)


def _one(url: str, sql: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def _billed(url: str) -> dict[str, Decimal]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT a.tenant, sum(b.quantity) FROM billing_records b JOIN accounts a "
                            "USING (account_id) GROUP BY 1").fetchall()
    return {str(r[0]): Decimal(r[1]) for r in rows}


def _metric(hub: HubProcess, name: str) -> float:
    for line in httpx.get(f"http://127.0.0.1:{hub.port}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return -1.0


def _wait_stored(url: str, distinct: int, hub: HubProcess) -> None:
    deadline = time.monotonic() + 120 * time_scale()
    while _one(url, "SELECT count(*) FROM events") != distinct and time.monotonic() < deadline:
        time.sleep(0.3)
    assert _one(url, "SELECT count(*) FROM events") == distinct, hub.log.read_text()[-3000:]


def _seeded_hub(database_url: str, mosquitto: Mosquitto, tmp_path: Path, extra: list[str],
                env: dict[str, str] | None = None) -> HubProcess:
    """A hub with both tenants' accounts and meters seeded, started (ready once its children are connected)."""
    hub = HubProcess(database_url, mosquitto.url, tmp_path / "data", extra=extra, env=env)
    for tenant, devices in TENANTS.items():
        assert usagehub("seed", str(_seed(tmp_path, tenant, devices)), *hub.settings).returncode == 0
    hub.start()
    return hub


def test_two_tenants_bill_exactly_through_the_children_and_a_killed_one_is_replaced(
        database_url: str, mosquitto: Mosquitto, tmp_path: Path) -> None:
    if not (SHARED / "baselines" / "pub.py").exists():
        pytest.skip("../shared/baselines/pub.py is not present")
    lines, expected = _messages(random.Random(29))
    # As serve runs by default: a session worker replays what the children queue.
    hub = _seeded_hub(database_url, mosquitto, tmp_path, ["--ingest-processes", "2", "--session-workers", "1"])
    try:
        first, _ = _wait_children(hub, 2)
        publisher = _publish(mosquitto, lines, tmp_path / "fleet.txt")
        time.sleep(0.5)
        first.send_signal(signal.SIGKILL)  # what it held is sent again to its replacement
        assert publisher.wait(120) == 0
        _wait_stored(database_url, len(set(lines)), hub)
        deadline = time.monotonic() + 60 * time_scale()
        while _one(database_url, "SELECT count(*) FROM session_queue") != 0 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _billed(database_url) == expected  # each tenant's own readings, none twice
        nodes = _one(database_url, "SELECT array_agg(node ORDER BY node) FROM ingest_totals WHERE messages > 0")
        assert {str(n).split("/")[0] for n in nodes} >= {"ingest-0", "ingest-1"}  # type: ignore[attr-defined]
        # /metrics: the durable totals cover the children's batches; the hub counts what it received.
        deadline = time.monotonic() + 15 * time_scale()
        while _metric(hub, 'usagehub_ingest_stored{kind="accepted"}') != len(set(lines)):
            assert time.monotonic() < deadline, _metric(hub, 'usagehub_ingest_stored{kind="accepted"}')
            time.sleep(0.5)
        assert _metric(hub, 'usagehub_messages_in_total{transport="mqtt"}') >= len(lines)
        replaced = _wait_children(hub, 2, not_pids=(first.pid,))
        assert first.pid not in {c.pid for c in replaced}
        assert "ingest-worker 0 exited" in hub.log.read_text()
    finally:
        assert hub.terminate() == 0


def test_nothing_is_acknowledged_before_a_child_commits(database_url: str, mosquitto: Mosquitto,
                                                         tmp_path: Path) -> None:
    """Children frozen: the hub holds the messages unacknowledged; killed, the next hub receives them again."""
    if not (SHARED / "baselines" / "pub.py").exists():
        pytest.skip("../shared/baselines/pub.py is not present")
    lines, expected = _messages(random.Random(31), readings=40)
    # The hubs' socket folders in a temp dir of their own: any hub starting on this machine (another test's, a
    # bench's) removes a dead hub's folder, and could do so between the kill and the check below. Short, as
    # the sockets' paths must be (108 bytes).
    private = Path(tempfile.mkdtemp(prefix="uh-"))
    env = {"TMPDIR": str(private)}
    hub = _seeded_hub(database_url, mosquitto, tmp_path, INGEST, env)
    children = _wait_children(hub, 2)
    for child in children:
        child.send_signal(signal.SIGSTOP)
    assert _publish(mosquitto, lines, tmp_path / "fleet.txt").wait(60) == 0
    time.sleep(1.0)  # the hub has received them all and handed them over: none committed
    assert _one(database_url, "SELECT count(*) FROM events") == 0
    killed = hub.proc.pid if hub.proc else 0
    left = list(private.glob(f"{FOLDER_PREFIX}{killed}-*"))
    hub.kill()  # the children die with it (SIGKILL reaches stopped processes)
    for child in children:
        child.wait(10)
    assert len(left) == 1 and left[0].exists()  # a killed hub cannot remove its socket folder
    again = HubProcess(database_url, mosquitto.url, tmp_path / "data", extra=INGEST, env=env)
    again.start()  # the same persistent session: the broker delivers what was never acknowledged
    try:
        assert not left[0].exists()  # the next hub removed it
        _wait_stored(database_url, len(set(lines)), again)
        assert _billed(database_url) == expected
    finally:
        assert again.terminate() == 0
        shutil.rmtree(private, ignore_errors=True)


def _socket_of(child: psutil.Process) -> str:
    return child.environ()["USAGEHUB_INGEST_SOCKET"]


def _turned_away(path: str, first: bytes) -> bool:
    """Whether the hub closes a connection that opens with ``first``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15 * time_scale())
        s.connect(path)
        s.sendall(first)
        try:
            return s.recv(65536) == b""
        except ConnectionResetError:
            return True


def test_a_caller_without_the_secret_is_turned_away_and_ingest_goes_on(
        database_url: str, mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (SHARED / "baselines" / "pub.py").exists():
        pytest.skip("../shared/baselines/pub.py is not present")
    lines, expected = _messages(random.Random(37), readings=30)
    metrics_port = two_free_ports()
    monkeypatch.setenv("USAGEHUB_WORKER_METRICS_PORT", str(metrics_port))  # ingest process N: metrics_port + N
    hub = _seeded_hub(database_url, mosquitto, tmp_path, INGEST)
    try:
        children = _wait_children(hub, 2)
        path = _socket_of(children[0])
        assert oct(Path(path).parent.stat().st_mode & 0o777) == "0o700"  # the hub's user alone may enter
        guessed = struct.pack("!IQ", 40, 0) + bytes(32)  # index 0 with a guessed (zero) secret
        assert _turned_away(path, guessed)
        assert _turned_away(path, struct.pack("!I", 0xFFFFFFF0))  # a frame larger than any the hub accepts
        assert _turned_away(path, b"\x00\x00\x00\x05hello")  # not a hello at all
        # Were it taken for child 0, the hub would have sent it child 0's messages: the real children still
        # hold their places and ingest goes on.
        assert _publish(mosquitto, lines, tmp_path / "fleet.txt").wait(60) == 0
        _wait_stored(database_url, len(set(lines)), hub)
        assert _billed(database_url) == expected
        assert [c.pid for c in _wait_children(hub, 2)] == [c.pid for c in children]
        # Each child serves its own /metrics: what it stored, counted where it committed.
        accepted = [worker_accepted(metrics_port + i) for i in (0, 1)]
        assert all(a > 0 for a in accepted) and sum(accepted) == len(set(lines))
        # ... and the hub's /metrics counts them all (the children's counters come with their reports).
        deadline = time.monotonic() + 10 * time_scale()  # a report follows its commit by a loop pass or two
        while worker_accepted(hub.port) < len(set(lines)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker_accepted(hub.port) == len(set(lines))
        text = httpx.get(f"http://127.0.0.1:{hub.port}/metrics", timeout=5).text
        batches = next(float(line.split()[1]) for line in text.splitlines()
                       if line.startswith("usagehub_batch_messages_sum"))
        assert batches >= len(lines)  # every message the children committed, in the hub's histogram
        assert "ingest process ?: connection closed" in hub.log.read_text()
    finally:
        assert hub.terminate() == 0
