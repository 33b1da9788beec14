"""Framers cut streams at frame boundaries whatever the chunking; junk comes out as its own frame."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from usagehub.adapters.binary.framing import FramingSpec, default_framing, make_framer, split_frames


def _chunked(spec: FramingSpec, data: bytes, cuts: list[int]) -> list[bytes]:
    framer, out, pos = make_framer(spec), [], 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        out += framer.feed(data[pos:cut])
        pos = max(pos, cut)
    return out


FRAMES = st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(frames=FRAMES, cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_length_prefixed_any_chunking(frames: list[bytes], cuts: list[int]) -> None:
    spec = FramingSpec(type="length_prefixed", prefix_bytes=2)
    data = b"".join(len(f).to_bytes(2, "big") + f for f in frames)
    assert _chunked(spec, data, cuts) == frames


@settings(max_examples=100, deadline=None)
@given(frames=FRAMES, cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_dc09_any_chunking(frames: list[bytes], cuts: list[int]) -> None:
    bodies = [f.replace(b"\n", b"").replace(b"\r", b"") or b"x" for f in frames]
    data = b"".join(b"\n" + b + b"\r" for b in bodies)
    assert _chunked(FramingSpec(type="dc09"), data, cuts) == [b"\n" + b + b"\r" for b in bodies]


def test_fixed_and_delimited() -> None:
    assert split_frames(b"abcdefg", FramingSpec(type="fixed", size=3)) == [b"abc", b"def", b"g"]
    assert split_frames(b"a;;b;c", FramingSpec(type="delimited", delimiter=";")) == [b"a", b"b", b"c"]
    spec = FramingSpec(type="length_prefixed", prefix_bytes=1, include_prefix=True, length_adjust=-1)
    assert split_frames(b"\x03ab\x02c", spec) == [b"\x03ab", b"\x02c"]


def test_mbus_frames_ack_and_junk() -> None:
    frame = bytes([0x68, 3, 3, 0x68, 0x08, 0x01, 0x72, 0x7B, 0x16])
    out = split_frames(b"\xe5junk" + frame + frame[:5], FramingSpec(type="mbus"))
    assert out == [b"junk", frame, frame[:5]]


def test_dc09_text_outside_frames_is_kept() -> None:
    assert split_frames(b"noise\nAB\r", FramingSpec(type="dc09")) == [b"noise", b"\nAB\r"]


def test_oversized_buffer_is_flushed_as_a_frame() -> None:
    framer = make_framer(FramingSpec(type="dc09", max_frame_bytes=16))
    assert framer.feed(b"\n" + b"x" * 20) == [b"\n" + b"x" * 20]


def test_default_framing_from_profile_decode() -> None:
    assert default_framing({"type": "mbus"}) == FramingSpec(type="mbus")
    assert default_framing({"type": "binary", "framing": {"type": "fixed", "size": 40}}) == FramingSpec(
        type="fixed", size=40
    )
    assert default_framing({"type": "json"}) is None
