"""Wireless M-Bus layers above the link: ELL (CI 8C-8F), AFL (CI 90) and the transport layer header.

Each parser takes the CRC-free telegram and a position and returns what it
found and where the next layer starts. Bounds are checked everywhere: hostile
bytes give a DecodeError, never an IndexError.
"""

from __future__ import annotations

from dataclasses import dataclass

from usagehub.errors import DecodeError


def take(data: bytes, pos: int, count: int, what: str) -> bytes:
    """``count`` bytes at ``pos``, or a DecodeError naming ``what``."""
    if pos + count > len(data):
        raise DecodeError("wM-Bus telegram truncated", detail=f"{what} at offset {pos}")
    return data[pos : pos + count]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ell:
    """Extended link layer: communication control, access number, optional address and session number."""

    cc: int
    access: int
    address: bytes | None
    session: bytes | None

    @property
    def encrypted(self) -> bool:
        """ENC bits 29-31 of the session number: 1 means AES-128-CTR over payload CRC + payload."""
        return self.session is not None and (int.from_bytes(self.session, "little") >> 29) == 1


def parse_ell(data: bytes, pos: int) -> tuple[Ell, int]:
    """The ELL whose CI is at ``pos``: 8C (CC ACC), 8D (+SN), 8E (+M A), 8F (+M A SN)."""
    ci = data[pos]
    cc, acc = take(data, pos + 1, 2, "ELL")
    pos += 3
    address = session = None
    if ci in (0x8E, 0x8F):
        address = take(data, pos, 8, "ELL address")
        pos += 8
    if ci in (0x8D, 0x8F):
        session = take(data, pos, 4, "ELL session number")
        pos += 4
    return Ell(cc=cc, access=acc, address=address, session=session), pos


@dataclass(frozen=True, slots=True, kw_only=True)
class Afl:
    """Authentication and fragmentation layer: what the mode 7 MAC check needs."""

    mcl: int | None
    counter: bytes | None
    mac: bytes | None
    length_field: bytes | None
    more_fragments: bool


_MAC_LEN = {4: 4, 5: 8, 6: 12, 7: 16}


def parse_afl(data: bytes, pos: int) -> tuple[Afl, int]:
    """The AFL whose CI (90) is at ``pos``; the next CI follows its ``AFL.L`` bytes."""
    size = take(data, pos + 1, 1, "AFL.L")[0]
    body = take(data, pos + 2, size, "AFL")
    end = pos + 2 + size
    fcl = int.from_bytes(take(body, 0, 2, "AFL.FCL"), "little")
    at, mcl, counter, mac, length_field = 2, None, None, None, None
    if fcl & 0x2000:  # MCLP
        mcl = take(body, at, 1, "AFL.MCL")[0]
        at += 1
    if fcl & 0x0200:  # KIP
        at += 2
    if fcl & 0x0800:  # MCRP
        counter = take(body, at, 4, "AFL.MCR")
        at += 4
    if fcl & 0x0400:  # MACP
        mac_len = _MAC_LEN.get((mcl or 0) & 0x0F)
        if mac_len is None:
            raise DecodeError("unsupported AFL authentication type", detail=f"MCL 0x{mcl or 0:02X}")
        mac = take(body, at, mac_len, "AFL.MAC")
        at += mac_len
    if fcl & 0x1000:  # MLP
        length_field = take(body, at, 2, "AFL.ML")
    return Afl(mcl=mcl, counter=counter, mac=mac, length_field=length_field,
               more_fragments=bool(fcl & 0x4000)), end


@dataclass(frozen=True, slots=True, kw_only=True)
class Tpl:
    """Transport layer header: its own meter address (long header), access number, status, security mode."""

    ci: int
    address: bytes | None
    access: int | None
    status: int | None
    mode: int
    blocks: int
    payload_at: int


def parse_tpl(data: bytes, pos: int) -> Tpl:
    """TPL at ``pos``: 78 (none), 7A (short: ACC STS CW), 72 (long: ID M VER TYPE ACC STS CW)."""
    ci = data[pos]
    if ci == 0x78:
        return Tpl(ci=ci, address=None, access=None, status=None, mode=0, blocks=0, payload_at=pos + 1)
    address = None
    at = pos + 1
    if ci == 0x72:
        long = take(data, at, 8, "TPL long header")
        address = long[4:6] + long[0:4] + long[6:8]  # as M A(ID VER TYPE), the order of the DLL
        at += 8
    acc, status, cw_lo, cw_hi = take(data, at, 4, "TPL header")
    at += 4
    cw = cw_lo | cw_hi << 8
    mode = (cw >> 8) & 0x1F
    if mode == 7:
        take(data, at, 1, "TPL configuration field extension")
        at += 1
    return Tpl(ci=ci, address=address, access=acc, status=status, mode=mode, blocks=(cw >> 4) & 0x0F,
               payload_at=at)
