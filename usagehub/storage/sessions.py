"""Sessions and session points in SQL: locks, bindings, points, sessions; the stage is ``pipeline.sessions``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from usagehub.core.aggregation import Partial, kept_labels
from usagehub.core.allocation import Point, PointKind
from usagehub.core.binding import Binding, BindingIndex
from usagehub.core.counters import UsageEntry
from usagehub.core.events import Aggregation
from usagehub.core.periods import Period
from usagehub.core.sessions import (
    Carry,
    CloseReason,
    Resume,
    Session,
    SortKey,
)
from usagehub.storage.events import WHOLE
from usagehub.storage.pool import Connection

Pair = tuple[str, Period]
Clock = Callable[[], datetime]
_UTC = ZoneInfo("UTC")
_POINT_COLUMNS = ("account_id, service, device_id, product, kind, aggregation, start_ts, end_ts, value, active, "
                  "label, tie")
_POINT_TYPES = ["text", "text", "text", "text", "text", "text", "timestamptz", "timestamptz", "numeric", "bool",
                "text", "text"]
_ORIGIN_COLUMNS = "entry_ref, entry_since, entry_ts, entry_quantity, entry_unit"
_ORIGIN_TYPES = ["text", "timestamptz", "timestamptz", "numeric", "text"]
Origin = tuple[str, datetime | None, datetime, Decimal, str]  # entry ref, since, ts, quantity, unit
REF_SEP = "\x1f"  # entry ref: kind, meter and cause joined by the ASCII unit separator
_SESSION_COLUMNS = ("session_id, account_id, service, period_start, period_end, period_label, start_ts, end_ts, "
                    "closed_reason, activity_count, devices, partials, resume, resume_ts, expires_at, carry")


def utc(ts: Any) -> datetime:
    """A database timestamp in UTC (the session zone of the connection must not leak into keys)."""
    assert isinstance(ts, datetime)
    return ts if ts.tzinfo is UTC else ts.astimezone(UTC)


def account_lock_key(column: str) -> str:
    """The SQL of the advisory lock key of the account named by ``column`` (one key for all who take it)."""
    return f"hashtextextended('usagehub-account:' || {column}, 0)"


async def lock_accounts(conn: Connection, accounts: Iterable[str]) -> None:
    """Serialise sessions and billing of these accounts (ingest, corrections, billing runs), in one order."""
    names = sorted(set(accounts))
    if names:
        await conn.execute(
            f"SELECT pg_advisory_xact_lock(k) FROM (SELECT {account_lock_key('a')} AS k "
            "FROM unnest(%b::text[]) AS a ORDER BY a) AS s", (names,))


async def lock_devices(conn: Connection, devices: Iterable[str]) -> None:
    """Serialise allocation of these devices' usage with binding changes, in one order."""
    names = sorted(set(devices))
    if names:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT hashtextextended('usagehub-device:' || d, 0) AS k "
            "FROM unnest(%b::text[]) AS d ORDER BY d) AS s", (names,))


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
    lk, aggregation = d["lk"], Aggregation(d["a"])
    labels = kept_labels(aggregation, d["lb"])  # states stored by older releases hold labels of every kind
    return Partial(aggregation=aggregation, count=int(d["n"]), total=Decimal(d["t"]),
                   minimum=_undec(d["min"]), maximum=_undec(d["max"]), last=_undec(d["last"]),
                   last_key=None if lk is None else (datetime.fromisoformat(lk[0]), lk[1], Decimal(lk[2])),
                   labels=labels, seconds=Decimal(d["s"]))


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
    return session_id_of(s.account_id, s.service, s.resume)


def session_id_of(account: str, service: str, resume: Resume) -> str:
    """The id of the session of ``account`` and ``service`` that resumes at ``resume``."""
    return _hashed_id(account, service, resume_json(resume))


def _hashed_id(account: str, service: str, resume: dict[str, Any]) -> str:
    return hashlib.blake2b(orjson.dumps([account, service, resume]), digest_size=10).hexdigest()


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


def text_array(items: Iterable[str]) -> str:
    """A PostgreSQL array literal of ``items`` (each quoted): a ragged text[] column through one unnest."""
    return "{" + ",".join('"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"' for x in items) + "}"


def session_row(s: Session) -> tuple[Any, ...]:
    """A session as the row ``insert_session_rows`` stores; its id first (the resume serialised once)."""
    resume = resume_json(s.resume)
    return (_hashed_id(s.account_id, s.service, resume), s.account_id, s.service, s.period.start, s.period.end,
            s.period.label, s.start, s.end, s.closed_reason.value if s.closed_reason else None, s.activity_count,
            text_array(sorted(s.devices)),
            orjson.dumps({k: partial_json(v) for k, v in s.partials.items()}).decode(),
            orjson.dumps(resume).decode(), s.resume.key[0], s.expires_at,
            None if s.carry is None else orjson.dumps(carry_json(s.carry)).decode())


_POINT_KINDS: dict[str, PointKind] = {k.value: k for k in PointKind}
_AGGREGATIONS: dict[str, Aggregation] = {a.value: a for a in Aggregation}


def point_of(row: Sequence[Any]) -> Point:
    """A point from a row of ``_POINT_COLUMNS`` (enums by a dict lookup: a replay reads many)."""
    account, service, device, product, kind, agg, start, end, value, active, label, tie = row
    return Point(account_id=account, service=service, device_id=device, product=product, kind=_POINT_KINDS[kind],
                 aggregation=_AGGREGATIONS[agg], start=utc(start), end=utc(end), value=value, active=active,
                 label=label, tie=tie)


def origin_of(entry: UsageEntry, unit: str) -> Origin:
    """Where a usage point came from: the entry's reference, interval, quantity and unit.

    The points are the usage ledger (migration 0041): the view ``usage_entries`` sums an entry's points.
    """
    return (REF_SEP.join((entry.kind, entry.meter, entry.cause)),  # a StrEnum member joins as its value
            entry.since, entry.ts, entry.quantity,
            unit)


async def copy_points(conn: Connection, points: Sequence[tuple[Point, Origin | None]]) -> None:
    """Store points with the entry each usage point came from (None for gauge/state points).

    The entry's ts and quantity are stored NULL where they are the point's own end and value (the same
    objects: a point that is its whole entry), as readers take them (migration 0049).
    """
    async with conn.cursor() as cur, cur.copy(
            f"COPY session_points ({_POINT_COLUMNS}, {_ORIGIN_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types([*_POINT_TYPES, *_ORIGIN_TYPES])
        write = copy.write_row
        for p, o in points:  # one row each, built in one tuple: this loop runs per reading
            v, end = p.value, p.end
            if o is None:
                ref = since = ts = quantity = unit = None
            else:
                ref, since, ts, quantity, unit = o
                ts = None if ts is end else ts  # its own end/value: NULL (0049)
                quantity = None if quantity is v else quantity
            await write((p.account_id, p.service, p.device_id, p.product, p.kind, p.aggregation,  # StrEnums
                         p.start, end, int(v) if v.same_quantum(WHOLE) else v,  # whole values as ints (WHOLE)
                         p.active, p.label, p.tie, ref, since, ts, quantity, unit))


async def insert_sessions(conn: Connection, sessions: Sequence[Session]) -> None:
    """Insert ``sessions``."""
    await insert_session_rows(conn, [session_row(s) for s in sessions])


async def insert_session_rows(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert sessions (``session_row``) in one statement (``executemany`` cost a statement per session)."""
    if not rows:
        return
    cols = [list(c) for c in zip(*rows, strict=True)]
    await conn.execute(
        f"INSERT INTO sessions ({_SESSION_COLUMNS}) SELECT i, a, sv, ps, pe, pl, st, en, r, n, "
        "d::text[], p::jsonb, rs::jsonb, rt, x, c::jsonb "
        "FROM unnest(%b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[], %b::text[], "
        "%b::timestamptz[], %b::timestamptz[], %b::text[], %b::int[], %b::text[], %b::text[], %b::text[], "
        "%b::timestamptz[], %b::timestamptz[], %b::text[]) "
        "AS u(i, a, sv, ps, pe, pl, st, en, r, n, d, p, rs, rt, x, c)",
        cols)


async def sessions_of_pairs(conn: Connection, pairs: Iterable[Pair]) -> list[Session]:
    """Every stored session of these (account, period) pairs, all services."""
    items = sorted({(a, p.start) for a, p in pairs})
    if not items:
        return []
    cur = await conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE (account_id, period_start) IN "
        "(SELECT * FROM unnest(%b::text[], %b::timestamptz[]))", ([a for a, _ in items], [s for _, s in items]))
    return [session_of(r) for r in await cur.fetchall()]


async def bindings_for(conn: Connection, devices: set[str]) -> tuple[BindingIndex, dict[str, ZoneInfo]]:
    """The bindings of ``devices`` and the time zone of every account they name."""
    cur = await conn.execute(
        "SELECT b.device_id, b.account_id, lower(b.valid), upper(b.valid), a.timezone FROM bindings b "
        "JOIN accounts a USING (account_id) WHERE b.device_id = ANY(%s)", (sorted(devices),))
    rows = await cur.fetchall()
    index = BindingIndex(Binding(device_id=str(r[0]), account_id=str(r[1]), valid_from=utc(r[2]),
                                 valid_to=None if r[3] is None else utc(r[3])) for r in rows)
    return index, {str(r[1]): ZoneInfo(str(r[4])) for r in rows}


async def points_since(conn: Connection, account: str, service: str, since: datetime) -> list[Point]:
    """The stored points of one account and service that start at or after ``since``."""
    cur = await conn.execute(
        f"SELECT {_POINT_COLUMNS} FROM session_points WHERE account_id = %s AND service = %s "
        "AND start_ts >= %s", (account, service, since))
    return [point_of(r) for r in await cur.fetchall()]


async def sessions_from(conn: Connection, account: str, service: str, earliest: datetime) -> list[Session]:
    """The stored sessions of one account and service from the last one resuming before ``earliest`` on."""
    cur = await conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE account_id = %s AND service = %s AND resume_ts >= "
        "coalesce((SELECT max(resume_ts) FROM sessions WHERE account_id = %s AND service = %s "
        "AND resume_ts < %s), '-infinity')",
        (account, service, account, service, earliest))
    return sorted((session_of(r) for r in await cur.fetchall()), key=lambda s: s.resume.key)


async def replace_sessions(conn: Connection, stale: Sequence[Session], fresh: Sequence[Session]) -> None:
    """Delete ``stale`` sessions and insert ``fresh`` ones."""
    if stale:
        await conn.execute("DELETE FROM sessions WHERE session_id = ANY(%s)", ([session_id(s) for s in stale],))
    if fresh:
        await insert_sessions(conn, fresh)


SESSION_COLUMNS = _SESSION_COLUMNS
POINT_COLUMNS = _POINT_COLUMNS
