"""The simulated DLMS meter (tests/peers_dlms.py) as a context manager: its own process, a file to change it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
EK, AK = bytes(range(16)), bytes(range(0xD0, 0xE0))
ENERGY, POWER, SERIAL, LOAD = "1.0.1.8.0.255", "1.0.1.7.0.255", "0.0.96.1.0.255", "1.0.99.1.0.255"


def quarter_hours(count: int, start_value: int, step: int, *, end: datetime | None = None) -> list[list[Any]]:
    """``count`` load-profile rows 15 minutes apart, ending at the last quarter hour before ``end``."""
    end = end or datetime.now(UTC)
    last = end.replace(minute=end.minute - end.minute % 15, second=0, microsecond=0)
    return [[(last - timedelta(minutes=15 * (count - 1 - i))).isoformat(), start_value + step * i]
            for i in range(count)]


def meter_conf(*, authentication: str = "none", energy: int = 1_234_567, rows: list[list[Any]] | None = None,
               title: str = "4D4D4D0000000001") -> dict[str, Any]:
    """A meter: energy register (Wh, scaler -1 = tenths), power (W), serial number, 15-minute load profile."""
    conf: dict[str, Any] = {
        "system_title": title, "authentication": authentication,
        "objects": {ENERGY: {"class": 3, "value": energy, "scaler": -1, "unit": 30},
                    POWER: {"class": 3, "value": 2500, "scaler": 0, "unit": 27},
                    SERIAL: {"class": 1, "value": "SN-0001"}},
        "profile": {"obis": LOAD, "columns": [["0.0.1.0.0.255", 8, 2], [ENERGY, 3, 2]], "rows": rows or []},
        "disconnect": {"obis": "0.0.96.3.10.255", "state": 1},
    }
    if authentication == "lls":
        conf["password"] = "12345678"
    if authentication == "hls_gmac":
        conf.update(ek=EK.hex(), ak=AK.hex())
    return conf


class SimMeter:
    """A running simulated meter: ``port``, ``update(**changes)``, ``requests()``."""

    def __init__(self, path: Path, proc: subprocess.Popen[str], port: int) -> None:
        self.path, self.proc, self.port = path, proc, port

    @property
    def conf(self) -> dict[str, Any]:
        """The meter's current description."""
        return dict(json.loads(self.path.read_text()))

    def update(self, **changes: Any) -> None:
        """Rewrite the meter's file (it re-reads it on every request)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.conf, **changes}))
        tmp.replace(self.path)

    def requests(self) -> list[dict[str, Any]]:
        """Every request the meter logged, oldest first."""
        log = Path(str(self.path) + ".log")
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@contextmanager
def sim_meter(folder: Path, conf: dict[str, Any], name: str = "meter") -> Iterator[SimMeter]:
    """Start ``python -m tests.peers_dlms`` on a free port; stop it on the way out."""
    path = folder / f"{name}.json"
    path.write_text(json.dumps(conf))
    proc = subprocess.Popen([sys.executable, "-m", "tests.peers_dlms", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "PORT <n>", printed once the socket listens
        if not line.startswith("PORT "):
            raise RuntimeError(f"simulated meter did not start: {line!r}")
        yield SimMeter(path, proc, int(line.split()[1]))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
