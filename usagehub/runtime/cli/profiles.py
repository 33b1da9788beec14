"""Profile commands: ``usagehub profiles check``."""

# No `from __future__ import annotations`: typer reads the real annotation objects.

from pathlib import Path
from typing import Annotated

import typer

from usagehub.runtime.cli.common import console

profiles_app = typer.Typer(help="Device profiles.", no_args_is_help=True)


@profiles_app.command("check")
def profiles_check(folder: Annotated[Path, typer.Argument(help="profiles folder")] = Path("device_profiles")
                   ) -> None:
    """Validate every profile in a folder; errors name file, line and field."""
    from usagehub.runtime.profile_files import check_profiles

    profiles, errors = check_profiles(folder)
    for err in errors:
        console.print(f"[red]error[/red] {err}")
    for p in profiles:
        console.print(f"[green]ok[/green] {p.id}: {len(p.meters)} meters ({p.match.transport})")
    if errors:
        raise typer.Exit(1)
