"""Polling schedule: one task per device, bounded concurrency, phase spread and jitter, missed-poll counts."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from usagehub.adapters.base import DeviceDirectory, DeviceEndpoint, Sink
from usagehub.adapters.polling import reconcile_tasks
from usagehub.adapters.snmp import metrics
from usagehub.adapters.snmp.config import SnmpConfig
from usagehub.adapters.snmp.credentials import CredentialError, auth_data
from usagehub.adapters.snmp.plan import PollPlan
from usagehub.adapters.snmp.poller import PollFailed, SnmpClient, build_messages
from usagehub.adapters.snmp.state import MarkerStore
from usagehub.core.events import RawMessage

log = logging.getLogger(__name__)


def phase_fraction(device_id: str) -> float:
    """A stable position in [0, 1) of a device inside its poll interval, so devices spread out."""
    digest = hashlib.blake2b(device_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(slots=True)
class DeviceHealth:
    """What the hub can read about one polled device."""

    polls: int = 0
    missed: int = 0
    last_error: str | None = None
    last_success_at: float | None = None


def _consume(future: asyncio.Future[Any]) -> None:
    # The pipeline owns quarantine and errors; we only keep the loop from warning.
    if not future.cancelled():
        future.exception()


class PollScheduler:
    """Polls every registered device of every polled profile, forever."""

    def __init__(self, *, config: SnmpConfig, plans: Mapping[str, PollPlan], directory: DeviceDirectory,
                 client: SnmpClient, store: MarkerStore) -> None:
        self._config, self._plans, self._directory = config, plans, directory
        self._client, self._store = client, store
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._tasks: dict[str, tuple[DeviceEndpoint, asyncio.Task[None]]] = {}
        self.health: dict[str, DeviceHealth] = {}

    async def run(self, sink: Sink) -> None:
        """Refresh the device list every ``refresh_s``; cancel to stop all device tasks."""
        try:
            while True:
                await self._refresh(sink)
                await asyncio.sleep(self._config.refresh_s)
                await asyncio.to_thread(self._store.save)
        finally:
            for _, task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*(t for _, t in self._tasks.values()), return_exceptions=True)
            self._tasks.clear()
            self._store.save_quietly()

    async def _refresh(self, sink: Sink) -> None:
        wanted: dict[str, DeviceEndpoint] = {}
        for profile_id in self._plans:
            for endpoint in await self._directory.endpoints(profile_id):
                wanted[endpoint.device_id] = endpoint
        reconcile_tasks(self._tasks, wanted, lambda endpoint: self._device_loop(endpoint, sink), "snmp-poll")

    async def _device_loop(self, endpoint: DeviceEndpoint, sink: Sink) -> None:
        assert endpoint.profile_id is not None
        plan = self._plans[endpoint.profile_id]
        loop = asyncio.get_running_loop()
        due = loop.time() + phase_fraction(endpoint.device_id) * plan.interval_s
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()) + random.uniform(0, self._config.jitter_s))
            async with self._slots:
                ok = await self._poll(endpoint, plan, sink)
            if not ok:
                self._missed(endpoint.device_id)
            due += plan.interval_s
            behind = int((loop.time() - due) // plan.interval_s)
            if behind > 0:  # overloaded: the skipped slots are missed polls too
                for _ in range(behind):
                    self._missed(endpoint.device_id, "overloaded: poll slot skipped")
                due += behind * plan.interval_s

    async def _poll(self, endpoint: DeviceEndpoint, plan: PollPlan, sink: Sink) -> bool:
        health = self.health.setdefault(endpoint.device_id, DeviceHealth())
        health.polls += 1
        started = time.perf_counter()
        try:
            messages = await self.poll_once(endpoint, plan)
        except (PollFailed, CredentialError, OSError, TimeoutError) as err:
            self._failed(endpoint.device_id, health, str(err) or type(err).__name__)
            return False
        except Exception as err:  # pysnmp raises assorted errors; a device task must not die
            self._failed(endpoint.device_id, health, f"{type(err).__name__}: {err}")
            return False
        metrics.POLL_SECONDS.observe(time.perf_counter() - started)
        metrics.POLLS.labels("ok").inc()
        if health.last_error is not None:
            log.info("snmp poll of %s recovered", endpoint.device_id)
        health.last_error, health.last_success_at = None, time.time()
        for message in messages:
            (await sink.submit(message)).add_done_callback(_consume)
        return True

    async def poll_once(self, endpoint: DeviceEndpoint, plan: PollPlan) -> list[RawMessage]:
        """Poll one device now and build its messages (no scheduling, no counting)."""
        if not endpoint.address:
            raise CredentialError("the registry has no address for this device")
        auth = auth_data(plan.version, endpoint.secrets)
        port = endpoint.port or self._config.default_port
        target = await self._client.target(endpoint.address, port, plan.timeout_s, plan.retries)
        # A poll that outlives its interval is a missed poll, whatever pysnmp's retries say.
        async with asyncio.timeout(plan.interval_s):
            result = await self._client.poll(auth, target, plan)
        markers = self._store.get(endpoint.device_id)
        return build_messages(plan, result, endpoint, markers, f"{endpoint.address}:{port}")

    def _failed(self, device_id: str, health: DeviceHealth, reason: str) -> None:
        if health.last_error is None:
            log.warning("snmp poll of %s failed: %s", device_id, reason)  # once per failure streak
        health.last_error = reason
        metrics.POLLS.labels("missed").inc()

    def _missed(self, device_id: str, reason: str | None = None) -> None:
        health = self.health.setdefault(device_id, DeviceHealth())
        health.missed += 1
        if reason is not None:
            health.last_error = reason
            metrics.POLLS.labels("missed").inc()
        metrics.POLL_MISSED.labels(device_id).inc()

    @property
    def missed_polls(self) -> dict[str, int]:
        """Missed polls per device since start."""
        return {device_id: h.missed for device_id, h in self.health.items()}
