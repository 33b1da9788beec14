"""Real SNMP peers for tests: net-snmp ``snmpd`` with a controllable pass script, and ``snmpsim``."""

from __future__ import annotations

import bz2
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from pyasn1.codec.ber import encoder
from pysnmp.proto.api import v2c

from tests.peers import free_port, require_binary

ROOT = Path(__file__).resolve().parents[3]
SNMPSIM_DATA = ROOT.parent / "shared" / "conformance" / "snmpsim-data" / "snmpsim_data" / "data"
ENTERPRISE = "1.3.6.1.4.1.99999.1"

# A pass_persist script (one long-running process, so answers are fast): serves Counter32 .1.0,
# Counter64 .2.0 and Integer .3.0 from a JSON state file re-read on every request; a second
# instance registered with -p 1 overrides sysUpTime, so tests can "reboot" the agent.
_PASS = (
    textwrap.dedent("""\
    import json, sys
    state_file, which = sys.argv[1], sys.argv[2]
    base = ".%s"
    key = lambda o: tuple(int(x) for x in o.strip(".").split("."))
    def rows():
        state = json.load(open(state_file))
        if which == "uptime":
            return [(".1.3.6.1.2.1.1.3.0", "timeticks", state["uptime"])]
        return [(base + ".1.0", "counter", state["c32"]), (base + ".2.0", "counter64", state["c64"]),
                (base + ".3.0", "integer", state["g"])]
    for line in sys.stdin:
        command = line.strip()
        if command == "PING":
            print("PONG", flush=True)
            continue
        if command == "set":
            sys.stdin.readline(); sys.stdin.readline(); print("not-writable", flush=True)
            continue
        oid = sys.stdin.readline().strip()
        for o, t, v in rows():
            if (command == "get" and o == oid) or (command == "getnext" and key(o) > key(oid)):
                print(o); print(t); print(v, flush=True)
                break
        else:
            print("NONE", flush=True)
    """)
    % ENTERPRISE
)


def venv_binary(name: str) -> str:
    """A console script installed beside this interpreter (the venv), else a binary on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else require_binary(name)


def _wait_udp_agent(port: int, community: str, timeout_s: float = 15.0) -> None:
    """Block until an SNMP agent on 127.0.0.1:port answers a v2c GET of sysUpTime."""
    pdu = v2c.GetRequestPDU()
    v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_varbinds(pdu, [("1.3.6.1.2.1.1.3.0", v2c.null)])
    envelope = v2c.Message()
    v2c.apiMessage.set_defaults(envelope)
    v2c.apiMessage.set_community(envelope, community)
    v2c.apiMessage.set_pdu(envelope, pdu)
    message = encoder.encode(envelope)
    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(message, ("127.0.0.1", port))
            with contextlib.suppress(OSError):
                s.recv(4096)
                return
    raise RuntimeError(f"SNMP agent on port {port} did not answer")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Snmpd:
    """net-snmp snmpd on 127.0.0.1 with v2c community ``public`` and v3 user ``alice`` (SHA/AES)."""

    community = "public"
    user, auth_key, priv_key = "alice", "alice-auth-pass", "alice-priv-pass"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port(socket.SOCK_DGRAM)
        self.state_file = folder / "state.json"
        self.set(c32=0, c64=0, g=0, uptime=100)

    def set(self, **values: int) -> None:
        """Change what the agent serves (the pass script reads the file on every request)."""
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        state.update(values)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def running(self) -> Iterator[Snmpd]:
        """Run snmpd for the duration of the block."""
        binary = require_binary("snmpd")
        script = self.folder / "pass.py"
        script.write_text(_PASS)
        py = shutil.which("python3") or sys.executable
        conf = self.folder / "snmpd.conf"
        conf.write_text(
            textwrap.dedent(f"""\
            agentaddress udp:127.0.0.1:{self.port}
            rocommunity {self.community} 127.0.0.1
            createUser {self.user} SHA {self.auth_key} AES {self.priv_key}
            rouser {self.user} priv
            pass_persist {ENTERPRISE} {py} {script} {self.state_file} counters
            pass_persist -p 1 .1.3.6.1.2.1.1.3 {py} {script} {self.state_file} uptime
            """)
        )
        proc = subprocess.Popen(
            [
                binary,
                "-f",
                "-Lo",
                "-C",
                "-c",
                str(conf),
                "-m",
                "",
                f"--persistentDir={self.folder / 'persist'}",
                "-p",
                str(self.folder / "pid"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_udp_agent(self.port, self.community)
            yield self
        finally:
            _stop(proc)


# snmpsim drops root privileges to a user that cannot read this interpreter's stdlib
# (it lives under /root here): when root, run it with the privilege drop disabled.
_SNMPSIM_WRAPPER = textwrap.dedent("""\
    import contextlib, os, runpy, sys
    import snmpsim.daemon
    if os.geteuid() == 0:
        snmpsim.daemon.PrivilegesOf = lambda *a, **k: contextlib.nullcontext()
    binary = sys.argv.pop(1)
    sys.argv[0] = binary
    runpy.run_path(binary, run_name="__main__")
    """)


@contextlib.contextmanager
def snmpsim(folder: Path, walks: dict[str, str]) -> Iterator[int]:
    """Serve recorded walks (community -> path under snmpsim-data) from a tmp copy; yields the port."""
    binary = venv_binary("snmpsim-command-responder")
    data, cache = folder / "data", folder / "cache"
    data.mkdir(parents=True)
    cache.mkdir()
    for community, relative in walks.items():
        source = SNMPSIM_DATA / relative
        raw = bz2.decompress(source.read_bytes()) if source.suffix == ".bz2" else source.read_bytes()
        (data / f"{community}.snmprec").write_bytes(raw)
    port = free_port(socket.SOCK_DGRAM)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SNMPSIM_WRAPPER,
            binary,
            f"--data-dir={data}",
            f"--cache-dir={cache}",
            f"--agent-udpv4-endpoint=127.0.0.1:{port}",
            "--logging-method=null",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_udp_agent(port, next(iter(walks)))
        yield port
    finally:
        _stop(proc)
