"""The hub owns the embedded PostgreSQL: adopted after a SIGKILL, stopped on a clean stop, no orphans."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ROOT, Mosquitto
from tests.peers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _postmaster(pgdata: Path) -> int | None:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().splitlines()[0])
    return pid if psutil.pid_exists(pid) else None


class EmbeddedHub:
    """``usagehub serve`` with no database URL: it runs the embedded PostgreSQL under its data folder."""

    def __init__(self, data_dir: Path, mqtt_url: str) -> None:
        self.data_dir, self.mqtt_url = data_dir, mqtt_url
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / "hub.log"

    def start(self) -> None:
        port = free_port()
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "usagehub", "serve", "--data-dir", str(self.data_dir), "--mqtt-url",
                 self.mqtt_url, "--http-port", str(port)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(self.log.read_text()[-3000:])

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)


def test_kill_restart_and_clean_stop_leave_no_server_running(mosquitto: Mosquitto) -> None:
    # Not tmp_path: as root the server runs as another user, who must reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="usagehub-own-"))
    folder.chmod(0o755)
    hub = EmbeddedHub(folder / "data", mosquitto.url)
    pgdata = folder / "data" / "pg"
    try:
        hub.start()
        first = _postmaster(pgdata)
        assert first is not None
        hub.signal(signal.SIGKILL)
        assert _postmaster(pgdata) == first  # it outlives the crash: the next start adopts it

        hub.start()
        assert _postmaster(pgdata) == first
        assert "adopted the embedded PostgreSQL" in hub.log.read_text()
        handles = json.loads((pgdata / ".handle_pids.json").read_text())
        assert handles == [hub.proc.pid]  # type: ignore[union-attr]  # the dead hub is forgotten

        assert hub.signal(signal.SIGTERM) == 0
        deadline = time.monotonic() + 15
        while _postmaster(pgdata) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _postmaster(pgdata) is None, "the embedded PostgreSQL outlived a clean stop"
        assert not _running(first)
    finally:
        if hub.proc is not None and hub.proc.poll() is None:
            hub.proc.kill()
        pid = _postmaster(pgdata)
        if pid is not None:  # never leave a server behind, even when the test fails
            os.kill(pid, signal.SIGTERM)
        shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for a container's init to reap it is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
