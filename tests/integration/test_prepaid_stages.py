"""The bench-only stage record of the MQTT device side (USAGEHUB_PREPAID_STAGES): each decided request's
stages in order, a summary on SIGUSR1, and deciding with it on stays exact, tenant-scoped and refusing."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.conftest import Mosquitto
from tests.integration.test_prepaid_device_batch import Devices, money, serving
from usagehub.adapters.mqtt import prepaid_stages
from usagehub.adapters.mqtt.prepaid import PrepaidMqtt
from usagehub.adapters.mqtt.prepaid_stages import STAGES, StageRecord

pytestmark = [pytest.mark.integration]


def test_the_summary_gives_each_stage_its_wait_after_the_previous_one(tmp_path: Path) -> None:
    record = StageRecord(tmp_path / "stages.json")
    for i in range(100):  # stage k waits k ms after stage k-1 (request i: i µs more in the last stage)
        marks, t = [], 10.0
        for k in range(1, len(STAGES) + 1):
            t += k / 1000 + (i / 1e6 if k == len(STAGES) else 0)
            marks.append(t)
        record.add(10.0, tuple(marks))
    summary = record.summary()
    assert summary["requests"] == 100
    for k, name in enumerate(STAGES[:-1], start=1):
        assert summary[name]["p50_ms"] == pytest.approx(k, abs=1e-6)
    assert summary[STAGES[-1]]["p99_ms"] == pytest.approx(len(STAGES) + 0.099, abs=1e-6)
    assert summary["total"]["p50_ms"] == pytest.approx(sum(range(1, len(STAGES) + 1)) + 0.0495, abs=0.001)
    record.dump()
    assert orjson.loads((tmp_path / "stages.json").read_bytes()) == orjson.loads(orjson.dumps(summary))
    record.reset()
    assert record.summary() == {"requests": 0}


def test_off_unless_the_environment_names_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("USAGEHUB_PREPAID_STAGES", raising=False)
    assert prepaid_stages.from_environment() is None
    monkeypatch.setenv("USAGEHUB_PREPAID_STAGES", str(tmp_path / "s.json"))
    record = prepaid_stages.from_environment()
    assert record is not None and record.path == tmp_path / "s.json"


@pytest.fixture
async def traced(pool: AsyncConnectionPool, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch,
                 tmp_path: Path) -> AsyncIterator[tuple[Devices, PrepaidMqtt]]:
    """The two tenants of ``serving``, with the stage record on."""
    monkeypatch.setenv("USAGEHUB_PREPAID_STAGES", str(tmp_path / "stages.json"))
    async with serving(pool, mosquitto) as (devices, _, hub):
        yield devices, hub


async def test_traced_bursts_stay_exact_and_each_decided_request_has_its_stages_in_order(
        traced: tuple[Devices, PrepaidMqtt], pool: AsyncConnectionPool) -> None:
    devices, hub = traced
    assert hub.stages is not None
    # 24 requests of 0.50 EUR against A's 10.00 beside 6 of B's: exactly 20 of A's granted, all 6 of B's
    sends = [devices.send("dA", "authorize", {"req": f"a{i}", "units": "2"}) for i in range(24)]
    sends += [devices.send("dB", "authorize", {"req": f"b{i}", "units": "2"}) for i in range(6)]
    await asyncio.gather(*sends)
    a = [(await devices.answer(f"a{i}"))[0] for i in range(24)]
    b = [(await devices.answer(f"b{i}"))[0] for i in range(6)]
    assert sum(x["ok"] for x in a) == 20 and {x["reason"] for x in a if not x["ok"]} == {"INSUFFICIENT_BALANCE"}
    assert all(x["ok"] for x in b)
    # the hostile one: dA names B's card and B's reservation; refused, B untouched
    card = await devices.ask("dA", "authorize", {"req": "h1", "units": "1", "card": "cB"})
    steal = await devices.ask("dA", "release", {"req": "h2", "reservation": b[0]["reservation"]})
    assert (card["reason"], steal["reason"]) == ("UNKNOWN_CARD", "UNKNOWN_RESERVATION")
    await devices.send("dA", "authorize", b"{not json")  # refused before any batch
    assert not (await devices.answer(None))[0]["ok"]
    assert await money(pool, "A") == (Decimal("0.00"), Decimal("10.00"))
    assert await money(pool, "B") == (Decimal("7.00"), Decimal("3.00"))
    samples: list[Any] = hub.stages.samples
    assert len(samples) == 32  # every decided answer, the malformed refusal not
    assert all(len(s) == len(STAGES) + 1 and list(s) == sorted(s) for s in samples)
    os.kill(os.getpid(), signal.SIGUSR1)  # the summary, written from the event loop
    for _ in range(500):  # the loop reads the signal from its wake-up pipe at a later pass
        if hub.stages.path.exists():
            break
        await asyncio.sleep(0.01)
    doc = orjson.loads(hub.stages.path.read_bytes())
    assert doc["requests"] == 32 and set(STAGES) | {"total", "requests"} == set(doc)
    assert doc["total"]["p50_ms"] >= doc["read_done"]["p50_ms"] > 0
