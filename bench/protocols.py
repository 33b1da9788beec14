"""Protocol decoder benchmark: median µs per message for wM-Bus (clear, mode 5, mode 7 + MAC),
Sparkplug B (1 and 102 metrics, alias resolution) and a DLMS push, against the wired M-Bus frame
decoded in the same run as the baseline.

Run: .venv/bin/python bench/protocols.py
"""

from __future__ import annotations

import base64
import json
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from usagehub.core.codecs.dlms_push import DlmsPushDecoder, DlmsPushOptions  # noqa: E402
from usagehub.core.codecs.mbus import decode_frame  # noqa: E402
from usagehub.core.codecs.sparkplug import decode_payload  # noqa: E402
from usagehub.core.codecs.sparkplug_session import SparkplugSessions, parse_topic  # noqa: E402
from usagehub.core.codecs.wmbus import WmbusDecoder, WmbusOptions  # noqa: E402

CONFORMANCE = ROOT.parent / "shared" / "conformance"


def median_us(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Median µs per call over ``repeat`` runs of ``number`` calls."""
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def _wmbus_cases() -> list[tuple[str, Callable[[], object], int]]:
    vectors = json.loads((CONFORMANCE / "ioBroker.wmbus/lib/wmbus_decoder.test.EXTRACTED.json").read_text())
    by_id = {v["id"]: v for v in vectors["vectors"]}
    cases = []
    for name, label in (("oms-frame-b", "wM-Bus clear, frame B with CRCs"),
                        ("oms-profile-a-mode5", "wM-Bus mode 5 (AES-CBC), frame A with CRCs"),
                        ("oms-profile-b-mode7-integrated", "wM-Bus mode 7 + AFL MAC, frame A")):
        vector = by_id[name]
        key = bytes.fromhex(vector["key"]) if vector["key"] else None
        decoder = WmbusDecoder(WmbusOptions(type="wmbus"), lambda _id, k=key: k)
        telegram = bytes.fromhex(vector["telegram_hex"])
        cases.append((f"{label} ({len(telegram)} B)", lambda d=decoder, t=telegram: d(t), 2_000))
    return cases


def _sparkplug_cases() -> list[tuple[str, Callable[[], object], int]]:
    vectors = json.loads((CONFORMANCE / "benthos-umh/sparkplug_plugin/test_vectors.EXTRACTED.json").read_text())
    raw = {v["name"]: base64.b64decode(v["base64"]) for v in vectors["vectors"]}
    sessions = SparkplugSessions()
    sessions.receive(parse_topic("spBv1.0/g/NBIRTH/e"), raw["NBIRTH_V1"], 0)
    ndata = parse_topic("spBv1.0/g/NDATA/e")

    def by_alias() -> object:
        sessions.nodes[("g", "e")].seq = 0  # keep the seq in step so every call resolves
        return sessions.receive(ndata, raw["NDATA_V1"], 0)

    return [
        ("Sparkplug NDATA, 1 metric (decode)", lambda: decode_payload(raw["NDATA_V1"]), 5_000),
        ("Sparkplug NBIRTH, 102 metrics (decode)", lambda: decode_payload(raw["NBIRTH_LARGE"]), 500),
        ("Sparkplug NDATA alias resolution (session)", by_alias, 5_000),
    ]


def main() -> None:
    """Print µs/message and messages/s per core for each case."""
    mbus = bytes(int(t, 16) for t in
                 (CONFORMANCE / "libmbus/test/test-frames/kamstrup_multical_601.hex").read_text().split())
    dlms = json.loads((CONFORMANCE / "smartmeter-datacollector/tests/testdata.EXTRACTED.json").read_text())
    push = next(v for v in dlms["vectors"] if v["id"] == "lg_e450.UNENCRYPTED_VALID_DATA_CFG2026")
    push_bytes = bytes.fromhex("".join(push["frames_hex"]))
    dlms_decoder = DlmsPushDecoder(DlmsPushOptions(type="dlms_push"))
    cases = [
        (f"baseline: wired M-Bus long frame ({len(mbus)} B)", lambda: decode_frame(mbus), 2_000),
        *_wmbus_cases(),
        *_sparkplug_cases(),
        (f"DLMS push, 4 HDLC frames / GBT ({len(push_bytes)} B)", lambda: dlms_decoder(push_bytes), 100),
    ]
    print(f"{'case':52} {'µs/msg':>9} {'msg/s':>9}")
    for label, fn, number in cases:
        us = median_us(fn, number)
        print(f"{label:52} {us:9.1f} {1e6 / us:9.0f}")


if __name__ == "__main__":
    main()
