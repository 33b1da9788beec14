"""HDLC (IEC 62056-46) side of the simulated DLMS meter: a meter behind a serial-to-TCP converter (test only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlms_cosem.hdlc.address import HdlcAddress
from dlms_cosem.hdlc.frames import InformationFrame, ReceiveReadyFrame, UnNumberedAcknowledgmentFrame

if TYPE_CHECKING:
    from tests.peers_dlms import Meter


class HdlcSession:
    """HDLC (IEC 62056-46) in normal response mode over the socket: SNRM/UA, I-frames with RR, DISC."""

    SEGMENT = 128

    def __init__(self, sock: Any, meter: Meter) -> None:
        self.sock, self.meter = sock, meter
        self.sent = self.received = 0  # I-frames sent and received, modulo 8
        self.client = HdlcAddress(logical_address=16, physical_address=None, address_type="client")
        self.server = HdlcAddress(logical_address=1, physical_address=None, address_type="server")
        self.buffer = b""

    def frame(self) -> bytes:
        """The next frame's bytes between flags (b"" when the peer closed), cut by its length field:
        ciphered data may hold 0x7E bytes, and DLMS HDLC does no byte stuffing."""
        while True:
            self.buffer = self.buffer.lstrip(b"\x7e")
            if len(self.buffer) >= 2:
                length = ((self.buffer[0] & 0x07) << 8) | self.buffer[1]  # format field: 11-bit frame length
                if len(self.buffer) >= length + 1:  # the frame and its closing flag
                    frame, self.buffer = self.buffer[:length], self.buffer[length + 1:]
                    return frame
            chunk = self.sock.recv(4096)
            if not chunk:
                return b""
            self.buffer += chunk

    def parse(self, frame: bytes) -> tuple[int, bool, bytes]:
        """(control byte, segmented, information) of a client frame; addresses end with a byte whose LSB is 1."""
        segmented = bool(frame[0] & 0x08)
        pos = 2
        for _ in range(2):  # destination (server), then source (client) address
            while not frame[pos] & 1:
                pos += 1
            if _ == 1:
                self.client = HdlcAddress(logical_address=frame[pos] >> 1, physical_address=None,
                                          address_type="client")
            pos += 1
        control = frame[pos]
        info = frame[pos + 3:-2] if len(frame) > pos + 3 else b""  # after the HCS, before the FCS
        return control, segmented, info

    def send_info(self, payload: bytes) -> bool:
        """Send one response in I-frames of SEGMENT bytes, waiting for the client's RR between them."""
        chunks = [payload[i:i + self.SEGMENT] for i in range(0, len(payload), self.SEGMENT)] or [b""]
        for n, chunk in enumerate(chunks):
            more = n < len(chunks) - 1
            self.sock.sendall(InformationFrame(
                destination_address=self.client, source_address=self.server, payload=chunk,
                send_sequence_number=self.sent, receive_sequence_number=self.received,
                segmented=more, final=True).to_bytes())
            self.sent = (self.sent + 1) % 8
            if more:
                frame = self.frame()
                if not frame or self.parse(frame)[0] & 0x0F != 0x01:  # expect RR
                    return False
        return True

    def serve(self) -> None:
        """Answer frames until DISC or the peer closes."""
        request = b""
        while frame := self.frame():
            control, segmented, info = self.parse(frame)
            if control & 0xEF == 0x83:  # SNRM
                self.sent = self.received = 0
                self.sock.sendall(UnNumberedAcknowledgmentFrame(
                    destination_address=self.client, source_address=self.server).to_bytes())
            elif control & 0xEF == 0x43:  # DISC
                self.sock.sendall(UnNumberedAcknowledgmentFrame(
                    destination_address=self.client, source_address=self.server).to_bytes())
                return
            elif not control & 1:  # an I-frame
                self.received = (self.received + 1) % 8
                request += info
                if segmented:
                    self.sock.sendall(ReceiveReadyFrame(destination_address=self.client, source_address=self.server,
                                                        receive_sequence_number=self.received).to_bytes())
                    continue
                apdu, request = request.removeprefix(b"\xe6\xe6\x00"), b""
                try:
                    answer = self.meter.handle(apdu)
                except Exception as err:
                    self.meter.log(service="error", error=f"{type(err).__name__}: {err}")
                    return
                if not self.send_info(b"\xe6\xe7\x00" + answer):
                    return
