"""pysnmp values -> JSON-friendly values and their SMI type names."""

from __future__ import annotations

from typing import Any

from pysnmp.proto import rfc1902, rfc1905

JsonValue = int | str | None

# "No such object/instance" and "end of MIB" are absences, never values.
_ABSENT = (rfc1905.NoSuchObject, rfc1905.NoSuchInstance, rfc1905.EndOfMibView)
_NUMBERS = (rfc1902.Integer32, rfc1902.Integer, rfc1902.Counter32, rfc1902.Counter64, rfc1902.Gauge32,
            rfc1902.Unsigned32, rfc1902.TimeTicks)


def type_name(value: Any) -> str:
    """The SMI type of a varbind value (Counter32, Gauge32, Integer32, OctetString, ...)."""
    name = type(value).__name__
    return "Integer32" if name == "Integer" else name


def to_json(value: Any) -> JsonValue:
    """A varbind value as int, text or None (absent)."""
    if isinstance(value, _ABSENT) or not value.isValue:
        return None
    if isinstance(value, _NUMBERS):
        return int(value)
    if isinstance(value, rfc1902.ObjectIdentifier):
        return str(value)
    if isinstance(value, rfc1902.IpAddress):
        return ".".join(str(b) for b in value.asOctets())
    if isinstance(value, rfc1902.OctetString):
        raw: bytes = bytes(value.asOctets())
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + raw.hex()
        return text if text.isprintable() else "0x" + raw.hex()
    return str(value.prettyPrint())


def is_absent(value: Any) -> bool:
    """Whether the agent said this OID has no value."""
    return isinstance(value, _ABSENT)
