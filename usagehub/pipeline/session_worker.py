"""The session worker: replays queued session segments and reconciles billing records, off the ingest path.

With deferred sessions (``SessionEngine.defer``) an ingest batch stores events,
usage entries and account points, debits prepaid balances, and queues the
segments it touched; acknowledgement to the device follows that commit. A
session worker — another process, so the second core works — claims the queue
a few accounts at a time and replays them (``SessionEngine.replay_queued``) in
one transaction per round. Several workers (or hubs) share one queue safely:
a round locks the accounts it can have at once and claims only their rows, so
no two rounds replay one account at once, and neither waits for the other.
Under load a round finds more queued per segment, so its cost per event falls.
"""

from __future__ import annotations

import asyncio
import logging
import time

from psycopg_pool import AsyncConnectionPool

from usagehub import metrics
from usagehub.errors import StorageError
from usagehub.pipeline import memory
from usagehub.pipeline.sessions import SessionEngine
from usagehub.storage.pool import mapped_errors
from usagehub.storage.session_queue import backlog

log = logging.getLogger(__name__)

ROUND_NAME = "usagehub-session-round"  # application_name of a round's transaction
_MIN_SCALE = 0.01  # rounds never shrink below a hundredth of their bounds (a walk still goes two chunks on)


class SessionWorker:
    """Replays the session queue until cancelled: rounds of up to ``accounts_per_round`` accounts.

    Ingest never waits for a round (the queue is a log), so a round may take many accounts at once: its
    segment and point bounds (adapted to ``target_round_s``) are what keep it short for billing runs and
    corrections that wait for its accounts. 32 accounts per round cost a second round per batch on a
    40-account fleet (`bench/fleet.py 5 40`: session worker 157 -> 124-135 us/event with 256).
    """

    def __init__(self, pool: AsyncConnectionPool, engine: SessionEngine, *, accounts_per_round: int = 256,
                 idle_s: float = 0.1, coalesce_s: float = 1.0, lock_timeout_ms: int = 5000,
                 segments_per_round: int | None = 1024, budget_per_round: int | None = 40_000,
                 target_round_s: float | None = 0.5, quiet_s: float = 0.3) -> None:
        """``coalesce_s``: an account is claimed once its oldest queued row is this old (and after a round that
        emptied the queue the worker waits this long), so that a round finds more points per segment: a segment
        is replayed once for the batches of that time, not once per batch (each replay reads up to a chunk's
        tail of older points again). Ingest never waits for rounds, so without it rounds would follow every batch.
        What a round costs is mostly per segment and per (account, service) it walks (the marks around the
        change, the open session, its period's kept partials and record), not per point: 1 s (was 0.5) and 1,024
        segments a round (was 256, which split a second's backlog of a 40-account fleet into several rounds)
        cut the worker's CPU per event by about a third (``bench/session_rounds.py``: rounds of 5,000 messages
        against 2,500), for billing state up to about half a second staler while ingest goes on. Once the
        queue's newest row is ``quiet_s`` old, every account is claimed at once: ingest paused or ended and
        nothing more comes to gather, so its last batches are not held back for ``coalesce_s``.

        ``segments_per_round`` (each with all its queue rows) and ``budget_per_round`` (points read plus marks
        moved) bound a round's work, so the accounts' locks it holds are released well before an ingest batch's
        ``lock_timeout``, however large the account; what a round leaves stays queued for the next. Points are
        not all as dear (a loaded machine, large marks of an account with thousands of devices): while rounds
        take longer than ``target_round_s`` both bounds shrink in proportion, and grow back when rounds are
        quick, so a round holds its accounts (and the ingest batches waiting for them) about that long."""
        self.pool, self.engine = pool, engine
        self.segments_per_round, self.budget_per_round = segments_per_round, budget_per_round
        self.accounts_per_round, self.idle_s, self.lock_timeout_ms = accounts_per_round, idle_s, lock_timeout_ms
        self.coalesce_s, self.target_round_s, self.quiet_s = coalesce_s, target_round_s, quiet_s
        self.scale = 1.0  # the share of both bounds in force (adapted to target_round_s)
        self.replayed = 0  # segments replayed since start

    async def round(self, *, min_age_s: float = 0.0, quiet_s: float | None = None, wait: bool = False) -> int:
        """One transaction: claim, replay, reconcile, delete; the segments replayed (0: none old enough).

        ``wait``: wait for accounts another transaction holds instead of passing over them (a drain)."""
        started = time.perf_counter()
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            # The name marks the round's transaction in pg_stat_activity (how long a round holds its locks).
            await conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('application_name', %s, true)",
                               (f"{self.lock_timeout_ms}ms", ROUND_NAME))
            segments, budget = self.bounds()
            done = await self.engine.replay_queued(conn, limit=self.accounts_per_round, max_segments=segments,
                                                   budget=budget, min_age_s=min_age_s, quiet_s=quiet_s,
                                                   skip_locked=not wait)
        # How long the round held its accounts (ingest batches wait that long), not how long it waited for them.
        self._adapt(time.perf_counter() - (self.engine.locked_at or started))
        if done:
            self.replayed += done
            metrics.SESSION_SEGMENTS.inc(done)
            metrics.SESSION_ROUND_SECONDS.observe(time.perf_counter() - started)
        return done

    def bounds(self) -> tuple[int | None, int | None]:
        """The segments and the budget of the next round."""
        return (None if self.segments_per_round is None else max(1, int(self.segments_per_round * self.scale)),
                None if self.budget_per_round is None else max(1, int(self.budget_per_round * self.scale)))

    def _adapt(self, took_s: float) -> None:
        if self.target_round_s is None:
            return
        if took_s > self.target_round_s:
            self.scale = max(_MIN_SCALE, self.scale * self.target_round_s / took_s)
        elif took_s < self.target_round_s / 2:
            self.scale = min(1.0, self.scale * 1.25)

    async def run(self) -> None:
        """Replay until cancelled; a failed round (lock timeout, outage) is retried with backoff."""
        memory.tune_collector()
        delay = self.idle_s
        # A new row is claimed no sooner than this after it was queued (the queue quiet that long, or its account's
        # oldest row that old), so an idle worker polls no oftener: every idle round is a transaction and a claim,
        # and a hub runs a worker per core beside everything else.
        idle_most = max(self.idle_s, min(self.coalesce_s, self.quiet_s))
        while True:
            try:
                done = await self.round(min_age_s=self.coalesce_s, quiet_s=self.quiet_s)
                delay = self.idle_s if done else min(delay * 2, idle_most)  # delay >= idle_s throughout
            except StorageError as err:
                log.warning("session replay round failed (%s); retrying in %.1fs", err, delay)
                done = 0
                delay = min(delay * 2, 10.0)
            if not done:
                await asyncio.sleep(delay)
            elif (self.engine.last_claimed < self.accounts_per_round and not self.engine.last_left
                  and (self.segments_per_round is None or self.engine.last_segments < (self.bounds()[0] or 0))):
                # caught up: let the queue fill a little (what stays quiet that long is claimed without waiting)
                await asyncio.sleep(min(self.coalesce_s, self.quiet_s))

    async def drain(self) -> int:
        """Replay until the queue is empty, young rows too (tests, benches); the segments replayed.

        Unlike a running worker's rounds, a drain waits for an account another transaction holds (a round
        ending, or a backend whose cancelled round still holds its locks) instead of passing over it."""
        total = 0
        while done := await self.round(wait=True):
            total += done
        return total


async def wait_replayed(pool: AsyncConnectionPool, *, timeout_s: float = 600.0, poll_s: float = 0.2) -> bool:
    """Wait until the session queue is empty (every stored point billed); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with mapped_errors(), pool.connection() as conn:
            size, _ = await backlog(conn)
        if size == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
