"""Sessions in storage: allocate a batch's entries and events to accounts, recompute the touched sessions.

Runs inside the batch transaction, after the UsageWriter hook: its entries and
the batch's gauge/state events become account-bound points (binding as of event
time, periods in the account's zone), and each touched (account, service) is
re-sessionized from the last stored session that starts before the new points
(``core.sessions.resume_for``). The (account, period) pairs whose sessions
changed are then reconciled into billing records (``storage.billing``).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from usagehub.core.aggregation import Partial
from usagehub.core.allocation import MeterInfo, Point, PointKind, allocate_entry, event_point
from usagehub.core.binding import Binding, BindingIndex
from usagehub.core.counters import UsageEntry
from usagehub.core.decode import ProfileSet
from usagehub.core.events import Aggregation, MeterKind, UsageEvent
from usagehub.core.periods import Period
from usagehub.core.sessions import (
    Carry,
    CloseReason,
    Resume,
    Session,
    SessionRules,
    SortKey,
    continue_open,
    resume_for,
    sessionize,
    sort_key,
)
from usagehub.storage.pool import Connection

Pair = tuple[str, Period]
Clock = Callable[[], datetime]
_UTC = ZoneInfo("UTC")
_POINT_COLUMNS = ("account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, value, active, "
                  "label, tie")
_POINT_TYPES = ["text", "text", "text", "text", "text", "text", "timestamptz", "timestamptz", "numeric", "bool",
                "text", "text"]
_ORIGIN_COLUMNS = "entry_ref, entry_since, entry_ts, entry_quantity"
_ORIGIN_TYPES = ["text", "timestamptz", "timestamptz", "numeric"]
_NO_ORIGIN = (None, None, None, None)
Origin = tuple[str, datetime | None, datetime, Decimal]  # entry ref, since, ts, quantity
REF_SEP = "\x1f"  # entry ref: kind, meter and cause joined by the ASCII unit separator
_SESSION_COLUMNS = ("session_id, account_id, service, period_start, period_end, period_label, start_ts, end_ts, "
                    "closed_reason, activity_count, devices, partials, resume, resume_ts, expires_at, carry")


def utc(ts: Any) -> datetime:
    """A database timestamp in UTC (the session zone of the connection must not leak into keys)."""
    assert isinstance(ts, datetime)
    return ts.astimezone(UTC)


async def lock_accounts(conn: Connection, accounts: Iterable[str]) -> None:
    """Serialise sessions and billing of these accounts (ingest, corrections, billing runs), in one order."""
    names = sorted(set(accounts))
    if names:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT hashtextextended('usagehub-account:' || a, 0) AS k "
            "FROM unnest(%s::text[]) AS a ORDER BY a) AS s", (names,))


async def lock_devices(conn: Connection, devices: Iterable[str]) -> None:
    """Serialise allocation of these devices' usage with binding changes, in one order."""
    names = sorted(set(devices))
    if names:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT hashtextextended('usagehub-device:' || d, 0) AS k "
            "FROM unnest(%s::text[]) AS d ORDER BY d) AS s", (names,))


async def zones_of(conn: Connection, accounts: Iterable[str]) -> dict[str, ZoneInfo]:
    """Each account's time zone."""
    cur = await conn.execute("SELECT account_id, timezone FROM accounts WHERE account_id = ANY(%s)",
                             (sorted(set(accounts)),))
    return {str(r[0]): ZoneInfo(str(r[1])) for r in await cur.fetchall()}


# --- (de)serialisation of the session state -------------------------------------------------------

def _dec(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _undec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def partial_json(p: Partial) -> dict[str, Any]:
    """A partial as JSON (decimals as strings)."""
    last_key = None if p.last_key is None else [p.last_key[0].isoformat(), p.last_key[1], str(p.last_key[2])]
    return {"a": p.aggregation.value, "n": p.count, "t": str(p.total), "min": _dec(p.minimum),
            "max": _dec(p.maximum), "last": _dec(p.last), "lk": last_key, "lb": sorted(p.labels),
            "s": str(p.seconds)}


def partial_of(d: dict[str, Any]) -> Partial:
    """The partial stored by :func:`partial_json`."""
    lk = d["lk"]
    return Partial(aggregation=Aggregation(d["a"]), count=int(d["n"]), total=Decimal(d["t"]),
                   minimum=_undec(d["min"]), maximum=_undec(d["max"]), last=_undec(d["last"]),
                   last_key=None if lk is None else (datetime.fromisoformat(lk[0]), lk[1], Decimal(lk[2])),
                   labels=frozenset(d["lb"]), seconds=Decimal(d["s"]))


def key_json(k: SortKey) -> list[Any]:
    """A sort key as JSON."""
    return [k[0].isoformat(), k[1], k[2].isoformat(), *k[3:]]


def key_of(k: list[Any]) -> SortKey:
    """The sort key stored by :func:`key_json`."""
    return (datetime.fromisoformat(k[0]), int(k[1]), datetime.fromisoformat(k[2]), k[3], k[4], k[5], k[6])


def resume_json(r: Resume) -> dict[str, Any]:
    """A resume point as JSON."""
    return {"k": key_json(r.key), "a": sorted([d, p, a.value] for d, p, a in r.active)}


def resume_of(d: dict[str, Any]) -> Resume:
    """The resume point stored by :func:`resume_json`."""
    return Resume(key=key_of(d["k"]), active=frozenset((x[0], x[1], Aggregation(x[2])) for x in d["a"]))


def carry_json(c: Carry) -> dict[str, Any]:
    """An open session's carry as JSON."""
    return {"k": key_json(c.last_key), "last": c.last.isoformat(),
            "base": {k: partial_json(v) for k, v in c.base.items()},
            "a": [[d, p, since.isoformat(), agg.value] for d, p, since, agg in c.active]}


def carry_of(d: dict[str, Any]) -> Carry:
    """The carry stored by :func:`carry_json`."""
    return Carry(last_key=key_of(d["k"]), last=datetime.fromisoformat(d["last"]),
                 base={k: partial_of(v) for k, v in d["base"].items()},
                 active=tuple((x[0], x[1], datetime.fromisoformat(x[2]), Aggregation(x[3])) for x in d["a"]))


def session_id(s: Session) -> str:
    """A stable id: the same resume key of the same account and service gives the same id."""
    raw = orjson.dumps([s.account_id, s.service, resume_json(s.resume)])
    return hashlib.blake2b(raw, digest_size=10).hexdigest()


def session_of(row: Sequence[Any]) -> Session:
    """A session from a row selected with ``_SESSION_COLUMNS``."""
    (_, account, service, p_start, p_end, p_label, start, end, reason, count, devices, partials, resume,
     _, expires, carry) = row
    return Session(account_id=account, service=service,
                   period=Period(start=utc(p_start), end=utc(p_end), label=p_label), start=utc(start),
                   end=utc(end), closed_reason=CloseReason(reason) if reason else None, activity_count=count,
                   devices=frozenset(devices), partials={k: partial_of(v) for k, v in partials.items()},
                   resume=resume_of(resume), expires_at=None if expires is None else utc(expires),
                   carry=None if carry is None else carry_of(carry))


def _session_row(s: Session) -> tuple[Any, ...]:
    return (session_id(s), s.account_id, s.service, s.period.start, s.period.end, s.period.label, s.start, s.end,
            s.closed_reason.value if s.closed_reason else None, s.activity_count, sorted(s.devices),
            orjson.dumps({k: partial_json(v) for k, v in s.partials.items()}).decode(),
            orjson.dumps(resume_json(s.resume)).decode(), s.resume.key[0], s.expires_at,
            None if s.carry is None else orjson.dumps(carry_json(s.carry)).decode())


def point_of(row: Sequence[Any]) -> Point:
    account, service, device, product, kind, agg, start, end, value, active, label, tie = row
    return Point(account_id=account, service=service, device_id=device, product=product, kind=PointKind(kind),
                 aggregation=Aggregation(agg), start=utc(start), end=utc(end), value=value, active=active,
                 label=label, tie=tie)


# --- the engine -------------------------------------------------------------------------------------

class SessionEngine:
    """Allocates usage to accounts and keeps sessions and billing records up to date, per batch."""

    def __init__(self, profiles: ProfileSet, *, entries: Callable[[], Sequence[tuple[UsageEntry, UsageEvent]]]
                 | None = None, clock: Clock | None = None) -> None:
        """``entries`` gives the entries the previous hook (UsageWriter) wrote for the batch."""
        from usagehub.storage.billing import RecordBook  # billing imports this module's helpers

        self.profiles = profiles
        self.entries = entries or (lambda: [])
        self.clock: Clock = clock or (lambda: datetime.now(UTC))
        self.idle: dict[str, timedelta] = {}
        units: dict[str, str] = {}
        for compiled in profiles.compiled:
            p = compiled.profile
            timeout = timedelta(seconds=p.idle_timeout_s)
            self.idle[p.service] = max(self.idle.get(p.service, timeout), timeout)  # one rule per service
            for name, spec in p.meters.items():
                units.setdefault(spec.product or name, spec.unit)
        self.book = RecordBook(units, self.clock)
        # Account-bound points stored by the last absorb (later hooks: prepaid debit); reset every batch.
        self.last_points: list[Point] = []

    def info(self, profile_id: str, meter: str) -> MeterInfo | None:
        """What allocation needs to know about a profile's meter (None if the profile has no such meter)."""
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
        await self.absorb(conn, entries, instants)

    async def absorb(self, conn: Connection, entries: Sequence[tuple[UsageEntry, MeterInfo]],
                     instants: Sequence[tuple[UsageEvent, MeterInfo]]) -> None:
        """Allocate and store the points (unbound ones too), recompute touched sessions and their records."""
        self.last_points = []
        if not entries and not instants:
            return
        devices = {e.device_id for e, _ in entries} | {e.device_id for e, _ in instants}
        await lock_devices(conn, devices)  # a binding change re-allocating these devices waits, or we wait
        bindings, zones = await self.bindings_for(conn, devices)

        def zone_of(account: str | None) -> ZoneInfo:
            return zones.get(account, _UTC) if account else _UTC

        stored: list[tuple[Point, Origin | None]] = []
        for entry, info in entries:
            origin = origin_of(entry)
            stored.extend((p, origin) for p in allocate_entry(entry, info, bindings, zone_of))
        for event, info in instants:
            stored.append((event_point(event, info, bindings, state=event.kind is MeterKind.STATE), None))
        bound = [p for p, _ in stored if p.account_id is not None]
        if bound:
            await lock_accounts(conn, {p.account_id for p in bound if p.account_id})
        # Unbound pieces are kept too: a binding registered later re-allocates them (storage.rebind).
        await copy_points(conn, stored)
        self.last_points = bound
        await self.recompute(conn, bound, zones)

    async def recompute(self, conn: Connection, points: Sequence[Point], zones: dict[str, ZoneInfo]) -> None:
        """Re-sessionize every (account, service) of ``points`` from its earliest point; reconcile records."""
        groups: defaultdict[tuple[str, str], list[Point]] = defaultdict(list)
        for p in points:
            if p.account_id is not None:
                groups[(p.account_id, p.service)].append(p)
        touched: set[Pair] = set()
        now = self.clock()
        for (account, service), group in sorted(groups.items()):
            earliest = min(sort_key(p) for p in group)
            touched |= await self.resessionize(conn, account, service, earliest, zones[account], now)
        await self.book.reconcile(conn, touched, zones)

    async def bindings_for(self, conn: Connection, devices: set[str]) -> tuple[BindingIndex, dict[str, ZoneInfo]]:
        cur = await conn.execute(
            "SELECT b.device_id, b.account_id, lower(b.valid), upper(b.valid), a.timezone FROM bindings b "
            "JOIN accounts a USING (account_id) WHERE b.device_id = ANY(%s)", (sorted(devices),))
        rows = await cur.fetchall()
        index = BindingIndex(Binding(device_id=str(r[0]), account_id=str(r[1]), valid_from=utc(r[2]),
                                     valid_to=None if r[3] is None else utc(r[3])) for r in rows)
        return index, {str(r[1]): ZoneInfo(str(r[4])) for r in rows}

    @staticmethod
    async def _points(conn: Connection, account: str, service: str, since: datetime) -> list[Point]:
        cur = await conn.execute(
            f"SELECT {_POINT_COLUMNS} FROM session_points WHERE account_id = %s AND service = %s "
            "AND start_ts >= %s", (account, service, since))
        return [point_of(r) for r in await cur.fetchall()]

    async def resessionize(self, conn: Connection, account: str, service: str, earliest: SortKey,
                            zone: ZoneInfo, now: datetime) -> set[Pair]:
        """Replace the stored sessions from the resume point on; return the (account, period) pairs touched."""
        cur = await conn.execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE account_id = %s AND service = %s AND resume_ts >= "
            "coalesce((SELECT max(resume_ts) FROM sessions WHERE account_id = %s AND service = %s "
            "AND resume_ts < %s), '-infinity')",
            (account, service, account, service, earliest[0]))
        rows = await cur.fetchall()
        stored = sorted((session_of(r) for r in rows), key=lambda s: s.resume.key)
        rules = SessionRules(idle_timeout=self.idle.get(service, timedelta(hours=1)), zone=zone)
        latest = stored[-1] if stored else None
        if latest is not None and latest.carry is not None and earliest > latest.carry.last_key:
            # In-order data: continue the open session from its carry, reading only the new points.
            stale = [latest]
            fresh = continue_open(latest, await self._points(conn, account, service, latest.carry.last_key[0]),
                                  rules=rules, as_of=now)
        else:
            resume = resume_for(stored, earliest)
            stale = [s for s in stored if s.resume.key >= resume.key]
            points = await self._points(conn, account, service, resume.key[0])
            fresh = sessionize(points, account_id=account, service=service, rules=rules, as_of=now, resume=resume)
        if stale:
            await conn.execute("DELETE FROM sessions WHERE session_id = ANY(%s)", ([session_id(s) for s in stale],))
        if fresh:
            await _insert_sessions(conn, fresh)
        return {(s.account_id, s.period) for s in [*stale, *fresh]}


def origin_of(entry: UsageEntry) -> Origin:
    """Where a usage point came from: the entry's reference, interval and quantity."""
    return (REF_SEP.join((entry.kind.value, entry.meter, entry.cause)), entry.since, entry.ts, entry.quantity)


async def copy_points(conn: Connection, points: Sequence[tuple[Point, Origin | None]]) -> None:
    """Store points with the entry each usage point came from (None for gauge/state points)."""
    async with conn.cursor() as cur, cur.copy(
            f"COPY session_points ({_POINT_COLUMNS}, {_ORIGIN_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types([*_POINT_TYPES, *_ORIGIN_TYPES])
        for p, o in points:
            await copy.write_row((p.account_id, p.service, p.device_id, p.product, p.kind.value,
                                  p.aggregation.value, p.start, p.end, p.value, p.active, p.label, p.tie,
                                  *(o or _NO_ORIGIN)))


async def _insert_sessions(conn: Connection, sessions: Sequence[Session]) -> None:
    rows = [_session_row(s) for s in sessions]
    async with conn.cursor() as cur:
        await cur.executemany(
            f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "%s::jsonb, %s::jsonb, %s, %s, %s::jsonb)", rows)


async def sessions_of_pairs(conn: Connection, pairs: Iterable[Pair]) -> list[Session]:
    """Every stored session of these (account, period) pairs, all services."""
    items = sorted({(a, p.start) for a, p in pairs})
    if not items:
        return []
    cur = await conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE (account_id, period_start) IN "
        "(SELECT * FROM unnest(%s::text[], %s::timestamptz[]))", ([a for a, _ in items], [s for _, s in items]))
    return [session_of(r) for r in await cur.fetchall()]


SESSION_COLUMNS = _SESSION_COLUMNS
