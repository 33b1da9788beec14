"""The command line, one module per command group."""

from usagehub.runtime.cli.main import app, main

__all__ = ["app", "main"]
