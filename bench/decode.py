"""Decoder benchmark: median µs per frame for a 40-byte construct record, an M-Bus and a DC-09 frame.

Run: .venv/bin/python bench/decode.py   (a plain struct.unpack of the same record is the baseline)
"""

from __future__ import annotations

import statistics
import struct
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.core.codecs.binary_records import load_profile, pulse_record  # noqa: E402
from usagehub.core.codecs.checksums import checksum_fn  # noqa: E402
from usagehub.core.codecs.dc09 import CODEC as DC09  # noqa: E402
from usagehub.core.codecs.dc09 import Dc09Options  # noqa: E402
from usagehub.core.codecs.layout import CODEC as LAYOUT  # noqa: E402
from usagehub.core.codecs.layout import LayoutOptions  # noqa: E402
from usagehub.core.codecs.mbus import decode_frame  # noqa: E402

CONFORMANCE = ROOT.parent / "shared" / "conformance"


def median_us(fn: Callable[[], object], number: int = 20_000, repeat: int = 7) -> float:
    """Median µs per call over ``repeat`` runs of ``number`` calls."""
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    """Print µs/frame for each case and the implied frames per second per core."""
    record = pulse_record()
    layout = LAYOUT.compile(LayoutOptions.model_validate(load_profile("acme-pulse-bin").decode))
    plain = struct.Struct(">2sIIIIIHhBB8sHH")
    crc = checksum_fn("crc16/modbus")
    mbus = bytes(
        int(t, 16)
        for t in (CONFORMANCE / "libmbus/test/test-frames/kamstrup_multical_601.hex").read_text().split()
    )
    dc09_frame = (CONFORMANCE / "ioBroker.sia/test/siaCommand").read_bytes()
    dc09 = DC09.compile(Dc09Options(type="dc09", keys={"12345": "0123456789ABCDEF"}))
    dc09_enc = (CONFORMANCE / "ioBroker.sia/test/siaCommandENC").read_bytes()
    cases: list[tuple[str, Callable[[], object], int]] = [
        ("baseline struct.unpack, 40-byte record", lambda: plain.unpack(record), 200_000),
        (
            "baseline struct.unpack + crc16, 40-byte",
            lambda: (plain.unpack(record), crc(record[:-2])),
            100_000,
        ),
        ("construct layout, 40-byte record (binary)", lambda: layout(record), 20_000),
        (f"M-Bus long frame ({len(mbus)} bytes, 24 records)", lambda: decode_frame(mbus), 2_000),
        (f"DC-09 SIA-DCS clear ({len(dc09_frame)} bytes)", lambda: dc09(dc09_frame), 10_000),
        (f"DC-09 SIA-DCS AES-128 ({len(dc09_enc)} bytes)", lambda: dc09(dc09_enc), 5_000),
    ]
    print(f"{'case':48} {'µs/frame':>9} {'frames/s':>10}")
    for name, fn, number in cases:
        us = median_us(fn, number)
        print(f"{name:48} {us:9.2f} {1e6 / us:10,.0f}")


if __name__ == "__main__":
    main()
