"""The ``usagehub`` command: one Typer app assembled from the command groups (no group imports another)."""

import typer

from usagehub.runtime.cli.analytics import analytics_app
from usagehub.runtime.cli.hub import hub_app
from usagehub.runtime.cli.keys import keys_app
from usagehub.runtime.cli.profiles import profiles_app
from usagehub.runtime.cli.rating import rating_app

app = typer.Typer(help="usagehub: exact usage and billing records from heterogeneous device fleets.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
app.add_typer(hub_app)  # serve, demo, simulate, seed, import
app.add_typer(keys_app, name="keys")
app.add_typer(profiles_app, name="profiles")
app.add_typer(rating_app)  # plans, vat, vendors, invoice
app.add_typer(analytics_app, name="analytics")  # refresh, export, grant-personal


def main() -> None:
    """Entry point of the ``usagehub`` script."""
    app()
