"""The dlms adapter against the simulated meter (its own process): exact values, ranges, restarts, security."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from tests.adapters.dlms.meters import AK, EK, ENERGY, SimMeter, meter_conf, quarter_hours, sim_meter
from tests.fakes import RecordingSink, StaticDirectory
from usagehub.adapters.base import AdapterSettings, DeviceEndpoint
from usagehub.adapters.dlms.adapter import DlmsAdapter, plan_for
from usagehub.adapters.dlms.config import DlmsConfig
from usagehub.core.codecs.keyring import KeyRing
from usagehub.core.decode import ProfileSet
from usagehub.core.events import UsageEvent
from usagehub.core.profiles import Profile, parse_profile

PROFILE = """
id: test-dlms-{auth}
match: {{transport: dlms}}
decode:
  type: dlms_poll
  authentication: {auth}
  registers: ["1.0.1.8.0.255", "1-0:1.7.0*255"]
  data: ["0.0.96.1.0.255"]
  load_profile: {{obis: "1.0.99.1.0.255", first_read_s: 86400}}
timestamp: "$.ts"
poll: {{interval_s: 0.3, timeout_s: 20}}
meters:
  energy: {{oid: "1.0.1.8.0.255", kind: cumulative, scale: 0.001, unit: kWh, aggregation: sum}}
  power: {{oid: "1.0.1.7.0.255", kind: gauge, unit: W, aggregation: avg}}
"""
# A poll (connect, association, ciphered reads) is bounded by timeout_s. Polls these tests expect to succeed get a
# bound no loaded machine reaches (CI under load saw the HDLC poll of a 40-row buffer time out at 3 s, and again at
# 3 s scaled by a load average read when the module was collected, before the load came); a poll expected to fail by
# timing out uses FAIL_TIMEOUT_S.
FAIL_TIMEOUT_S = 2


def _profile(auth: str) -> Profile:
    return parse_profile(PROFILE.format(auth=auth), "<test>")


def _adapter(profile: Profile, endpoints: list[DeviceEndpoint], data_dir: Path,
             keyring: KeyRing | None = None) -> DlmsAdapter:
    settings = AdapterSettings(profiles=[profile], devices=StaticDirectory(endpoints), data_dir=data_dir,
                               keyring=keyring)
    return DlmsAdapter(DlmsConfig(jitter_s=0, refresh_s=0.2), settings)


def _endpoint(meter: SimMeter, device_id: str, profile: Profile, **secrets: str) -> DeviceEndpoint:
    return DeviceEndpoint(device_id=device_id, profile_id=profile.id, address="127.0.0.1", port=meter.port,
                          secrets=secrets)


def _events(profile: Profile, sink: RecordingSink) -> list[UsageEvent]:
    found = ProfileSet([profile])
    return [e for m in sink.messages for e in found.decode(m)]


async def _poll(adapter: DlmsAdapter, endpoint: DeviceEndpoint, sink: RecordingSink) -> bool:
    async with adapter:
        plan = adapter.plans[endpoint.profile_id or ""]
        return await adapter.poll_device(endpoint, plan, sink)


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[SimMeter]:
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with sim_meter(tmp_path, meter_conf(rows=quarter_hours(4, 10_000, 25, end=an_hour_ago))) as running:
        yield running


async def test_registers_clock_and_load_profile_exactly(meter: SimMeter, tmp_path: Path) -> None:
    profile = _profile("none")
    endpoint = _endpoint(meter, "m1", profile)
    sink = RecordingSink()
    assert await _poll(_adapter(profile, [endpoint], tmp_path / "data"), endpoint, sink)
    assert [m.topic for m in sink.messages] == ["registers", "profile", "profile", "profile", "profile"]
    assert all(m.meta == {"profile": profile.id, "device_id": "m1"} for m in sink.messages)
    events = _events(profile, sink)
    register = [e for e in events if e.ts == datetime.fromisoformat(_clock(sink))]
    # 1 234 567 tenths of Wh (scaler -1) = 123.4567 kWh, exactly; power has scaler 0
    assert {(e.meter, e.value, e.unit) for e in register} == {("energy", Decimal("123.4567"), "kWh"),
                                                               ("power", Decimal("2500"), "W")}
    rows = meter.conf["profile"]["rows"]
    profile_energy = [(e.ts.isoformat(), e.value) for e in events if e.meter == "energy" and e not in register]
    assert profile_energy == [(when, Decimal(v) / 10_000) for when, v in rows]

    # two new entries: the next poll reads from the last stored entry and hands over only the new ones
    meter.update(profile={**meter.conf["profile"], "rows": rows + quarter_hours(2, 10_100, 25)})
    sink2 = RecordingSink()
    assert await _poll(_adapter(profile, [endpoint], tmp_path / "data"), endpoint, sink2)  # a new adapter: restart
    assert [m.topic for m in sink2.messages] == ["registers", "profile", "profile"]
    ranges = [r["range"] for r in meter.requests() if r.get("range")]
    assert ranges[-1][0] == rows[-1][0].removesuffix("+00:00")  # from the last stored entry, not from a day ago

    sink3 = RecordingSink()
    assert await _poll(_adapter(profile, [endpoint], tmp_path / "data"), endpoint, sink3)
    assert [m.topic for m in sink3.messages] == ["registers"]  # a restart neither re-reads nor skips


def _clock(sink: RecordingSink) -> str:
    return str(orjson.loads(sink.messages[0].payload)["clock"])


async def test_rows_stay_unread_until_the_pipeline_commits(meter: SimMeter, tmp_path: Path) -> None:
    """A poll whose messages are not committed does not move the marker: the next poll reads them again."""
    profile = _profile("none")
    endpoint = _endpoint(meter, "m1", profile)

    class Failing(RecordingSink):
        async def submit(self, message):  # type: ignore[no-untyped-def]
            fut = await super().submit(message)
            failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            failed.set_exception(RuntimeError("database down"))
            fut.cancel()
            return failed

    assert not await _poll(_adapter(profile, [endpoint], tmp_path / "data"), endpoint, Failing())
    sink = RecordingSink()
    assert await _poll(_adapter(profile, [endpoint], tmp_path / "data"), endpoint, sink)
    assert [m.topic for m in sink.messages].count("profile") == 4


async def test_lls_password_and_a_wrong_one(tmp_path: Path) -> None:
    profile = _profile("lls")
    with sim_meter(tmp_path, meter_conf(authentication="lls")) as meter:
        good, bad = _endpoint(meter, "good", profile, password="12345678"), _endpoint(meter, "bad", profile,
                                                                                       password="guess")
        adapter = _adapter(profile, [good, bad], tmp_path / "data")
        sink = RecordingSink()
        assert await _poll(adapter, good, sink)
        assert not await _poll(adapter, bad, sink)
        assert adapter.health["bad"].auth_failures == 1 and "association refused" in str(
            adapter.health["bad"].last_error)
        assert {m.meta["device_id"] for m in sink.messages} == {"good"}


async def test_hls_gmac_ciphered_with_sealed_keys_across_restarts(tmp_path: Path) -> None:
    """HLS-GMAC + security suite 0: the meter refuses a reused invocation counter, so it must survive restarts."""
    profile = _profile("hls_gmac")
    ring = KeyRing()
    ring.put("dlms_poll", "meter-a", EK)
    ring.put("dlms_poll", "meter-a:auth", AK)
    ring.put("dlms_poll", "meter-b", AK)  # wrong block cipher key
    ring.put("dlms_poll", "meter-b:auth", AK)
    with sim_meter(tmp_path, meter_conf(authentication="hls_gmac", rows=quarter_hours(2, 500, 5))) as meter:
        a, b = _endpoint(meter, "meter-a", profile), _endpoint(meter, "meter-b", profile)
        for _ in range(3):  # three adapters over one data folder: three hub restarts
            sink = RecordingSink()
            assert await _poll(_adapter(profile, [a, b], tmp_path / "data", ring), a, sink)
            assert sink.messages and {m.meta["device_id"] for m in sink.messages} == {"meter-a"}
        values = [e.value for e in _events(profile, sink) if e.meter == "energy"]
        assert values == [Decimal("123.4567")]
        hls = [r for r in meter.requests() if r["service"] == "hls"]
        assert hls and all(r["ok"] for r in hls)

        # one meter with a wrong key fails (counted, logged once) while the other keeps being polled
        adapter = _adapter(profile, [a, b], tmp_path / "data", ring)
        sink = RecordingSink()
        async with adapter:
            task = asyncio.create_task(adapter.run(sink))
            def seen() -> tuple[int, int]:
                return (sum(m.topic == "registers" for m in sink.messages),
                        getattr(adapter.health.get("meter-b"), "failures", 0))

            try:
                # the adapter's health has no event to wait on: poll it (0.3 s interval; the deadline is generous
                # and the failure says what was seen). CI once saw meter-b stop after one failure: two polls saved
                # the state at once, one os.replace found no temp file and its error ended meter-b's loop
                # (fixed in state.py; tests/adapters/dlms/test_state.py)
                deadline = asyncio.get_running_loop().time() + 90
                while min(seen()) < 2 and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                assert min(seen()) >= 2, f"(register polls of meter-a, failures of meter-b) = {seen()}, " \
                    f"health {adapter.health}"
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert adapter.health["meter-b"].auth_failures >= 2 and adapter.health["meter-b"].last_success_at is None
        assert adapter.health["meter-a"].failures == 0
        assert {m.meta["device_id"] for m in sink.messages} == {"meter-a"}


async def test_disconnect_and_reconnect_confirmed_by_reading_back(tmp_path: Path) -> None:
    profile = _profile("hls_gmac")
    ring = KeyRing()
    ring.put("dlms_poll", "meter-a", EK)
    ring.put("dlms_poll", "meter-a:auth", AK)
    with sim_meter(tmp_path, meter_conf(authentication="hls_gmac")) as meter:
        adapter = _adapter(profile, [_endpoint(meter, "meter-a", profile)], tmp_path / "data", ring)
        async with adapter:
            await adapter.command("meter-a", "blocked")
            await adapter.command("meter-a", "blocked")  # idempotent: a repeated block is confirmed again
            actions = [r for r in meter.requests() if r["service"] == "action" and r["obis"] != "0.0.40.0.0.255"]
            assert actions == [{"service": "action", "obis": "0.0.96.3.10.255", "method": 1}] * 2
            await adapter.command("meter-a", "restored")
            reads = [r for r in meter.requests() if r["service"] == "get" and r["obis"] == "0.0.96.3.10.255"]
            assert [r["attribute"] for r in reads] == [2, 3] * 3  # every command is read back
            with pytest.raises(ConnectionError, match="not a polled DLMS meter"):
                await adapter.command("someone-else", "blocked")
            with pytest.raises(ConnectionError, match="meter refused a request"):
                await adapter.command("meter-a", "blocked", obis="0.0.96.3.11.255")  # no such object
            meter.update(disconnect={**meter.conf["disconnect"], "stuck": True})  # acknowledges, never switches
            with pytest.raises(ConnectionError, match="not confirmed: output True, control state 1"):
                await adapter.command("meter-a", "blocked")


async def test_hdlc_over_tcp_with_segmented_frames(tmp_path: Path) -> None:
    """HDLC (a meter behind a serial-to-TCP converter): SNRM/UA, ciphered I-frames, a 40-row buffer in segments."""
    profile = parse_profile(PROFILE.format(auth="hls_gmac").replace("type: dlms_poll", "type: dlms_poll\n"
                                                                    "  transport: hdlc"), "<test>")
    ring = KeyRing()
    ring.put("dlms_poll", "meter-h", EK)
    ring.put("dlms_poll", "meter-h:auth", AK)
    rows = quarter_hours(40, 70_000, 10)
    with sim_meter(tmp_path, {**meter_conf(authentication="hls_gmac", rows=rows), "transport": "hdlc"}) as meter:
        endpoint = _endpoint(meter, "meter-h", profile)
        sink = RecordingSink()
        assert await _poll(_adapter(profile, [endpoint], tmp_path / "data", ring), endpoint, sink)
        assert sum(m.topic == "profile" for m in sink.messages) == 40
        values = [e.value for e in _events(profile, sink) if e.meter == "energy"][1:]
        assert values == [Decimal(70_000 + 10 * i) / 10_000 for i in range(40)]
        # the wrapper client cannot talk to an HDLC meter: a clear failure, not a hang
        failing = PROFILE.replace("timeout_s: 20", f"timeout_s: {FAIL_TIMEOUT_S}")
        wrapper = parse_profile(failing.format(auth="hls_gmac"), "<test>")
        adapter = _adapter(wrapper, [_endpoint(meter, "meter-h", wrapper)], tmp_path / "data2", ring)
        assert not await _poll(adapter, _endpoint(meter, "meter-h", wrapper), RecordingSink())
        assert adapter.health["meter-h"].last_error


def test_plan_normalizes_obis_and_profile_errors_name_file_and_line() -> None:
    plan = plan_for(_profile("none"))
    assert plan is not None and plan.options.interface_of() == {ENERGY: 3, "1.0.1.7.0.255": 3,
                                                                "0.0.96.1.0.255": 1}
    bad = PROFILE.format(auth="none").replace('"1-0:1.7.0*255"', '"1.0.1.8.0.255"')
    with pytest.raises(Exception) as caught:
        parse_profile(bad, "meters/bad.yaml")
    assert "meters/bad.yaml:4: decode:" in str(caught.value) and "listed twice" in str(caught.value)
    unread = PROFILE.format(auth="none").replace('  load_profile: {obis: "1.0.99.1.0.255", first_read_s: 86400}\n', "")
    unread = unread.replace('power: {oid: "1.0.1.7.0.255"', 'power: {oid: "1.0.21.7.0.255"')
    with pytest.raises(Exception) as caught:
        parse_profile(unread, "meters/unread.yaml")
    assert "meters/unread.yaml:13: meters.power.oid: 1.0.21.7.0.255 is not read" in str(caught.value)
    with pytest.raises(Exception) as caught:
        parse_profile(PROFILE.format(auth="kerberos"), "meters/auth.yaml")
    assert "meters/auth.yaml:6: decode.authentication" in str(caught.value)


async def test_transient_failures_retry_with_backoff_refused_credentials_wait(tmp_path: Path) -> None:
    """An unreachable meter is retried soon (backoff within the interval); a wrong password waits the interval,
    since meters lock an account after a few failed associations."""
    from tests.peers import free_port

    profile = parse_profile(PROFILE.format(auth="lls").replace("interval_s: 0.3", "interval_s: 60"), "<test>")
    with sim_meter(tmp_path, meter_conf(authentication="lls")) as meter:
        gone = DeviceEndpoint(device_id="gone", profile_id=profile.id, address="127.0.0.1", port=free_port(),
                              secrets={"password": "12345678"})
        wrong = _endpoint(meter, "wrong", profile, password="guess")
        settings = AdapterSettings(profiles=[profile], devices=StaticDirectory([gone, wrong]),
                                   data_dir=tmp_path / "data")
        adapter = DlmsAdapter(DlmsConfig(jitter_s=0, refresh_s=0.1, retry_first_s=0.1), settings)
        async with adapter:
            task = asyncio.create_task(adapter.run(RecordingSink()))
            try:
                async with asyncio.timeout(20):
                    while getattr(adapter.health.get("gone"), "failures", 0) < 4:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    assert adapter.health["gone"].streak >= 4 and not adapter.health["gone"].last_auth_failed
    assert adapter.health["wrong"].failures == 1 and adapter.health["wrong"].last_auth_failed
    assert sum(r["service"] == "aarq" for r in meter.requests()) == 1


async def test_meter_in_local_time_without_deviation(tmp_path: Path) -> None:
    """A meter that keeps Berlin wall time and says "deviation not specified": clock_zone gives the instants;
    the range is asked in its wall time, and its entries land at the right UTC instants."""
    profile = parse_profile(PROFILE.format(auth="none").replace("type: dlms_poll", "type: dlms_poll\n"
                                                                "  clock_zone: Europe/Berlin"), "<test>")
    rows = quarter_hours(3, 20_000, 10, end=datetime.now(UTC) - timedelta(hours=3))
    conf = {**meter_conf(rows=rows), "local_zone": "Europe/Berlin"}
    with sim_meter(tmp_path, conf) as meter:
        endpoint = _endpoint(meter, "local", profile)
        sink = RecordingSink()
        assert await _poll(_adapter(profile, [endpoint], tmp_path / "data", None), endpoint, sink)
        clock = datetime.fromisoformat(_clock(sink))
        assert abs(clock - datetime.now(UTC)) < timedelta(minutes=1)  # not an hour off
        entries = [(e.ts, e.value) for e in _events(profile, sink) if e.meter == "energy" and e.ts != clock]
        assert entries == [(datetime.fromisoformat(when), Decimal(v) / 10_000) for when, v in rows]
        first = next(r["range"] for r in meter.requests() if r.get("range"))
        berlin = (clock - timedelta(seconds=86_400)).astimezone(ZoneInfo("Europe/Berlin"))
        assert first[0].startswith(berlin.strftime("%Y-%m-%dT%H:%M"))  # asked in its wall time


def test_a_meter_that_hangs_up_first_leaves_no_socket_open() -> None:
    """shutdown() fails on a connection the meter already reset; the socket is closed all the same."""
    import socket

    from dlms_cosem.exceptions import CommunicationError

    from usagehub.adapters.dlms.client import _TcpIO

    with socket.create_server(("127.0.0.1", 0)) as server:
        io = _TcpIO(host="127.0.0.1", port=server.getsockname()[1], timeout=2)
        io.connect()
        accepted, _ = server.accept()
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        accepted.close()  # a reset, as a meter that drops the line
        sock = io.tcp_socket
        assert sock is not None
        with pytest.raises(CommunicationError):
            io.recv(1)
        io.disconnect()
        assert sock.fileno() == -1 and io.tcp_socket is None
        io.disconnect()  # twice is harmless
