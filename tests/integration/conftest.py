"""Integration tests leave no hub process behind, whether they pass or fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.hubproc import stop_leftovers


@pytest.fixture(autouse=True)
def _no_hub_left_running() -> Iterator[None]:
    """A failed assertion midway must not leave its ``usagehub serve`` running for the rest of the run."""
    yield
    stop_leftovers()
