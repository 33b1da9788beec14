"""Batch import: CSV, NDJSON, JSON, binary records; deterministic messages; exactly-once on re-import."""

from __future__ import annotations

import io
import os
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from tests.adapters.files.minipipe import MiniPipeline, load_profiles
from usagehub.adapters.binary.framing import FramingSpec
from usagehub.adapters.files import import_paths
from usagehub.adapters.files.readers import _binary
from usagehub.core.events import RawMessage

PROFILES = load_profiles("acme-csv-export", "acme-meter-dump", "acme-http-meter")
CSV = "meter,ts,kwh\nm1,2026-01-01T00:00:00Z,10.5\nm1,2026-01-01T01:00:00Z,11\nm2,2026-01-01T00:00:00Z,\n" \
      'm2,"2026-01-01T01:00:00Z",7\n'


def dump_record(device: int, seq: int, wh: int) -> bytes:
    body = bytes.fromhex("a55a") + struct.pack(">IIII", device, seq, 1_700_000_000 + seq, wh)
    return bytes([len(body)]) + body


def write(path: Path, data: bytes | str, mtime: int = 1_767_225_600) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.utime(path, (mtime, mtime))
    return path


async def test_csv_rows_become_messages_with_line_offsets(tmp_path: Path) -> None:
    path = write(tmp_path / "meters-2026-01.csv", CSV)
    pipeline = MiniPipeline(PROFILES)
    summary = await import_paths([path], pipeline, PROFILES, progress=False)
    # m2's first row has an empty reading: no meter value, so the pipeline quarantines it
    assert (summary.records, summary.accepted, summary.duplicates, summary.quarantined) == (4, 3, 0, 1)
    first = pipeline.messages[0]
    assert (first.transport, first.topic, first.payload) == (
        "file", "meters-2026-01.csv", b'{"meter":"m1","ts":"2026-01-01T00:00:00Z","kwh":"10.5"}')
    assert dict(first.meta) == {"profile": "acme-csv-export", "file": str(path), "offset": "2"}
    assert first.received_at == datetime(2026, 1, 1, tzinfo=UTC)  # the file's mtime: deterministic
    assert [m.meta["offset"] for m in pipeline.messages] == ["2", "3", "4", "5"]
    assert b"kwh" not in pipeline.messages[2].payload  # an empty cell is a missing reading


async def test_reimport_is_identical_and_counted_once(tmp_path: Path) -> None:
    write(tmp_path / "meters-a.csv", CSV)
    write(tmp_path / "dump-a.bin", b"".join(dump_record(7, s, 100 * s) for s in range(50)))
    pipeline = MiniPipeline(PROFILES)
    first = await import_paths([tmp_path], pipeline, PROFILES, progress=False)
    messages = list(pipeline.messages)
    again = await import_paths([tmp_path], pipeline, PROFILES, progress=False)
    assert (first.accepted, first.duplicates, first.quarantined) == (53, 0, 1)
    assert (again.accepted, again.duplicates, again.quarantined) == (0, 53, 1)
    assert pipeline.messages[len(messages):] == messages  # same RawMessages, field for field


async def test_resume_after_a_crash_counts_every_event_once(tmp_path: Path) -> None:
    path = write(tmp_path / "dump-b.bin", b"".join(dump_record(3, s, s) for s in range(200)))
    pipeline = MiniPipeline(PROFILES)

    class Crash(Exception):
        pass

    class CrashingSink:
        async def submit(self, message: RawMessage):  # type: ignore[no-untyped-def]
            if len(pipeline.messages) == 120:
                raise Crash
            return await pipeline.submit(message)

    with pytest.raises(Crash):
        await import_paths([path], CrashingSink(), PROFILES, progress=False)
    resumed = await import_paths([path], pipeline, PROFILES, progress=False)
    assert len(pipeline.events) == 200
    assert (resumed.accepted, resumed.duplicates) == (80, 120)


async def test_binary_bad_records_are_quarantined_not_dropped(tmp_path: Path) -> None:
    junk, stub = b"\x12" + b"\x00" * 18, b"\x12\xa5"  # a record without magic; a truncated last one
    data = dump_record(1, 1, 5) + junk + dump_record(1, 2, 6) + stub
    path = write(tmp_path / "dump-c.bin", data)
    pipeline = MiniPipeline(PROFILES)
    summary = await import_paths([path], pipeline, PROFILES, progress=False)
    assert (summary.accepted, summary.quarantined) == (2, 2)
    assert [m.meta["offset"] for m in pipeline.messages] == ["0", "19", "38", "57"]


async def test_ndjson_and_json_files_with_a_forced_profile(tmp_path: Path) -> None:
    nd = write(tmp_path / "plug.ndjson", b'{"seq":1,"ts":"2026-01-01T00:00:00Z","wh":5}\n\n'
                                          b'{broken\n{"seq":2,"ts":"2026-01-01T00:01:00Z","wh":6}\n')
    js = write(tmp_path / "plug.json", b'[{"seq":3,"ts":"2026-01-01T00:02:00Z","wh":1}]')
    pipeline = MiniPipeline(PROFILES)
    summary = await import_paths([nd, js], _WithDevice(pipeline), PROFILES, profile="acme-http-meter",
                                 progress=False)
    assert (summary.accepted, summary.quarantined) == (3, 1)
    assert [m.meta["offset"] for m in pipeline.messages] == ["0", "46", "54", "0"]


class _WithDevice:
    """acme-http-meter takes its device id from the topic; files carry none, so name one."""

    def __init__(self, inner: MiniPipeline) -> None:
        self.inner = inner

    async def submit(self, message: RawMessage):  # type: ignore[no-untyped-def]
        from msgspec.structs import replace

        return await self.inner.submit(replace(message, meta={**message.meta, "device_id": "plug9"}))


async def test_unclaimed_or_unreadable_files_fail_alone(tmp_path: Path) -> None:
    good = write(tmp_path / "meters-x.csv", CSV)
    stray = write(tmp_path / "notes.txt", "hello")
    bad = write(tmp_path / "meters-bad.csv", b"meter,ts,kwh\n\xff\xfe,1,2\n")
    pipeline = MiniPipeline(PROFILES)
    summary = await import_paths([stray, bad, good, tmp_path / "missing.csv"], pipeline, PROFILES,
                                 progress=False)
    errors = {f.name: f.error for f in summary.failed}
    assert errors["notes.txt"] == "no profile claims this file name"
    assert "utf-8" in (errors["meters-bad.csv"] or "")
    assert "missing.csv" in errors
    assert summary.accepted == 3


async def test_progress_and_summary_are_printed(tmp_path: Path) -> None:
    write(tmp_path / "meters-p.csv", CSV)
    out = io.StringIO()
    await import_paths([tmp_path], MiniPipeline(PROFILES), PROFILES, progress=True,
                       console=Console(file=out, width=120))
    text = out.getvalue()
    assert "import summary" in text and "meters-p.csv" in text and "total" in text


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=40), st.sampled_from([1, 7, 4096]))
def test_length_prefixed_offsets_and_payloads(records: list[bytes], chunk: int) -> None:
    spec = FramingSpec(type="length_prefixed", prefix_bytes=2)
    data = b"".join(len(r).to_bytes(2, "big") + r for r in records)

    class Chunked(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            return super().read(min(chunk, size if size and size > 0 else chunk))

    import usagehub.adapters.files.readers as readers

    got = list(_binary(Chunked(data), spec))  # type: ignore[arg-type]
    assert [r.payload for r in got] == records
    offsets, pos = [], 0
    for r in records:
        offsets.append(pos)
        pos += 2 + len(r)
    assert [r.offset for r in got] == offsets
    assert readers.CHUNK > 0
