"""``usagehub demo``: a hub on embedded defaults with a simulated fleet and a live summary line."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from datetime import UTC, datetime, timedelta

from usagehub.adapters.mqtt.config import MqttConfig
from usagehub.runtime.config import HubConfig
from usagehub.runtime.hub import Hub, run_hub
from usagehub.runtime.seed import SeedFile, apply_seed
from usagehub.runtime.simulate import Fleet, Simulator


async def run_demo(config: HubConfig, *, meters: int, panels: int, rate: float, duration_s: float) -> None:
    """Serve, seed the fleet, create an admin key, publish, and print one summary line per second."""
    fleet = Fleet.of_size(meters, panels)
    broker = config.mqtt_url or f"mqtt://127.0.0.1:{config.embedded_broker_port}"

    async def on_ready(hub: Hub) -> None:
        start = datetime.now(UTC) - timedelta(days=1)
        await apply_seed(hub.registry, SeedFile.model_validate(fleet.seed(start)))
        key, _ = await hub.keys.create(role="admin", name="demo")
        url = f"http://{config.http_host}:{hub.http_port}/graphql"
        print(f"usagehub demo is running.\n  GraphiQL: {url}\n  API key:  {key}\n"
              f"  (in GraphiQL, add the header  {{\"Authorization\": \"Bearer {key}\"}})\n"
              f"  try:      {{ ingestStats {{ messages accepted duplicates quarantined }} }}\n"
              "Ctrl-C stops.", flush=True)
        url = broker
        if hub.broker is not None:  # the embedded broker wants a login: one for the simulated fleet
            password = secrets.token_urlsafe(16)
            hub.broker.guard.add_publisher("demo-fleet", password, [*fleet.meters, *fleet.panels])
            url = hub.broker.url("demo-fleet", password)
        sim = Simulator(fleet, MqttConfig(url=url), rate_per_s=rate)
        hub.background.append(asyncio.create_task(_summary(hub, sim, duration_s), name="demo-summary"))

    await run_hub(config, on_ready=on_ready)


async def _summary(hub: Hub, sim: Simulator, duration_s: float) -> None:
    sim_task = asyncio.create_task(sim.run(), name="simulator")
    started = asyncio.get_running_loop().time()
    try:
        while not hub.stopping.is_set():
            await asyncio.sleep(1)
            t = hub.pipeline.totals
            line = (f"\rpublished {sim.sent}  stored {t['accepted']} events  duplicates {t['duplicates']}  "
                    f"quarantined {t['quarantined']}  batches {t['batches']}   ")
            sys.stdout.write(line)
            sys.stdout.flush()
            if sim_task.done():
                sim_task.result()
            if duration_s and asyncio.get_running_loop().time() - started >= duration_s:
                print()
                hub.stop()
    finally:
        sim_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sim_task
