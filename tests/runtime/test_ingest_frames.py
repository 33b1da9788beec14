"""The frames between ``serve`` and its ingest processes: exact round trips; bad bytes end with FrameError;
every lane of every child is used."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usagehub.core.events import RawMessage
from usagehub.pipeline.pipeline import lane_index
from usagehub.runtime.ingest_frames import (
    FrameError,
    decode_messages,
    decode_report,
    encode_messages,
    encode_report,
    hello,
    parse_hello,
    read_frame,
)
from usagehub.runtime.ingest_processes import FOLDER_PREFIX, child_index, remove_stale_folders

SECRET = bytes(range(32))
instants = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
messages = st.lists(st.tuples(st.integers(0, 2**64 - 1), st.text(max_size=80), st.binary(max_size=300), instants),
                    max_size=30)


def _body(frame: bytes) -> bytes:
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    return frame[4:]


@given(messages)
def test_messages_come_back_exactly(items: list[tuple[int, str, bytes, datetime]]) -> None:
    sent = [(token, RawMessage(transport="mqtt", topic=topic, payload=payload, received_at=at))
            for token, topic, payload, at in items]
    assert decode_messages(_body(encode_messages(sent))) == sent


@given(st.lists(st.integers(0, 2**64 - 1), max_size=200))
def test_tokens_come_back_exactly(tokens: list[int]) -> None:
    assert decode_report(_body(encode_report(tokens))) == (tuple(tokens), {})
    figures = {"counters": [("usagehub_events_accepted_total", {}, 3.0)], "batches": [(0.25, 40)]}
    assert decode_report(_body(encode_report(tokens, figures))) == (
        tuple(tokens), {"counters": [["usagehub_events_accepted_total", {}, 3.0]], "batches": [[0.25, 40]]})


@given(st.binary(max_size=400))
def test_any_bytes_decode_or_raise_frame_error(body: bytes) -> None:
    for decode in (decode_messages, decode_report):
        with contextlib.suppress(FrameError):
            decode(body)


def test_a_message_cut_short_is_refused() -> None:
    at = datetime(2026, 11, 29, tzinfo=UTC) + timedelta(microseconds=7)
    body = _body(encode_messages([(1, RawMessage(transport="mqtt", topic="meters/m1/reading", payload=b"{}",
                                                 received_at=at))]))
    with pytest.raises(FrameError, match="runs past"):
        decode_messages(body[:-1])


def test_a_hello_needs_the_secret() -> None:
    assert parse_hello(_body(hello(3, SECRET)), SECRET) == 3
    for body in (_body(hello(3, bytes(32))), _body(hello(3, SECRET))[:-1], b""):
        with pytest.raises(FrameError, match="secret"):
            parse_hello(body, SECRET)


async def test_frames_are_read_whole_and_a_cut_or_oversized_one_is_refused() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(encode_report([1, 2]) + encode_report([3]))
    reader.feed_eof()
    assert [await read_frame(reader), await read_frame(reader), await read_frame(reader)] == [
        _body(encode_report([1, 2])), _body(encode_report([3])), None]
    for data, error in ((encode_report([1])[:-3], "inside a frame"), (b"\x00\x00", "frame header"),
                        (b"\x00\x00\x00\x41" + bytes(65), "at most 64")):
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        with pytest.raises(FrameError, match=error):
            await read_frame(reader, max_size=64)


@pytest.mark.parametrize(("children", "lanes"), [(2, 2), (2, 1), (3, 2), (2, 4)])
def test_every_lane_of_every_child_gets_devices(children: int, lanes: int) -> None:
    """The hub's choice of child and the child's choice of lane split devices independently."""
    used = {(child_index(f"m{d:04d}", children, lanes), lane_index(f"m{d:04d}", lanes)) for d in range(2000)}
    assert used == {(c, lane) for c in range(children) for lane in range(lanes)}


def test_an_ingest_worker_started_by_hand_says_what_starts_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("USAGEHUB_INGEST_")}
    done = subprocess.run([sys.executable, "-m", "usagehub", "ingest-worker", "--index", "0"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0
    assert "started by `usagehub serve --ingest-processes N`" in done.stderr
    assert "Traceback" not in done.stderr


def test_only_the_socket_folders_of_dead_hubs_are_removed(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale, mine = tmp_path / f"{FOLDER_PREFIX}{gone.pid}-abc", tmp_path / f"{FOLDER_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{FOLDER_PREFIX}xyz"  # not named by a pid: not ours to judge
    for folder in (stale, mine, other):
        folder.mkdir()
        (folder / "ingest.sock").write_bytes(b"")
    assert remove_stale_folders(tmp_path) == 1
    assert not stale.exists() and mine.exists() and other.exists()
