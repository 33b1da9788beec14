"""Stop reading an ingest connection while its received messages wait in memory; read again once they drain.

The pipeline takes messages as fast as it commits them; past its read-ahead the adapter waits. The
broker, though, sends as many unacknowledged messages as the connection's window allows — 65,535 with
MQTT 5 (a small window would stall ingest: acks wait for commits), and without limit from a broker
configured so (``max_inflight_messages 0``) — and the fast reader (``fastpath.py``) parses everything
that arrives onto aiomqtt's queue. A soak whose hub fell behind held 218,000 messages there and grew past
1 GB. So while the queue holds ``high_messages`` messages or ``high_bytes`` bytes, the socket is taken
out of the event loop (TCP then holds the broker back, and the backlog stays with the broker, unacked);
when the adapter has taken it down to half of both, reading resumes. Pauses last as long as the
pipeline needs to catch up; keepalive answers wait with the rest, so a pause longer than the keepalive
(a pipeline stalled that long) ends in a reconnect, after which the broker delivers again what was not
acknowledged.
"""

from __future__ import annotations

import asyncio
import logging

import aiomqtt

from usagehub import metrics
from usagehub.adapters.mqtt.lean import BufferedReads

log = logging.getLogger(__name__)


class ReadPause:
    """Read-side flow control for one connected client (its queue, its socket, this event loop)."""

    def __init__(self, client: aiomqtt.Client, *, high_messages: int = 20_000, high_bytes: int = 64 << 20) -> None:
        self.client = client
        self.queue = client._queue
        self.high_messages, self.high_bytes = high_messages, high_bytes
        self.loop = asyncio.get_running_loop()
        self.bytes = 0  # read from the socket onto the queue, not yet taken (an estimate: reset when empty)
        self.paused = False
        self.pauses = 0

    def read(self, nbytes: int) -> None:
        """After a read pass that put ``nbytes`` of packets on the queue: pause if it is full."""
        self.bytes += nbytes
        if self.paused or (self.queue.qsize() < self.high_messages and self.bytes < self.high_bytes):
            return
        sock = self.client._client._sock
        if not isinstance(sock, BufferedReads):
            return
        sock.held = True  # aiomqtt's reader callback, running now, stops at its next read
        self.loop.remove_reader(sock.fileno())
        self.paused = True
        self.pauses += 1
        metrics.ADAPTER_READ_PAUSES.labels("mqtt").inc()
        log.debug("mqtt: %d messages (%d bytes) wait; reading paused", self.queue.qsize(), self.bytes)

    def taken(self, nbytes: int) -> None:
        """The adapter took a message of about ``nbytes`` off the queue: resume below half of both bounds."""
        size = self.queue.qsize()
        self.bytes = max(0, self.bytes - nbytes) if size else 0
        if self.paused and size <= self.high_messages // 2 and self.bytes <= self.high_bytes // 2:
            self.resume()

    def resume(self) -> None:
        self.paused = False
        sock = self.client._client._sock
        if not isinstance(sock, BufferedReads):  # the connection is gone (a reconnect makes a new client)
            return
        sock.held = False
        self.loop.add_reader(sock.fileno(), self._read)
        self.loop.call_soon(self._read)  # what is buffered already, though the socket may stay quiet

    def _read(self) -> None:
        # As aiomqtt's own reader callback: a read error is the connection's end.
        paho = self.client._client
        try:
            while not self.paused:
                paho.loop_read()
                sock = paho._sock
                if sock is not None and hasattr(sock, "pending") and sock.pending() > 0:
                    continue
                break
        except Exception as exc:  # any read error ends the connection, as in aiomqtt
            disconnected = self.client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)
