"""The bus client's connection: a close is not an outage; a server that goes away is."""

from __future__ import annotations

import asyncio
import logging

import pytest

from usagehub.bus.stream import BusSettings, connect
from usagehub.runtime.natsd import NatsServer

pytestmark = pytest.mark.integration


async def test_closing_the_client_reports_no_outage(nats_server: NatsServer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    states: list[bool] = []
    caplog.set_level(logging.INFO, logger="usagehub.bus.stream")
    quiet = await connect(BusSettings(servers=(nats_server.url,)), name="quiet")
    counted = await connect(BusSettings(servers=(nats_server.url,)), name="counted", on_state=states.append)
    await quiet.close()
    await counted.close()
    assert states == []
    assert not [r for r in caplog.records if "disconnected" in r.getMessage()]


async def test_a_server_that_stops_is_reported_once_as_lost(nats_server: NatsServer,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    states: list[bool] = []
    caplog.set_level(logging.INFO, logger="usagehub.bus.stream")
    quiet = await connect(BusSettings(servers=(nats_server.url,)), name="quiet")
    counted = await connect(BusSettings(servers=(nats_server.url,)), name="counted", on_state=states.append)
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
