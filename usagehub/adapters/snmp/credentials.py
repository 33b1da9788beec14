"""Device registry secrets -> pysnmp authentication data (v1/v2c community, v3 USM user).

Secrets keys (``DeviceEndpoint.secrets``): ``community`` (and optionally
``trap_community``) for v1/v2c; ``user``, ``auth_key``, ``priv_key``,
``auth_protocol`` (MD5, SHA, SHA224, SHA256, SHA384, SHA512), ``priv_protocol``
(DES, 3DES, AES, AES128, AES192, AES256) and, for v3 traps sent by the device
as the authoritative engine, ``engine_id`` (hex) for v3.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pysnmp.entity import config as snmp_config
from pysnmp.proto.rfc1902 import OctetString

from usagehub.adapters.snmp._pysnmp import CommunityData, UsmUserData

AUTH_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "NONE": snmp_config.USM_AUTH_NONE,
    "MD5": snmp_config.USM_AUTH_HMAC96_MD5,
    "SHA": snmp_config.USM_AUTH_HMAC96_SHA,
    "SHA1": snmp_config.USM_AUTH_HMAC96_SHA,
    "SHA224": snmp_config.USM_AUTH_HMAC128_SHA224,
    "SHA256": snmp_config.USM_AUTH_HMAC192_SHA256,
    "SHA384": snmp_config.USM_AUTH_HMAC256_SHA384,
    "SHA512": snmp_config.USM_AUTH_HMAC384_SHA512,
}
PRIV_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "NONE": snmp_config.USM_PRIV_NONE,
    "DES": snmp_config.USM_PRIV_CBC56_DES,
    "3DES": snmp_config.USM_PRIV_CBC168_3DES,
    "AES": snmp_config.USM_PRIV_CFB128_AES,
    "AES128": snmp_config.USM_PRIV_CFB128_AES,
    "AES192": snmp_config.USM_PRIV_CFB192_AES,
    "AES256": snmp_config.USM_PRIV_CFB256_AES,
}


class CredentialError(ValueError):
    """The registry lacks a secret the profile's SNMP version needs, or names an unknown protocol."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UsmUser:
    """One SNMPv3 USM user as the registry describes it."""

    user: str
    auth_key: str | None
    priv_key: str | None
    auth_protocol: tuple[int, ...]
    priv_protocol: tuple[int, ...]
    engine_id: bytes | None


def usm_user(secrets: Mapping[str, str]) -> UsmUser:
    """The v3 user of a device; CredentialError when incomplete."""
    user = secrets.get("user")
    if not user:
        raise CredentialError("SNMPv3 needs the secret 'user'")
    auth_key, priv_key = secrets.get("auth_key") or None, secrets.get("priv_key") or None
    auth_name = (secrets.get("auth_protocol") or ("SHA" if auth_key else "NONE")).upper()
    priv_name = (secrets.get("priv_protocol") or ("AES" if priv_key else "NONE")).upper()
    if auth_name not in AUTH_PROTOCOLS or priv_name not in PRIV_PROTOCOLS:
        raise CredentialError(f"unknown protocol auth={auth_name!r} priv={priv_name!r}")
    if (auth_name != "NONE") != bool(auth_key) or (priv_name != "NONE") != bool(priv_key):
        raise CredentialError("auth_key/priv_key must be given exactly when a protocol is set")
    if priv_key and not auth_key:
        raise CredentialError("privacy without authentication is not allowed by USM")
    engine_hex = secrets.get("engine_id")
    try:
        engine_id = bytes.fromhex(engine_hex.removeprefix("0x")) if engine_hex else None
    except ValueError as err:
        raise CredentialError("engine_id must be hex") from err
    return UsmUser(user=user, auth_key=auth_key, priv_key=priv_key, auth_protocol=AUTH_PROTOCOLS[auth_name],
                   priv_protocol=PRIV_PROTOCOLS[priv_name], engine_id=engine_id)


def auth_data(version: str, secrets: Mapping[str, str]) -> CommunityData | UsmUserData:
    """pysnmp authentication for polling a device with SNMP ``version`` (1, 2c, 3)."""
    if version in ("1", "2c"):
        community = secrets.get("community")
        if not community:
            raise CredentialError(f"SNMP v{version} needs the secret 'community'")
        return CommunityData(community, mpModel=0 if version == "1" else 1)
    user = usm_user(secrets)
    return UsmUserData(user.user, user.auth_key, user.priv_key,
                       authProtocol=user.auth_protocol, privProtocol=user.priv_protocol)


def engine_id_octets(user: UsmUser) -> OctetString | None:
    """The device's engine id as pysnmp wants it for a trap user."""
    return OctetString(hexValue=user.engine_id.hex()) if user.engine_id else None
