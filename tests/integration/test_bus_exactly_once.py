"""Exactly once on real parts: a 3-node JetStream cluster, two worker processes, SIGKILL of a node and a worker.

The fleet has a known billed truth (tests/bus/fleet.py): late, duplicated and
out-of-order readings, a device moving account mid-run, garbage. The test
kills the stream's leader node while publishing, kills a worker while it holds
unacked messages, hands that worker's partitions to a new worker that also
overlaps the survivor's (partitions moving), republishes a third of the fleet as
a retrying ingest node would, and then checks that every account is billed
exactly its truth and every message is acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats.errors
import pytest

from tests.bus.conftest import billed, nats_binary, scalar
from tests.bus.fleet import Fleet, build
from tests.peers import time_scale
from usagehub.bus.consumer import owned_partitions
from usagehub.bus.publisher import BusPublisher
from usagehub.core.decode import ProfileSet
from usagehub.runtime.config import HubConfig
from usagehub.runtime.natsd import NatsServer, cluster, start_all
from usagehub.runtime.profile_files import load_profiles
from usagehub.runtime.seed import apply_seed, parse_seed
from usagehub.runtime.worker import bus_settings, declare
from usagehub.storage.pool import open_pool
from usagehub.storage.registry import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 8


class Worker:
    """``usagehub worker`` as a child process."""

    def __init__(self, database_url: str, bus: str, tmp: Path, index: int, workers: int, name: str) -> None:
        self.log = tmp / f"{name}.log"
        env = {**os.environ, "USAGEHUB_BUS_PARTITIONS": str(PARTITIONS), "USAGEHUB_BUS_REPLICAS": "3",
               "USAGEHUB_BUS_ACK_WAIT_S": "3", "USAGEHUB_BATCH_MAX_MESSAGES": "200"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "usagehub", "worker", "--bus", bus, "--index", str(index), "--workers",
                 str(workers), "--database-url", database_url, "--data-dir", str(tmp)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2500:]


async def _publish(publisher: BusPublisher, fleet: Fleet, part: slice) -> None:
    futures = [await publisher.submit(m) for m in fleet.messages[part]]
    await asyncio.gather(*futures)  # every PubAck: what an adapter waits for before acking its device


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.25)
    return bool(predicate())  # type: ignore[operator]


async def _start_cluster(tmp: Path) -> list[NatsServer]:
    """Three nodes on fresh ports; a second try if one fails (a port taken meanwhile), none left running."""
    for attempt in range(2):
        nodes = cluster(tmp / f"nats{attempt}", 3)
        try:
            await asyncio.to_thread(start_all, nodes, tmp / f"nats{attempt}")
            return nodes
        except RuntimeError:
            if attempt:
                raise
    raise AssertionError("unreachable")


async def test_cluster_node_and_worker_sigkilled_bills_exactly(database_url: str, tmp_path: Path) -> None:
    nats_binary()
    fleet = build(devices=40, readings=60)
    pool = await open_pool(database_url, min_size=1, max_size=2)
    try:
        await apply_seed(Registry(pool), parse_seed(fleet.seed_yaml(tmp_path / "seed.yaml")))
    finally:
        await pool.close()
    nodes = await _start_cluster(tmp_path)
    bus = ",".join(n.url for n in nodes)
    config = HubConfig(database_url=database_url, data_dir=tmp_path, bus=bus, bus_partitions=PARTITIONS,
                       bus_replicas=3, bus_ack_wait_s=3)

    settings = dataclasses.replace(bus_settings(config), publish_timeout_s=1.5)
    workers: list[Worker] = []
    nc = None
    try:
        nc, js = await declare(settings, name="test-ingest")
        workers += [Worker(database_url, bus, tmp_path, i, 2, f"worker{i}") for i in range(2)]
        publisher = BusPublisher(nc, ProfileSet(load_profiles(config.profiles)), settings, max_inflight=512)
        n = len(fleet.messages)
        t0, marks = time.monotonic(), []
        await _publish(publisher, fleet, slice(0, n // 3))
        leader = (await js.stream_info(settings.stream)).cluster.leader  # type: ignore[union-attr]
        victim = next(node for node in nodes if node.name == leader)
        second = asyncio.create_task(_publish(publisher, fleet, slice(n // 3, 2 * n // 3)))
        await asyncio.sleep(0.2)
        victim.kill()  # the stream leader dies with publishes and fetches in flight
        await second
        marks.append(time.monotonic())
        # The second worker dies holding fetched, unacked messages; a new worker owning every partition
        # takes over its partitions and overlaps the survivor's (a move in progress).
        assert _wait(lambda: scalar(database_url, "SELECT count(*) FROM events") > 0, 30), workers[1].tail()

        async def held_by_second() -> int:  # delivered to worker 1 and not acked yet
            held = 0
            for p in owned_partitions(PARTITIONS, 1, 2):
                # A consumer still electing its leader after the node's death counts none.
                with contextlib.suppress(nats.errors.Error):
                    held += (await js.consumer_info(settings.stream, settings.durable(p), timeout=1)).num_ack_pending
            return held

        # Killed while it holds unacked messages. The last third goes out in small chunks; after each, worker 1
        # is frozen (SIGSTOP) and its consumers are read: frozen, it cannot ack meanwhile, so what is counted is
        # what the kill leaves unacked. Holding none (it was quick, or a consumer was electing), it goes on.
        # (A poll beside a running worker found it holding nothing for 30 s on a loaded CI machine.)
        pos, held = 2 * n // 3, 0
        while pos < n and not held:
            await _publish(publisher, fleet, slice(pos, pos + 40))
            pos += 40
            workers[1].proc.send_signal(signal.SIGSTOP)
            for _ in range(10):  # deliveries to its pending pull still arrive while it is frozen
                if held := await held_by_second():
                    break
                await asyncio.sleep(0.05)
            if not held:
                workers[1].proc.send_signal(signal.SIGCONT)
        assert held, "worker 1 never held an unacked message: no redelivery to check\n" + workers[1].tail()
        workers[1].proc.send_signal(signal.SIGKILL)
        workers[1].proc.wait(10)
        workers.append(Worker(database_url, bus, tmp_path, 0, 1, "worker-takeover"))
        await _publish(publisher, fleet, slice(pos, n))  # the rest while partitions move
        marks.append(time.monotonic())
        await _publish(publisher, fleet, slice(0, n // 3))  # an ingest node retrying: same ids, dropped
        await publisher.flush()
        assert publisher.totals["duplicates"] >= n // 3
        # A JetStream consumer whose leader died waits for its re-election: slower on a loaded machine.
        done = _wait(lambda: scalar(database_url, "SELECT count(*) FROM events") >= fleet.distinct_events,
                     90 * time_scale())
        assert done, "\n".join(w.tail() for w in workers)
        marks.append(time.monotonic())
        assert _wait(lambda: billed(database_url) == fleet.billed, 20), (billed(database_url), fleet.billed)
        assert scalar(database_url, "SELECT count(*) FROM events") == fleet.distinct_events
        # Garbage is kept, each message at least once (a quarantine row is not money: no identity to check).
        assert scalar(database_url, "SELECT count(DISTINCT payload) FROM quarantine") == fleet.garbage

        async def unacked() -> int:
            total = 0
            for p in range(PARTITIONS):
                info = await js.consumer_info(settings.stream, settings.durable(p))
                total += info.num_ack_pending + info.num_pending
            return total

        deadline = time.monotonic() + 20
        while await unacked() and time.monotonic() < deadline:  # noqa: ASYNC110 — polls the server
            await asyncio.sleep(0.5)
        assert await unacked() == 0
        # Deliveries beyond one per stored message: the killed worker's unacked messages went out again.
        deliveries = 0
        for p in range(PARTITIONS):
            deliveries += (await js.consumer_info(settings.stream, settings.durable(p))).delivered.consumer_seq
        stored = (await js.stream_info(settings.stream)).state.messages
        print(f"phases {[round(t - t0, 1) for t in marks]}; deliveries {deliveries} of {stored} stored; "
              f"publish retries {publisher.totals['retries']}")
        assert deliveries > stored
        assert billed(database_url) == fleet.billed  # redeliveries after the kill added nothing
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.terminate()
        for w in workers:
            try:
                w.proc.wait(20)
            except subprocess.TimeoutExpired:
                w.proc.kill()
        if nc is not None:
            await nc.close()
        for node in nodes:
            node.stop()
    assert workers[0].proc.returncode == 0, workers[0].tail()
