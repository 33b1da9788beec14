"""Run a real ``usagehub serve`` process for integration tests, and talk to its GraphQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psutil

from tests.peers import free_port, time_scale
from usagehub.storage.keys import ApiKeys
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool

ROOT = Path(__file__).resolve().parents[2]


def usagehub(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a usagehub CLI command to completion."""
    return subprocess.run([sys.executable, "-m", "usagehub", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)


def _run_apart(make: Callable[[], Coroutine[Any, Any, str]]) -> str:
    """Run a coroutine to completion in its own thread and loop (callers may be inside a running loop)."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(lambda: asyncio.run(make())).result()


class HubProcess:
    """``usagehub serve`` against a given database and broker."""

    # Every hub started and not yet stopped: a test that fails midway leaves none running (see stop_leftovers).
    running: ClassVar[set[HubProcess]] = set()

    def __init__(self, database_url: str, mqtt_url: str, data_dir: Path, *, extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.database_url, self.mqtt_url, self.data_dir = database_url, mqtt_url, data_dir
        self.port = free_port()
        self.extra = extra or []
        self.env = env  # added to this process's environment
        self.proc: subprocess.Popen[str] | None = None
        self.log = data_dir / "hub.log"

    @property
    def settings(self) -> list[str]:
        return ["--database-url", self.database_url, "--mqtt-url", self.mqtt_url, "--data-dir", str(self.data_dir)]

    def start(self, timeout: float = 30, *, attempt: int = 0) -> None:
        timeout *= time_scale()  # a loaded machine starts (and drains a resumed backlog) slower
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logged = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("a") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "usagehub", "serve", *self.settings, "--http-port", str(self.port),
                 *self.extra], stdout=out, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                env={**os.environ, **self.env} if self.env else None)
        HubProcess.running.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self.proc.poll() is not None
            if f"port {self.port} on 127.0.0.1 (GraphQL/HTTP) is already in use" in self.log.read_text()[logged:] \
                    and attempt < 3:
                # free_port() released the port, and an outgoing connection took it as its local port before
                # the hub bound it (the hub exits naming it): start again on another port.
                if not exited:
                    self.kill()
                self.port = free_port()
                return self.start(timeout / time_scale(), attempt=attempt + 1)
            if exited:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"hub not ready:\n{self.log.read_text()[-3000:]}")

    def children(self, command: str) -> list[psutil.Process]:
        """The hub's live children running ``usagehub COMMAND``, by argument list (a killed one the hub has not
        reaped yet is a zombie: not live)."""
        assert self.proc is not None
        live = []
        for p in psutil.Process(self.proc.pid).children():
            try:
                if p.status() != psutil.STATUS_ZOMBIE and command in p.cmdline():
                    live.append(p)
            except (psutil.ZombieProcess, psutil.NoSuchProcess):
                continue
        return sorted(live, key=lambda p: p.cmdline())

    def kill(self) -> None:
        """SIGKILL: no cleanup at all."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        HubProcess.running.discard(self)

    def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM and wait for the clean exit code; a stop that hangs fails with the hub's last log lines."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
            HubProcess.running.discard(self)
            return code
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the hub did not stop within {timeout_s} s of SIGTERM; its log ends:\n"
                                 f"{self.log.read_text()[-4000:]}") from None

    def key(self, role: str = "admin") -> str:
        """A new API key, made as ``usagehub keys create`` makes it (that command is tested in tests/api/test_keys.py)
        but in this process: a CLI start costs seconds on a loaded machine, and tests make dozens of keys."""
        async def create() -> str:
            pool = await open_pool(self.database_url, min_size=1, max_size=1)
            try:
                await migrate(pool)
                return (await ApiKeys(pool).create(role=role))[0]
            finally:
                await pool.close()

        return _run_apart(create)

    def graphql(self, query: str, key: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(f"http://127.0.0.1:{self.port}/graphql", json={"query": query, "variables": variables},
                              headers={"Authorization": f"Bearer {key}"}, timeout=30)
        try:
            body: dict[str, Any] = response.json()
        except ValueError as err:
            raise AssertionError(f"HTTP {response.status_code}: {response.text[:500]}\n"
                                 f"{self.log.read_text()[-3000:]}") from err
        return body


class EmbeddedBrokerHub(HubProcess):
    """``usagehub serve`` with its embedded broker (no --mqtt-url), as on a first run."""

    def __init__(self, database_url: str, data_dir: Path) -> None:
        self.broker_port = free_port()
        super().__init__(database_url, "", data_dir)

    @property
    def settings(self) -> list[str]:
        return ["--database-url", self.database_url, "--embedded-broker-port", str(self.broker_port),
                "--data-dir", str(self.data_dir)]


def stop_leftovers() -> list[str]:
    """Stop every hub a test left running (SIGTERM, then SIGKILL); the command lines of those it found."""
    found = []
    for hub in list(HubProcess.running):
        HubProcess.running.discard(hub)
        if hub.proc is None or hub.proc.poll() is not None:
            continue
        found.append(" ".join(hub.proc.args[2:5]) if isinstance(hub.proc.args, list) else str(hub.proc.args))
        hub.proc.terminate()
        try:
            hub.proc.wait(30)
        except subprocess.TimeoutExpired:
            hub.proc.kill()
            hub.proc.wait(10)
    return found
