"""The session stage: allocate a batch's entries and events to accounts, recompute the touched sessions.

Runs inside the batch transaction, after the usage stage: its entries and the
batch's gauge/state events become account-bound points (binding as of event
time, periods in the account's zone), and each touched (account, service)
replays only the segments of event time its new points fall in, as far as the
walk differs from the stored marks (``core.segments.rewalk``). The (account, period) pairs whose sessions
changed are then reconciled into billing records (``pipeline.records``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from usagehub.core.allocation import MeterInfo, Point, allocate_entry, event_point
from usagehub.core.binding import BindingIndex
from usagehub.core.counters import UsageEntry
from usagehub.core.decode import ProfileSet
from usagehub.core.events import MeterKind, UsageEvent
from usagehub.core.segments import Outcome, Request, rewalk, segment_index, settle_outcome
from usagehub.core.sessions import SessionRules, SortKey
from usagehub.storage.billing import RecordBook
from usagehub.storage.marks import Group, StoredForms, answer, save_walks
from usagehub.storage.pool import Connection
from usagehub.storage.session_queue import claim, finish, queue_segments, zones_of
from usagehub.storage.sessions import (
    Clock,
    Origin,
    Pair,
    bindings_for,
    copy_points,
    lock_accounts,
    lock_devices,
    origin_of,
)

_UTC = ZoneInfo("UTC")


class SessionEngine:
    """Allocates usage to accounts and keeps sessions and billing records up to date, per batch."""

    def __init__(self, profiles: ProfileSet, *, entries: Callable[[], Sequence[tuple[UsageEntry, UsageEvent]]]
                 | None = None, clock: Clock | None = None) -> None:
        """``entries`` gives the entries the previous hook (UsageWriter) wrote for the batch."""
        self.profiles = profiles
        self.entries = entries or (lambda: [])
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.idle: dict[str, timedelta] = {}
        self.book = RecordBook({}, self.clock)
        self._version = -1
        self.refresh()
        # Account-bound points stored by this task's last absorb (later hooks: prepaid debit); reset every
        # batch. A context variable: the pipeline commits batches of several lanes at once, each in its own task.
        self._last: ContextVar[Sequence[Point]] = ContextVar(f"session-points-{id(self)}", default=())
        self._infos: dict[tuple[str, str], tuple[object, MeterInfo | None]] = {}
        self.points_read = 0  # session points replayed since start (a cost signal for benchmarks and tests)
        self.marks_moved = 0  # walk marks advanced without reading points, since start
        self.marks_unchanged = 0  # walk marks walked again equal to their stored version (not written), since start
        # Deferred: ingest queues the touched segments (storage.session_queue) and session workers replay
        # them (pipeline.session_worker); set by a hub that runs session workers. Inline otherwise.
        self.defer = False
        self.last_claimed = 0  # accounts claimed by the last replay_queued
        self.last_segments = 0  # segments claimed by the last replay_queued (each with all its queue rows)
        self.last_left = 0  # queue rows the last replay_queued left for later (its budget ran out)
        self.locked_at: float | None = None  # perf_counter when the last replay_queued had its accounts' locks

    @property
    def last_points(self) -> Sequence[Point]:
        """The account-bound points this task's last absorb stored."""
        return self._last.get()

    def refresh(self) -> None:
        """Idle timeouts and product units from the profiles in force (they can change while the hub runs)."""
        if self._version == self.profiles.version:
            return
        idle: dict[str, timedelta] = {}
        units: dict[str, str] = {}
        for compiled in self.profiles.compiled:
            p = compiled.profile
            timeout = timedelta(seconds=p.idle_timeout_s)
            idle[p.service] = max(idle.get(p.service, timeout), timeout)  # one rule per service
            for name, spec in p.meters.items():
                units.setdefault(spec.product or name, spec.unit)
        self.idle, self.book.units, self._version = idle, units, self.profiles.version

    def info(self, profile_id: str, meter: str) -> MeterInfo | None:
        """What allocation needs to know about a profile's meter (None if the profile has no such meter)."""
        compiled = self.profiles.by_id.get(profile_id)
        cached = self._infos.get((profile_id, meter))
        if cached is None or cached[0] is not compiled:  # profiles can be replaced while the hub runs
            cached = self._infos[(profile_id, meter)] = (compiled, self._info(profile_id, meter))
        return cached[1]

    def _info(self, profile_id: str, meter: str) -> MeterInfo | None:
        compiled = self.profiles.by_id.get(profile_id)
        spec = compiled.profile.meters.get(meter) if compiled else None
        if compiled is None or spec is None:
            return None
        return MeterInfo.of(meter, spec, compiled.profile.service)

    async def apply(self, conn: Connection, events: Sequence[UsageEvent]) -> None:
        """Batch hook: the UsageWriter's entries and the gauge/state events of the batch."""
        entries = [(entry, info) for entry, event in self.entries()
                   if (info := self.info(event.profile_id, event.meter)) is not None]
        instants = [(event, info) for event in events if event.kind in (MeterKind.GAUGE, MeterKind.STATE)
                    and (info := self.info(event.profile_id, event.meter)) is not None]
        await self.absorb(conn, entries, instants, defer=self.defer)

    async def absorb(self, conn: Connection, entries: Sequence[tuple[UsageEntry, MeterInfo]],
                     instants: Sequence[tuple[UsageEvent, MeterInfo]], *, defer: bool = False) -> None:
        """Allocate and store the points (unbound ones too), recompute touched sessions and their records."""
        self.refresh()
        self._last.set(())
        if not entries and not instants:
            return
        devices = {e.device_id for e, _ in entries} | {e.device_id for e, _ in instants}
        await lock_devices(conn, devices)  # a binding change re-allocating these devices waits, or we wait
        bindings, zones = await self.bindings_for(conn, devices)

        def zone_of(account: str | None) -> ZoneInfo:
            return zones.get(account, _UTC) if account else _UTC

        stored: list[tuple[Point, Origin | None]] = []
        for entry, info in entries:
            origin = origin_of(entry, info.unit)
            points = allocate_entry(entry, info, bindings, zone_of)
            if len(points) == 1:  # the common case (one account, one period): no generator per reading
                stored.append((points[0], origin))
            else:
                stored.extend((p, origin) for p in points)
        for event, info in instants:
            stored.append((event_point(event, info, bindings, state=event.kind is MeterKind.STATE), None))
        bound = [p for p, _ in stored if p.account_id is not None]
        if bound and not defer:  # replayed here: wait for any replay or billing run holding these accounts
            await lock_accounts(conn, {p.account_id for p in bound if p.account_id})
        # Unbound pieces are kept too: a binding registered later re-allocates them (storage.rebind).
        await copy_points(conn, stored)
        self._last.set(bound)
        if defer:  # no account lock: the queue is a log, a round replays what it claimed (storage.session_queue)
            await queue_segments(conn, _earliest_per_segment((p.account_id, p.service, p.start) for p in bound
                                                             if p.account_id is not None))
            return
        await self.recompute(conn, bound, zones)

    async def replay_queued(self, conn: Connection, *, limit: int | None, accounts: list[str] | None = None,
                            skip_locked: bool = True, max_segments: int | None = None,
                            budget: int | None = None, min_age_s: float = 0.0, quiet_s: float | None = None) -> int:
        """Replay queued segments of up to ``limit`` accounts in this transaction; the queue rows replayed.

        ``max_segments`` claims every row of at most that many segments (``storage.session_queue.claim``:
        one replay covers them all, however many batches queued them); ``budget`` bounds the
        points read and marks moved by the round: a walk cut by it queues what is left (in this transaction).
        Both bound how long the round holds its accounts' locks, however large an account.
        """
        self.refresh()
        self.locked_at = None
        rows, ids = await claim(conn, limit=limit, accounts=accounts, skip_locked=skip_locked,
                                max_segments=max_segments, min_age_s=min_age_s, quiet_s=quiet_s)
        claimed = {a for a, _, _ in rows}
        self.last_claimed = len(claimed)
        self.last_segments = len({(a, s, segment_index(t)) for a, s, t in rows})
        if not rows:
            return 0
        if not skip_locked:  # else the claim took the accounts' locks before their rows (storage.session_queue)
            await lock_accounts(conn, claimed)
        self.locked_at = time.perf_counter()
        zones = {a: ZoneInfo(z) for a, z in (await zones_of(conn, claimed)).items()}
        changed: defaultdict[tuple[str, str], list[datetime]] = defaultdict(list)
        for account, service, start in rows:
            zones.setdefault(account, _UTC)
            changed[(account, service)].append(start)
        share = None if budget is None else max(budget // len(changed), 1)
        left: list[tuple[str, str, datetime]] = []
        touched = await self.rewalk(conn, dict(changed), zones, self.clock(), budget=share, left=left)
        await self.book.reconcile(conn, touched, zones)
        await finish(conn, ids)
        await queue_segments(conn, left)
        self.last_left = len(left)
        return len(rows)

    async def recompute(self, conn: Connection, points: Sequence[Point], zones: dict[str, ZoneInfo]) -> None:
        """Bring every (account, service) of ``points`` up to date where they changed; reconcile records."""
        groups: defaultdict[tuple[str, str], list[Point]] = defaultdict(list)
        for p in points:
            if p.account_id is not None:
                groups[(p.account_id, p.service)].append(p)
        touched = await self.rewalk(conn, {g: [p.start for p in group] for g, group in groups.items()}, zones,
                                    self.clock())
        await self.book.reconcile(conn, touched, zones)

    async def bindings_for(self, conn: Connection, devices: set[str]) -> tuple[BindingIndex, dict[str, ZoneInfo]]:
        return await bindings_for(conn, devices)

    async def resessionize(self, conn: Connection, account: str, service: str, earliest: SortKey,
                           zone: ZoneInfo, now: datetime) -> set[Pair]:
        """Replay the segment of ``earliest`` and the last one (finishing at ``now``); the pairs rewritten."""
        return await self.rewalk(conn, {(account, service): [earliest[0]]}, {account: zone}, now)

    async def rewalk(self, conn: Connection, changed: dict[tuple[str, str], list[datetime]],
                     zones: dict[str, ZoneInfo], now: datetime, *, budget: int | None = None,
                     left: list[tuple[str, str, datetime]] | None = None) -> set[Pair]:
        """Replay, for each (account, service), the segments of its changed instants, as far as the walk differs.

        The walks run side by side: each round answers one request of every walk with one query per kind.
        Returns the (account, period) pairs whose sessions were rewritten. With ``budget`` (per walk), what
        a walk cut short leaves goes into ``left`` as (account, service, instant) to queue.
        """
        walks: dict[Group, Generator[Request, Any, Outcome]] = {}
        for (account, service), instants in sorted(changed.items()):
            rules = SessionRules(idle_timeout=self.idle.get(service, timedelta(hours=1)), zone=zones[account])
            walks[(account, service)] = rewalk(account_id=account, service=service, rules=rules, as_of=now,
                                               changed=instants, budget=budget)
        outcomes: list[tuple[Group, Outcome]] = []
        asks: list[tuple[Group, Request]] = []
        forms = StoredForms()  # the marks read, so that those written back unchanged in part are not serialised again
        for group, walk in walks.items():
            _advance(group, walk, None, asks, outcomes)
        while asks:
            answers = await answer(conn, asks, forms)
            current, asks = asks, []
            for (group, _), ans in zip(current, answers, strict=True):
                _advance(group, walks[group], ans, asks, outcomes)
        self.points_read += sum(out.points_read for _, out in outcomes)
        self.marks_moved += sum(out.marks_moved for _, out in outcomes)
        self.marks_unchanged += sum(out.unchanged for _, out in outcomes)
        for (account, service), out in outcomes:
            if out.pending:
                if left is None:
                    raise AssertionError("a walk with a budget needs somewhere to leave what is left")
                left.extend(_earliest_per_segment((account, service, t) for t in out.pending))
        return await save_walks(conn, outcomes, forms)


def _earliest_per_segment(instants: Iterable[tuple[str, str, datetime]]) -> set[tuple[str, str, datetime]]:
    """What to queue for changed (account, service, instant)s: the earliest instant of each segment.

    The exact instant, not the segment start: the replay then starts at the chunk holding it
    (``core.segments.CHUNK``) instead of reading the segment from its start.
    """
    first: dict[tuple[str, str, int], datetime] = {}
    for account, service, t in instants:  # one per stored point: each step here counts (bench/fleet.py)
        key = (account, service, segment_index(t))
        known = first.get(key)
        if known is None or t < known:
            first[key] = t
    return {(a, s, t) for (a, s, _), t in first.items()}


def _advance(group: Group, walk: Generator[Request, Any, Outcome], ans: Any, asks: list[tuple[Group, Request]],
             outcomes: list[tuple[Group, Outcome]]) -> None:
    try:
        asks.append((group, walk.send(ans)))
    except StopIteration as stop:
        outcomes.append((group, settle_outcome(stop.value)))
