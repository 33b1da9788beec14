"""Polling net-snmp snmpd: Counter32/Counter64 wraps, resets, reboots; v2c and v3 authPriv; missed polls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.adapters.snmp.agents import ENTERPRISE, Snmpd
from tests.adapters.snmp.helpers import by_key, config, decode_all, profile_from, settings
from tests.fakes import RecordingSink
from tests.peers import free_port, time_scale
from usagehub.adapters.base import DeviceEndpoint
from usagehub.adapters.snmp.adapter import SnmpAdapter
from usagehub.core.codecs.snmp import decode_snmp
from usagehub.core.profiles import Profile
from usagehub.metrics import REGISTRY

pytestmark = pytest.mark.integration

C32, C64, G = f"{ENTERPRISE}.1.0", f"{ENTERPRISE}.2.0", f"{ENTERPRISE}.3.0"


def _profile(version: str, interval_s: float = 300, *, timeout_s: float | None = None, retries: int = 2) -> Profile:
    # Timeouts scale with the machine's load and SNMP's own retries absorb a lost datagram.
    timeout_s = timeout_s if timeout_s is not None else 0.5 * time_scale()
    return profile_from(f"""
id: test-counters-v{version}
match: {{transport: snmp}}
decode: {{type: snmp}}
timestamp: "$.ts"
poll: {{interval_s: {interval_s}, version: "{version}", timeout_s: {timeout_s}, retries: {retries}}}
meters:
  c32: {{oid: "{C32}", kind: cumulative, wrap_bits: 32, unit: count, aggregation: sum,
         reset_marker: "$.markers['{C32}']"}}
  c64: {{oid: "{C64}", kind: cumulative, wrap_bits: 64, unit: count, aggregation: sum,
         reset_marker: "$.markers['{C64}']"}}
  level: {{oid: "{G}", kind: gauge, unit: "%", aggregation: avg, missing_values: [-1]}}
""")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snmpd]:
    with Snmpd(tmp_path_factory.mktemp("snmpd")).running() as running:
        yield running


def _v2c(agent: Snmpd, device_id: str = "dev", profile: str = "test-counters-v2c") -> DeviceEndpoint:
    return DeviceEndpoint(
        device_id=device_id,
        profile_id=profile,
        address="127.0.0.1",
        port=agent.port,
        secrets={"community": agent.community},
    )


def _v3(agent: Snmpd, auth_key: str | None = None) -> DeviceEndpoint:
    return DeviceEndpoint(
        device_id="dev3",
        profile_id="test-counters-v3",
        address="127.0.0.1",
        port=agent.port,
        secrets={
            "user": agent.user,
            "auth_key": auth_key or agent.auth_key,
            "priv_key": agent.priv_key,
            "auth_protocol": "SHA",
            "priv_protocol": "AES",
        },
    )


class _Poller:
    def __init__(self, adapter: SnmpAdapter, profile: Profile, endpoint: DeviceEndpoint) -> None:
        self.adapter, self.profile, self.endpoint = adapter, profile, endpoint

    async def read(self) -> dict[str, tuple[Decimal, str | None]]:
        """Poll once; values and reset markers per meter, through the codec and (below 1e18) the decoder."""
        assert self.adapter.scheduler is not None
        messages = await self.adapter.scheduler.poll_once(self.endpoint, self.adapter.plans[self.profile.id])
        document = decode_snmp(messages[0].payload)
        found = {
            name: (Decimal(document[spec.oid]), document["markers"].get(spec.oid))
            for name, spec in self.profile.meters.items()
            if spec.oid and document.get(spec.oid) is not None and document[spec.oid] != -1
        }
        if all(v < 10**18 for v, _ in found.values()):  # decode.py refuses larger values (see report)
            events = by_key(decode_all([self.profile], messages))
            assert {m: (e.value, e.reset_marker) for (_, m), e in events.items()} == found
        return found


@contextlib.asynccontextmanager
async def _poller(tmp_path: Path, profile: Profile, endpoint: DeviceEndpoint):  # type: ignore[no-untyped-def]
    async with SnmpAdapter(
        config(traps={"enabled": False}), settings([profile], [endpoint], tmp_path)
    ) as adapter:
        yield _Poller(adapter, profile, endpoint)


async def test_wrap_keeps_baseline_and_reset_starts_a_new_one(tmp_path: Path, agent: Snmpd) -> None:
    agent.set(c32=2**32 - 6, c64=2**64 - 6, g=-1, uptime=500_000)
    async with _poller(tmp_path, _profile("2c"), _v2c(agent)) as poller:
        first = await poller.read()
        assert first["c32"][0] == 2**32 - 6 and first["c64"][0] == 2**64 - 6
        assert "level" not in first  # -1: not supported -> absent
        agent.set(c32=10, c64=10, g=55, uptime=500_100)  # both counters wrap
        wrapped = await poller.read()
        assert wrapped["c32"] == (Decimal(10), first["c32"][1])  # same marker: the core applies wrap_bits
        assert wrapped["c64"] == (Decimal(10), first["c64"][1])
        assert wrapped["level"][0] == 55
        agent.set(c32=4, uptime=500_200)  # a drop no wrap explains
        reset = await poller.read()
        assert reset["c32"][1] != wrapped["c32"][1]  # new baseline for c32 only
        assert reset["c64"][1] == wrapped["c64"][1]
        agent.set(c32=1, c64=1, uptime=20)  # sysUpTime went backwards: reboot
        rebooted = await poller.read()
        assert rebooted["c64"][1].split("#")[0] != reset["c64"][1].split("#")[0]


async def test_markers_survive_a_hub_restart(tmp_path: Path, agent: Snmpd) -> None:
    agent.set(c32=100, c64=100, uptime=900_000)
    async with _poller(tmp_path, _profile("2c"), _v2c(agent)) as poller:
        before = await poller.read()
    agent.set(c32=150, c64=150, uptime=900_050)
    async with _poller(tmp_path, _profile("2c"), _v2c(agent)) as poller:  # same data_dir: state reloaded
        after = await poller.read()
    assert after["c32"][1] == before["c32"][1] and after["c64"][1] == before["c64"][1]


async def test_v3_auth_priv_poll(tmp_path: Path, agent: Snmpd) -> None:
    agent.set(c32=7, c64=2**40, uptime=1000)
    async with _poller(tmp_path, _profile("3"), _v3(agent)) as poller:
        values = await poller.read()
    assert values["c64"][0] == 2**40 and values["c32"][0] == 7


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until ``condition`` holds (polled), at most ``timeout_s`` times the machine's time scale."""
    async with asyncio.timeout(timeout_s * time_scale()):
        while not condition():  # noqa: ASYNC110 — the adapter exposes counts, not events
            await asyncio.sleep(0.05)


def _missed(device: str) -> float:
    return REGISTRY.get_sample_value("usagehub_snmp_poll_missed_total", {"device": device}) or 0.0


async def test_schedule_submits_and_counts_missed_polls(tmp_path: Path, agent: Snmpd,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    agent.set(c32=1, c64=1, g=5, uptime=3000)
    # Short timeouts so the dead device misses polls quickly; retries keep the live one answering under load.
    # A poll may not outlive its interval (a missed poll by design): the interval scales with the load too.
    profile = _profile("2c", interval_s=1.0 * time_scale(), timeout_s=0.3 * time_scale(), retries=2)
    dead = DeviceEndpoint(
        device_id="dead",
        profile_id=profile.id,
        address="127.0.0.1",
        port=free_port(2),
        secrets={"community": "public"},
    )  # nothing listens there
    wrong_key = DeviceEndpoint(
        device_id="badkey", profile_id=profile.id, address="127.0.0.1", port=agent.port, secrets={}
    )  # no community in registry
    before = _missed("dead"), _missed("badkey"), _missed("live")
    endpoints = [_v2c(agent, "live", profile.id), dead, wrong_key]
    sink = RecordingSink()
    async with SnmpAdapter(
        config(traps={"enabled": False}), settings([profile], endpoints, tmp_path)
    ) as adapter:
        task = asyncio.create_task(adapter.run(sink))
        await _until(lambda: len(sink.messages) >= 2 and adapter.missed_polls.get("dead", 0) >= 2
                     and adapter.missed_polls.get("badkey", 0) >= 2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        missed = adapter.missed_polls
    assert {m.meta["device_id"] for m in sink.messages} == {"live"}
    assert len(sink.messages) >= 2
    assert missed["dead"] >= 2 and missed["badkey"] >= 2 and missed.get("live", 0) == 0
    assert _missed("dead") - before[0] == missed["dead"]
    assert _missed("badkey") - before[1] == missed["badkey"]
    assert _missed("live") == before[2]
    assert (tmp_path / "snmp-state.json").exists()
    for device in ("dead", "badkey"):  # logged once per failure streak, each miss counted above
        logged = [r for r in caplog.records if r.getMessage().startswith(f"snmp poll of {device} failed")]
        assert len(logged) == 1, [r.getMessage() for r in logged]


async def test_v3_wrong_key_is_a_missed_poll(tmp_path: Path, agent: Snmpd) -> None:
    profile = _profile("3", interval_s=0.3, timeout_s=0.3 * time_scale(), retries=0)
    endpoint = _v3(agent, auth_key="not-the-right-key")
    sink = RecordingSink()
    async with SnmpAdapter(
        config(traps={"enabled": False}), settings([profile], [endpoint], tmp_path)
    ) as adapter:
        task = asyncio.create_task(adapter.run(sink))
        await _until(lambda: adapter.missed_polls.get("dev3", 0) >= 1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert adapter.missed_polls["dev3"] >= 1
        assert adapter.device_health["dev3"].last_error
    assert sink.messages == []
