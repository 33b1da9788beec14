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
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.errors import BadHeaderError, BadSubjectError, MaxPayloadError
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import PubAck

from usagehub import metrics
from usagehub.adapters.base import Outcome, Receipt
from usagehub.bus.codec import KeyOf, Route, device_key, encode, route
from usagehub.bus.stream import BusSettings
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage

log = logging.getLogger(__name__)

# Everything NATS raises while a node dies, a leader is elected or we reconnect is worth a retry; these are not.
_PERMANENT = (MaxPayloadError, BadSubjectError, BadHeaderError)


class BusPublisher:
    """Implements the adapters' Sink on an ingest node: ``submit`` publishes, the future resolves on PubAck."""

    def __init__(self, js: JetStreamContext, profiles: ProfileSet, settings: BusSettings, *,
                 max_inflight: int = 1024, key_of: KeyOf = device_key) -> None:
        """``key_of``: the partition key of a message's first event (the runtime routes by account)."""
        self.js, self.profiles, self.settings, self.key_of = js, profiles, settings, key_of
        self._slots = asyncio.Semaphore(max_inflight)
        self._unanswered: set[asyncio.Future[Receipt]] = set()
        self._retrying: set[asyncio.Task[None]] = set()
        self.totals = {"published": 0, "duplicates": 0, "retries": 0}
        self._failing = False  # log a failure once and its recovery once, not once per message
        self._logged_at = -1e9

    async def submit(self, message: RawMessage) -> asyncio.Future[Receipt]:
        """Publish ``message`` (waits while ``max_inflight`` publishes are unanswered); resolves on PubAck."""
        where = route(message, self.profiles, self.settings.partitions, self.key_of)
        data = encode(message)
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._unanswered.add(future)
        future.add_done_callback(self._unanswered.discard)
        metrics.MESSAGES_IN.labels(message.transport).inc()
        await self._send(where, data, future)
        return future

    async def flush(self) -> None:
        """Wait until every publish so far has its PubAck (at shutdown, before the adapters close)."""
        while self._unanswered:
            await asyncio.gather(*list(self._unanswered), return_exceptions=True)

    async def _send(self, where: Route, data: bytes, future: asyncio.Future[Receipt]) -> None:
        # No task per message: publish_async pipelines PubAcks on one reply subscription, a timer bounds the wait.
        await self._slots.acquire()
        try:
            pending = await self.js.publish_async(self.settings.partition_subject(where.partition), data,
                                                  stream=self.settings.stream, headers={"Nats-Msg-Id": where.msg_id})
        except _PERMANENT as err:  # refused for good: the device gets no ack
            self._slots.release()
            future.set_exception(err)
            return
        except (NatsError, OSError) as err:
            self._slots.release()
            self._retry(where, data, future, err)
            return
        timer = asyncio.get_running_loop().call_later(self.settings.publish_timeout_s, pending.cancel)
        pending.add_done_callback(lambda done: self._answered(done, timer, where, data, future))

    def _answered(self, done: asyncio.Future[PubAck], timer: asyncio.TimerHandle, where: Route, data: bytes,
                  future: asyncio.Future[Receipt]) -> None:
        timer.cancel()
        self._slots.release()
        if future.done():
            return
        if done.cancelled() or done.exception() is not None:
            # No PubAck: the stream may or may not hold it. The same Nats-Msg-Id makes the retry safe.
            self._retry(where, data, future, done.exception() if not done.cancelled() else TimeoutError())
            return
        ack = done.result()
        if self._failing:
            self._failing = False
            log.info("bus publish recovered")
        self.totals["published"] += 1
        self.totals["duplicates"] += bool(ack.duplicate)
        future.set_result(_receipt(where, bool(ack.duplicate)))

    def _retry(self, where: Route, data: bytes, future: asyncio.Future[Receipt], err: BaseException | None) -> None:
        self.totals["retries"] += 1
        now = time.monotonic()
        if not self._failing and now - self._logged_at > 30:
            log.warning("bus publish failed (%r); retrying with the same message ids", err)
            self._failing, self._logged_at = True, now

        async def again() -> None:
            await asyncio.sleep(0.2)
            await self._send(where, data, future)

        task = asyncio.create_task(again())
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)


def _receipt(where: Route, duplicate: bool) -> Receipt:
    if where.reason is not None:
        return Receipt(outcome=Outcome.QUARANTINED, reason=where.reason, device_id=where.device_id)
    if duplicate:
        return Receipt(outcome=Outcome.DUPLICATE, duplicates=where.events, device_id=where.device_id)
    return Receipt(outcome=Outcome.ACCEPTED, accepted=where.events, device_id=where.device_id)
