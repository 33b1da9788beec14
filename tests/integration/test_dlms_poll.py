"""A real hub polls simulated DLMS meters (HLS-GMAC, ciphered): exact register deltas and load-profile entries,
a SIGKILL restart neither doubles nor skips, and a meter with a wrong key is counted without stopping the others."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.adapters.dlms.meters import AK, EK, ENERGY, SimMeter, meter_conf, quarter_hours, sim_meter
from tests.conftest import Mosquitto
from tests.integration.hubproc import HubProcess, usagehub
from tests.peers import time_scale
from usagehub.core.codecs.keyring import KeySealer

pytestmark = pytest.mark.integration

SECRET = "a test secret of enough length"
SEED = """
accounts:
  - {id: house-1, name: First house, timezone: Europe/Berlin}
devices:
  - {id: meter-a, profile: dlms-poll-meter}
  - {id: meter-b, profile: dlms-poll-meter}
bindings:
  - {device: meter-a, account: house-1, valid_from: "2026-01-01T00:00:00+00:00"}
  - {device: meter-b, account: house-1, valid_from: "2026-01-01T00:00:00+00:00"}
"""
EXPORT = "1.0.2.8.0.255"


def _conf(energy: int, rows: list[list[object]], clock: datetime) -> dict[str, object]:
    conf = meter_conf(authentication="hls_gmac", energy=energy, rows=rows)
    objects = dict(conf["objects"])
    objects[EXPORT] = {"class": 3, "value": 0, "scaler": 0, "unit": 30}
    return {**conf, "objects": objects, "clock": clock.isoformat()}


def _register(database_url: str, device: str, meter: SimMeter, key: bytes, auth_key: bytes) -> None:
    sealer = KeySealer(SECRET)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE devices SET address = '127.0.0.1', port = %s WHERE device_id = %s", (meter.port, device))
        for name, value in ((device.upper(), key), (f"{device}:auth".upper(), auth_key)):
            sealed = sealer.seal(value, tenant="default", device_id=name, protocol="dlms_poll")
            conn.execute("INSERT INTO device_keys (tenant, device_id, protocol, sealed) VALUES ('default', %s, "
                         "'dlms_poll', %s)", (name, sealed))


def _energy(database_url: str, device: str) -> tuple[int, Decimal]:
    """(stored import-energy readings, summed usage) of one meter."""
    with psycopg.connect(database_url) as conn:
        count = conn.execute("SELECT count(*) FROM events WHERE device_id = %s AND meter = 'active_energy_import'",
                             (device,)).fetchone()
        total = conn.execute("SELECT coalesce(sum(quantity), 0) FROM usage_entries WHERE device_id = %s "
                             "AND meter = 'active_energy_import'", (device,)).fetchone()
    assert count is not None and total is not None
    return int(count[0]), Decimal(total[0])


def _wait(check: object, seconds: float = 40) -> None:
    deadline = time.monotonic() + seconds * time_scale()
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_hub_polls_dlms_meters_exactly_across_a_crash(database_url: str, mosquitto: Mosquitto,
                                                      tmp_path: Path) -> None:
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)  # the meter's clock in the first part
    rows = quarter_hours(4, 10_000, 25, end=an_hour_ago)  # tenths of Wh: 1.0000 … 1.0075 kWh
    config = tmp_path / "hub.toml"
    config.write_text(f'device_key_secret = "{SECRET}"\n[adapters.dlms]\nrefresh_s = 0.5\njitter_s = 0\n')
    (tmp_path / "seed.yaml").write_text(SEED)
    with sim_meter(tmp_path, _conf(10_100, rows, an_hour_ago), "a") as meter_a, \
            sim_meter(tmp_path, _conf(50_000, rows, an_hour_ago), "b") as meter_b:
        hub = HubProcess(database_url, mosquitto.url, tmp_path / "data", extra=["--config", str(config)])
        assert usagehub("seed", str(tmp_path / "seed.yaml"), *hub.settings).returncode == 0
        _register(database_url, "meter-a", meter_a, EK, AK)
        _register(database_url, "meter-b", meter_b, AK, AK)  # the wrong block cipher key
        hub.start()
        try:
            _wait(lambda: _energy(database_url, "meter-a")[0] == 5)  # 4 profile entries + the register
            assert _energy(database_url, "meter-a") == (5, Decimal("0.0100"))  # 1.0100 - 1.0000 kWh, exactly
            _wait(lambda: "dlms poll of meter-b failed: association refused" in hub.log.read_text())
            metrics = httpx.get(f"http://127.0.0.1:{hub.port}/metrics", timeout=10).text
            assert 'usagehub_dlms_polls_total{outcome="auth_failed"}' in metrics
            assert _energy(database_url, "meter-b") == (0, Decimal(0))

            hub.kill()  # SIGKILL; an hour later (the meter's clock) it has recorded two more quarter hours
            meter_a.update(clock=None, profile={**meter_a.conf["profile"], "rows": rows + quarter_hours(2, 10_110, 10)},
                           objects={**meter_a.conf["objects"], ENERGY: {"class": 3, "value": 10_130, "scaler": -1,
                                                                         "unit": 30}})
            hub.start()
            _wait(lambda: _energy(database_url, "meter-a")[0] == 8)
            time.sleep(1.5 * time_scale())  # a re-read would show up as more readings or more usage
            assert _energy(database_url, "meter-a") == (8, Decimal("0.0130"))
            ranges = [r["range"] for r in meter_a.requests() if r.get("range")]
            assert ranges[-1][0] == rows[-1][0].removesuffix("+00:00")  # resumed at the last stored entry
            assert hub.terminate() == 0
        finally:
            if hub.proc and hub.proc.poll() is None:
                hub.terminate()


PREPAID_SEED = """
accounts:
  - {id: p1, prepaid: true}
devices:
  - {id: meter-p, profile: dlms-poll-meter}
bindings:
  - {device: meter-p, account: p1, valid_from: "2026-01-01T00:00:00Z"}
"""
PLAN = """
plans:
  - id: dlms-energy
    product: active_energy_import
    market: DE
    currency: EUR
    unit: kWh
    vat_category: standard
    versions:
      - valid_from: 2020-01-01
        components:
          - {type: flat, price: "0.25"}
"""


async def _load_plan(database_url: str) -> None:
    from usagehub.rating.service import RatingService
    from usagehub.storage.pool import open_pool

    pool = await open_pool(database_url, min_size=1, max_size=2)
    try:
        rating = RatingService(pool)
        await rating.start()
        await rating.load_plans(PLAN, "dlms-plan.yaml")
    finally:
        await pool.close()


def test_prepaid_exhaustion_disconnects_and_top_up_reconnects(database_url: str, mosquitto: Mosquitto,
                                                               tmp_path: Path) -> None:
    import asyncio

    now = datetime.now(UTC)
    rows = quarter_hours(2, 10_000, 0, end=now - timedelta(hours=1))  # 1.0000 kWh, twice
    config = tmp_path / "hub.toml"
    config.write_text(f'device_key_secret = "{SECRET}"\n[adapters.dlms]\nrefresh_s = 0.5\njitter_s = 0\n')
    (tmp_path / "seed.yaml").write_text(PREPAID_SEED)
    with sim_meter(tmp_path, _conf(110_000, rows, now - timedelta(minutes=30)), "p") as meter:
        hub = HubProcess(database_url, mosquitto.url, tmp_path / "data", extra=["--config", str(config)])
        assert usagehub("seed", str(tmp_path / "seed.yaml"), *hub.settings).returncode == 0
        asyncio.run(_load_plan(database_url))  # 0.25 EUR/kWh + 19 % VAT = 0.2975 EUR/kWh
        _register(database_url, "meter-p", meter, EK, AK)
        hub.start()
        try:
            key = hub.key("admin")
            body = hub.graphql('mutation { topUp(accountId: "p1", amount: "2.00", paymentRef: "t-1") { entryId } }',
                               key)
            assert "errors" not in body, body

            def actions(method: int) -> int:
                return sum(1 for r in meter.requests() if r["service"] == "action"
                           and r["obis"] == "0.0.96.3.10.255" and r["method"] == method)

            # 10 kWh (2.975 EUR) against 2.00 EUR: blocked, and the meter gets remote_disconnect (read back)
            _wait(lambda: actions(1) >= 1)
            assert "dlms blocked of meter-p confirmed (control state 0)" in _wait_log(hub, "dlms blocked")
            body = hub.graphql('mutation { topUp(accountId: "p1", amount: "5.00", paymentRef: "t-2") { entryId } }',
                               key)
            assert "errors" not in body, body
            _wait(lambda: actions(2) >= 1)
            assert "dlms restored of meter-p confirmed (control state 1)" in _wait_log(hub, "dlms restored")
            account = hub.graphql('{ prepaidAccount(accountId: "p1") { blocked balance } }', key)
            assert account["data"]["prepaidAccount"]["blocked"] is False
            assert Decimal(account["data"]["prepaidAccount"]["balance"]) == Decimal("7.00") - Decimal("2.975")
            assert hub.terminate() == 0
        finally:
            if hub.proc and hub.proc.poll() is None:
                hub.terminate()


def _wait_log(hub: HubProcess, text: str) -> str:
    _wait(lambda: text in hub.log.read_text())
    return hub.log.read_text()
