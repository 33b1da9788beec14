"""Factory, registry, shipped profiles and poll plans of the snmp adapter (no network peer needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adapters.snmp.helpers import SNMP_PROFILES, config, settings, shipped
from usagehub.adapters import load
from usagehub.adapters.snmp import FACTORY, SnmpConfig
from usagehub.adapters.snmp.adapter import SnmpAdapter
from usagehub.adapters.snmp.credentials import CredentialError, auth_data, usm_user
from usagehub.adapters.snmp.plan import SYS_UPTIME, plan_for
from usagehub.adapters.snmp.scheduler import phase_fraction


@pytest.mark.parametrize("name", SNMP_PROFILES)
def test_shipped_profiles_load(name: str) -> None:
    assert shipped(name).id == name


def test_plans() -> None:
    pdu = plan_for(shipped("apc-ap8641"))
    assert pdu is not None and pdu.scalars[0] == SYS_UPTIME
    assert pdu.columns == ("1.3.6.1.4.1.318.1.1.26.9.4.3.1.11", "1.3.6.1.4.1.318.1.1.26.9.4.3.1.7")
    assert pdu.topic == "1.3.6.1.4.1.318.1.1.26.9.4.3.1"
    assert pdu.counters["1.3.6.1.4.1.318.1.1.26.4.3.1.9.1"].wrap_bits is None
    switch = plan_for(shipped("ietf-if-mib-switch"))
    assert switch is not None and switch.discontinuity_is_column and switch.columns[-1].endswith(".19")
    assert plan_for(shipped("security-panel-traps")) is None


def test_registry_and_factory(tmp_path: Path) -> None:
    assert load("snmp") is FACTORY and FACTORY.type == "snmp" and FACTORY.config_model is SnmpConfig
    adapter = FACTORY.create(config(), settings([shipped("apc-ap8641")], [], tmp_path))
    assert isinstance(adapter, SnmpAdapter) and set(adapter.plans) == {"apc-ap8641"}
    with pytest.raises(ValueError, match="extra"):
        SnmpConfig.model_validate({"poll_every": 3})


async def test_enter_binds_trap_port_and_exit_releases_it(tmp_path: Path) -> None:
    async with SnmpAdapter(config(), settings([], [], tmp_path)) as adapter:
        port = adapter.trap_port
        assert port
    async with SnmpAdapter(config(traps={"host": "127.0.0.1", "port": port}), settings([], [], tmp_path)):
        pass  # the port was released


def test_credentials() -> None:
    with pytest.raises(CredentialError):
        auth_data("2c", {})
    with pytest.raises(CredentialError):
        usm_user({"user": "u", "priv_key": "p" * 8})  # privacy without authentication
    with pytest.raises(CredentialError):
        usm_user({"user": "u", "auth_key": "a" * 8, "auth_protocol": "ROT13"})
    user = usm_user({"user": "u", "auth_key": "a" * 8, "priv_key": "p" * 8, "engine_id": "0x8000"})
    assert user.engine_id == b"\x80\x00"


def test_phase_spreads_devices() -> None:
    phases = [phase_fraction(f"dev-{n}") for n in range(1000)]
    assert all(0 <= p < 1 for p in phases)
    assert sum(p < 0.5 for p in phases) in range(400, 600)
    assert phase_fraction("a") == phase_fraction("a")
