"""Where one prepaid request waits: a bench-only record of each request's stages in the hub.

Off unless ``USAGEHUB_PREPAID_STAGES`` names a file. Then each answered request keeps its
timestamps (``time.perf_counter``): received from paho, queued for the decider, handed to the
port, the batch transaction's start (after the service's queue and the pool), read done, write
done, COMMIT returned (the WAL flush included), back in the adapter, handed to paho (written to
the socket at that loop pass's coalesced flush). ``SIGUSR1`` writes the medians and p99 of each
stage to the file (JSON); ``SIGUSR2`` forgets what was recorded (a bench's warm-up).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import statistics
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)
STAGES = ("queued", "handed", "tx_start", "read_done", "write_done", "committed", "decided", "published")
_LIMIT = 500_000  # samples kept (a few minutes of bench)


class StageRecord:
    """Per-request stage timestamps, summarised on SIGUSR1."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: list[tuple[float, ...]] = []

    def add(self, received: float, marks: tuple[float, ...]) -> None:
        """One request: received at ``received``, then one mark per stage after ``queued``..."""
        if len(self.samples) < _LIMIT:
            self.samples.append((received, *marks))

    def summary(self) -> dict[str, Any]:
        """Median and p99 (ms) of each stage's wait after the previous one, and of the whole."""
        out: dict[str, Any] = {"requests": len(self.samples)}
        if not self.samples:
            return out
        names = ("received", *STAGES)
        for i in range(1, len(names)):
            out[names[i]] = _quantiles([s[i] - s[i - 1] for s in self.samples if len(s) > i])
        out["total"] = _quantiles([s[-1] - s[0] for s in self.samples])
        return out

    def dump(self) -> None:
        """Write the summary (SIGUSR1)."""
        try:
            self.path.write_bytes(orjson.dumps(self.summary(), option=orjson.OPT_INDENT_2))
        except OSError as err:
            log.warning("prepaid stages not written to %s: %s", self.path, err)

    def reset(self) -> None:
        """Forget the samples (SIGUSR2)."""
        self.samples = []

    def listen(self) -> None:
        """SIGUSR1 dumps, SIGUSR2 resets, run by the running event loop (never inside other code)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self.dump)
        loop.add_signal_handler(signal.SIGUSR2, self.reset)

    def unlisten(self) -> None:
        """Give the signals back (the adapter stopped)."""
        loop = asyncio.get_running_loop()
        loop.remove_signal_handler(signal.SIGUSR1)
        loop.remove_signal_handler(signal.SIGUSR2)


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 3)}


def from_environment() -> StageRecord | None:
    """The record when ``USAGEHUB_PREPAID_STAGES`` is set, else None (call ``listen`` in the loop)."""
    target = os.environ.get("USAGEHUB_PREPAID_STAGES")
    return StageRecord(Path(target)) if target else None


__all__ = ["STAGES", "StageRecord", "from_environment"]
