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

from nats.errors import BadHeaderError, BadSubjectError, MaxPayloadError
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from usagehub import metrics
from usagehub.adapters.base import Outcome, Receipt
from usagehub.bus.codec import Route, encode, route
from usagehub.bus.stream import BusSettings
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage

log = logging.getLogger(__name__)

# Everything NATS raises while a node dies, a leader is elected or we reconnect is worth a retry; these are not.
_PERMANENT = (MaxPayloadError, BadSubjectError, BadHeaderError)


class BusPublisher:
    """Implements the adapters' Sink on an ingest node: ``submit`` publishes, the future resolves on PubAck."""

    def __init__(self, js: JetStreamContext, profiles: ProfileSet, settings: BusSettings, *,
                 max_inflight: int = 4096) -> None:
        self.js, self.profiles, self.settings = js, profiles, settings
        self._slots = asyncio.Semaphore(max_inflight)
        self._tasks: set[asyncio.Task[None]] = set()
        self.totals = {"published": 0, "duplicates": 0, "retries": 0}
        self._failing = False  # log a failure once and its recovery once, not once per message

    async def submit(self, message: RawMessage) -> asyncio.Future[Receipt]:
        """Publish ``message`` (waits while ``max_inflight`` publishes are unanswered); resolves on PubAck."""
        await self._slots.acquire()
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        try:
            where = route(message, self.profiles, self.settings.partitions)
            data = encode(message)
        except BaseException:
            self._slots.release()
            raise
        metrics.MESSAGES_IN.labels(message.transport).inc()
        task = asyncio.create_task(self._publish(where, data, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return future

    async def flush(self) -> None:
        """Wait until every publish so far has its PubAck (at shutdown, before the adapters close)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _publish(self, where: Route, data: bytes, future: asyncio.Future[Receipt]) -> None:
        subject = self.settings.partition_subject(where.partition)
        headers = {"Nats-Msg-Id": where.msg_id}
        delay = 0.1
        try:
            while True:
                try:
                    ack = await self.js.publish(subject, data, timeout=self.settings.publish_timeout_s,
                                                stream=self.settings.stream, headers=dict(headers))
                    break
                except _PERMANENT:
                    raise
                except (NatsError, TimeoutError, OSError) as err:
                    # No PubAck: the stream may or may not hold it. The same Nats-Msg-Id makes the retry safe.
                    self.totals["retries"] += 1
                    if not self._failing:
                        log.warning("bus publish failed (%r); retrying with the same message ids", err)
                        self._failing = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            if self._failing:
                self._failing = False
                log.info("bus publish recovered")
            self.totals["published"] += 1
            self.totals["duplicates"] += bool(ack.duplicate)
            if not future.done():
                future.set_result(_receipt(where, bool(ack.duplicate)))
        except asyncio.CancelledError:  # shutting down: the device gets no ack and resends
            future.cancel()
            raise
        except Exception as err:  # a permanent refusal: the device gets no ack
            if not future.done():
                future.set_exception(err)
        finally:
            self._slots.release()


def _receipt(where: Route, duplicate: bool) -> Receipt:
    if where.reason is not None:
        return Receipt(outcome=Outcome.QUARANTINED, reason=where.reason, device_id=where.device_id)
    if duplicate:
        return Receipt(outcome=Outcome.DUPLICATE, duplicates=where.events, device_id=where.device_id)
    return Receipt(outcome=Outcome.ACCEPTED, accepted=where.events, device_id=where.device_id)
