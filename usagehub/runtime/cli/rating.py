"""Rating commands: ``usagehub plans load``, ``vat load``, ``vendors load`` and ``invoice``."""

# No `from __future__ import annotations`: typer reads the real annotation objects.

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

from usagehub.runtime.cli.common import console, with_settings
from usagehub.runtime.config import HubConfig

rating_app: typer.Typer = typer.Typer(no_args_is_help=True)
plans_app = typer.Typer(help="Price plans (tariff files).", no_args_is_help=True)
vat_app = typer.Typer(help="VAT rate tables.", no_args_is_help=True)
vendors_app = typer.Typer(help="Settlement vendors and their share rules.", no_args_is_help=True)
rating_app.add_typer(plans_app, name="plans")
rating_app.add_typer(vat_app, name="vat")
rating_app.add_typer(vendors_app, name="vendors")

FileArg = Annotated[Path, typer.Argument(help="YAML file", exists=True, dir_okay=False, readable=True)]


@plans_app.command("load")
@with_settings
def plans_load(config: HubConfig, file: FileArg, tenant: str = "default",
               replace: Annotated[bool, typer.Option(help="retire the tenant's plans the file does not name")]
               = False) -> None:
    """Load a tariff file: each changed plan becomes a new revision (versions in force cannot change)."""
    from usagehub.rating.service import RatingService
    from usagehub.runtime.hub import open_storage

    async def go() -> None:
        async with open_storage(config, max_size=2) as pool:
            changes = await RatingService(pool).load_plans(file.read_text(encoding="utf-8"), str(file),
                                                           tenant=tenant, author="cli", replace=replace)
        for c in changes:
            state = "retired" if c.retired else "revision" if c.changed else "unchanged at revision"
            console.print(f"{c.plan_id}: {state} {c.revision}")

    asyncio.run(go())


@vat_app.command("load")
@with_settings
def vat_load(config: HubConfig, file: FileArg) -> None:
    """Make a VAT rate file (same shape as usagehub/data/vat_rates.yaml) the table in force."""
    from usagehub.rating.service import RatingService
    from usagehub.runtime.hub import open_storage

    async def go() -> tuple[int, bool]:
        async with open_storage(config, max_size=2) as pool:
            return await RatingService(pool).load_vat(file.read_text(encoding="utf-8"), str(file), author="cli")

    revision, changed = asyncio.run(go())
    console.print(f"VAT table revision {revision}" + ("" if changed else " (unchanged)"))


@vendors_app.command("load")
@with_settings
def vendors_load(config: HubConfig, file: FileArg, tenant: str = "default") -> None:
    """Register the vendors of a vendor file (changed ones become new revisions)."""
    from usagehub.core.settlement import parse_vendors
    from usagehub.rating.service import RatingService
    from usagehub.runtime.hub import open_storage

    book = parse_vendors(file.read_text(encoding="utf-8"), str(file))

    async def go() -> None:
        async with open_storage(config, max_size=2) as pool:
            stored = await RatingService(pool).register_vendors(book.vendors, tenant=tenant, author="cli")
        for vendor, revision in stored:
            console.print(f"{vendor.id}: revision {revision}")

    asyncio.run(go())


@rating_app.command("invoice")
@with_settings
def invoice(config: HubConfig, account: str, period: Annotated[str, typer.Argument(help="YYYY-MM")],
            format: Annotated[str, typer.Option("--format", help="json or csv")] = "json") -> None:
    """Print an account's invoice preview for a period as JSON or CSV (the export format)."""
    from usagehub.rating.service import RatingService
    from usagehub.runtime.hub import open_storage

    async def go() -> str:
        async with open_storage(config, max_size=2) as pool:
            service = RatingService(pool)
            await service.start()
            return await service.invoice_export(account, period, format)

    sys.stdout.buffer.write(asyncio.run(go()).encode())  # bytes: CSV keeps its CRLF line ends
    sys.stdout.flush()
