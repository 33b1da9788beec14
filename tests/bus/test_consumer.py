"""The continuous pull: messages reach the sink as they arrive, at most ``window`` unacked, acked only after commit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from usagehub.adapters.base import Outcome, Receipt
from usagehub.bus.codec import encode
from usagehub.bus.consumer import PartitionConsumer
from usagehub.bus.stream import BusSettings
from usagehub.core.events import RawMessage
from usagehub.runtime.natsd import NatsServer
from usagehub.runtime.worker import declare


class HoldingSink:
    """A pipeline stand-in that records what it was given and commits only when told (``commit``)."""

    def __init__(self) -> None:
        self.got: list[tuple[RawMessage, asyncio.Future[Receipt]]] = []

    async def submit(self, message: RawMessage) -> asyncio.Future[Receipt]:
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self.got.append((message, future))
        return future

    def commit(self, *, fail_topic: str | None = None) -> None:
        for message, future in self.got:
            if future.done():
                continue
            if message.topic == fail_topic:
                future.set_exception(RuntimeError("batch refused"))
            else:
                future.set_result(Receipt(outcome=Outcome.ACCEPTED, accepted=1))


def _message(i: int) -> bytes:
    return encode(RawMessage(transport="mqtt", topic=f"meters/m{i}/reading", payload=b"{}",
                             received_at=datetime(2026, 10, 1, tzinfo=UTC)))


async def _until(check: Callable[[], bool], within_s: float = 10) -> None:
    async with asyncio.timeout(within_s):
        while not check():  # noqa: ASYNC110 — polls state changed by the consumer's tasks
            await asyncio.sleep(0.02)


async def _pending(js: JetStreamContext, settings: BusSettings) -> tuple[int, int]:
    info = await js.consumer_info(settings.stream, settings.durable(0))
    return info.num_ack_pending, info.num_pending


async def test_pull_is_bounded_by_the_window_and_acks_only_committed_messages(nats_server: NatsServer) -> None:
    settings = BusSettings(servers=(nats_server.url,), partitions=1, ack_wait_s=1.5)
    nc, js = await declare(settings, name="test-consumer")
    sink = HoldingSink()
    consumer = PartitionConsumer(nc, js, settings, 0, sink, window=10, expires_s=1.0)
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(consumer.ack_loop())]
    try:
        for i in range(25):
            await js.publish(settings.partition_subject(0), _message(i), headers={"Nats-Msg-Id": f"id-{i}"})
        # Handed over as they come, but never more than the window while nothing commits.
        await _until(lambda: len(sink.got) == 10)
        await asyncio.sleep(0.3)
        assert len(sink.got) == 10
        assert [m.topic for m, _ in sink.got] == [f"meters/m{i}/reading" for i in range(10)]  # stream order
        assert await _pending(js, settings) == (10, 15)
        sink.commit(fail_topic="meters/m3/reading")  # m3's batch is refused: no ack for it
        await _until(lambda: len(sink.got) == 20)  # room again: the next ten, no more
        await asyncio.sleep(0.3)
        assert len(sink.got) == 20
        sink.commit()
        await _until(lambda: len(sink.got) == 25)
        sink.commit()
        await _until(lambda: consumer.totals["acked"] == 24)
        # The refused message is delivered again after ack_wait, and acked once it commits.
        await _until(lambda: len(sink.got) == 26)
        assert sink.got[-1][0].topic == "meters/m3/reading" and consumer.totals["redelivered"] == 1
        sink.commit()
        await _until(lambda: consumer.totals["acked"] == 25)
        await asyncio.sleep(0.1)
        assert await _pending(js, settings) == (0, 0)
    finally:
        await _stop(tasks, nc)


async def _stop(tasks: list[asyncio.Task[None]], nc: NATS) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await nc.close()


async def test_a_message_arriving_on_an_idle_partition_is_handed_over_at_once(nats_server: NatsServer) -> None:
    settings = BusSettings(servers=(nats_server.url,), partitions=1)
    nc, js = await declare(settings, name="test-consumer")
    sink = HoldingSink()
    consumer = PartitionConsumer(nc, js, settings, 0, sink, window=500, expires_s=30.0)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.sleep(0.5)  # the pull request for 250 is open and waiting
        started = asyncio.get_running_loop().time()
        for i in range(3):
            await js.publish(settings.partition_subject(0), _message(i), headers={"Nats-Msg-Id": f"id-{i}"})
            await _until(lambda i=i: len(sink.got) == i + 1, within_s=5)
        # Milliseconds each; a fetch that holds its batch until full or expired (nats-py's, with its 1 s wait
        # here before) takes at least 3 s, and a request for 250 expiring after 30 s never hands one over.
        assert asyncio.get_running_loop().time() - started < 2.5
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await nc.close()


async def test_a_deleted_consumer_is_declared_again(nats_server: NatsServer) -> None:
    settings = BusSettings(servers=(nats_server.url,), partitions=1)
    nc, js = await declare(settings, name="test-consumer")
    sink = HoldingSink()
    consumer = PartitionConsumer(nc, js, settings, 0, sink, window=10, expires_s=1.0)
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(consumer.ack_loop())]
    try:
        await js.publish(settings.partition_subject(0), _message(0), headers={"Nats-Msg-Id": "id-0"})
        await _until(lambda: len(sink.got) == 1)
        sink.commit()
        await _until(lambda: consumer.totals["acked"] == 1)
        await js.delete_consumer(settings.stream, settings.durable(0))  # an operator's mistake
        await js.publish(settings.partition_subject(0), _message(1), headers={"Nats-Msg-Id": "id-1"})
        # The open request died silently with it: noticed after expiry + 2 s, the consumer declared again
        # from the stream's start (the old message comes back: PostgreSQL identity drops it).
        await _until(lambda: [m.topic for m, _ in sink.got][-1] == "meters/m1/reading", within_s=8)
    finally:
        await _stop(tasks, nc)


async def test_refused_pull_requests_back_off(nats_server: NatsServer) -> None:
    settings = BusSettings(servers=(nats_server.url,), partitions=1)
    nc, js = await declare(settings, name="test-consumer")
    # A push consumer under the partition's durable name: every pull request is refused at once (409).
    await js.add_consumer(settings.stream, api.ConsumerConfig(
        durable_name=settings.durable(0), deliver_subject="elsewhere", ack_policy=api.AckPolicy.EXPLICIT))
    requests = 0

    async def count(_msg: Msg) -> None:
        nonlocal requests
        requests += 1

    spy = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{settings.stream}.{settings.durable(0)}", cb=count)
    consumer = PartitionConsumer(nc, js, settings, 0, HoldingSink(), window=10)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.sleep(1.6)
        assert 1 <= requests <= 5  # one every 0.5 s; without the back-off, thousands
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await spy.unsubscribe()
        await nc.close()
