"""The ingest pipeline: batches raw messages, decodes them by profile and commits them exactly once.

A batch is written in one transaction — new events (identity-checked), what
later stages derive from them (batch hooks: usage, sessions, balances) and the
quarantine rows — and only after COMMIT does each submitter's future resolve
(``submit``) or its callback run (``offer``, the MQTT adapter's PUBACK), which is
when adapters acknowledge their senders.

Messages are spread over ``commit_lanes`` lanes by sender (device, else topic; ``lane_key``), each
with its own queue and one batch in flight, so one lane's Python work overlaps the
other's round trips to PostgreSQL. A gateway's messages (devices named in the payload) go by the
gateway: its messages keep their order in one lane, and gateways spread over the lanes. A meter
reached through two gateways may then be written by two lanes: they wait for each other's locks,
never deadlock, since lanes take their locks in one order (devices, meters, accounts, balances;
each sorted), as two hubs on one database do.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from usagehub import metrics
from usagehub.adapters.base import Outcome, Receipt
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage, UsageEvent
from usagehub.errors import StorageError, StorageUnavailable
from usagehub.pipeline import memory
from usagehub.pipeline.identity import Entitlements
from usagehub.pipeline.routes import TopicRoutes
from usagehub.storage.events import (
    EventKey,
    QuarantineItem,
    event_key,
    insert_quarantine,
)
from usagehub.storage.events_direct import DirectInserts
from usagehub.storage.ingest_totals import add_totals, read_totals
from usagehub.storage.partitions import Partitions
from usagehub.storage.pool import Connection, mapped_errors
from usagehub.storage.registry import KnownDevices

log = logging.getLogger(__name__)

BatchHook = Callable[[Connection, Sequence[UsageEvent]], Awaitable[None]]
Listener = Callable[[Sequence[UsageEvent]], None]




@dataclass(slots=True)
class _Item:
    message: RawMessage
    future: asyncio.Future[Receipt] | None  # submit(): resolved with the receipt after commit
    stored: Callable[[], None] | None = None  # offer(): called after commit instead (no receipt built)
    events: Sequence[UsageEvent] = ()  # set by decoding
    quarantine: QuarantineItem | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineSettings:
    """Batching knobs: a batch closes at ``batch_max_messages`` or after ``batch_max_wait_ms``."""

    batch_max_messages: int = 2000
    batch_max_wait_ms: float = 20.0
    # Gateway messages carry many readings: bound a batch by bytes too, so one batch never holds the event loop
    # (and the MQTT keepalive) for long. It also sets how long a received gateway reading waits: an ingest
    # process holds (lanes + 1) batches by bytes. bench/ingest.py's gateway case (messages of 50 readings,
    # ~4.3 KB), alternated: 512 KiB p99 1.0-1.55 s, 256 KiB 0.68-0.71 s at the same rate, 128 KiB 0.6-0.7 s
    # at a tenth less (docs/architecture.md, "Per-reading CPU, fifth pass").
    batch_max_bytes: int = 256 * 1024
    # Read-ahead: about two full batches per lane wait here; past that the adapters wait (MQTT leaves the rest
    # with the broker, unacknowledged) instead of holding tens of thousands of messages in the process.
    queue_max_messages: int = 8_000
    retry_max_s: float = 10.0
    # Faults: a batch waiting this long for a lock gives up and retries (logged, counted), and
    # messages waiting this long with no commit make the pipeline "stalled" (metrics, /readyz).
    lock_timeout_ms: int = 5000
    stall_after_s: float = 30.0
    totals_node: str = "hub"  # the row of ingest_totals this pipeline adds to
    trim_after_bytes: int = 1 << 20  # after a batch this large, freed memory goes back to the OS
    commit_lanes: int = 4  # batches in flight at once, one per lane; messages of one sender share a lane


@dataclass(slots=True)
class _Lane:
    """One queue of messages and the batch of it being committed."""

    index: int
    queue: asyncio.Queue[_Item]
    totals_node: str
    inflight: asyncio.Future[None] | None = None
    pending: list[_Item] = field(default_factory=list)  # taken off the queue when a cancel arrived
    waiting_since: float | None = None  # monotonic time since messages wait with no commit


class Pipeline:
    """Implements the adapters' Sink: ``submit`` enqueues, ``run`` commits batches."""

    def __init__(self, pool: AsyncConnectionPool, profiles: ProfileSet, devices: KnownDevices,
                 settings: PipelineSettings | None = None) -> None:
        self.pool, self.profiles, self.devices = pool, profiles, devices
        self.settings = settings or PipelineSettings()
        lanes = max(1, self.settings.commit_lanes)
        self._lanes = [_Lane(i, asyncio.Queue(max(1, self.settings.queue_max_messages // lanes)),
                             self.settings.totals_node if i == 0 else f"{self.settings.totals_node}/{i}")
                       for i in range(lanes)]
        self.partitions = Partitions(pool)
        self.hooks: list[BatchHook] = []
        self.listeners: list[Listener] = []
        self.totals = {"messages": 0, "accepted": 0, "duplicates": 0, "quarantined": 0, "batches": 0}
        self.batches_observed: list[tuple[float, int]] | None = None  # (commit seconds, messages) when kept
        self._in_counters: dict[str, Any] = {}
        self._in_counts: dict[str, int] = {}  # received since the last batch was taken
        self._routes = TopicRoutes(profiles, self._route)  # a topic's lane, remembered
        self.identity = Entitlements(pool, profiles)
        self.inserts = DirectInserts()
        self._totals_loaded = False
        self._in_flight = 0  # messages of batches being committed (retried) now
        metrics.COMMIT_WAIT.set_function(self.commit_wait_s)
        metrics.STALLED.set_function(lambda: float(self.stalled))

    def commit_wait_s(self) -> float:
        """Seconds messages have waited with no commit in between (0 when nothing waits)."""
        waiting = [lane.waiting_since for lane in self._lanes if lane.waiting_since is not None]
        return time.monotonic() - min(waiting) if waiting else 0.0

    @property
    def stalled(self) -> bool:
        """Whether messages have waited longer than ``stall_after_s`` with no commit."""
        return self.commit_wait_s() > self.settings.stall_after_s

    async def submit(self, message: RawMessage) -> asyncio.Future[Receipt]:
        """Enqueue ``message``; the future resolves with its receipt after the batch commits."""
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        await self._enqueue(_Item(message, future))
        return future

    async def offer(self, message: RawMessage, stored: Callable[[], None] | None) -> None:
        """Enqueue ``message``; ``stored`` is called once its batch has committed (never if it did not).

        For adapters that only need to know when to acknowledge (MQTT): no future, no receipt and no
        loop callback per message; ``stored`` runs inside the pipeline right after the commit.
        """
        await self._enqueue(_Item(message, None, stored))

    def offer_nowait(self, message: RawMessage, stored: Callable[[], None] | None) -> bool:
        """``offer`` without waiting: False (nothing enqueued) when the message's lane is full, then ``offer``.

        The receive path's common case, with no coroutine per message.
        """
        lane = self._lane_of(message)
        if lane.queue.full():
            return False
        self._put(lane, _Item(message, None, stored))
        return True

    def _lane_of(self, message: RawMessage) -> _Lane:
        lanes = self._lanes
        return lanes[0] if len(lanes) == 1 else self._routes(message)

    def _route(self, message: RawMessage) -> _Lane:
        return self._lanes[lane_index(self.identity.lane_key(message), len(self._lanes))]

    async def _enqueue(self, item: _Item) -> None:
        lane = self._lane_of(item.message)
        if lane.queue.full():
            await lane.queue.put(item)  # waits for room
            self._received(lane, item.message.transport)
        else:
            self._put(lane, item)

    def _put(self, lane: _Lane, item: _Item) -> None:
        lane.queue.put_nowait(item)
        self._received(lane, item.message.transport)

    def _received(self, lane: _Lane, transport: str) -> None:
        """A message joined ``lane``: its wait starts (if none did), and it is counted in."""
        if lane.waiting_since is None:
            lane.waiting_since = time.monotonic()
        counts = self._in_counts
        counts[transport] = counts.get(transport, 0) + 1  # to /metrics once per batch (_flush_counts)

    def _flush_counts(self) -> None:
        counts = self._in_counts
        for transport, n in counts.items():
            counter = self._in_counters.get(transport)
            if counter is None:
                counter = self._in_counters[transport] = metrics.MESSAGES_IN.labels(transport)
            counter.inc(n)
        counts.clear()

    async def run(self) -> None:
        """Commit batches until cancelled; on cancel, the batch in hand is finished first."""
        memory.bound_heap()  # large messages get their own mappings, returned when freed
        memory.tune_collector()
        await self._load_totals()
        async with asyncio.TaskGroup() as group:
            group.create_task(self.identity.facts.listen(), name="pipeline-registry")
            for lane in self._lanes:
                group.create_task(self._run_lane(lane), name=f"pipeline-lane-{lane.index}")

    async def _run_lane(self, lane: _Lane) -> None:
        while True:
            batch = await self._collect(lane)
            # Its own task: the batch hooks' per-batch state (context variables) stays with this batch.
            lane.inflight = asyncio.ensure_future(self._commit_with_retry(lane, batch))
            del batch  # while the next batch is awaited, the last one (maybe large messages) must not stay alive
            await asyncio.shield(lane.inflight)

    async def _load_totals(self) -> None:
        """Continue the durable totals (ingestStats, /metrics) from the database (once per pipeline)."""
        if self._totals_loaded:
            return
        try:
            async with mapped_errors():
                stored = await read_totals(self.pool)
        except StorageError as err:  # counted from zero in memory until the next start; the DB stays exact
            log.warning("ingest totals not loaded (%s)", err)
            return
        self._totals_loaded = True
        for kind, value in stored.items():  # the database already holds what this pipeline committed
            self.totals[kind] = value
            metrics.STORED_TOTAL.labels(kind).set(self.totals[kind])

    async def drain(self, timeout_s: float | None = None) -> int:
        """Commit everything received so far (at shutdown, after adapters stop and ``run`` is cancelled).

        With ``timeout_s``, give up after that long (a database that does not come back must not keep a
        stopping process alive): what was not committed is not acknowledged, so senders and brokers
        deliver it again. Returns the number of messages left uncommitted.
        """
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(self._drain_lane(lane) for lane in self._lanes))
        except TimeoutError:
            left = sum(len(lane.pending) + lane.queue.qsize() for lane in self._lanes) + self._in_flight
            log.warning("stopping with about %d messages not stored after %.0f s (storage does not answer); they were "
                        "not acknowledged and will be delivered again", left, timeout_s)
            return left
        return 0

    async def _drain_lane(self, lane: _Lane) -> None:
        if lane.inflight is not None:
            await asyncio.gather(lane.inflight, return_exceptions=True)
        if lane.pending:
            batch, lane.pending = lane.pending, []
            await self._commit_with_retry(lane, batch)
        queue = lane.queue
        while not queue.empty():
            batch = [queue.get_nowait() for _ in range(min(queue.qsize(), self.settings.batch_max_messages))]
            await self._commit_with_retry(lane, batch)

    def queue_depth(self) -> int:
        """Messages received and not yet taken into a batch."""
        return sum(lane.queue.qsize() for lane in self._lanes)

    async def _collect(self, lane: _Lane) -> list[_Item]:
        first = await lane.queue.get()
        batch = [first]
        try:
            return await self._fill(lane.queue, batch)
        except asyncio.CancelledError:
            lane.pending = batch  # not lost: drain() commits them
            raise

    async def _fill(self, queue: asyncio.Queue[_Item], batch: list[_Item]) -> list[_Item]:
        deadline = time.monotonic() + self.settings.batch_max_wait_ms / 1000
        limit, max_bytes = self.settings.batch_max_messages, self.settings.batch_max_bytes
        size = len(batch[0].message.payload)
        while len(batch) < limit and size < max_bytes:
            while len(batch) < limit and size < max_bytes and not queue.empty():
                item = queue.get_nowait()
                batch.append(item)
                size += len(item.message.payload)
            remaining = deadline - time.monotonic()
            if len(batch) >= limit or size >= max_bytes or remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    item = await queue.get()
            except TimeoutError:
                break
            batch.append(item)
            size += len(item.message.payload)
        metrics.QUEUE_DEPTH.set(self.queue_depth())
        self._flush_counts()
        return batch

    async def _commit_with_retry(self, lane: _Lane, batch: list[_Item]) -> None:
        self._in_flight += len(batch)
        await self._commit_batch(lane, batch)
        self._in_flight -= len(batch)  # not when cancelled (a stop): then they stay counted as left

    async def _commit_batch(self, lane: _Lane, batch: list[_Item]) -> None:
        delay = 0.2
        while True:
            try:
                await self._decode(batch)  # asks the registry: a database outage is retried like a commit
                await self._commit(lane, batch)
                return
            except StorageUnavailable as err:
                metrics.BATCH_RETRIES.inc()
                log.warning("batch of %d messages not stored (%s); retrying in %.1fs", len(batch), err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
            except StorageError as err:
                if len(batch) == 1:
                    await self._quarantine_after_refusal(lane, batch[0], err)
                    return
                # One message the database refuses must not hold back the others: split and retry.
                half = len(batch) // 2
                await self._commit_batch(lane, batch[:half])
                await self._commit_batch(lane, batch[half:])
                return

    async def _decode(self, batch: list[_Item]) -> None:
        # The registered profile decodes; readings the sender may not write are quarantined (identity.py).
        await self.identity.decode([item for item in batch if not (item.events or item.quarantine)])

    async def _commit(self, lane: _Lane, batch: list[_Item]) -> None:
        started = time.perf_counter()
        events = [e for item in batch for e in item.events]
        quarantine = [item.quarantine for item in batch if item.quarantine]
        async with mapped_errors():
            await self.partitions.ensure_for(e.ts for e in events)  # outside the batch transaction
            async with self.pool.connection() as conn, conn.transaction():
                # No lock held by a reader or a billing system stalls ingest silently: give up and retry.
                await conn.execute("SELECT set_config('lock_timeout', %s, true)",
                                   (f"{self.settings.lock_timeout_ms}ms",))
                new_keys = await self.inserts.insert(conn, events)
                new_events = _first_claims(events, new_keys)
                for hook in self.hooks:
                    await hook(conn, new_events)
                q_ids = await insert_quarantine(conn, quarantine)
                await add_totals(conn, lane.totals_node, {
                    "messages": len(batch), "accepted": len(new_keys), "duplicates": len(events) - len(new_keys),
                    "quarantined": len(quarantine), "batches": 1})
        self.inserts.committed(new_keys)
        lane.waiting_since = time.monotonic() if not lane.queue.empty() else None
        seconds = time.perf_counter() - started
        metrics.COMMIT_SECONDS.observe(seconds)
        metrics.BATCH_SIZE.observe(len(batch))
        kept = self.batches_observed  # an ingest process relays them to the hub's histograms
        if kept is not None and len(kept) < 10_000:  # bounded, should its reports stop
            kept.append((seconds, len(batch)))
        self._resolve(batch, new_keys, q_ids)
        if sum(len(item.message.payload) for item in batch) >= self.settings.trim_after_bytes:
            memory.trim()  # large messages must not leave the process large
        for listener in self.listeners:
            listener(new_events)

    def _resolve(self, batch: list[_Item], new_keys: set[EventKey], q_ids: list[int]) -> None:
        q_iter = iter(q_ids)
        accepted = duplicates = quarantined = 0
        # Every event a new identity (the common case): no event needs looking up.
        all_new = len(new_keys) == sum(len(item.events) for item in batch)
        for item in batch:
            future = item.future
            if item.quarantine is not None:
                q_id = next(q_iter)
                metrics.QUARANTINED.labels(item.quarantine.reason).inc()
                quarantined += 1
                if future is not None and not future.done():
                    future.set_result(Receipt(outcome=Outcome.QUARANTINED, reason=item.quarantine.reason,
                                              quarantine_id=q_id, device_id=item.quarantine.device_id))
            else:
                fresh = len(item.events) if all_new else self._fresh(item.events, new_keys)
                dup = len(item.events) - fresh
                accepted += fresh
                duplicates += dup
                if future is not None and not future.done():
                    future.set_result(Receipt(outcome=Outcome.ACCEPTED if fresh else Outcome.DUPLICATE,
                                              accepted=fresh, duplicates=dup, device_id=item.events[0].device_id))
            if item.stored is not None:
                item.stored()
        metrics.EVENTS_ACCEPTED.inc(accepted)
        metrics.EVENTS_DUPLICATE.inc(duplicates)
        totals = self.totals
        totals["batches"] += 1
        totals["messages"] += len(batch)
        totals["accepted"] += accepted
        totals["duplicates"] += duplicates
        totals["quarantined"] += quarantined
        for kind, value in totals.items():
            metrics.STORED_TOTAL.labels(kind).set(value)

    @staticmethod
    def _fresh(events: Sequence[UsageEvent], new_keys: set[EventKey]) -> int:
        """How many of a message's events are new; the first claim of a new key is the new one (taken from
        ``new_keys``), later copies are duplicates."""
        fresh = 0
        for e in events:
            key = (e.device_id, e.meter, e.ts, e.event_id)
            if key in new_keys:
                new_keys.discard(key)
                fresh += 1
        return fresh

    async def _quarantine_after_refusal(self, lane: _Lane, item: _Item, err: StorageError) -> None:
        item.quarantine = QuarantineItem(message=item.message, reason="refused by storage", detail=str(err),
                                         device_id=item.events[0].device_id if item.events else None)
        item.events = []
        await self._commit_batch(lane, [item])


def lane_index(key: str, lanes: int) -> int:
    """The lane of a lane key (``Entitlements.lane_key``), the same in every process.

    CRC-32 is linear, so ids that differ in one character share its low bits: its high bits, mixed by
    a Fibonacci multiplier, choose the lane.
    """
    return (((zlib.crc32(key.encode()) * 0x9E3779B1) & 0xFFFFFFFF) >> 16) % lanes


def _first_claims(events: Sequence[UsageEvent], new_keys: set[EventKey]) -> list[UsageEvent]:
    """The events whose identity was new, each identity once (a batch may carry copies)."""
    if len(new_keys) == len(events):
        return list(events)
    unclaimed = set(new_keys)
    out = []
    for e in events:
        key = event_key(e)
        if key in unclaimed:
            unclaimed.discard(key)
            out.append(e)
    return out
