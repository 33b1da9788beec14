"""Benchmark: DLMS/COSEM sessions per second of the dlms adapter's client against the simulated meter.

Starts ``tests/peers_dlms.py`` twice on 127.0.0.1 (one meter without security, one with HLS-GMAC and
ciphering), then times sequential sessions:
(baseline) associate, read the clock, release — the least a session costs on this machine and meter;
(plain)    clock + 3 registers with scaler_unit + 96 load-profile rows by range, no security;
(hls)      the same with HLS-GMAC and security suite 0 ciphering of every APDU;
and the ``dlms_poll`` codec's decode of the resulting messages. Prints medians over several rounds.
The simulated meter (pure Python, its own process) is part of every figure: treat them as lower bounds.

    .venv/bin/python bench/dlms_poll.py [--sessions 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.adapters.dlms.meters import AK, EK, meter_conf, quarter_hours, sim_meter
from usagehub.adapters.base import DeviceEndpoint
from usagehub.adapters.dlms.adapter import Plan, build_messages
from usagehub.adapters.dlms.client import Target, poll
from usagehub.core.codecs.dlms_poll import DlmsPollOptions, decode_dlms_poll

READ = {"registers": ["1.0.1.8.0.255", "1.0.1.7.0.255"], "data": ["0.0.96.1.0.255"],
        "load_profile": {"obis": "1.0.99.1.0.255"}}


def _rate(options: DlmsPollOptions, target: Target, sessions: int, since: object) -> tuple[float, object]:
    start, reading = time.perf_counter(), None
    for _ in range(sessions):
        reading = poll(options, target, since, datetime.now(UTC))  # type: ignore[arg-type]
        target = Target(**{**{f: getattr(target, f) for f in target.__slots__},  # type: ignore[attr-defined]
                           "invocation_counter": reading.invocation_counter})
    return sessions / (time.perf_counter() - start), reading


def main() -> None:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = quarter_hours(96, 100_000, 25)
    since = lambda clock: (clock or datetime.now(UTC)) - timedelta(days=2)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp, \
            sim_meter(Path(tmp), meter_conf(rows=rows), "plain") as plain, \
            sim_meter(Path(tmp), meter_conf(authentication="hls_gmac", rows=rows), "hls") as hls:
        base_opts = DlmsPollOptions.model_validate({"type": "dlms_poll", "data": ["0.0.96.1.0.255"]})
        plain_opts = DlmsPollOptions.model_validate({"type": "dlms_poll", **READ})
        hls_opts = DlmsPollOptions.model_validate({"type": "dlms_poll", "authentication": "hls_gmac", **READ})
        figures: dict[str, list[float]] = {"baseline": [], "plain": [], "hls": [], "decode_us": []}
        counter = 0  # the meter refuses a ciphering invocation counter it has seen: carry it across rounds
        for _ in range(args.rounds):
            figures["baseline"].append(_rate(base_opts, Target(host="127.0.0.1", port=plain.port, timeout_s=5),
                                             args.sessions, None)[0])
            rate, reading = _rate(plain_opts, Target(host="127.0.0.1", port=plain.port, timeout_s=5),
                                  args.sessions, since)
            figures["plain"].append(rate)
            rate, last = _rate(hls_opts, Target(host="127.0.0.1", port=hls.port, timeout_s=5, encryption_key=EK,
                                                authentication_key=AK, invocation_counter=counter),
                               args.sessions, since)
            figures["hls"].append(rate)
            counter = last.invocation_counter  # type: ignore[attr-defined]
            plan = Plan(profile_id="bench", options=plain_opts, interval_s=900, timeout_s=5)
            messages = build_messages(plan, DeviceEndpoint(device_id="m", profile_id="bench"), reading,  # type: ignore[arg-type]
                                      datetime.now(UTC), "bench")
            start = time.perf_counter()
            for message in messages * 20:
                decode_dlms_poll(message.payload)
            figures["decode_us"].append((time.perf_counter() - start) / (len(messages) * 20) * 1e6)
        print(f"rows per session: {len(reading.rows)}, sessions per round: {args.sessions}")  # type: ignore[union-attr]
        print(f"baseline (associate + 1 GET + release): {statistics.median(figures['baseline']):7.1f} sessions/s")
        print(f"plain (clock, 3 objects, 96 rows):      {statistics.median(figures['plain']):7.1f} sessions/s")
        print(f"hls-gmac + ciphering (same reads):      {statistics.median(figures['hls']):7.1f} sessions/s")
        print(f"dlms_poll codec decode:                 {statistics.median(figures['decode_us']):7.1f} µs/message")


if __name__ == "__main__":
    main()
