"""OSCORE (RFC 8613) security contexts built from per-device keys in the device registry.

Device secrets (hex strings in ``DeviceEndpoint.secrets``):

- ``oscore_master_secret`` (required to use OSCORE),
- ``oscore_sender_id``: the device's Sender ID, i.e. our Recipient ID (default: the device
  id's ASCII bytes when they fit in 7 bytes),
- ``oscore_recipient_id``: the device's Recipient ID, i.e. our Sender ID (default empty),
- ``oscore_master_salt`` and ``oscore_id_context`` (optional).

Only the sequence number and replay window are written to disk (``sequence.json`` in a
folder per device and key fingerprint), so a restarted hub never reuses a nonce; after a
crash the replay window is unknown and aiocoap recovers with an Echo round trip (RFC 8613
Appendix B.1.2). A rotated key gets a new folder, i.e. fresh state.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aiocoap import oscore

from usagehub.adapters.base import DeviceEndpoint

log = logging.getLogger(__name__)

CLAIM_PREFIX = "device:"
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


class OscoreKeyError(ValueError):
    """A device's OSCORE secrets are malformed."""


def _hex(secrets: Mapping[str, str], name: str, default: bytes | None = None) -> bytes | None:
    value = secrets.get(name)
    if value is None:
        return default
    try:
        return binascii.unhexlify(value.strip())
    except (binascii.Error, ValueError) as err:
        raise OscoreKeyError(f"{name} is not hex") from err


def oscore_parameters(endpoint: DeviceEndpoint) -> dict[str, bytes | None] | None:
    """The OSCORE parameters of ``endpoint`` as the server sees them, or None without a master secret."""
    secrets = endpoint.secrets
    secret = _hex(secrets, "oscore_master_secret")
    if not secret:
        return None
    fallback = endpoint.device_id.encode() if 0 < len(endpoint.device_id.encode()) <= 7 else None
    recipient_id = _hex(secrets, "oscore_sender_id", fallback)
    sender_id = _hex(secrets, "oscore_recipient_id", b"")
    if recipient_id is None:
        raise OscoreKeyError("oscore_sender_id is required when the device id is longer than 7 bytes")
    if recipient_id == sender_id:
        raise OscoreKeyError("oscore_sender_id and oscore_recipient_id must differ")
    return {"secret": secret, "salt": _hex(secrets, "oscore_master_salt", b""), "sender-id": sender_id,
            "recipient-id": recipient_id, "id-context": _hex(secrets, "oscore_id_context")}


def _fingerprint(params: Mapping[str, bytes | None]) -> str:
    digest = hashlib.blake2b(digest_size=6)
    for key in sorted(params):
        digest.update(key.encode() + b"=" + (params[key] or b"") + b"\x1f")
    return digest.hexdigest()


class DeviceContext(oscore.FilesystemSecurityContext):  # type: ignore[misc]
    """An OSCORE context whose keys come from the registry; only sequence state is on disk."""

    def __init__(self, device_id: str, params: Mapping[str, bytes | None], basedir: Path) -> None:
        self._params = dict(params)
        basedir.mkdir(parents=True, exist_ok=True, mode=0o700)
        super().__init__(str(basedir))
        self.authenticated_claims = [CLAIM_PREFIX + device_id]
        self.device_id = device_id

    def _load(self) -> None:  # replaces reading settings.json/secret.json
        params = self._params
        self.alg_aead = oscore.algorithms[oscore.DEFAULT_ALGORITHM]
        self.hashfun = oscore.hashfunctions[oscore.DEFAULT_HASHFUNCTION]
        self.sender_id, self.recipient_id = params["sender-id"], params["recipient-id"]
        limit = self.alg_aead.iv_bytes - 6
        if max(len(self.sender_id or b""), len(self.recipient_id or b"")) > limit:
            raise OscoreKeyError(f"OSCORE ids longer than {limit} bytes")
        self.id_context = params["id-context"]
        self.derive_keys(params["salt"] or b"", params["secret"])
        self.recipient_replay_window = oscore.ReplayWindow(oscore.DEFAULT_WINDOWSIZE,
                                                           self._replay_window_changed)
        self._load_sequence()

    def _load_sequence(self) -> None:
        import json  # only at start, per device

        path = Path(self.basedir) / "sequence.json"
        if not path.exists():
            self.sender_sequence_number = 0
            self.recipient_replay_window.initialize_empty()
            self.replay_window_persisted = True
            return
        sequence = json.loads(path.read_text())
        self.sender_sequence_number = int(sequence["next-to-send"])
        received = sequence["received"]
        self.replay_window_persisted = received != "unknown"
        if self.replay_window_persisted:  # else it stays uninitialised: Echo recovery
            self.recipient_replay_window.initialize_from_persisted(received)

    def close(self) -> None:
        """Persist the sequence state and release the folder lock."""
        if self.lockfile is not None:
            self._destroy()


class DeviceCredentials:
    """What aiocoap's OSCORE site wrapper asks for: the context of an incoming request's kid."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._by_kid: dict[tuple[bytes | None, bytes | None], DeviceContext] = {}
        self._fingerprints: dict[str, str] = {}
        self._bad: set[str] = set()

    def find_oscore(self, unprotected: Mapping[Any, Any]) -> DeviceContext:
        """The context for a request's (kid, kid context); KeyError if none."""
        kid = unprotected.get(oscore.COSE_KID)
        return self._by_kid[(kid, unprotected.get(oscore.COSE_KID_CONTEXT))]

    def find_all_used_contextless_oscore_kid(self) -> set[bytes]:
        """Recipient ids without id context (aiocoap asks this when it acts as a client)."""
        return {kid for kid, ctx in self._by_kid if ctx is None and kid is not None}

    def __len__(self) -> int:
        return len(self._by_kid)

    def load(self, endpoints: Iterable[DeviceEndpoint]) -> None:
        """(Re)build the contexts from the registry; unchanged keys keep their live context."""
        wanted: dict[str, tuple[dict[str, bytes | None], str]] = {}
        for endpoint in endpoints:
            try:
                params = oscore_parameters(endpoint)
            except OscoreKeyError as err:
                if endpoint.device_id not in self._bad:  # log a broken key once
                    log.error("device %s: bad OSCORE secrets: %s", endpoint.device_id, err)
                    self._bad.add(endpoint.device_id)
                continue
            if params is not None:
                wanted[endpoint.device_id] = (params, _fingerprint(params))
        current = {ctx.device_id: ctx for ctx in self._by_kid.values()}
        by_kid: dict[tuple[bytes | None, bytes | None], DeviceContext] = {}
        for device_id, (params, fingerprint) in wanted.items():
            ctx = current.pop(device_id, None)
            if ctx is None or self._fingerprints.get(device_id) != fingerprint:
                if ctx is not None:
                    ctx.close()
                ctx = DeviceContext(device_id, params,
                                    self._state_dir / f"{_SAFE.sub('_', device_id)}-{fingerprint}")
                self._fingerprints[device_id] = fingerprint
            key = (ctx.recipient_id, ctx.id_context)
            if key in by_kid:
                log.error("devices %s and %s share an OSCORE sender id; %s is refused",
                          by_kid[key].device_id, device_id, device_id)
                ctx.close()
                self._fingerprints.pop(device_id, None)
                continue
            by_kid[key] = ctx
        for ctx in current.values():
            ctx.close()
            self._fingerprints.pop(ctx.device_id, None)
        self._by_kid = by_kid

    def close(self) -> None:
        """Persist and release every context."""
        for ctx in self._by_kid.values():
            ctx.close()
        self._by_kid = {}


def authenticated_device(remote: object) -> str | None:
    """The device id OSCORE authenticated for a request's ``remote``, or None."""
    claims = getattr(remote, "authenticated_claims", None) or ()
    for claim in claims:
        if isinstance(claim, str) and claim.startswith(CLAIM_PREFIX):
            return claim[len(CLAIM_PREFIX):]
    return None
