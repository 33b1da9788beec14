"""Coalesced writes for paho under aiomqtt: the packets of one loop pass leave in one ``send``.

paho writes each queued packet with its own ``send`` system call: for the prepaid
request/response path that is a PUBACK per request on the receiving connection and a
PUBLISH per answer on the publishing one (py-spy: ``_sock_send`` was a tenth of the
hub's CPU at 300 authorizations/s). :func:`coalesce_writes` gives a connected client's
socket a write buffer: paho's ``send`` appends to it, and the client's ``loop_write``
(which aiomqtt calls when the socket is writable, once per loop pass with packets
queued) sends the whole buffer at the end. What the kernel does not take yet stays
buffered and keeps the writer registered; closing the socket sends what is left first.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

import aiomqtt
import paho.mqtt
from paho.mqtt.enums import MQTTErrorCode

log = logging.getLogger(__name__)


class CoalescedWrites:
    """A socket whose ``send`` buffers; :meth:`flush` writes the buffer with as few system calls as it can."""

    __slots__ = ("_out", "_sock", "failed")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._out = bytearray()
        self.failed: OSError | None = None

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Take all of ``data`` (written at the next flush)."""
        if self.failed is not None:
            raise self.failed
        self._out += data
        return len(data)

    def flush(self) -> bool:
        """Write what is buffered; False while some is left (the socket is full). Raises if the socket failed."""
        out = self._out
        while out:
            try:
                sent = self._sock.send(out)
            except BlockingIOError:
                return False
            except OSError as err:
                self.failed = err
                raise
            del out[:sent]
        return True

    def pending_writes(self) -> int:
        """Bytes taken and not yet written."""
        return len(self._out)

    def close(self) -> None:
        """Send what is left (best effort: a DISCONNECT queued last), then close."""
        with contextlib.suppress(OSError):
            self.flush()
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def coalesce_writes(client: aiomqtt.Client) -> bool:
    """Give a connected client's plain socket coalesced writes; False (unchanged) for TLS or unknown paho."""
    paho_client = client._client
    sock = paho_client._sock
    plain = type(sock) is socket.socket or type(getattr(sock, "_sock", None)) is socket.socket  # buffered reads
    if not paho.mqtt.__version__.startswith("2.") or sock is None or not plain:
        return False
    writes = CoalescedWrites(sock)
    paho_client._sock = writes
    packet_write_pass = paho_client.loop_write

    def loop_write() -> MQTTErrorCode:
        rc = packet_write_pass()  # paho hands each queued packet to ``send``: buffered
        if paho_client._sock is not writes:  # closed or replaced meanwhile
            return rc
        try:
            done = writes.flush()
        except OSError as err:
            log.debug("prepaid mqtt write failed: %s", err)
            return paho_client._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if not done:  # the kernel's buffer is full: write the rest when the socket is writable again
            paho_client._call_socket_register_write()
        return rc

    paho_client.loop_write = loop_write  # type: ignore[method-assign]
    return True


__all__ = ["CoalescedWrites", "coalesce_writes"]
