"""Prometheus metrics of the snmp adapter, in the registry the hub exposes at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from usagehub.metrics import REGISTRY  # the registry /metrics serves

POLL_MISSED = Counter("usagehub_snmp_poll_missed_total",
                      "Polls that produced no reading: timeout, error, missing credentials or overload",
                      ["device"], registry=REGISTRY)
POLLS = Counter("usagehub_snmp_polls_total", "Polls attempted, by outcome", ["outcome"], registry=REGISTRY)
POLL_SECONDS = Histogram("usagehub_snmp_poll_duration_seconds", "Duration of successful polls",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=REGISTRY)
TRAPS = Counter("usagehub_snmp_traps_total",
                "Datagrams on the trap port, by result (accepted, rejected, handshake, overflow, rate_limited)",
                ["result"], registry=REGISTRY)
