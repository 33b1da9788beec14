"""Analytics commands: ``usagehub analytics refresh``, ``evaluate``, ``export``, ``grant-personal``."""

# No `from __future__ import annotations`: typer reads the real annotation objects.

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from usagehub.runtime.cli.common import DATABASE, EXIT_BAD_INPUT, console, with_settings
from usagehub.runtime.config import HubConfig

analytics_app: typer.Typer = typer.Typer(help="Consumption analytics: features, segments, exports.",
                                         no_args_is_help=True)


@analytics_app.command("refresh")
@with_settings(only=DATABASE)
def refresh(config: HubConfig, as_of: Annotated[str | None, typer.Option(
        metavar="YYYY-MM-DD", help="local day the features end on [default: yesterday (UTC)]")] = None,
            evaluate: Annotated[bool, typer.Option(help="evaluate every segment afterwards")] = True) -> None:
    """Recompute behaviour features (the daily job) and re-evaluate segments."""
    from usagehub.analytics.service import AnalyticsService
    from usagehub.runtime.assembly import open_storage

    day = date.fromisoformat(as_of) if as_of else datetime.now(UTC).date() - timedelta(days=1)

    async def go() -> None:
        async with open_storage(config, max_size=2) as pool:
            service = AnalyticsService(pool)
            if not evaluate:
                result = await service.refresh_features(day)
                console.print(f"features as of {day}: {result.products} account-products, {result.accounts} accounts")
                return
            result, evaluated = await service.daily(day, datetime.now(UTC))
            console.print(f"features as of {day}: {result.products} account-products, {result.accounts} accounts")
            for _, seg, diff in evaluated:
                console.print(f"segment {seg.name!r}: {len(diff.members)} members, "
                              f"+{len(diff.entered)} -{len(diff.left)}")

    asyncio.run(go())


@analytics_app.command("export")
@with_settings(only=DATABASE)
def export(config: HubConfig,
           out: Annotated[Path, typer.Argument(metavar="FILE", help="file to write: .csv or .parquet")],
           product: Annotated[str | None, typer.Option(metavar="PRODUCT", help="only this product, e.g. energy "
                                                       "[default: every product]")] = None,
           personal: Annotated[bool, typer.Option(help="real account ids instead of pseudonyms")] = False) -> None:
    """Write every account's features to a CSV or Parquet file for notebooks."""
    from usagehub.analytics.service import AnalyticsService
    from usagehub.runtime.assembly import open_storage
    from usagehub.web.analytics import _csv, _feature_table, _parquet

    if out.suffix not in (".csv", ".parquet"):
        console.print(f"{out}: the output file must end in .csv or .parquet", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT)

    async def go() -> None:
        async with open_storage(config, max_size=2) as pool:
            columns, rows = await _feature_table(AnalyticsService(pool), "default", personal, product)
        response = _csv(columns, rows, "features") if out.suffix == ".csv" else _parquet(columns, rows, "features")
        out.write_bytes(bytes(response.body))
        console.print(f"wrote {len(rows)} rows to {out}")

    asyncio.run(go())


@analytics_app.command("grant-personal")
@with_settings(only=DATABASE)
def grant_personal(config: HubConfig,
                   key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="the key's id: the part after uh_, "
                                                         "before the second _")],
                   revoke: Annotated[bool, typer.Option(help="withdraw the grant")] = False) -> None:
    """Let an analytics key see real account ids (personal data), or withdraw that."""
    from usagehub.analytics.service import AnalyticsService
    from usagehub.runtime.assembly import open_storage

    async def go() -> None:
        async with open_storage(config, max_size=2) as pool:
            await AnalyticsService(pool).grant_personal(key_id, granted=not revoke)

    asyncio.run(go())
    console.print(f"key {key_id}: personal data {'withdrawn' if revoke else 'granted'}")
