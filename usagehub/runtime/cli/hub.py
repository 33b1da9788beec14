"""Hub commands: ``serve``, ``demo``, ``simulate``, ``seed`` and ``import``."""

# No `from __future__ import annotations`: typer reads the real annotation objects.

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from usagehub.runtime.cli.common import DATABASE, console, out, with_settings
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
def demo(config: HubConfig,
         meters: Annotated[int, typer.Option(metavar="N", help="simulated smart meters (a household each)")] = 20,
         panels: Annotated[int, typer.Option(metavar="N", help="simulated alarm panels (every fourth home)")] = 5,
         rate: Annotated[float, typer.Option(metavar="PER_S", help="live messages per second, all devices")] = 20.0,
         history_days: Annotated[int, typer.Option(metavar="DAYS", help="history loaded at start; 0: none")] = 90,
         duration_s: Annotated[float, typer.Option(metavar="SECONDS", help="stop after this long; 0: at Ctrl-C")] = 0,
         ) -> None:
    """Serve with a simulated fleet: history, price plans, prepaid accounts; prints GraphiQL, a key and queries."""
    from usagehub.runtime.demo import run_demo

    asyncio.run(run_demo(config, meters=meters, panels=panels, rate=rate, duration_s=duration_s,
                         history_days=history_days))


@hub_app.command()
@with_settings(only=(*DATABASE, "mqtt_url", "embedded_broker_port"))
def simulate(config: HubConfig,
             meters: Annotated[int, typer.Option(metavar="N", help="simulated smart meters")] = 20,
             panels: Annotated[int, typer.Option(metavar="N", help="simulated alarm panels")] = 5,
             rate: Annotated[float, typer.Option(metavar="PER_S", help="messages per second, all devices")] = 50.0,
             duration_s: Annotated[float, typer.Option(metavar="SECONDS", help="stop after this long; 0: at Ctrl-C")]
             = 0,
             register: Annotated[bool, typer.Option(
                 help="first register the fleet (accounts, devices, bindings) in the hub's database, "
                      "so its data is billed rather than quarantined as unknown devices")] = False,
             ) -> None:
    """Run a simulated fleet against a hub's broker (--mqtt-url, default the embedded one)."""
    from datetime import UTC, datetime, timedelta

    from usagehub.adapters.mqtt.config import MqttConfig
    from usagehub.runtime.simulate import Fleet, Simulator

    url = config.mqtt_url or f"mqtt://127.0.0.1:{config.embedded_broker_port}"
    fleet = Fleet.of_size(meters, panels)
    sim = Simulator(fleet, MqttConfig(url=url), rate_per_s=rate)

    async def go() -> None:
        if register:
            from usagehub.runtime.hub import open_storage
            from usagehub.runtime.seed import SeedFile, apply_seed
            from usagehub.storage.registry import Registry

            async with open_storage(config, max_size=2) as pool:
                seed = SeedFile.model_validate(fleet.seed(datetime.now(UTC) - timedelta(days=1)))
                counts = await apply_seed(Registry(pool), seed)
            out.print(f"registered {counts['devices']} devices of {counts['accounts']} accounts", markup=False)
        task = asyncio.create_task(sim.run())
        started = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(asyncio.shield(task), duration_s or None)
        except TimeoutError:
            task.cancel()
        elapsed = asyncio.get_running_loop().time() - started
        out.print(f"published {sim.sent} messages in {elapsed:.1f} s ({sim.sent / max(elapsed, 1e-9):.0f}/s)",
                  markup=False)

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        out.print(f"published {sim.sent} messages", markup=False)


@hub_app.command()
@with_settings(only=(*DATABASE, "profiles"))
def seed(config: HubConfig,
         file: Annotated[Path, typer.Argument(metavar="FILE", help="seed YAML file (format: docs/seed.md)")]) -> None:
    """Create price plans, accounts (prepaid settings, plans), devices and bindings from a YAML file.

    The whole file is checked first, against the file and the hub; nothing is written if anything is wrong.
    """
    from usagehub.rating.service import RatingService
    from usagehub.runtime.hub import open_storage
    from usagehub.runtime.profile_files import check_profiles
    from usagehub.runtime.seed import known_in, load_seed_tree, optimistic, seed_in_one_transaction, validate_seed
    from usagehub.storage.registry import Registry

    tree = load_seed_tree(file)
    profiles = {p.id for p in check_profiles(config.profiles)[0]}
    validate_seed(file, optimistic(tree, profiles))  # everything the file alone can tell, before the database
    tenant = str(tree.get("tenant", "default"))

    async def go() -> dict[str, int]:
        async with open_storage(config, max_size=2) as pool:
            document = validate_seed(file, await known_in(Registry(pool), tenant, tree, profiles, RatingService(pool)))
            return await seed_in_one_transaction(pool, document, tree=tree, source=str(file))  # all or nothing

    counts = asyncio.run(go())
    out.print(f"seeded {counts['plans']} plans, {counts['accounts']} accounts, {counts['devices']} devices, "
              f"{counts['bindings']} new bindings", markup=False)


@hub_app.command("import")
@with_settings(only=(*DATABASE, "profiles"))
def import_files(config: HubConfig,
                 paths: Annotated[list[str], typer.Argument(metavar="PATH",
                                                            help="files, folders or s3://bucket/prefix")],
                 profile: Annotated[str | None, typer.Option(metavar="PROFILE", help="force this profile id")] = None,
                 watch: Annotated[bool, typer.Option(help="keep watching the folders (or bucket)")] = False,
                 s3_endpoint_url: Annotated[str | None, typer.Option(metavar="URL", help="S3-compatible endpoint")]
                 = None,
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
