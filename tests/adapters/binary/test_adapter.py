"""The binary adapter on real sockets (127.0.0.1): framing, submission, DC-09 replies, survival."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.core.codecs.binary_records import load_profile, pulse_record
from tests.fakes import RecordingSink, StaticDirectory
from usagehub.adapters import load
from usagehub.adapters.base import AdapterSettings, Outcome, Receipt
from usagehub.adapters.binary import FACTORY, BinaryAdapter, BinaryConfig
from usagehub.core.codecs.checksums import crc16_arc
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.errors import ConfigError, DecodeError

CONFORMANCE = Path(__file__).resolve().parents[3].parent / "shared" / "conformance"
PROFILES = [load_profile(n) for n in ("acme-pulse-bin", "mbus-heat-meter", "sia-dc09-panel")]
DECODER = ProfileSet(PROFILES)


def _decide(message: RawMessage) -> Receipt:
    """A sink verdict like the pipeline's: decode by profile, quarantine on DecodeError."""
    try:
        events = DECODER.decode(message)
    except DecodeError as err:
        return Receipt(outcome=Outcome.QUARANTINED, reason=str(err))
    return Receipt(outcome=Outcome.ACCEPTED, accepted=len(events))


def _settings(tmp_path: Path) -> AdapterSettings:
    return AdapterSettings(profiles=PROFILES, devices=StaticDirectory(), data_dir=tmp_path)


@asynccontextmanager
async def running(
    listeners: list[dict[str, object]], tmp_path: Path, decide: Callable[[RawMessage], Receipt] = _decide
) -> AsyncIterator[tuple[BinaryAdapter, RecordingSink]]:
    config = BinaryConfig.model_validate({"listeners": listeners, "idle_timeout_s": 5})
    adapter = FACTORY.create(config, _settings(tmp_path))
    assert isinstance(adapter, BinaryAdapter)
    sink = RecordingSink(decide)
    async with adapter:
        task = asyncio.create_task(adapter.run(sink))
        async with asyncio.timeout(5):
            await adapter.ready.wait()
        try:
            yield adapter, sink
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def _dc09(body: str) -> bytes:
    return f"\n{crc16_arc(body.encode()):04X}{len(body):04X}{body}\r".encode()


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(5):
        return await reader.readuntil(b"\r")


async def test_registry_loads_the_factory() -> None:
    assert load("binary") is FACTORY


async def test_tcp_dc09_ack_nak_duh_and_connection_survives(tmp_path: Path) -> None:
    async with running(
        [{"profile": "sia-dc09-panel", "protocol": "tcp", "host": "127.0.0.1", "port": 0}], tmp_path
    ) as (adapter, sink):
        reader, writer = await asyncio.open_connection("127.0.0.1", adapter.bound[0])
        good = _dc09('"SIA-DCS"0001R1L1#1234[#1234|Nri1/CL501]_10:00:00,05-01-2024')
        bad_crc = b"\n0000" + good[5:]
        unsupported = _dc09('"SIA-XYZ"0002R1L1#1234[]_10:00:00,05-01-2024')
        writer.write(good)
        assert b'"ACK"0001R1L1#1234[]' in await _read_reply(reader)
        writer.write(bad_crc)
        assert b'"NAK"' in await _read_reply(reader)
        writer.write(unsupported)
        assert b'"DUH"0002R1L1#1234' in await _read_reply(reader)
        writer.write(
            good.replace(b"0001", b"0003", 1).replace(
                good[1:5], b"%04X" % crc16_arc(good[9:-1].replace(b"0001", b"0003", 1))
            )
        )
        assert b'"ACK"0003' in await _read_reply(reader)
        writer.close()
        await writer.wait_closed()
    assert [m.meta["profile"] for m in sink.messages] == ["sia-dc09-panel"] * 4
    assert (
        sink.messages[1].payload == bad_crc
    )  # a NAKed frame is still submitted (quarantined), never dropped
    assert all(m.transport == "binary" and m.topic == "sia-dc09-panel" for m in sink.messages)


async def test_tcp_no_ack_when_the_pipeline_fails(tmp_path: Path) -> None:
    def broken(message: RawMessage) -> Receipt:
        raise RuntimeError("disk full")

    async with running(
        [{"profile": "sia-dc09-panel", "host": "127.0.0.1", "port": 0}], tmp_path, decide=broken
    ) as (adapter, _sink):
        reader, writer = await asyncio.open_connection("127.0.0.1", adapter.bound[0])
        writer.write(_dc09('"SIA-DCS"0001L0#1234[#1234|Nri1/BA1]_10:00:00,05-01-2024'))
        await writer.drain()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.readuntil(b"\r")
        writer.close()


async def test_tcp_fixed_records_and_a_bad_record_in_between(tmp_path: Path) -> None:
    async with running([{"profile": "acme-pulse-bin", "host": "127.0.0.1", "port": 0}], tmp_path) as (
        adapter,
        sink,
    ):
        _reader, writer = await asyncio.open_connection("127.0.0.1", adapter.bound[0])
        corrupt = bytearray(pulse_record(seq=2))
        corrupt[20] ^= 0xFF
        stream = pulse_record(seq=1) + bytes(corrupt) + pulse_record(seq=3)
        for i in range(0, len(stream), 7):  # arbitrary TCP chunking
            writer.write(stream[i : i + 7])
            await writer.drain()
        await sink.wait_for(3)
        writer.close()
    receipts = [_decide(m) for m in sink.messages]
    assert [r.outcome for r in receipts] == [Outcome.ACCEPTED, Outcome.QUARANTINED, Outcome.ACCEPTED]
    assert "bad checksum" in (receipts[1].reason or "")


async def test_udp_mbus_frames_and_dc09_replies(tmp_path: Path) -> None:
    frame = bytes(
        int(t, 16)
        for t in (CONFORMANCE / "libmbus/test/test-frames/kamstrup_multical_601.hex").read_text().split()
    )
    async with running(
        [
            {"profile": "mbus-heat-meter", "protocol": "udp", "host": "127.0.0.1", "port": 0},
            {"profile": "sia-dc09-panel", "protocol": "udp", "host": "127.0.0.1", "port": 0},
        ],
        tmp_path,
    ) as (adapter, sink):
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.setblocking(False)
            udp.sendto(frame, ("127.0.0.1", adapter.bound[0]))
            udp.sendto(b"\x68\x03\x03\x68garbage", ("127.0.0.1", adapter.bound[0]))
            await sink.wait_for(2)
            udp.sendto(
                _dc09('"SIA-DCS"0009L0#1234[#1234|Nri1/OP501]_10:00:00,05-01-2024'),
                ("127.0.0.1", adapter.bound[1]),
            )
            async with asyncio.timeout(5):
                reply = await loop.sock_recv(udp, 1024)
    assert b'"ACK"0009L0#1234' in reply
    events = DECODER.decode(sink.messages[0])
    assert {e.meter for e in events} == {"heat_energy", "volume", "flow_temperature"}
    assert _decide(sink.messages[1]).outcome is Outcome.QUARANTINED


async def test_unknown_profile_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        FACTORY.create(
            BinaryConfig.model_validate({"listeners": [{"profile": "nope", "port": 1}]}), _settings(tmp_path)
        )
