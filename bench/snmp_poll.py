"""Benchmark: devices polled per second by the snmp adapter vs a bare pysnmp GET loop, same agent, same run.

Starts net-snmp snmpd on 127.0.0.1 (free port), then for 1 and 10 OIDs per device polls N simulated
devices (all pointing at that agent) with bounded concurrency, through
(a) the adapter path: ``PollScheduler.poll_once`` = pysnmp GET + reset markers + payload encoding, and
(b) a bare ``get_cmd`` loop with the same engine settings (``lookupMib=False``).
Prints the median devices/s over several rounds.

    .venv/bin/python bench/snmp_poll.py [--polls 400] [--rounds 5] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from usagehub.adapters.base import DeviceEndpoint
from usagehub.adapters.snmp._pysnmp import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    UdpTransportTarget,
    get_cmd,
    new_engine,
)
from usagehub.adapters.snmp.config import SnmpConfig
from usagehub.adapters.snmp.plan import plan_for
from usagehub.adapters.snmp.poller import SnmpClient
from usagehub.adapters.snmp.scheduler import PollScheduler
from usagehub.adapters.snmp.state import MarkerStore
from usagehub.core.profiles import parse_profile

OIDS = [
    "1.3.6.1.2.1.1.3.0",
    "1.3.6.1.2.1.1.1.0",
    "1.3.6.1.2.1.1.2.0",
    "1.3.6.1.2.1.1.4.0",
    "1.3.6.1.2.1.1.5.0",
    "1.3.6.1.2.1.1.6.0",
    "1.3.6.1.2.1.1.7.0",
    "1.3.6.1.2.1.2.1.0",
    "1.3.6.1.2.1.2.2.1.10.1",
    "1.3.6.1.2.1.2.2.1.16.1",
]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _profile(count: int):  # type: ignore[no-untyped-def]
    meters = "\n".join(
        f'  m{i}: {{oid: "{oid}", kind: gauge, unit: x, aggregation: last}}'
        for i, oid in enumerate(OIDS[:count])
    )
    text = (
        f"id: bench-{count}\nmatch: {{transport: snmp}}\ndecode: {{type: snmp}}\n"
        f"poll: {{interval_s: 60, version: 2c, timeout_s: 2, retries: 1}}\nmeters:\n{meters}\n"
    )
    return parse_profile(text, "<bench>")


async def _adapter_round(port: int, count: int, polls: int, concurrency: int) -> float:
    profile = _profile(count)
    plan = plan_for(profile)
    assert plan is not None
    client = SnmpClient()
    scheduler = PollScheduler(
        config=SnmpConfig(),
        plans={profile.id: plan},
        directory=None,  # type: ignore[arg-type]
        client=client,
        store=MarkerStore(None),
    )
    endpoints = [
        DeviceEndpoint(
            device_id=f"d{i}",
            profile_id=profile.id,
            address="127.0.0.1",
            port=port,
            secrets={"community": "public"},
        )
        for i in range(polls)
    ]
    slots = asyncio.Semaphore(concurrency)

    async def one(endpoint: DeviceEndpoint) -> None:
        async with slots:
            await scheduler.poll_once(endpoint, plan)

    started = time.perf_counter()
    await asyncio.gather(*(one(e) for e in endpoints))
    elapsed = time.perf_counter() - started
    client.close()
    return polls / elapsed


async def _bare_round(port: int, count: int, polls: int, concurrency: int) -> float:
    engine = new_engine()
    target = await UdpTransportTarget.create(("127.0.0.1", port), timeout=2, retries=1)
    auth = CommunityData("public", mpModel=1)
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            error, status, _, _ = await get_cmd(
                engine,
                auth,
                target,
                ContextData(),
                *(ObjectType(ObjectIdentity(o)) for o in OIDS[:count]),
                lookupMib=False,
            )
            assert not error and not status

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(polls)))
    elapsed = time.perf_counter() - started
    engine.close_dispatcher()
    return polls / elapsed


async def _main(args: argparse.Namespace, port: int) -> None:
    print(
        f"snmpd 127.0.0.1:{port}, {args.polls} devices per round, {args.rounds} rounds, "
        f"concurrency {args.concurrency}"
    )
    for count in (1, 10):
        adapter, bare = [], []
        for _ in range(args.rounds):  # interleaved, so drift hits both alike
            adapter.append(await _adapter_round(port, count, args.polls, args.concurrency))
            bare.append(await _bare_round(port, count, args.polls, args.concurrency))
        a, b = statistics.median(adapter), statistics.median(bare)
        print(
            f"{count:2d} OID(s)/device: adapter {a:7.0f} devices/s   bare pysnmp get {b:7.0f} polls/s   "
            f"ratio {a / b:.2f}"
        )


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    port = _free_udp_port()
    with tempfile.TemporaryDirectory() as folder:
        conf = Path(folder) / "snmpd.conf"
        conf.write_text(
            textwrap.dedent(f"""\
            agentaddress udp:127.0.0.1:{port}
            rocommunity public 127.0.0.1
            """)
        )
        proc = subprocess.Popen(
            [
                "/usr/sbin/snmpd",
                "-f",
                "-Lf",
                "/dev/null",
                "-C",
                "-c",
                str(conf),
                "-m",
                "",
                f"--persistentDir={folder}/persist",
            ]
        )
        try:
            time.sleep(0.5)
            asyncio.run(_main(args, port))
        finally:
            proc.terminate()
            proc.wait(5)


if __name__ == "__main__":
    main()
