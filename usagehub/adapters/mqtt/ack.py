"""Acknowledge QoS 1/2 messages only after their durable commit.

aiomqtt acknowledges on receipt; paho (underneath) can be switched to manual
acknowledgement. Acks reach into aiomqtt's private paho client here, as the lean
reads (``lean.py``) and the PUBLISH fast path (``fastpath.py``) do on the receive
side; the adapter's tests run all three against a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiomqtt

from usagehub.adapters.mqtt.fastpath import BatchedAcks, Received

log = logging.getLogger(__name__)


HOLD_S = 2.0  # how long a committed message's PUBACK may wait for an older message's commit

_WAITING, _DONE = 0, 1


class ManualAck:
    """Manual PUBACK for one connection: create before connecting, ack after commit.

    ``received`` / ``ack_in_order`` send the PUBACKs of QoS 1 messages in the order the messages arrived,
    which is the order of the broker's in-flight list. Mosquitto finds the message a PUBACK names by
    walking that list from its oldest entry, so acks out of order (commit lanes each acking their own
    batches) made every PUBACK walk past the other lanes' unacknowledged messages: 11.8-13.1 against 8.0 us
    of broker CPU per event on ``bench/fleet.py`` with two lanes. A committed message's ack waits for the older ones' at
    most ``hold_s``; after that the younger ones go ahead (a slow batch, or a commit that failed and is
    never acked: the broker redelivers that one on the next connection, as before).
    """

    def __init__(self, client: aiomqtt.Client, *, hold_s: float = HOLD_S) -> None:
        self._paho = client._client
        self._paho.manual_ack_set(True)
        self._batched = BatchedAcks(self._paho)
        self.failed = 0
        self.hold_s = hold_s
        self.ahead = 0  # messages whose younger ones were acked before them (held longer than hold_s)
        self._order: dict[int, list[float]] = {}  # ticket -> [mid, state, received at], unreleased ones
        self._base = 0  # the oldest unreleased ticket
        self._next = 0  # the next ticket
        self._timer: asyncio.TimerHandle | None = None

    def received(self, message: aiomqtt.Message | Received) -> int:
        """Note a QoS 1 message in arrival order; its ticket for ``ack_in_order``."""
        ticket = self._next
        self._order[ticket] = [message.mid, _WAITING, time.monotonic()]
        self._next += 1
        return ticket

    def ack_in_order(self, ticket: int, message: aiomqtt.Message | Received) -> None:
        """Acknowledge a committed message once every older one is acknowledged (or held over ``hold_s``)."""
        entry = self._order.get(ticket)
        if entry is None:  # it was held too long: the younger ones went ahead, it goes now
            self._batched.add(message.mid)
            return
        entry[1] = _DONE
        if ticket == self._base:
            self._release()
        elif self._timer is None:  # an older one is not committed yet: look again when it is due
            self._timer = asyncio.get_running_loop().call_later(self.hold_s, self._due)

    def _release(self, now: float | None = None) -> None:
        """Send the acks of the committed messages at the head; skip a head held over ``hold_s`` (``_due``)."""
        order = self._order
        while self._base < self._next:
            mid, state, at = order[self._base]
            if state == _WAITING:
                if now is None or now - at < self.hold_s:
                    return
                self.ahead += 1
            else:
                self._batched.add(int(mid))
            del order[self._base]
            self._base += 1

    def _due(self) -> None:
        self._timer = None
        self._release(time.monotonic())
        if any(state == _DONE for _, state, _ in self._order.values()):  # still held behind a younger head
            self._timer = asyncio.get_running_loop().call_later(self.hold_s, self._due)

    def ack(self, message: aiomqtt.Message | Received) -> None:
        """Send the PUBACK of ``message`` on the connection it arrived on.

        A message of an earlier connection is never acked on a later one: its
        message id may be reused there; the broker redelivers it instead and the
        pipeline's identity check counts it once.
        """
        if message.qos == 0:
            return
        if message.qos == 1:  # the PUBACKs of one loop pass leave as one packet
            self._batched.add(message.mid)
            return
        rc = self._paho.ack(message.mid, message.qos)
        if rc != 0:
            self.failed += 1
