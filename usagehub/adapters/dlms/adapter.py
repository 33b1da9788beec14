"""The dlms adapter: one task per registered meter of a polled DLMS profile, sessions in threads, bounded."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from usagehub.adapters.base import AdapterSettings, DeviceEndpoint, Receipt, Sink
from usagehub.adapters.dlms import metrics
from usagehub.adapters.dlms.client import PollFailed, Reading, Target, control, poll
from usagehub.adapters.dlms.config import DlmsConfig
from usagehub.adapters.dlms.state import StateStore
from usagehub.adapters.polling import reconcile_tasks
from usagehub.core.codecs.dlms_poll import DlmsPollOptions, encode_payload
from usagehub.core.events import RawMessage
from usagehub.core.profiles import Profile

log = logging.getLogger(__name__)
DISCONNECT_OBIS = "0.0.96.3.10.255"  # the usual disconnect control object
KEY_PROTOCOL = "dlms_poll"  # keys: <device id> (block cipher key) and <device id>:auth (authentication key)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """One polled DLMS profile: what to read and how often."""

    profile_id: str
    options: DlmsPollOptions
    interval_s: float
    timeout_s: float


def plan_for(profile: Profile) -> Plan | None:
    """The plan of a ``dlms_poll`` profile, or None for other profiles."""
    if profile.decode_type != "dlms_poll":
        return None
    poll_spec = profile.poll
    return Plan(profile_id=profile.id, options=DlmsPollOptions.model_validate(profile.decode),
                interval_s=poll_spec.interval_s if poll_spec else 900.0,
                timeout_s=poll_spec.timeout_s if poll_spec else 5.0)


@dataclass(slots=True)
class DeviceHealth:
    """What the hub can read about one polled meter."""

    polls: int = 0
    failures: int = 0
    auth_failures: int = 0
    last_error: str | None = None
    last_success_at: float | None = None
    streak: int = 0                 # failures in a row
    last_auth_failed: bool = False


def _phase(device_id: str) -> float:
    digest = hashlib.blake2b(device_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def build_messages(plan: Plan, endpoint: DeviceEndpoint, reading: Reading, polled_at: datetime,
                   source: str) -> list[RawMessage]:
    """One message for the single objects (stamped with the meter clock), one per load-profile row."""
    meta = {"profile": plan.profile_id, "device_id": endpoint.device_id}
    clock = reading.clock.isoformat() if reading.clock else None
    messages: list[RawMessage] = []
    if reading.objects:
        body = {"kind": "registers", "ts": clock or polled_at.isoformat(), "clock": clock,
                "objects": {o: list(v) for o, v in reading.objects.items()}}
        messages.append(RawMessage(transport="dlms", topic="registers", payload=encode_payload(body),
                                   received_at=polled_at, source=source, meta=meta))
    profile = plan.options.load_profile.obis if plan.options.load_profile else None
    for when, values in reading.rows:
        body = {"kind": "profile", "ts": when.isoformat(), "clock": clock, "profile": profile,
                "objects": {o: list(v) for o, v in values.items()}}
        messages.append(RawMessage(transport="dlms", topic="profile", payload=encode_payload(body),
                                   received_at=polled_at, source=source, meta=meta))
    return messages


class DlmsAdapter:
    """Async context manager; ``run(sink)`` polls every registered meter of every ``dlms_poll`` profile."""

    def __init__(self, config: DlmsConfig, settings: AdapterSettings) -> None:
        self.config, self.settings = config, settings
        self.plans = {p.id: plan for p in settings.profiles if (plan := plan_for(p)) is not None}
        self.store = StateStore(settings.data_dir / config.state_file if config.state_file else None)
        self.health: dict[str, DeviceHealth] = {}
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._tasks: dict[str, tuple[DeviceEndpoint, asyncio.Task[None]]] = {}
        self._keys = settings.keyring.lookup_for(KEY_PROTOCOL) if settings.keyring is not None else None

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.store.load)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.store.save_quietly()

    async def run(self, sink: Sink) -> None:
        """Refresh the meter list every ``refresh_s`` and poll each meter on its profile's interval."""
        if not (self.config.poll_enabled and self.plans):
            await asyncio.Event().wait()
        try:
            while True:
                await self._refresh(sink)
                await asyncio.sleep(self.config.refresh_s)
        finally:
            for _, task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*(t for _, t in self._tasks.values()), return_exceptions=True)
            self._tasks.clear()

    async def _refresh(self, sink: Sink) -> None:
        wanted: dict[str, DeviceEndpoint] = {}
        for profile_id in self.plans:
            for endpoint in await self.settings.devices.endpoints(profile_id):
                wanted[endpoint.device_id] = endpoint
        reconcile_tasks(self._tasks, wanted, lambda endpoint: self._device_loop(endpoint, sink), "dlms-poll")

    async def _device_loop(self, endpoint: DeviceEndpoint, sink: Sink) -> None:
        assert endpoint.profile_id is not None
        plan = self.plans[endpoint.profile_id]
        loop = asyncio.get_running_loop()
        due = loop.time() + _phase(endpoint.device_id) * min(plan.interval_s, self.config.refresh_s)
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()) + random.uniform(0, self.config.jitter_s))
            async with self._slots:
                try:
                    ok = await self.poll_device(endpoint, plan, sink)
                except Exception as err:  # a defect must not stop this meter's polling for good, unseen
                    log.exception("dlms poll of %s raised", endpoint.device_id)
                    self._failed(endpoint.device_id, self.health.setdefault(endpoint.device_id, DeviceHealth()),
                                 PollFailed(f"internal error: {type(err).__name__}: {err}"))
                    ok = False
            due = max(due + plan.interval_s, loop.time())
            health = self.health[endpoint.device_id]
            if not ok and not health.last_auth_failed:
                # a transient failure is retried with jittered backoff, within the interval; a refused password
                # or key is not (meters lock an account after a few failed associations)
                backoff = self.config.retry_first_s * 2 ** min(health.streak - 1, 16)
                due = min(due, loop.time() + min(backoff, plan.interval_s) * random.uniform(0.5, 1.0))

    async def poll_device(self, endpoint: DeviceEndpoint, plan: Plan, sink: Sink) -> bool:
        """One session with one meter; its messages are submitted and committed before state moves on."""
        health = self.health.setdefault(endpoint.device_id, DeviceHealth())
        health.polls += 1
        started = time.perf_counter()
        try:
            # The session itself is bounded in _read; this bounds the rest too (the counter reservation's write
            # waits for a thread and fsync), so a slow disk fails this poll instead of holding the meter's loop.
            async with asyncio.timeout(2 * max(plan.interval_s, plan.timeout_s * 4)):
                messages, last = await self._read(endpoint, plan)
        except TimeoutError:
            self._failed(endpoint.device_id, health, PollFailed("the poll did not end in time"))
            return False
        except PollFailed as err:
            self._failed(endpoint.device_id, health, err)
            return False
        except OSError as err:  # the counter reservation could not be made durable: no session without it
            self._failed(endpoint.device_id, health, PollFailed(f"meter state not saved: {err}"))
            return False
        receipts = await asyncio.gather(*[await sink.submit(m) for m in messages], return_exceptions=True)
        if any(isinstance(r, BaseException) for r in receipts):
            self._failed(endpoint.device_id, health, PollFailed("the pipeline did not commit the readings"))
            return False
        if last is not None:  # only now durable: a crash before this line re-reads (idempotent), never skips
            self.store.get(endpoint.device_id).last_entry = last
            try:
                await self._save()
            except OSError as err:  # committed, but the marker is not durable: the next poll reads them again
                self._failed(endpoint.device_id, health, PollFailed(f"meter state not saved: {err}"))
                return False
        self._succeeded(endpoint.device_id, health, started, receipts)
        return True

    async def _read(self, endpoint: DeviceEndpoint, plan: Plan) -> tuple[list[RawMessage], datetime | None]:
        if not endpoint.address:
            raise PollFailed("the registry has no address for this meter")
        state = self.store.get(endpoint.device_id)
        target = await self._reserve(endpoint, plan)
        spec = plan.options.load_profile
        last = state.last_entry

        def since(clock: datetime | None) -> datetime:
            if last is not None:
                return last
            assert spec is not None
            return (clock or datetime.now(UTC)) - timedelta(seconds=spec.first_read_s)

        polled_at = datetime.now(UTC)
        try:
            async with asyncio.timeout(max(plan.interval_s, plan.timeout_s * 4)):
                reading = await asyncio.to_thread(poll, plan.options, target, since if spec else None, polled_at)
        except TimeoutError as err:
            raise PollFailed("the session outlived its poll interval") from err
        if plan.options.is_ciphered:
            state.invocation_counter = max(state.invocation_counter, reading.invocation_counter)
        rows = [r for r in reading.rows if last is None or r[0] > last]
        if spec is not None:
            rows = rows[: spec.max_rows]
        reading.rows = rows
        metrics.PROFILE_ROWS.inc(len(rows))
        source = f"{endpoint.address}:{target.port}"
        return build_messages(plan, endpoint, reading, polled_at, source), (rows[-1][0] if rows else None)

    async def _save(self) -> None:
        """The meter state as it is now, durable when this returns (polls of other meters save concurrently)."""
        await asyncio.to_thread(self.store.write, self.store.snapshot())

    async def _reserve(self, endpoint: DeviceEndpoint, plan: Plan) -> Target:
        """The session target; ciphered meters get counters reserved durably first (a meter refuses reuse)."""
        state = self.store.get(endpoint.device_id)
        target = self._target(endpoint, plan, state.invocation_counter)
        if plan.options.is_ciphered:
            state.invocation_counter += self.config.invocation_reserve
            await self._save()
        return target

    async def command(self, device_id: str, kind: str, obis: str = DISCONNECT_OBIS) -> None:
        """Prepaid block (``blocked``) or restore (``restored``) of one meter through its disconnect control
        object (class 70), confirmed by reading the object back; raises ConnectionError when not confirmed."""
        endpoint = await self.settings.devices.endpoint(device_id)
        plan = self.plans.get(endpoint.profile_id or "") if endpoint else None
        if endpoint is None or plan is None or not endpoint.address:
            raise ConnectionError(f"{device_id} is not a polled DLMS meter with an address")
        async with self._slots:
            try:
                target = await self._reserve(endpoint, plan)
            except OSError as err:
                metrics.COMMANDS.labels(kind, "failed").inc()
                raise ConnectionError(f"{kind} of {device_id}: meter state not saved: {err}") from err
            try:
                output, state, counter = await asyncio.to_thread(control, plan.options, target, obis, kind)
            except PollFailed as err:
                metrics.COMMANDS.labels(kind, "failed").inc()
                raise ConnectionError(f"{kind} of {device_id}: {err.reason}") from err
        if plan.options.is_ciphered:
            self.store.get(device_id).invocation_counter = max(self.store.get(device_id).invocation_counter, counter)
        # blocked: output off and control state 0 (disconnected); restored: on (1) or "ready for reconnection" (2),
        # which meters in a manual reconnection mode answer until the customer presses the button
        confirmed = (not output and state == 0) if kind == "blocked" else (output or state == 2)
        metrics.COMMANDS.labels(kind, "confirmed" if confirmed else "unconfirmed").inc()
        if not confirmed:
            raise ConnectionError(f"{kind} of {device_id} not confirmed: output {output}, control state {state}")
        log.info("dlms %s of %s confirmed (control state %d)", kind, device_id, state)

    def _target(self, endpoint: DeviceEndpoint, plan: Plan, counter: int) -> Target:
        password = endpoint.secrets.get("password")
        key = self._keys(endpoint.device_id) if self._keys else None
        auth = self._keys(f"{endpoint.device_id}:auth") if self._keys else None
        assert endpoint.address is not None
        return Target(host=endpoint.address, port=endpoint.port or self.config.default_port,
                      timeout_s=plan.timeout_s, password=password.encode() if password else None,
                      encryption_key=key, authentication_key=auth,
                      client_system_title=bytes.fromhex(self.config.client_system_title),
                      invocation_counter=counter)

    def _failed(self, device_id: str, health: DeviceHealth, err: PollFailed) -> None:
        if health.last_error is None:  # once per failure streak; each failure is counted
            log.warning("dlms poll of %s failed: %s", device_id, err.reason)
        health.failures += 1
        health.streak += 1
        health.last_auth_failed = err.auth
        health.auth_failures += int(err.auth)
        health.last_error = err.reason
        metrics.POLLS.labels("auth_failed" if err.auth else "failed").inc()

    def _succeeded(self, device_id: str, health: DeviceHealth, started: float,
                   receipts: list[Receipt | BaseException]) -> None:
        metrics.POLL_SECONDS.observe(time.perf_counter() - started)
        metrics.POLLS.labels("ok").inc()
        if health.last_error is not None:
            log.info("dlms poll of %s recovered", device_id)
        health.last_error, health.last_success_at = None, time.time()
        health.streak, health.last_auth_failed = 0, False

    @property
    def device_health(self) -> dict[str, DeviceHealth]:
        """Polls, failures, last error and last success per meter."""
        return dict(self.health)
