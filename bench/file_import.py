"""File import: records per second from CSV, NDJSON and binary files vs reading the records alone.

The importer submits to a fast in-memory sink (the lead re-runs it against the real
pipeline); the baseline in the same run only iterates the file's records. Local temp files.

    .venv/bin/python bench/file_import.py [--records 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from coap_ingest import FastSink

from usagehub.adapters.files import import_paths
from usagehub.adapters.files.readers import detect_format, read_records
from usagehub.core.profiles import Profile, parse_profile

PROFILES = {
    "csv": """
id: bench-csv
match: {transport: file, topic: "bench.csv"}
decode: {type: json}
device_id: "$.meter"
meters: {energy: {value: "$.kwh", kind: cumulative, unit: kWh, aggregation: sum}}
""",
    "ndjson": """
id: bench-ndjson
match: {transport: file, topic: "bench.ndjson"}
decode: {type: json}
device_id: "$.meter"
meters: {energy: {value: "$.kwh", kind: cumulative, unit: kWh, aggregation: sum}}
""",
    "bin": """
id: bench-bin
match: {transport: file, topic: "bench.bin"}
decode:
  type: binary
  framing: {type: length_prefixed, prefix_bytes: 1}
  layout: [{name: device, type: u32}, {name: seq, type: u32}, {name: wh, type: u32}]
device_id: "$.device"
meters: {energy: {value: "$.wh", kind: cumulative, unit: Wh, aggregation: sum}}
""",
}


def write_files(folder: Path, n: int) -> dict[str, Path]:
    csv = folder / "bench.csv"
    csv.write_text("meter,ts,kwh\n" + "".join(f"m{i % 500},2026-01-01T00:00:00Z,{i}.5\n" for i in range(n)))
    nd = folder / "bench.ndjson"
    nd.write_bytes(b"".join(orjson.dumps({"meter": f"m{i % 500}", "kwh": i}) + b"\n" for i in range(n)))
    binary = folder / "bench.bin"
    binary.write_bytes(b"".join(b"\x0c" + struct.pack(">III", i % 500, i, i * 3) for i in range(n)))
    return {"csv": csv, "ndjson": nd, "bin": binary}


def read_only(path: Path, profile: Profile) -> float:
    started = time.perf_counter()
    with path.open("rb") as f:
        count = sum(1 for _ in read_records(f, detect_format(path.name, profile), profile))
    return count / (time.perf_counter() - started)


async def imported(path: Path, profile: Profile) -> float:
    sink = FastSink()
    started = time.perf_counter()
    summary = await import_paths([path], sink, [profile], progress=False)
    return summary.records / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"file import, {args.records} records per file, {args.rounds} rounds (fast sink)")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(Path(tmp), args.records)
        for kind, path in files.items():
            profile = parse_profile(PROFILES[kind], kind)
            base = [read_only(path, profile) for _ in range(args.rounds)]
            hub = [await imported(path, profile) for _ in range(args.rounds)]
            print(f"  {kind:6s} baseline read records: median {statistics.median(base):9.0f} rec/s   "
                  f"import_paths: median {statistics.median(hub):9.0f} rec/s")


if __name__ == "__main__":
    asyncio.run(main())
