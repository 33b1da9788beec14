"""Real peers for integration tests: skip when a binary is missing, unless USAGEHUB_REQUIRE_PEERS is set."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def require_binary(name: str) -> str:
    """Path of ``name``; skip the test if absent, or fail it when peers are required (CI)."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        message = f"peer binary {name!r} is not installed"
        if os.environ.get("USAGEHUB_REQUIRE_PEERS"):
            pytest.fail(message + " and USAGEHUB_REQUIRE_PEERS is set")
        pytest.skip(message)
    return path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_scale() -> float:
    """How much slower than a quiet machine this one is now: timeouts in timing tests are multiplied by it.

    ``USAGEHUB_TEST_TIME_SCALE`` sets it; otherwise the load average per core (at least 1, at most 10).
    """
    if os.environ.get("USAGEHUB_TEST_TIME_SCALE"):
        return float(os.environ["USAGEHUB_TEST_TIME_SCALE"])
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return min(10.0, max(1.0, load))
