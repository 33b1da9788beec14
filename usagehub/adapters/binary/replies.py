"""What a binary listener answers a sender after a frame's receipt: DC-09 ACK/NAK/DUH, or nothing."""

from __future__ import annotations

from datetime import datetime

from usagehub.adapters.base import Outcome, Receipt
from usagehub.core.codecs import DecodeFn
from usagehub.core.codecs.dc09 import Dc09Error, Frame, ack, duh, key_bytes, nak, unframe, verify
from usagehub.errors import DecodeError


class Dc09Replier:
    """Decides the DC-09 reply from the frame itself and its durable receipt."""

    def __init__(self, decode: DecodeFn, keys: dict[str, str], strict: bool) -> None:
        self._decode, self._strict = decode, strict
        self._keys = {acct.upper(): key_bytes(key, acct) for acct, key in keys.items()}

    def classify(self, frame: bytes) -> tuple[Frame | None, str | None]:
        """The routing fields (None when the frame is unusable) and the reply the frame alone forces."""
        try:
            routed = verify(unframe(frame), strict=self._strict)
        except Dc09Error as err:
            return None, err.reply
        try:
            self._decode(frame)
        except Dc09Error as err:
            return routed, err.reply
        except DecodeError:
            return routed, "DUH"
        return routed, None

    def reply(self, frame: bytes, receipt: Receipt | None, now: datetime, pad: str) -> bytes | None:
        """ACK for accepted/duplicate, NAK for CRC/length/timestamp faults, DUH for what we cannot handle."""
        routed, forced = self.classify(frame)
        if routed is None or forced == "NAK":
            return nak(now)
        if forced == "DUH":
            return duh(routed, now)
        if receipt is None:
            return None  # not durably stored: stay silent so the panel retransmits
        if receipt.outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE):
            return ack(routed, now, self._keys.get((routed.account or "").upper()), pad)
        if receipt.reason and "timestamp" in receipt.reason:
            return nak(now)
        return duh(routed, now)
