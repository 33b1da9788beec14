"""Hub commands: ``serve``, ``demo``, ``simulate``, ``seed`` and ``import``."""

# No `from __future__ import annotations`: typer reads the real annotation objects.

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from usagehub.runtime.cli.common import DATABASE, console, out, with_settings
from usagehub.runtime.config import HubConfig, with_flags

if TYPE_CHECKING:
    from usagehub.runtime.simulate import Simulator

hub_app = typer.Typer()

BusOption = Annotated[str | None, typer.Option(help="NATS JetStream URL(s), comma-separated (USAGEHUB_BUS)")]


@hub_app.command()
@with_settings
def serve(config: HubConfig, bus: BusOption = None,
          workers: Annotated[int | None, typer.Option(help="pipeline worker processes over the bus; "
                                                           "without --bus an embedded nats-server")] = None,
          session_workers: Annotated[int | None, typer.Option(
              help="session worker processes replaying sessions off the ingest path; 0: inline")] = None,
          ingest_processes: Annotated[int | None, typer.Option(
              help="child processes decoding and committing MQTT messages; 0: in the hub process")] = None) -> None:
    """Run the hub: adapters, pipeline, GraphQL on embedded defaults unless told otherwise."""
    from usagehub.runtime.hub import run_hub

    asyncio.run(run_hub(with_flags(config, bus=bus, workers=workers, session_workers=session_workers,
                                   ingest_processes=ingest_processes)))


@hub_app.command(name="session-worker", hidden=True)
@with_settings
def session_worker(config: HubConfig) -> None:
    """Replay the session queue (started by ``serve``; more can run beside it on the same database)."""
    from usagehub.runtime.session_workers import run_session_worker

    asyncio.run(run_session_worker(config))


@hub_app.command(name="ingest-worker", hidden=True)
@with_settings
def ingest_worker(config: HubConfig,
                  index: Annotated[int, typer.Option(help="this ingest process's number, 0-based")] = 0) -> None:
    """Decode and commit the MQTT messages ``serve`` hands over (started by ``serve --ingest-processes``)."""
    from usagehub.runtime.ingest_child import run_ingest_child

    asyncio.run(run_ingest_child(config, index=index))


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
    """Run a simulated fleet against a hub's broker (--mqtt-url, default the embedded one).

    On the embedded broker every device logs in as itself: --register stores an MQTT password per device,
    later runs read them from the hub's database.
    """
    from usagehub.adapters.mqtt.config import MqttConfig
    from usagehub.runtime.simulate import Fleet, Simulator

    url = config.mqtt_url or f"mqtt://127.0.0.1:{config.embedded_broker_port}"
    fleet = Fleet.of_size(meters, panels)
    sim = Simulator(fleet, MqttConfig(url=url), rate_per_s=rate)

    async def go() -> None:
        if register or not config.mqtt_url:
            await _prepare_fleet(config, sim, register=register)
        task = asyncio.create_task(sim.run())
        ready = asyncio.create_task(sim.connected.wait())
        await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)  # connecting is not publishing
        ready.cancel()
        if task.done():
            task.result()  # the broker refused: its error
        started = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(asyncio.shield(task), duration_s or None)
        except TimeoutError:
            sim.stop()  # the message in flight is finished and counted
            await task
        elapsed = asyncio.get_running_loop().time() - started
        out.print(f"published {sim.sent} messages in {elapsed:.1f} s ({sim.sent / max(elapsed, 1e-9):.0f}/s)",
                  markup=False)

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        out.print(f"published {sim.sent} messages", markup=False)


async def _prepare_fleet(config: HubConfig, sim: "Simulator", *, register: bool) -> None:
    """Register the fleet (with MQTT logins on the embedded broker) or read its stored logins."""
    from datetime import UTC, datetime, timedelta

    from usagehub.runtime.assembly import open_storage
    from usagehub.runtime.cli.common import EXIT_BAD_INPUT
    from usagehub.runtime.seed import SeedFile, seed_in_one_transaction
    from usagehub.runtime.simulate import fleet_logins
    from usagehub.storage.registry import DeviceDirectorySql

    embedded = not config.mqtt_url
    async with open_storage(config, max_size=2) as pool:
        if register:
            logins = sim.fleet.logins() if embedded else None
            seed = SeedFile.model_validate(sim.fleet.seed(datetime.now(UTC) - timedelta(days=1), logins))
            counts = await seed_in_one_transaction(pool, seed)
            out.print(f"registered {counts['devices']} devices of {counts['accounts']} accounts"
                      + (" with their MQTT logins" if logins else ""), markup=False)
        else:
            logins = await fleet_logins(sim.fleet, DeviceDirectorySql(pool))
    if embedded and not logins:
        out.print("the embedded broker lets only registered devices publish, each with its own password: run "
                  "`usagehub simulate --register` (it registers the fleet and its MQTT logins), or give "
                  "--mqtt-url mqtt://USER:PASSWORD@HOST:PORT for a broker with a publisher login", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT)
    sim.logins = dict(logins or {})


@hub_app.command()
@with_settings(only=(*DATABASE, "profiles"))
def seed(config: HubConfig,
         file: Annotated[Path, typer.Argument(metavar="FILE", help="seed YAML file (format: docs/seed.md)")]) -> None:
    """Create price plans, accounts (prepaid settings, plans), devices and bindings from a YAML file.

    The whole file is checked first, against the file and the hub; nothing is written if anything is wrong.
    """
    from usagehub.rating.service import RatingService
    from usagehub.runtime.assembly import open_storage
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
