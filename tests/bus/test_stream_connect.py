"""The bus client's connection: a close is not an outage; a server that goes away is."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.client import Client

from usagehub.bus.stream import BusSettings, connect
from usagehub.runtime.natsd import NatsServer

pytestmark = pytest.mark.integration


async def _two_clients(server: NatsServer, states: list[bool],
                       caplog: pytest.LogCaptureFixture) -> tuple[Client, Client]:
    """One client that logs its outages, one that reports them to ``states``."""
    caplog.set_level(logging.INFO, logger="usagehub.bus.stream")
    quiet = await connect(BusSettings(servers=(server.url,)), name="quiet")
    counted = await connect(BusSettings(servers=(server.url,)), name="counted", on_state=states.append)
    return quiet, counted


async def test_closing_the_client_reports_no_outage(nats_server: NatsServer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    states: list[bool] = []
    quiet, counted = await _two_clients(nats_server, states, caplog)
    await quiet.close()
    await counted.close()
    assert states == []
    assert not [r for r in caplog.records if "disconnected" in r.getMessage()]


async def test_a_server_that_stops_is_reported_once_as_lost(nats_server: NatsServer,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    states: list[bool] = []
    quiet, counted = await _two_clients(nats_server, states, caplog)
    try:
        nats_server.stop()
        for _ in range(100):
            if states and [r for r in caplog.records if "disconnected; reconnecting" in r.getMessage()]:
                break
            await asyncio.sleep(0.05)
        assert states == [False]
        assert len([r for r in caplog.records if "disconnected; reconnecting" in r.getMessage()]) == 1
    finally:
        await quiet.close()
        await counted.close()
    assert states == [False]  # the close after the loss adds nothing
