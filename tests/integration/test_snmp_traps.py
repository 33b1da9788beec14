"""Traps and informs from net-snmp snmptrap: v2c and v3 authPriv, accepted, rejected, acked after commit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.adapters.snmp.helpers import by_key, config, decode_all, settings, shipped
from tests.fakes import RecordingSink
from tests.peers import require_binary
from usagehub.adapters.base import DeviceEndpoint
from usagehub.adapters.snmp.adapter import SnmpAdapter
from usagehub.adapters.snmp.config import TrapConfig
from usagehub.errors import DecodeError, ValidationFailed
from usagehub.metrics import REGISTRY

pytestmark = pytest.mark.integration

PROFILES = [shipped("security-panel-traps"), shipped("ip-camera")]
DOOR_FORCED, MAINS_FAIL, MAINS_OK = (
    "1.3.6.1.4.1.32473.1.0.1",
    "1.3.6.1.4.1.32473.1.0.3",
    "1.3.6.1.4.1.32473.1.0.4",
)
ENGINE_ID = "0x80001f8880c0ffee01"
PANEL = DeviceEndpoint(
    device_id="panel-1",
    profile_id="security-panel-traps",
    address="127.0.0.1",
    secrets={"community": "panel-secret"},
)
PANEL_V3 = DeviceEndpoint(
    device_id="panel-v3",
    profile_id="security-panel-traps",
    address="127.0.0.1",
    secrets={
        "user": "bob",
        "auth_key": "bob-auth-pass",
        "priv_key": "bob-priv-pass",
        "auth_protocol": "SHA",
        "priv_protocol": "AES",
        "engine_id": ENGINE_ID,
    },
)


@contextlib.asynccontextmanager
async def _receiver(tmp_path: Path, sink: RecordingSink) -> AsyncIterator[int]:
    async with SnmpAdapter(config(), settings(PROFILES, [PANEL, PANEL_V3], tmp_path)) as adapter:
        task = asyncio.create_task(adapter.run(sink))
        try:
            assert adapter.trap_port
            yield adapter.trap_port
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _send(*args: str, binary: str = "snmptrap") -> tuple[int, float]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        require_binary(binary), *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return await proc.wait(), time.monotonic() - started


def _v2c(port: int, community: str, trap_oid: str, *varbinds: str) -> list[str]:
    return ["-v2c", "-c", community, f"127.0.0.1:{port}", "", trap_oid, *varbinds]


async def test_v2c_traps_become_events_and_state_changes(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with _receiver(tmp_path, sink) as port:
        await _send(*_v2c(port, "panel-secret", DOOR_FORCED, "1.3.6.1.4.1.32473.1.1.1", "s", "door 3"))
        await _send(*_v2c(port, "panel-secret", MAINS_FAIL))
        await _send(*_v2c(port, "panel-secret", MAINS_OK))
        messages = await sink.wait_for(3)
    assert {m.transport for m in messages} == {"snmp-trap"}
    assert messages[0].meta == {"device_id": "panel-1", "profile": "security-panel-traps"}
    events = decode_all(PROFILES, messages)
    assert [(e.device_id, e.meter, e.value) for e in events] == [
        ("panel-1", "door_forced", 1),
        ("panel-1", "mains_failure", 1),
        ("panel-1", "mains_failure", 0),
    ]
    assert events[0].ts == messages[0].received_at


async def test_unknown_community_and_garbage_are_quarantined_not_dropped(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with _receiver(tmp_path, sink) as port:
        await _send(*_v2c(port, "guess", DOOR_FORCED))
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port)
        )
        transport.sendto(b"\x30\x03not snmp at all")
        transport.close()
        messages = await sink.wait_for(2)
    assert [m.meta["rejected"] for m in messages] == [
        "unauthenticated: unknown community",
        "malformed: not an SNMP message",
    ]
    for message in messages:
        with pytest.raises(DecodeError, match="rejected snmp trap"):
            decode_all(PROFILES, [message])


async def test_unmapped_trap_of_a_known_device_is_quarantined(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with _receiver(tmp_path, sink) as port:
        await _send(*_v2c(port, "panel-secret", "1.3.6.1.6.3.1.1.5.1"))  # coldStart: not in the profile
        messages = await sink.wait_for(1)
    with pytest.raises(ValidationFailed, match="no readings"):
        decode_all(PROFILES, messages)


async def test_v3_auth_priv_trap_accepted_and_wrong_key_rejected(tmp_path: Path) -> None:
    sink = RecordingSink()
    v3 = [
        "-v3",
        "-e",
        ENGINE_ID,
        "-u",
        "bob",
        "-l",
        "authPriv",
        "-a",
        "SHA",
        "-x",
        "AES",
        "-X",
        "bob-priv-pass",
    ]
    async with _receiver(tmp_path, sink) as port:
        await _send(*v3, "-A", "bob-auth-pass", f"127.0.0.1:{port}", "", MAINS_FAIL)
        await _send(*v3, "-A", "wrong-auth-pass", f"127.0.0.1:{port}", "", MAINS_FAIL)
        messages = await sink.wait_for(2)
    events = by_key(decode_all(PROFILES, messages[:1]))
    assert events["panel-v3", "mains_failure"].value == 1
    assert messages[1].meta["rejected"] == "unauthenticated: wrong digest"


async def test_inform_is_acknowledged_only_after_commit(tmp_path: Path) -> None:
    sink = RecordingSink(delay_s=0.8)  # the pipeline commits 0.8 s after submit
    async with _receiver(tmp_path, sink) as port:
        status, elapsed = await _send("-Ci", "-t", "3", "-r", "0", *_v2c(port, "panel-secret", DOOR_FORCED))
    assert status == 0  # the inform was answered...
    assert elapsed >= 0.75  # ...but not before the commit
    assert len(sink.messages) == 1
    assert sink.messages[0].meta["device_id"] == "panel-1"


async def test_a_flood_from_one_address_is_rate_limited_and_counted(tmp_path: Path) -> None:
    def limited() -> float:
        return REGISTRY.get_sample_value("usagehub_snmp_traps_total", {"result": "rate_limited"}) or 0.0

    sink = RecordingSink()
    traps = TrapConfig(host="127.0.0.1", port=0, rate_limit={"per_source_per_s": 0.01, "burst": 3})
    before = limited()
    async with SnmpAdapter(config(traps=traps), settings(PROFILES, [PANEL], tmp_path)) as adapter:
        task = asyncio.create_task(adapter.run(sink))
        try:
            assert adapter.trap_port
            for _ in range(3):  # real traps from net-snmp: the burst passes
                await _send(*_v2c(adapter.trap_port, "panel-secret", DOOR_FORCED))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for n in range(200):  # then a flood of garbage from the same address
                    sock.sendto(os.urandom(1400), ("127.0.0.1", adapter.trap_port))
                    if n % 50 == 49:
                        await asyncio.sleep(0.01)
            await _send(*_v2c(adapter.trap_port, "panel-secret", MAINS_FAIL))  # over the rate too
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert len(sink.messages) == 3 and all(m.meta.get("device_id") == "panel-1" for m in sink.messages)
    assert limited() - before == 201  # every dropped datagram is counted


async def test_garbage_from_many_addresses_is_bounded_in_total(tmp_path: Path) -> None:
    """Spoofed sources each stay under their own rate; the total still bounds what reaches quarantine."""
    def limited() -> float:
        return REGISTRY.get_sample_value("usagehub_snmp_traps_total", {"result": "rate_limited"}) or 0.0

    sink = RecordingSink()
    traps = TrapConfig(host="127.0.0.1", port=0, rate_limit={"per_source_per_s": 0.01, "burst": 3,
                                                             "total_per_s": 0.01, "total_burst": 10})
    before = limited()
    async with SnmpAdapter(config(traps=traps), settings(PROFILES, [PANEL], tmp_path)) as adapter:
        task = asyncio.create_task(adapter.run(sink))
        try:
            assert adapter.trap_port
            for n in range(20):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind((f"127.0.2.{n + 1}", 0))
                    for _ in range(3):
                        sock.sendto(os.urandom(1400), ("127.0.0.1", adapter.trap_port))
            await asyncio.sleep(0.3)
            await _send(*_v2c(adapter.trap_port, "panel-secret", DOOR_FORCED))  # the panel's alarm still passes
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert len(sink.messages) == 11 and all(m.topic == "rejected" for m in sink.messages[:10])
    assert sink.messages[10].meta.get("device_id") == "panel-1"
    assert limited() - before == 50  # every dropped datagram is counted
