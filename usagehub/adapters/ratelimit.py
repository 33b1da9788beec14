"""Token buckets for the doors that take input without a credential (SNMP traps, CoAP, UDP).

One bucket per source address, and one for all sources together: source addresses cost an
attacker nothing (UDP is spoofed at will), so only the total bounds what a flood can write.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field


class RateLimitConfig(BaseModel):
    """How much one source address may send: a sustained rate and a burst."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    per_source_per_s: float = Field(50.0, gt=0, description="sustained messages per second per source address")
    burst: int = Field(200, ge=1, description="messages a source may send at once after a quiet period")
    max_sources: int = Field(100_000, ge=1, description="sources remembered; beyond, idle ones are forgotten")
    total_per_s: float = Field(500.0, gt=0, description="sustained messages per second from all sources together")
    total_burst: int = Field(2_000, ge=1, description="messages all sources together may send at once")


class SourceLimiter:
    """A token bucket per source address and one for all sources; memory is bounded by ``max_sources``."""

    def __init__(self, config: RateLimitConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or RateLimitConfig()
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, updated)
        self._total = (float(self.config.total_burst), self._clock())

    def allow(self, source: str) -> bool:
        """Take one token for ``source`` and one of the total; False when either is spent."""
        return self.allow_source(source) and self.allow_total()

    def allow_source(self, source: str) -> bool:
        """Take one token for ``source`` only; False when it is over its rate."""
        return self._allow_source(source, self._clock())

    def allow_total(self) -> bool:
        """Take one token of the total only; False when all sources together are over the total rate."""
        now = self._clock()
        tokens, updated = self._total
        tokens = min(float(self.config.total_burst), tokens + (now - updated) * self.config.total_per_s)
        if tokens < 1.0:
            self._total = (tokens, now)
            return False
        self._total = (tokens - 1.0, now)
        return True

    def _allow_source(self, source: str, now: float) -> bool:
        rate, burst = self.config.per_source_per_s, float(self.config.burst)
        tokens, updated = self._buckets.get(source, (burst, now))
        tokens = min(burst, tokens + (now - updated) * rate)
        if tokens < 1.0:
            self._buckets[source] = (tokens, now)
            return False
        if source not in self._buckets and len(self._buckets) >= self.config.max_sources:
            self._forget_idle(now)
        self._buckets[source] = (tokens - 1.0, now)
        return True

    def _forget_idle(self, now: float) -> None:
        """Drop sources whose bucket has refilled (they lose nothing); if none has, drop the oldest half."""
        full = self.config.burst / self.config.per_source_per_s
        kept = {k: v for k, v in self._buckets.items() if now - v[1] < full}
        if len(kept) >= self.config.max_sources:
            ordered = sorted(kept.items(), key=lambda kv: kv[1][1])
            kept = dict(ordered[len(ordered) // 2:])
        self._buckets = kept
