"""A worker's side of the bus: one durable pull consumer per owned partition, acked only after commit.

Per partition, a pull request for ``window // 2`` messages is kept open on the
stream, and each message is submitted to the pipeline the moment it arrives, in
stream order (a continuous pull, like nats.go's ``Consume``; nats-py's ``fetch``
held a batch back until it was full or its wait expired, which added up to a
second per batch). The next request goes out once the partition holds fewer than
``window`` messages unacked, so a slow commit pushes back on the stream instead
of filling memory. Each message is acked once its receipt resolved, i.e. after
the PostgreSQL COMMIT. A worker killed before that leaves the messages unacked:
the stream redelivers them after ``ack_wait_s`` to whichever worker owns the
partition then, and event identity in PostgreSQL drops what had been committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from usagehub.adapters.base import Receipt, Sink
from usagehub.bus.codec import decode
from usagehub.bus.stream import BusSettings, consumer_config
from usagehub.core.events import RawMessage

log = logging.getLogger(__name__)

_HEARTBEAT = "100"  # a status the server sends on an idle pull request; every other status ends the request
_EXPIRED = "408"  # the request's ``expires`` passed (or it was filled in part): the normal end of an idle one


def owned_partitions(partitions: int, index: int, workers: int) -> list[int]:
    """The partitions worker ``index`` of ``workers`` owns: every ``workers``-th, starting at ``index``."""
    if not 0 <= index < workers:
        raise ValueError(f"worker index {index} is not in 0..{workers - 1}")
    return list(range(index, partitions, workers))


def _deliveries(msg: Msg) -> int:
    """How often the stream delivered ``msg``, read from its reply subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``; nats-py's
    ``msg.metadata`` parses every field (and converts the time) for this one number: 17 % of the worker's
    per-message bus work (py-spy). Other layouts (with a JetStream domain) are left to nats-py.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[4].isdigit():
        return int(tokens[4])
    return msg.metadata.num_delivered or 1


def _message_of(msg: Msg) -> RawMessage:
    """The RawMessage a bus message carries; bytes we cannot read are passed on whole, to be quarantined."""
    try:
        return decode(msg.data)
    except ValueError:
        return RawMessage(transport="bus", topic=msg.subject, payload=msg.data, received_at=datetime.now(UTC),
                          meta={"error": "not a bus message"})


class PartitionConsumer:
    """Feeds one partition into ``sink``: ``run`` pulls and submits, ``ack_loop`` acks after each commit."""

    def __init__(self, nc: Client, js: JetStreamContext, settings: BusSettings, partition: int, sink: Sink, *,
                 window: int = 500, expires_s: float = 3.0) -> None:
        """``window``: messages this partition may hold unacked (pulled in requests of half of it)."""
        self.nc, self.js, self.settings, self.partition, self.sink = nc, js, settings, partition, sink
        self.window, self.batch, self.expires_s = max(2, window), max(1, window // 2), expires_s
        self._acks: asyncio.Queue[tuple[asyncio.Future[Receipt], Msg] | None] = asyncio.Queue()
        self._held: dict[int, Msg] = {}  # delivered, not yet acked: kept alive with +WPI while they wait
        self._unacked = 0       # delivered and not yet acked (or given up)
        self._room = asyncio.Event()
        self._room.set()
        self._request_left = 0  # messages the open pull request may still deliver
        self._ended_by: str | None = None  # the status that ended the last request (None: it was filled)
        self._request_over = asyncio.Event()
        self._refused = False  # the last requests were refused (logged once, and once when served again)
        self.totals = {"fetched": 0, "acked": 0, "redelivered": 0}

    async def _ensure_consumer(self) -> None:
        try:
            await self.js.consumer_info(self.settings.stream, self.settings.durable(self.partition))
        except NotFoundError:
            await self.js.add_consumer(self.settings.stream, consumer_config(self.settings, self.partition))

    async def run(self) -> None:
        """Pull and submit until cancelled; NATS errors (a node dying, a leader moving) are retried."""
        delay = 0.2
        while True:
            sub = None
            try:
                await self._ensure_consumer()
                sub = await self.nc.subscribe(self.nc.new_inbox(), cb=self._on_message,
                                              pending_msgs_limit=4 * self.window + 64)
                delay = 0.2
                await self._pull(sub.subject)
            except (NatsError, OSError, TimeoutError) as err:
                log.warning("partition %d: %r; retrying in %.1fs", self.partition, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if sub is not None:
                    await _quietly_unsubscribe(sub)

    async def _pull(self, inbox: str) -> None:
        """Keep one pull request open while there is room; returns (to resubscribe) if requests go unanswered."""
        stream, durable = self.settings.stream, self.settings.durable(self.partition)
        subject = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        expires_ns = int(self.expires_s * 1e9)
        while True:
            while self._unacked + self.batch > self.window:
                self._room.clear()
                await self._room.wait()
            self._request_left, self._ended_by = self.batch, None
            self._request_over.clear()
            await self.nc.publish(subject, orjson.dumps({"batch": self.batch, "expires": expires_ns}), reply=inbox)
            try:  # the server ends every request (408 at expiry) — unless the connection dropped it
                async with asyncio.timeout(self.expires_s + 2):
                    await self._request_over.wait()
            except TimeoutError:
                log.debug("partition %d: pull request unanswered; resubscribing", self.partition)
                return
            if self._ended_by not in (None, _EXPIRED) and self._request_left == self.batch:
                # Refused outright (409: consumer deleted, leader moving, too many requests…): not a busy
                # loop of requests; back off, then check the consumer and subscribe again. Logged once.
                if not self._refused:
                    log.warning("partition %d: pull requests refused (status %s); retrying every 0.5 s",
                                self.partition, self._ended_by)
                self._refused = True
                await asyncio.sleep(0.5)
                return
            if self._refused and self._request_left < self.batch:
                log.info("partition %d: pull requests served again", self.partition)
                self._refused = False

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get(api.Header.STATUS) if msg.headers else None
        if status is not None:
            if status != _HEARTBEAT:  # 408 expired, 409 leadership change or limits, 404: this request is over
                self._ended_by = status
                self._request_over.set()
            return
        self._request_left -= 1
        if self._request_left <= 0:
            self._request_over.set()
        if not msg.reply:  # not from a consumer: nothing to ack
            return
        self._unacked += 1
        self._held[id(msg)] = msg
        if _deliveries(msg) > 1:
            self.totals["redelivered"] += 1
        self.totals["fetched"] += 1
        self._acks.put_nowait((await self.sink.submit(_message_of(msg)), msg))

    async def ack_loop(self) -> None:
        """Ack each message once its receipt resolved, in stream order, until cancelled."""
        while True:
            item = await self._acks.get()
            try:
                if item is not None:
                    await self._settle(*item)
            finally:
                self._acks.task_done()

    async def _settle(self, future: asyncio.Future[Receipt], msg: Msg) -> None:
        try:
            await future
        except Exception:  # not committed: no ack, the stream redelivers it after ack_wait
            committed = False
        else:
            committed = True
        self._held.pop(id(msg), None)
        self._unacked -= 1
        if self._unacked + self.batch <= self.window:
            self._room.set()
        if not committed:
            return
        try:
            await msg.ack()
            self.totals["acked"] += 1
        except NatsError as err:  # the connection is down: redelivered later, identity drops the copy
            log.debug("partition %d: ack failed: %r", self.partition, err)

    async def keep_alive(self) -> None:
        """Until cancelled: tell the stream that held messages are still being worked on (+WPI).

        A message waiting behind a slow commit is then not redelivered while this
        worker lives; when the worker dies the keep-alives stop and ``ack_wait_s``
        later the stream redelivers.
        """
        every = self.settings.ack_wait_s / 3
        while True:
            await asyncio.sleep(every)
            for msg in list(self._held.values()):
                try:
                    await msg.in_progress()
                except NatsError:  # disconnected: the message may be redelivered; identity drops the copy
                    break

    async def settled(self) -> None:
        """Wait until every submitted message has been acked (at shutdown, after the pipeline drained)."""
        await self._acks.join()


async def _quietly_unsubscribe(sub: Subscription) -> None:
    with contextlib.suppress(Exception):
        await sub.unsubscribe()
