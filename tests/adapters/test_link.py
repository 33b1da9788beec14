"""Adapter links: readiness, one log line per outage and per recovery, counted, jittered bounded backoff."""

from __future__ import annotations

import asyncio
import logging

import pytest

from usagehub import metrics
from usagehub.adapters.link import Link


def _sample(name: str, adapter: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"adapter": adapter}) or 0.0


def test_an_outage_is_logged_and_counted_once_and_so_is_its_recovery(caplog: pytest.LogCaptureFixture) -> None:
    link = Link("test-outage", first_delay_s=0.5, max_delay_s=4.0)
    link.connected("broker:1883")
    assert link.is_up and _sample("usagehub_adapter_up", "test-outage") == 1
    caplog.set_level(logging.INFO, logger="usagehub.adapters.link")
    caplog.clear()
    delays = [link.lost(ConnectionResetError(104, "reset")) for _ in range(8)]
    assert not link.is_up and _sample("usagehub_adapter_up", "test-outage") == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ConnectionResetError" in warnings[0].getMessage()
    assert _sample("usagehub_adapter_outages_total", "test-outage") == 1
    assert all(0.25 <= d <= 4.0 for d in delays) and delays[-1] >= 2.0  # doubles, jittered, capped
    link.connected("broker:1883")
    recoveries = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recoveries) == 1 and _sample("usagehub_adapter_recoveries_total", "test-outage") == 1
    assert link.lost(OSError("refused")) <= 0.5  # a new outage starts from the first delay again


def test_a_stop_on_purpose_is_not_an_outage() -> None:
    link = Link("test-stop")
    link.connected("x")
    link.down()
    assert not link.is_up and _sample("usagehub_adapter_outages_total", "test-stop") == 0


async def test_a_failure_during_the_cancel_stops_the_reconnect_loop() -> None:
    """aiomqtt's ``__aexit__`` raises when the disconnect at a cancel fails, replacing the CancelledError: the
    reconnect loop must end, not take it for an outage (a soak's hub reconnected for ever after SIGTERM)."""
    link = Link("test-cancel", first_delay_s=0.01, max_delay_s=0.01)
    sessions = 0

    async def session() -> None:
        nonlocal sessions
        sessions += 1
        try:
            await asyncio.sleep(3600)
        finally:
            raise ConnectionError("the disconnect failed")  # as a client's exit does on a dead connection

    async def reconnecting() -> None:
        while True:
            try:
                await session()
            except ConnectionError as err:
                await asyncio.sleep(link.lost(err))

    task = asyncio.create_task(reconnecting())
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2)
    assert done and task.cancelled()
    assert sessions == 1 and link.outages == 0  # a stop is not an outage
    # outside a cancel, a failure is an outage and the loop reconnects
    with pytest.raises(ConnectionError) as caught:
        raise ConnectionError("reset by peer")
    assert link.lost(caught.value) == pytest.approx(0.01, rel=0.5) and link.outages == 1
