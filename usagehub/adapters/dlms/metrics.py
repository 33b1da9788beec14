"""Prometheus metrics of the dlms adapter, in the registry the hub exposes at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from usagehub.metrics import REGISTRY  # the registry /metrics serves

POLLS = Counter("usagehub_dlms_polls_total",
                "DLMS meter sessions, by outcome (ok, failed, auth_failed: wrong password or key)",
                ["outcome"], registry=REGISTRY)
PROFILE_ROWS = Counter("usagehub_dlms_profile_rows_total", "Load-profile entries read and handed to the pipeline",
                       registry=REGISTRY)
POLL_SECONDS = Histogram("usagehub_dlms_poll_duration_seconds", "Duration of successful DLMS sessions",
                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)
COMMANDS = Counter("usagehub_dlms_commands_total",
                   "Prepaid disconnect/reconnect commands to DLMS meters, by kind and outcome (confirmed, "
                   "unconfirmed, failed)", ["kind", "outcome"], registry=REGISTRY)
