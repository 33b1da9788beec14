"""Rating commands: ``usagehub plans load|list|assign``, ``vat load``, ``vendors load`` and ``invoice``."""

# No `from __future__ import annotations`: typer reads the real annotation objects.

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

from usagehub.runtime.cli.common import DATABASE, out, with_settings
from usagehub.runtime.config import HubConfig

rating_app: typer.Typer = typer.Typer(no_args_is_help=True)
plans_app = typer.Typer(help="Price plans (tariff files).", no_args_is_help=True)
vat_app = typer.Typer(help="VAT rate tables.", no_args_is_help=True)
vendors_app = typer.Typer(help="Settlement vendors and their share rules.", no_args_is_help=True)
rating_app.add_typer(plans_app, name="plans")
rating_app.add_typer(vat_app, name="vat")
rating_app.add_typer(vendors_app, name="vendors")

FileArg = Annotated[Path, typer.Argument(metavar="FILE", help="YAML file", exists=True, dir_okay=False,
                                         readable=True)]
Tenant = Annotated[str, typer.Option(metavar="TENANT", help="whose plans")]


@plans_app.command("load")
@with_settings(only=DATABASE)
def plans_load(config: HubConfig, file: FileArg, tenant: Tenant = "default",
               replace: Annotated[bool, typer.Option(help="retire the tenant's plans the file does not name")]
               = False) -> None:
    """Load a tariff file: each changed plan becomes a new revision (versions in force cannot change)."""
    from usagehub.rating.service import RatingService
    from usagehub.runtime.assembly import open_storage

    async def go() -> None:
        async with open_storage(config, max_size=2) as pool:
            changes = await RatingService(pool).load_plans(file.read_text(encoding="utf-8"), str(file),
                                                           tenant=tenant, author="cli", replace=replace)
        for c in changes:
            state = "retired" if c.retired else "revision" if c.changed else "unchanged at revision"
            out.print(f"{c.plan_id}: {state} {c.revision}", markup=False)

    asyncio.run(go())


@plans_app.command("list")
@with_settings(only=DATABASE)
def plans_list(config: HubConfig, tenant: Tenant = "default",
               product: Annotated[str | None, typer.Option(metavar="PRODUCT", help="only this product")] = None
               ) -> None:
    """The price plans in force: id, product, market, currency and unit."""
    from usagehub.rating.service import RatingService
    from usagehub.runtime.assembly import open_storage

    async def go() -> None:
        async with open_storage(config, max_size=2) as pool:
            plans = await RatingService(pool).plans(tenant=tenant, product=product)
        for p in plans:
            out.print(f"{p.plan.id}\t{p.plan.product}\t{p.plan.market}\t{p.plan.currency}/{p.plan.unit}\t"
                      f"revision {p.revision}", markup=False)

    asyncio.run(go())


@plans_app.command("assign")
@with_settings(only=DATABASE)
def plans_assign(config: HubConfig, account: Annotated[str, typer.Argument(metavar="ACCOUNT", help="account id")],
                 plan: Annotated[str, typer.Argument(metavar="PLAN", help="plan id (usagehub plans list)")],
                 tenant: Tenant = "default") -> None:
    """Choose a plan for an account: its product is then priced by that plan (instead of the market's only one)."""
    from usagehub.rating.service import RatingService
    from usagehub.runtime.assembly import open_storage

    async def go() -> tuple[str, str, str]:
        async with open_storage(config, max_size=2) as pool:
            return await RatingService(pool).assign_plan(account, plan, tenant=tenant, author="cli")

    account_id, product, plan_id = asyncio.run(go())
    out.print(f"{account_id}: {product} priced by {plan_id}", markup=False)


@vat_app.command("load")
@with_settings(only=DATABASE)
def vat_load(config: HubConfig, file: FileArg) -> None:
    """Make a VAT rate file (same shape as usagehub/data/vat_rates.yaml) the table in force."""
    from usagehub.rating.service import RatingService
    from usagehub.runtime.assembly import open_storage

    async def go() -> tuple[int, bool]:
        async with open_storage(config, max_size=2) as pool:
            return await RatingService(pool).load_vat(file.read_text(encoding="utf-8"), str(file), author="cli")

    revision, changed = asyncio.run(go())
    out.print(f"VAT table revision {revision}" + ("" if changed else " (unchanged)"))


@vendors_app.command("load")
@with_settings(only=DATABASE)
def vendors_load(config: HubConfig, file: FileArg, tenant: Tenant = "default") -> None:
    """Register the vendors of a vendor file (changed ones become new revisions)."""
    from usagehub.core.settlement import parse_vendors
    from usagehub.rating.service import RatingService
    from usagehub.runtime.assembly import open_storage

    book = parse_vendors(file.read_text(encoding="utf-8"), str(file))

    async def go() -> None:
        async with open_storage(config, max_size=2) as pool:
            stored = await RatingService(pool).register_vendors(book.vendors, tenant=tenant, author="cli")
        for vendor, revision in stored:
            out.print(f"{vendor.id}: revision {revision}")

    asyncio.run(go())


@rating_app.command("invoice")
@with_settings(only=DATABASE)
def invoice(config: HubConfig, account: Annotated[str, typer.Argument(metavar="ACCOUNT", help="account id")],
            period: Annotated[str, typer.Argument(metavar="YYYY-MM", help="billing period (the account's zone)")],
            format: Annotated[str, typer.Option("--format", metavar="FORMAT", help="json or csv")] = "json") -> None:
    """Print an account's invoice preview for a period as JSON or CSV (the export format)."""
    from usagehub.rating.service import RatingService
    from usagehub.runtime.assembly import open_storage

    async def go() -> str:
        async with open_storage(config, max_size=2) as pool:
            service = RatingService(pool)
            await service.start()
            return await service.invoice_export(account, period, format)

    sys.stdout.buffer.write(asyncio.run(go()).encode())  # bytes: CSV keeps its CRLF line ends
    sys.stdout.flush()
