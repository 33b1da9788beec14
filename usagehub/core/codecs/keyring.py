"""Per-device AES keys (wM-Bus, DLMS): sealed at rest with AES-256-GCM, held in memory for the codecs.

The sealing key is derived (HKDF-SHA256) from the hub's ``device_key_secret``;
the sealed blob binds tenant, device and protocol as associated data, so a row
copied onto another device does not open. Nothing here touches a database.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from usagehub.core.codecs import KeyLookup
from usagehub.errors import ConfigError

_VERSION = b"\x01"
_NONCE = 12


def _aad(tenant: str, device_id: str, protocol: str) -> bytes:
    return "\x00".join((tenant, device_id, protocol)).encode()


class KeySealer:
    """Seals and opens device keys under the hub secret."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ConfigError("device_key_secret must be at least 16 characters", field="device_key_secret")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"usagehub device keys v1", info=b"seal")
        self._aead = AESGCM(hkdf.derive(secret.encode()))

    def seal(self, key: bytes, *, tenant: str, device_id: str, protocol: str) -> bytes:
        """``key`` encrypted for storage (version, nonce, ciphertext + tag)."""
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, key, _aad(tenant, device_id, protocol))

    def open(self, sealed: bytes, *, tenant: str, device_id: str, protocol: str) -> bytes:
        """The key inside ``sealed``; ConfigError if the secret or the binding is wrong."""
        if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE + 16:
            raise ConfigError("sealed device key has an unknown format", field=f"{protocol}:{device_id}")
        try:
            return self._aead.decrypt(sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :], _aad(tenant, device_id, protocol))
        except InvalidTag as err:
            raise ConfigError("device key does not open (wrong device_key_secret or moved row)",
                              field=f"{protocol}:{device_id}") from err


def parse_key_hex(text: str) -> bytes:
    """A 128-bit AES key written as 32 hex digits."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as err:
        raise ConfigError("a device key is 32 hex digits", field="key") from err
    if len(key) != 16:
        raise ConfigError(f"a device key is 16 bytes, got {len(key)}", field="key")
    return key


class KeyRing:
    """Opened keys by (protocol, device id); ``lookup_for(protocol)`` is what a codec is given."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], bytes] = {}

    def put(self, protocol: str, device_id: str, key: bytes) -> None:
        """Hold ``key`` for the device (ids compare case-insensitively: meters print hex digits)."""
        self._keys[(protocol, device_id.upper())] = key

    def replace(self, entries: dict[tuple[str, str], bytes]) -> None:
        """Swap in a freshly loaded set of keys at once."""
        self._keys = {(protocol, device.upper()): key for (protocol, device), key in entries.items()}

    def __len__(self) -> int:
        return len(self._keys)

    def lookup_for(self, protocol: str) -> KeyLookup:
        """A ``meter id -> key`` function over this ring's current keys of ``protocol``."""

        def lookup(device_id: str) -> bytes | None:
            return self._keys.get((protocol, device_id.upper()))

        return lookup
