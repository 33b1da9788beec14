"""Session walk marks in SQL (``core.segments``): read marks and points for a replay, store its outcome."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from usagehub.core.aggregation import Partial
from usagehub.core.allocation import Point
from usagehub.core.events import Aggregation
from usagehub.core.periods import Period
from usagehub.core.segments import Acc, Entry, Mark, OpenShape, Outcome
from usagehub.storage.pool import Connection
from usagehub.storage.sessions import (
    POINT_COLUMNS,
    Pair,
    insert_sessions,
    key_json,
    key_of,
    partial_json,
    partial_of,
    point_of,
    resume_json,
    resume_of,
    session_id,
    session_id_of,
    utc,
)

_MARK_COLUMNS = "seg_start, entry, piece, created"


def acc_json(acc: Acc) -> dict[str, Any]:
    """An accumulation as JSON."""
    return {"n": acc.count, "d": sorted(acc.devices), "p": {k: partial_json(v) for k, v in acc.partials.items()}}


def acc_of(d: dict[str, Any]) -> Acc:
    """The accumulation stored by :func:`acc_json`."""
    partials: dict[str, Partial] = {k: partial_of(v) for k, v in d["p"].items()}
    return Acc(count=int(d["n"]), devices=frozenset(d["d"]), partials=partials)


def entry_json(e: Entry) -> dict[str, Any]:
    """A walk state as JSON."""
    o = e.open
    shape = None if o is None else {
        "p": [o.period.start.isoformat(), o.period.end.isoformat(), o.period.label], "s": o.start.isoformat(),
        "l": o.last.isoformat(), "r": resume_json(o.resume), "k": None if o.last_key is None else key_json(o.last_key)}
    return {"o": shape, "a": [[d, p, since.isoformat(), agg.value] for d, p, since, agg in e.active],
            "pre": acc_json(e.prefix)}


def entry_of(d: dict[str, Any]) -> Entry:
    """The walk state stored by :func:`entry_json`."""
    o = d["o"]
    shape = None if o is None else OpenShape(
        period=Period(start=datetime.fromisoformat(o["p"][0]), end=datetime.fromisoformat(o["p"][1]),
                      label=o["p"][2]),
        start=datetime.fromisoformat(o["s"]), last=datetime.fromisoformat(o["l"]), resume=resume_of(o["r"]),
        last_key=None if o["k"] is None else key_of(o["k"]))
    active = tuple((x[0], x[1], datetime.fromisoformat(x[2]), Aggregation(x[3])) for x in d["a"])
    return Entry(open=shape, active=active, prefix=acc_of(d["pre"]))


def mark_of(row: Any) -> Mark:
    """A mark from a row selected with ``_MARK_COLUMNS``."""
    start, entry, piece, created = row
    return Mark(start=utc(start), entry=entry_of(entry), piece=None if piece is None else acc_of(piece),
                created=tuple(resume_of(r) for r in created))


async def mark_before(conn: Connection, account: str, service: str, at: datetime) -> Mark | None:
    """The last mark starting at or before ``at``."""
    cur = await conn.execute(
        f"SELECT {_MARK_COLUMNS} FROM session_marks WHERE account_id = %s AND service = %s AND seg_start <= %s "
        "ORDER BY seg_start DESC LIMIT 1", (account, service, at))
    row = await cur.fetchone()
    return None if row is None else mark_of(row)


async def marks_after(conn: Connection, account: str, service: str, after: datetime, limit: int) -> list[Mark]:
    """Up to ``limit`` marks starting after ``after``, in order."""
    cur = await conn.execute(
        f"SELECT {_MARK_COLUMNS} FROM session_marks WHERE account_id = %s AND service = %s AND seg_start > %s "
        "ORDER BY seg_start LIMIT %s", (account, service, after, limit))
    return [mark_of(r) for r in await cur.fetchall()]


async def points_in(conn: Connection, account: str, service: str, start: datetime, end: datetime) -> list[Point]:
    """The stored points of one account and service starting in ``[start, end)``."""
    cur = await conn.execute(
        f"SELECT {POINT_COLUMNS} FROM session_points WHERE account_id = %s AND service = %s "
        "AND start_ts >= %s AND start_ts < %s", (account, service, start, end))
    return [point_of(r) for r in await cur.fetchall()]


async def save_walk(conn: Connection, account: str, service: str, out: Outcome) -> set[Pair]:
    """Store a replay's marks and sessions; the (account, period) pairs whose sessions changed."""
    if out.dropped:
        await conn.execute("DELETE FROM session_marks WHERE account_id = %s AND service = %s "
                           "AND seg_start = ANY(%s)", (account, service, out.dropped))
    if out.marks:
        rows = [(m.start, orjson.dumps(entry_json(m.entry)).decode(),
                 None if m.piece is None else orjson.dumps(acc_json(m.piece)).decode(),
                 orjson.dumps([resume_json(r) for r in m.created]).decode()) for m in out.marks]
        await conn.execute(
            "INSERT INTO session_marks (account_id, service, seg_start, entry, piece, created) "
            "SELECT %s, %s, * FROM unnest(%s::timestamptz[], %s::jsonb[], %s::jsonb[], %s::jsonb[]) "
            "ON CONFLICT (account_id, service, seg_start) DO UPDATE SET entry = excluded.entry, "
            "piece = excluded.piece, created = excluded.created",
            (account, service, *(list(c) for c in zip(*rows, strict=True))))
    ids = [session_id_of(account, service, r) for r in out.stale] + [session_id(s) for s in out.sessions]
    touched: set[Pair] = {(s.account_id, s.period) for s in out.sessions}
    if ids:
        cur = await conn.execute(
            "DELETE FROM sessions WHERE session_id = ANY(%s) RETURNING period_start, period_end, period_label",
            (ids,))
        touched |= {(account, Period(start=utc(r[0]), end=utc(r[1]), label=str(r[2]))) for r in await cur.fetchall()}
    await insert_sessions(conn, out.sessions)
    return touched

