"""Starting nats-server nodes: a node that cannot start leaves nothing running behind its error."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.bus.conftest import nats_binary
from usagehub.runtime.natsd import cluster, start_all

pytestmark = pytest.mark.integration


def test_a_cluster_node_that_cannot_start_stops_the_others(tmp_path: Path) -> None:
    nats_binary()
    nodes = cluster(tmp_path / "nats", 3)
    nodes[2].cluster_port = nodes[0].port  # taken by the first node once it runs (a port race, in effect)
    with pytest.raises(RuntimeError) as caught:
        start_all(nodes, tmp_path)
    assert "n2" in str(caught.value) and "exited with" in str(caught.value)
    assert str(nodes[0].port) in str(caught.value)  # the log's reason travels with the error
    assert all(node.proc is not None for node in nodes[:2])
    assert all(node.proc is not None and node.proc.poll() is not None for node in nodes)  # none left running


def test_a_cluster_starts_and_stops(tmp_path: Path) -> None:
    nats_binary()
    nodes = cluster(tmp_path / "nats", 3)
    start_all(nodes, tmp_path)
    try:
        for node in nodes:
            socket.create_connection(("127.0.0.1", node.port), timeout=2).close()
    finally:
        for node in nodes:
            node.stop()
    assert all(node.proc is not None and node.proc.poll() is not None for node in nodes)
