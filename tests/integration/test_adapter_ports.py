"""``usagehub serve`` with a bind-only adapter on a busy port fails its start with one line naming the port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.hubproc import usagehub
from tests.peers import free_port

pytestmark = pytest.mark.integration


def test_a_busy_binary_udp_port_fails_the_start_naming_port_and_setting(database_url: str, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = tmp_path / "hub.toml"
        config.write_text("[adapters.binary]\nlisteners = [{profile = \"acme-pulse-bin\", protocol = \"udp\", "
                          f"host = \"127.0.0.1\", port = {port}}}]\n")
        done = usagehub("serve", "--config", str(config), "--database-url", database_url,
                        "--data-dir", str(tmp_path / "data"), "--http-port", str(free_port()),
                        "--embedded-broker-port", str(free_port()), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if not line[:4].isdigit()]  # not the INFO log lines
    assert errors == [f"connection error: cannot bind the binary UDP listener on 127.0.0.1:{port}: "
                      "Address already in use; change adapters.binary.listeners[0].port"], done.stderr
