"""Profile commands: ``usagehub profiles check``."""

# No `from __future__ import annotations`: typer reads the real annotation objects.

from pathlib import Path
from typing import Annotated

import typer

from usagehub.runtime.cli.common import EXIT_BAD_INPUT, out

profiles_app = typer.Typer(help="Device profiles.", no_args_is_help=True)


@profiles_app.command("check")
def profiles_check(folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="profiles folder")]
                   = Path("device_profiles")
                   ) -> None:
    """Validate every profile in a folder; prints every problem as file:line: field: message (exit 2)."""
    from usagehub.runtime.profile_files import check_profiles

    profiles, errors = check_profiles(folder)
    for err in errors:
        out.print(str(err), markup=False)
    for p in profiles:
        out.print(f"ok {p.id}: {len(p.meters)} meters ({p.match.transport})", markup=False)
    if errors:
        files = len({e.file for e in errors})
        out.print(f"{len(errors)} problems in {files} file{'s' if files > 1 else ''}", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT)
