"""Who may send traps: communities and USM users from the device registry, and source -> device lookup."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pysnmp.entity import config as snmp_config
from pysnmp.entity.engine import SnmpEngine

from usagehub.adapters.base import DeviceEndpoint
from usagehub.adapters.snmp.credentials import CredentialError, engine_id_octets, usm_user

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sender:
    """An authenticated trap sender: its security name as pysnmp reports it, and its source IP."""

    address: str
    security_model: int   # 1 = v1, 2 = v2c, 3 = USM
    security_name: str    # community index for v1/v2c, user name for v3


class TrapAuth:
    """Installs the registry's trap credentials into a pysnmp engine and maps senders to devices."""

    def __init__(self, engine: SnmpEngine) -> None:
        self._engine = engine
        self._community_index: dict[str, str] = {}            # community -> pysnmp index ("c0", ...)
        self._users: set[tuple[str, bytes | None]] = set()
        self._by_address: dict[str, list[DeviceEndpoint]] = {}

    def load(self, endpoints: Sequence[DeviceEndpoint]) -> None:
        """Add every community and v3 user of ``endpoints`` (additions only; removal needs a restart)."""
        by_address: dict[str, list[DeviceEndpoint]] = {}
        for endpoint in endpoints:
            if not endpoint.address:
                continue
            by_address.setdefault(endpoint.address, []).append(endpoint)
            for key in ("community", "trap_community"):
                if community := endpoint.secrets.get(key):
                    self._add_community(community)
            if endpoint.secrets.get("user"):
                self._add_user(endpoint)
        self._by_address = by_address

    def _add_community(self, community: str) -> None:
        if community in self._community_index:
            return
        index = f"c{len(self._community_index)}"
        snmp_config.add_v1_system(self._engine, index, community)
        self._community_index[community] = index

    def _add_user(self, endpoint: DeviceEndpoint) -> None:
        try:
            user = usm_user(endpoint.secrets)
        except CredentialError as err:
            log.warning("snmp trap user of %s ignored: %s", endpoint.device_id, err)
            return
        # Informs: we are the authoritative engine. Traps: the device is, so its engine id keys the user.
        for engine_id in {None, user.engine_id}:
            if (user.user, engine_id) in self._users:
                continue
            snmp_config.add_v3_user(self._engine, user.user, user.auth_protocol, user.auth_key,
                                    user.priv_protocol, user.priv_key,
                                    securityEngineId=engine_id_octets(user) if engine_id else None)
            self._users.add((user.user, engine_id))

    def device_for(self, sender: Sender) -> DeviceEndpoint | None:
        """The registered device at ``sender.address`` that owns the credentials it used."""
        for endpoint in self._by_address.get(sender.address, ()):
            if sender.security_model == 3:
                if endpoint.secrets.get("user") == sender.security_name:
                    return endpoint
            elif sender.security_name in {self._community_index.get(endpoint.secrets.get(k, ""))
                                          for k in ("community", "trap_community")}:
                return endpoint
        return None
