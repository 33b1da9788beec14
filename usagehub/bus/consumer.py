"""A worker's side of the bus: one durable pull consumer per owned partition, acked only after commit.

Per partition, messages are fetched in stream order and submitted to the
pipeline in that order; a fetched batch is acked message by message once every
receipt of it has resolved, i.e. after the PostgreSQL COMMIT. A worker killed
before that leaves the messages unacked: the stream redelivers them after
``ack_wait_s`` to whichever worker owns the partition then, and event identity
in PostgreSQL drops what had been committed already.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from usagehub.adapters.base import Receipt, Sink
from usagehub.bus.codec import decode
from usagehub.bus.stream import BusSettings, consumer_config
from usagehub.core.events import RawMessage

log = logging.getLogger(__name__)


def owned_partitions(partitions: int, index: int, workers: int) -> list[int]:
    """The partitions worker ``index`` of ``workers`` owns: every ``workers``-th, starting at ``index``."""
    if not 0 <= index < workers:
        raise ValueError(f"worker index {index} is not in 0..{workers - 1}")
    return list(range(index, partitions, workers))


def _message_of(msg: Msg) -> RawMessage:
    """The RawMessage a bus message carries; bytes we cannot read are passed on whole, to be quarantined."""
    try:
        return decode(msg.data)
    except ValueError:
        return RawMessage(transport="bus", topic=msg.subject, payload=msg.data, received_at=datetime.now(UTC),
                          meta={"error": "not a bus message"})


class PartitionConsumer:
    """Feeds one partition into ``sink``: ``run`` fetches and submits, ``ack_loop`` acks after each commit."""

    def __init__(self, js: JetStreamContext, settings: BusSettings, partition: int, sink: Sink, *,
                 budget: asyncio.Semaphore | None = None, fetch_max: int = 250, inflight_batches: int = 2) -> None:
        """``budget``: messages a worker holds unacked over all its partitions (shared; bounds queueing)."""
        self.js, self.settings, self.partition, self.sink = js, settings, partition, sink
        self.fetch_max = fetch_max
        self.budget = budget or asyncio.Semaphore(fetch_max * inflight_batches)
        self._acks: asyncio.Queue[tuple[Sequence[asyncio.Future[Receipt]], Sequence[Msg]]] = asyncio.Queue(
            inflight_batches)
        self._held: dict[int, Msg] = {}  # fetched, not yet acked: kept alive with +WPI while they wait
        self.totals = {"fetched": 0, "acked": 0, "redelivered": 0}

    async def run(self) -> None:
        """Fetch and submit until cancelled; NATS errors (a node dying, a leader moving) are retried."""
        subject = self.settings.partition_subject(self.partition)
        delay, sub = 0.2, None
        while True:
            try:
                if sub is None:
                    sub = await self.js.pull_subscribe(subject, durable=self.settings.durable(self.partition),
                                                       stream=self.settings.stream,
                                                       config=consumer_config(self.settings, self.partition))
                    delay = 0.2
                try:
                    msgs = await sub.fetch(self.fetch_max, timeout=1.0)
                except TimeoutError:
                    continue
            except (NatsError, OSError) as err:
                log.warning("partition %d: %r; retrying in %.1fs", self.partition, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            await self._submit(msgs)

    async def _submit(self, msgs: list[Msg]) -> None:
        futures = []
        for msg in msgs:
            self._held[id(msg)] = msg
        for msg in msgs:
            await self.budget.acquire()
            if msg.metadata.num_delivered and msg.metadata.num_delivered > 1:
                self.totals["redelivered"] += 1
            futures.append(await self.sink.submit(_message_of(msg)))
        self.totals["fetched"] += len(msgs)
        await self._acks.put((futures, msgs))

    async def ack_loop(self) -> None:
        """Ack each submitted batch once its receipts resolved, in fetch order, until cancelled."""
        while True:
            futures, msgs = await self._acks.get()
            try:
                await self._settle(futures, msgs)
            finally:
                self._acks.task_done()

    async def _settle(self, futures: Sequence[asyncio.Future[Receipt]], msgs: Sequence[Msg]) -> None:
        results = await asyncio.gather(*futures, return_exceptions=True)
        for msg, result in zip(msgs, results, strict=True):
            self._held.pop(id(msg), None)
            self.budget.release()
            if isinstance(result, BaseException):
                continue  # not committed: no ack, the stream redelivers it after ack_wait
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
        """Wait until every submitted batch has been acked (at shutdown, after the pipeline drained)."""
        await self._acks.join()
