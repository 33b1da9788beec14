"""The snmp adapter: polls registered devices of polled profiles and receives traps and informs."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

from usagehub.adapters.base import AdapterSettings, Sink
from usagehub.adapters.snmp.config import SnmpConfig
from usagehub.adapters.snmp.plan import PollPlan, plan_for
from usagehub.adapters.snmp.poller import SnmpClient
from usagehub.adapters.snmp.scheduler import DeviceHealth, PollScheduler
from usagehub.adapters.snmp.state import MarkerStore
from usagehub.adapters.snmp.traps import TrapReceiver

log = logging.getLogger(__name__)


class SnmpAdapter:
    """Async context manager; ``run(sink)`` polls and listens until cancelled."""

    def __init__(self, config: SnmpConfig, settings: AdapterSettings) -> None:
        self.config, self.settings = config, settings
        self.plans: dict[str, PollPlan] = {}
        for profile in settings.profiles:
            plan = plan_for(profile)
            if plan is not None and profile.match.transport == "snmp":
                self.plans[profile.id] = plan
        state_path = settings.data_dir / config.state_file if config.state_file else None
        self.store = MarkerStore(state_path)
        self.client: SnmpClient | None = None
        self.scheduler: PollScheduler | None = None
        self.traps: TrapReceiver | None = None

    async def __aenter__(self) -> Self:
        try:
            await asyncio.to_thread(self.store.load)
            self.client = SnmpClient(max_varbinds=self.config.max_varbinds,
                                     max_repetitions=self.config.max_repetitions)
            self.scheduler = PollScheduler(config=self.config, plans=self.plans,
                                           directory=self.settings.devices, client=self.client,
                                           store=self.store)
            if self.config.traps.enabled:
                self.traps = TrapReceiver(self.config.traps, self.settings.devices, self.config.refresh_s)
                await self.traps.start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.traps is not None:
            self.traps.close()
            self.traps = None
        if self.client is not None:
            self.client.close()
            self.client = None
        self.store.save_quietly()

    async def run(self, sink: Sink) -> None:
        """Poll and receive until cancelled."""
        async with asyncio.TaskGroup() as group:
            if self.scheduler is not None and self.config.poll_enabled and self.plans:
                group.create_task(self.scheduler.run(sink), name="snmp-poll")
            if self.traps is not None:
                group.create_task(self.traps.run(sink), name="snmp-traps")

    @property
    def missed_polls(self) -> dict[str, int]:
        """Missed polls per device id since start (also ``usagehub_snmp_poll_missed_total{device}``)."""
        return self.scheduler.missed_polls if self.scheduler else {}

    @property
    def device_health(self) -> dict[str, DeviceHealth]:
        """Polls, missed polls, last error and last success per device."""
        return dict(self.scheduler.health) if self.scheduler else {}

    @property
    def trap_port(self) -> int | None:
        """The bound trap port (useful when configured as 0)."""
        return self.traps.port if self.traps else None
