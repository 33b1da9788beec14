"""Acknowledge QoS 1/2 messages only after their durable commit.

aiomqtt acknowledges on receipt; paho (underneath) can be switched to manual
acknowledgement. Acks reach into aiomqtt's private paho client here, as the lean
reads (``lean.py``) and the PUBLISH fast path (``fastpath.py``) do on the receive
side; the adapter's tests run all three against a real Mosquitto.
"""

from __future__ import annotations

import logging

import aiomqtt

from usagehub.adapters.mqtt.fastpath import BatchedAcks, Received

log = logging.getLogger(__name__)


class ManualAck:
    """Manual PUBACK for one connection: create before connecting, ack after commit."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho = client._client
        self._paho.manual_ack_set(True)
        self._batched = BatchedAcks(self._paho)
        self.failed = 0

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
