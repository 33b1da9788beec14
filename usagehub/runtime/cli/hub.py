"""Hub commands: ``serve``, ``demo``, ``simulate``, ``seed`` and ``import``."""

# No `from __future__ import annotations`: typer reads the real annotation objects.

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from usagehub.runtime.cli.common import console, with_settings
from usagehub.runtime.config import HubConfig, with_flags

hub_app = typer.Typer()

BusOption = Annotated[str | None, typer.Option(help="NATS JetStream URL(s), comma-separated (USAGEHUB_BUS)")]


@hub_app.command()
@with_settings
def serve(config: HubConfig, bus: BusOption = None,
          workers: Annotated[int | None, typer.Option(help="pipeline worker processes over the bus; "
                                                           "without --bus an embedded nats-server")] = None) -> None:
    """Run the hub: adapters, pipeline, GraphQL on embedded defaults unless told otherwise."""
    from usagehub.runtime.hub import run_hub

    asyncio.run(run_hub(with_flags(config, bus=bus, workers=workers)))


@hub_app.command()
@with_settings
def worker(config: HubConfig, bus: BusOption = None,
           index: Annotated[int, typer.Option(help="this worker's number, 0-based")] = 0,
           workers: Annotated[int | None, typer.Option(help="how many workers share the partitions")] = None) -> None:
    """Run a pipeline worker: consume owned bus partitions, commit to PostgreSQL, then ack."""
    from usagehub.runtime.worker import run_worker

    config = with_flags(config, bus=bus, workers=workers)
    if not config.bus:
        raise typer.BadParameter("a worker needs --bus (or USAGEHUB_BUS)")
    asyncio.run(run_worker(config, index=index, workers=max(config.workers, 1)))


@hub_app.command()
@with_settings
def demo(config: HubConfig, meters: int = 20, panels: int = 5, rate: float = 20.0,
         duration_s: Annotated[float, typer.Option(help="stop after this many seconds; 0 runs until Ctrl-C")] = 0
         ) -> None:
    """Serve plus a simulated fleet of smart meters and alarm panels; prints GraphiQL, a key and a summary."""
    from usagehub.runtime.demo import run_demo

    asyncio.run(run_demo(config, meters=meters, panels=panels, rate=rate, duration_s=duration_s))


@hub_app.command()
@with_settings
def simulate(config: HubConfig, meters: int = 20, panels: int = 5, rate: float = 50.0,
             duration_s: float = 0) -> None:
    """Run a simulated fleet against any hub's broker (--mqtt-url)."""
    from usagehub.adapters.mqtt.config import MqttConfig
    from usagehub.runtime.simulate import Fleet, Simulator

    url = config.mqtt_url or f"mqtt://127.0.0.1:{config.embedded_broker_port}"
    sim = Simulator(Fleet.of_size(meters, panels), MqttConfig(url=url), rate_per_s=rate)

    async def go() -> None:
        task = asyncio.create_task(sim.run())
        try:
            await asyncio.wait_for(asyncio.shield(task), duration_s or None)
        except TimeoutError:
            task.cancel()
        console.print(f"published {sim.sent} messages")

    asyncio.run(go())


@hub_app.command()
@with_settings
def seed(config: HubConfig, file: Path) -> None:
    """Create accounts, devices and bindings from a YAML file."""
    from usagehub.runtime.hub import open_storage
    from usagehub.runtime.seed import apply_seed, parse_seed
    from usagehub.storage.registry import Registry

    document = parse_seed(file)

    async def go() -> dict[str, int]:
        async with open_storage(config, max_size=2) as pool:
            return await apply_seed(Registry(pool), document)

    counts = asyncio.run(go())
    console.print(f"seeded {counts['accounts']} accounts, {counts['devices']} devices, "
                  f"{counts['bindings']} new bindings")


@hub_app.command("import")
@with_settings
def import_files(config: HubConfig,
                 paths: Annotated[list[str], typer.Argument(help="files, folders or s3://bucket/prefix")],
                 profile: Annotated[str | None, typer.Option(help="force this profile id")] = None,
                 watch: Annotated[bool, typer.Option(help="keep watching the folders (or bucket)")] = False,
                 s3_endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
                 ) -> None:
    """Import batch files (CSV, NDJSON, binary records) exactly once, with a progress bar."""
    from usagehub.adapters.files import import_paths, watch_paths, watch_s3
    from usagehub.runtime.hub import running_pipeline

    async def go() -> int:
        async with running_pipeline(config) as (pipeline, profiles):
            if watch:
                watchers = [watch_s3(p, pipeline, profiles, data_dir=config.data_dir, endpoint_url=s3_endpoint_url)
                            if p.startswith("s3://") else watch_paths(Path(p), pipeline, profiles, profile=profile)
                            for p in paths]
                await asyncio.gather(*watchers)
                return 0
            summary = await import_paths(paths, pipeline, profiles, profile=profile, data_dir=config.data_dir,
                                         s3_endpoint_url=s3_endpoint_url, console=console)
            return 1 if summary.failed else 0

    try:
        code = asyncio.run(go())
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)
