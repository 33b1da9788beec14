"""Session walk marks in SQL (``core.segments``): read marks and points for a replay, store its outcome."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from usagehub.core.aggregation import Partial
from usagehub.core.events import Aggregation
from usagehub.core.periods import Period
from usagehub.core.segments import Acc, Entry, Listed, Mark, MarkBefore, MarksAfter, OpenShape, Outcome, Request
from usagehub.storage.period_truth import Removed, forget, note_changes, removed_of
from usagehub.storage.pool import Connection
from usagehub.storage.sessions import (
    POINT_COLUMNS,
    Pair,
    insert_session_rows,
    key_json,
    key_of,
    partial_json,
    partial_of,
    point_of,
    resume_json,
    resume_of,
    session_id_of,
    session_row,
    utc,
)

_MARK_COLUMNS = "seg_start, entry, piece, created, points"  # JSON text (migration 0034), parsed by orjson
_SORTED = orjson.OPT_SORT_KEYS  # a mark's text is a function of its value (jsonb ordered keys before 0034)


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
    start, entry, piece, created, points = row
    return Mark(start=utc(start), entry=entry_of(orjson.loads(entry)),
                piece=None if piece is None else acc_of(orjson.loads(piece)),
                created=tuple(resume_of(r) for r in orjson.loads(created)), points=points)


Group = tuple[str, str]  # (account, service)


async def answer(conn: Connection, asks: Sequence[tuple[Group, Request]]) -> list[Any]:
    """Answer one request of each of several walks, one query per kind of request."""
    out: list[Any] = [None] * len(asks)
    kinds: dict[type, list[int]] = {}
    for i, (_, req) in enumerate(asks):
        kinds.setdefault(type(req), []).append(i)
    for kind, idx in kinds.items():
        groups = [asks[i][0] for i in idx]
        cols: list[list[Any]] = [list(range(len(idx))), [g[0] for g in groups], [g[1] for g in groups]]
        reqs = [asks[i][1] for i in idx]
        if kind is MarkBefore:
            rows = await _fetch(conn, _MARK_BEFORE, [*cols, [r.at for r in reqs]])  # type: ignore[union-attr]
            for row in rows:
                out[idx[row[0]]] = mark_of(row[1:])
        elif kind is MarksAfter:
            rows = await _fetch(conn, _MARKS_AFTER, [*cols, [r.after for r in reqs],  # type: ignore[union-attr]
                                                     [r.limit for r in reqs]])  # type: ignore[union-attr]
            for i in idx:
                out[i] = []
            for row in rows:
                out[idx[row[0]]].append(mark_of(row[1:]))
        elif kind is Listed:
            rows = await _fetch(conn, _LISTED, [*cols, [r.since for r in reqs]])  # type: ignore[union-attr]
            for i in idx:
                out[i] = set()
            for row in rows:
                req = reqs[row[0]]
                if utc(row[1]) not in req.skip:
                    out[idx[row[0]]] |= {resume_of(r) for r in orjson.loads(row[2])} & req.resumes
        else:
            rows = await _fetch(conn, _POINTS_IN, [*cols, [r.start for r in reqs],  # type: ignore[union-attr]
                                                   [r.end for r in reqs]])  # type: ignore[union-attr]
            for i in idx:
                out[i] = []
            for row in rows:
                out[idx[row[0]]].append(point_of(row[1:]))
    return out


async def _fetch(conn: Connection, sql: str, params: list[list[Any]]) -> list[Any]:
    cur = await conn.execute(sql, params)
    return await cur.fetchall()


_ASKS = "unnest(%b::int[], %b::text[], %b::text[], %b::timestamptz[]{extra}) AS k(i, a, s, t{extra_col})"
_MARK_BEFORE = (
    f"SELECT k.i, m.* FROM {_ASKS.format(extra='', extra_col='')} CROSS JOIN LATERAL "
    f"(SELECT {_MARK_COLUMNS} FROM session_marks WHERE account_id = k.a AND service = k.s AND seg_start <= k.t "
    "ORDER BY seg_start DESC LIMIT 1) AS m")
_MARKS_AFTER = (
    f"SELECT k.i, m.* FROM {_ASKS.format(extra=', %b::int[]', extra_col=', n')} CROSS JOIN LATERAL "
    f"(SELECT {_MARK_COLUMNS} FROM session_marks WHERE account_id = k.a AND service = k.s AND seg_start > k.t "
    "ORDER BY seg_start LIMIT k.n) AS m ORDER BY k.i, m.seg_start")
_LISTED = (  # the marks that may list a session as created: from its segment on, and the last one
    f"SELECT k.i, m.seg_start, m.created FROM {_ASKS.format(extra='', extra_col='')} CROSS JOIN LATERAL "
    "(SELECT seg_start, created FROM session_marks WHERE account_id = k.a AND service = k.s AND seg_start >= k.t "
    "AND created <> '[]' UNION ALL (SELECT seg_start, created FROM session_marks WHERE account_id = k.a "
    "AND service = k.s ORDER BY seg_start DESC LIMIT 1)) AS m")
# LATERAL with ORDER BY (not a join the planner may flatten): one index range per walk, so a round costs
# the segments it reads, not a scan of the whole table (a hash join over it grew with the table in the soak).
_POINTS_IN = (
    f"SELECT k.i, p.* FROM {_ASKS.format(extra=', %b::timestamptz[]', extra_col=', e')} CROSS JOIN LATERAL "
    f"(SELECT {POINT_COLUMNS} FROM session_points WHERE account_id = k.a AND service = k.s AND start_ts >= k.t "
    "AND start_ts < k.e ORDER BY start_ts) AS p")


async def save_walks(conn: Connection, outcomes: Sequence[tuple[Group, Outcome]]) -> set[Pair]:
    """Store the replays' marks and sessions; the (account, period) pairs whose sessions changed."""
    dropped = [(a, s, start) for (a, s), out in outcomes for start in out.dropped]
    if dropped:
        await conn.execute(
            "DELETE FROM session_marks m USING unnest(%b::text[], %b::text[], %b::timestamptz[]) AS d(a, s, t) "
            "WHERE m.account_id = d.a AND m.service = d.s AND m.seg_start = d.t",
            [list(c) for c in zip(*dropped, strict=True)])
    marks = [(a, s, m.start, orjson.dumps(entry_json(m.entry), option=_SORTED).decode(),
              None if m.piece is None else orjson.dumps(acc_json(m.piece), option=_SORTED).decode(),
              orjson.dumps([resume_json(r) for r in m.created], option=_SORTED).decode(), m.points)
             for (a, s), out in outcomes for m in out.marks]
    if marks:
        await conn.execute(
            "INSERT INTO session_marks (account_id, service, seg_start, entry, piece, created, points) "
            "SELECT a, s, t, e, p, c, n FROM unnest(%b::text[], %b::text[], %b::timestamptz[], "
            "%b::text[], %b::text[], %b::text[], %b::int[]) AS u(a, s, t, e, p, c, n) "
            "ON CONFLICT (account_id, service, seg_start) DO UPDATE SET entry = excluded.entry, "
            "piece = excluded.piece, created = excluded.created, points = excluded.points",
            [list(c) for c in zip(*marks, strict=True)])
    sessions = [s for _, out in outcomes for s in out.sessions]
    rows = [session_row(s) for s in sessions]
    ids = [session_id_of(a, sv, r) for (a, sv), out in outcomes for r in out.stale] + [r[0] for r in rows]
    touched: set[Pair] = {(s.account_id, s.period) for s in sessions}
    removed: list[Removed] = []
    if ids:
        cur = await conn.execute(
            "DELETE FROM sessions WHERE session_id = ANY(%b) RETURNING account_id, period_start, period_end, "
            "period_label, partials::text", (ids,))
        removed = [removed_of(r) for r in await cur.fetchall()]
        touched |= {pair for pair, _ in removed}
    await insert_session_rows(conn, rows)
    await note_changes(conn, removed, sessions)
    return touched


async def unmarked_groups(conn: Connection) -> list[tuple[str, str]]:
    """(account, service) of every account and service with points but no walk marks
    (sessions stored before marks existed)."""
    cur = await conn.execute(
        "SELECT DISTINCT p.account_id, p.service FROM session_points p WHERE p.account_id IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM session_marks m WHERE m.account_id = p.account_id "
        "AND m.service = p.service) ORDER BY 1, 2")
    rows: list[Any] = await cur.fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


async def point_instants(conn: Connection, account: str, service: str) -> list[datetime]:
    """Every distinct start of one account and service's points (a rebuild walks them all)."""
    cur = await conn.execute("SELECT DISTINCT start_ts FROM session_points WHERE account_id = %s AND service = %s "
                             "ORDER BY 1", (account, service))
    rows: list[Any] = await cur.fetchall()
    return [utc(r[0]) for r in rows]


async def drop_sessions(conn: Connection, account: str, service: str) -> set[Pair]:
    """Delete every stored session of one account and service; the (account, period) pairs they were in."""
    cur = await conn.execute(
        "DELETE FROM sessions WHERE account_id = %s AND service = %s RETURNING account_id, period_start, "
        "period_end, period_label", (account, service))
    pairs = {(str(r[0]), Period(start=utc(r[1]), end=utc(r[2]), label=str(r[3]))) for r in await cur.fetchall()}
    await forget(conn, pairs)
    return pairs
