"""The ingest node's Sink: each RawMessage goes to its partition of the stream; the receipt follows the PubAck.

Acknowledgement choice: an adapter acknowledges its device when the stream's
PubAck arrives. The stream is file-backed (and replicated R=3 in a cluster, so
the PubAck means a quorum stored the message); the message stays in it until a
worker has committed it to PostgreSQL and acked, and a publish that got no
PubAck is retried with the same ``Nats-Msg-Id``. Nothing is lost (the device
resends until PubAck; the stream keeps it until the commit) and nothing counts
twice (the stream drops resends inside its duplicate window, PostgreSQL's event
identity drops everything else). The receipt cannot know what the worker will
decide later: an unknown device or a duplicate older than the window is still
"accepted" here and is quarantined or dropped by the worker.

Where a message is decoded: the worker decodes every message (with the device's
registered profile) and quarantines what does not decode, with its bytes. The
ingest node routes without decoding (``bus.codec.route``), except for the doors
whose answer to the device carries the decoder's verdict or counts — HTTP (lines
accepted, errors), CoAP (4.00 for an undecodable body), imported files and binary
frames (DC-09 NAK/DUH): those are decoded here too, as before, so their answers
stay what the single process gives.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import BadHeaderError, BadSubjectError, MaxPayloadError
from nats.errors import Error as NatsError
from prometheus_client import Counter

from usagehub import metrics
from usagehub.adapters.base import Outcome, Receipt
from usagehub.bus.codec import BY_DEVICE, Route, Router, encode, route
from usagehub.bus.stream import BusSettings
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage

log = logging.getLogger(__name__)

# Everything NATS raises while a node dies, a leader is elected or we reconnect is worth a retry; these are not.
_PERMANENT = (MaxPayloadError, BadSubjectError, BadHeaderError)
# Doors whose reply carries the decoder's verdict (HTTP counts and errors, CoAP 4.00, import summaries, DC-09 NAK).
DECODED_AT_INGEST = frozenset({"http", "coap", "file", "binary"})


@dataclass(slots=True)
class _Publish:
    """One message on its way to the stream: sent, waiting for its PubAck until ``deadline``."""

    where: Route
    data: bytes
    future: asyncio.Future[Receipt]
    deadline: float = 0.0


class BusPublisher:
    """Implements the adapters' Sink on an ingest node: ``submit`` publishes, the future resolves on PubAck.

    PubAcks are awaited asynchronously, up to ``max_inflight`` at once, on one reply
    subscription (a window of pending PubAcks, not one round trip per message); one
    sweeper retries those unanswered after ``publish_timeout_s`` (no timer per message).
    """

    def __init__(self, nc: Client, profiles: ProfileSet, settings: BusSettings, *,
                 max_inflight: int = 1024, router: Router = BY_DEVICE,
                 decode_at_ingest: frozenset[str] = DECODED_AT_INGEST) -> None:
        """``router``: partition keys (the runtime routes by account); ``decode_at_ingest``: transports whose
        messages are decoded here for an exact receipt (the others are routed without decoding)."""
        self.nc, self.profiles, self.settings, self.router = nc, profiles, settings, router
        self.decode_at_ingest = decode_at_ingest
        self.max_inflight = max_inflight
        self._pending: dict[str, _Publish] = {}  # reply token -> publish; insertion order = deadline order
        self._room = asyncio.Event()
        self._room.set()
        self._tokens = itertools.count()
        self._prefix = ""
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._unanswered: set[asyncio.Future[Receipt]] = set()
        self._retrying: set[asyncio.Task[None]] = set()
        self._counters: dict[str, Counter] = {}
        self._headers = {"Nats-Expected-Stream": settings.stream}
        self.totals = {"published": 0, "duplicates": 0, "retries": 0}
        self._failing = False  # log a failure once and its recovery once, not once per message
        self._logged_at = -1e9

    async def submit(self, message: RawMessage) -> asyncio.Future[Receipt]:
        """Publish ``message`` (waits while ``max_inflight`` publishes are unanswered); resolves on PubAck."""
        where = route(message, self.profiles, self.settings.partitions, self.router,
                      full=message.transport in self.decode_at_ingest)
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._unanswered.add(future)
        future.add_done_callback(self._unanswered.discard)
        counter = self._counters.get(message.transport)
        if counter is None:
            counter = self._counters[message.transport] = metrics.MESSAGES_IN.labels(message.transport)
        counter.inc()
        await self._send(_Publish(where, encode(message), future))
        return future

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every publish so far has its PubAck (at shutdown, before the adapters close).

        Bounded: what has no PubAck after ``timeout_s`` was never acknowledged to its device either,
        so the device (or its broker) sends it again to the next start; a stop never hangs on it.
        """
        try:
            async with asyncio.timeout(timeout_s):
                while self._unanswered:
                    await asyncio.gather(*list(self._unanswered), return_exceptions=True)
        except TimeoutError:
            log.warning("%d publishes without a PubAck %.0f s into the stop: their devices were not "
                        "acknowledged and send them again", len(self._unanswered), timeout_s)
        await self.close()

    async def close(self) -> None:
        """Stop the sweeper and the PubAck subscription (what is unanswered stays unanswered)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except NatsError:
                log.debug("PubAck subscription already gone")

    async def _start(self) -> None:
        prefix = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(prefix + ".*", cb=self._on_puback)
        self._prefix = prefix + "."
        self._sweeper = asyncio.create_task(self._sweep(), name="bus-puback-sweeper")

    async def _send(self, p: _Publish) -> None:
        while len(self._pending) >= self.max_inflight:
            self._room.clear()
            await self._room.wait()
        if self._sub is None:
            await self._start()
        token = str(next(self._tokens))
        p.deadline = time.monotonic() + self.settings.publish_timeout_s
        self._pending[token] = p
        headers = {**self._headers, "Nats-Msg-Id": p.where.msg_id}
        try:
            await self.nc.publish(self.settings.partition_subject(p.where.partition), p.data,
                                  reply=self._prefix + token, headers=headers)
        except _PERMANENT as err:  # refused for good: the device gets no ack
            self._forget(token)
            if not p.future.done():
                p.future.set_exception(err)
        except (NatsError, OSError) as err:
            self._forget(token)
            self._retry(p, err)

    def _forget(self, token: str) -> _Publish | None:
        p = self._pending.pop(token, None)
        if len(self._pending) < self.max_inflight:
            self._room.set()
        return p

    async def _on_puback(self, msg: Msg) -> None:
        p = self._forget(msg.subject[len(self._prefix):])
        if p is None or p.future.done():  # answered after its timeout: the retry's answer counts
            return
        try:
            ack = orjson.loads(msg.data)  # {"stream", "seq", "duplicate"?} or {"error": {...}}
        except orjson.JSONDecodeError:  # a status instead (503: no stream responded)
            ack = None
        if not isinstance(ack, dict) or "error" in ack or "seq" not in ack:
            # No PubAck: the stream may or may not hold it. The same Nats-Msg-Id makes the retry safe.
            self._retry(p, RuntimeError(f"no PubAck: {msg.headers or msg.data[:200]!r}"))
            return
        if self._failing:
            self._failing = False
            log.info("bus publish recovered")
        duplicate = bool(ack.get("duplicate"))
        self.totals["published"] += 1
        self.totals["duplicates"] += duplicate
        p.future.set_result(_receipt(p.where, duplicate))

    async def _sweep(self) -> None:
        """Until cancelled: retry what got no PubAck in time (the oldest first; deadlines follow send order)."""
        every = min(0.5, self.settings.publish_timeout_s / 2)
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            late = []
            for token, p in self._pending.items():
                if p.deadline > now:
                    break
                late.append(token)
            for token in late:
                unanswered = self._forget(token)
                if unanswered is not None and not unanswered.future.done():
                    self._retry(unanswered, TimeoutError())

    def _retry(self, p: _Publish, err: BaseException | None) -> None:
        self.totals["retries"] += 1
        now = time.monotonic()
        if not self._failing and now - self._logged_at > 30:
            log.warning("bus publish failed (%r); retrying with the same message ids", err)
            self._failing, self._logged_at = True, now

        async def again() -> None:
            await asyncio.sleep(0.2)
            await self._send(p)

        task = asyncio.create_task(again())
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)


def _receipt(where: Route, duplicate: bool) -> Receipt:
    if where.reason is not None:
        return Receipt(outcome=Outcome.QUARANTINED, reason=where.reason, device_id=where.device_id)
    # Routed without decoding (where.decoded False): events counted 0, the worker decides what it holds.
    if duplicate:
        return Receipt(outcome=Outcome.DUPLICATE, duplicates=where.events, device_id=where.device_id)
    return Receipt(outcome=Outcome.ACCEPTED, accepted=where.events, device_id=where.device_id)
