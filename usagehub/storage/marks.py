"""Session walk marks in SQL (``core.segments``): read marks and points for a replay, store its outcome."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from usagehub.core.aggregation import Partial
from usagehub.core.allocation import Point, PointKind
from usagehub.core.events import Aggregation
from usagehub.core.periods import Period
from usagehub.core.segments import Acc, Entry, Listed, Mark, MarkBefore, MarksAfter, OpenShape, Outcome, Request
from usagehub.core.sessions import Resume
from usagehub.storage.period_truth import Removed, forget, note_changes, removed_of
from usagehub.storage.pool import Connection
from usagehub.storage.sessions import (
    Pair,
    insert_session_rows,
    key_json,
    key_of,
    partial_json,
    partial_of,
    resume_json,
    resume_of,
    session_id_of,
    session_row,
    utc,
)

# A replay's points: its account and service are the walk's (not read back for every point).
_POINT_READ = "device_id, product, kind, aggregation, start_ts, end_ts, value, active, label, tie"
_POINT_KINDS: dict[str, PointKind] = {k.value: k for k in PointKind}
_AGGREGATIONS: dict[str, Aggregation] = {a.value: a for a in Aggregation}
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


def mark_of(row: Any, forms: StoredForms | None = None) -> Mark:
    """A mark from a row selected with ``_MARK_COLUMNS`` (its stored forms noted in ``forms``)."""
    start, entry, piece, created, points = row
    fields = orjson.loads(entry)
    mark = Mark(start=utc(start), entry=entry_of(fields), piece=None if piece is None else acc_of(orjson.loads(piece)),
                created=_created_of(created), points=points)
    if forms is not None:
        forms.note(mark, fields, piece, created)
    return mark


def _created_of(text: str) -> tuple[Resume, ...]:
    """The sessions a stored mark lists as created (most list none)."""
    return () if text == "[]" else tuple(resume_of(r) for r in orjson.loads(text))


class StoredForms:
    """The JSON forms of the marks one replay read, so that writing them back does not serialise them again.

    Kept by the identity of the values read (and the values with them, so an identity is never reused while
    kept): a mark the walk writes again holds the very objects it read where they did not change (a mark
    moved holds its stored piece and creations, and the open session's shape and states of the mark after
    it), and only what is new (its prefix) is serialised. The text written is the one
    :func:`mark_texts` makes from scratch: the parts reused are the stored, sorted JSON of equal values.
    """

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], tuple[object, Any]] = {}

    def note(self, mark: Mark, entry: dict[str, Any], piece: str | None, created: str) -> None:
        """Remember the stored forms of ``mark`` (its entry's parsed JSON, its piece and creations as text)."""
        e = mark.entry
        for part, value, form in (("entry", e, entry), ("open", e.open, entry["o"]), ("active", e.active, entry["a"]),
                                  ("acc", e.prefix, entry["pre"]), ("created", mark.created, created),
                                  ("piece", mark.piece, piece)):
            if value is not None:
                self._parts[(part, id(value))] = (value, form)

    def get(self, part: str, value: object) -> Any:
        """The stored form of ``value`` (this very object) as ``part`` of a mark, or None."""
        known = self._parts.get((part, id(value)))
        return known[1] if known is not None and known[0] is value else None


def mark_texts(mark: Mark, forms: StoredForms | None = None) -> tuple[str, str | None, str]:
    """The stored texts of a mark's entry, piece and creations (sorted keys: a function of the value)."""
    forms = forms or StoredForms()
    e = mark.entry
    entry = forms.get("entry", e)
    if entry is None:
        shape, active = forms.get("open", e.open), forms.get("active", e.active)
        if (shape is None and e.open is not None) or active is None:
            entry = entry_json(e)
        else:
            prefix = forms.get("acc", e.prefix)
            entry = {"o": shape, "a": active, "pre": acc_json(e.prefix) if prefix is None else prefix}
    piece = None if mark.piece is None else forms.get("piece", mark.piece)
    if piece is None and mark.piece is not None:
        piece = orjson.dumps(acc_json(mark.piece), option=_SORTED).decode()
    created = forms.get("created", mark.created)
    if created is None:
        created = orjson.dumps([resume_json(r) for r in mark.created], option=_SORTED).decode()
    return orjson.dumps(entry, option=_SORTED).decode(), piece, created


Group = tuple[str, str]  # (account, service)


async def answer(conn: Connection, asks: Sequence[tuple[Group, Request]],
                 forms: StoredForms | None = None) -> list[Any]:
    """Answer one request of each of several walks, one query per kind of request (marks read noted in ``forms``)."""
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
                out[idx[row[0]]] = mark_of(row[1:], forms)
        elif kind is MarksAfter:
            rows = await _fetch(conn, _MARKS_AFTER, [*cols, [r.after for r in reqs],  # type: ignore[union-attr]
                                                     [r.limit for r in reqs]])  # type: ignore[union-attr]
            for i in idx:
                out[i] = []
            for row in rows:
                out[idx[row[0]]].append(mark_of(row[1:], forms))
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
                account, service = groups[row[0]]
                out[idx[row[0]]].append(_point(account, service, row))
    return out


def _point(account: str, service: str, row: Any) -> Point:
    """A point of a walk from a ``_POINTS_IN`` row (its ask's index first)."""
    _, device, product, kind, agg, start, end, value, active, label, tie = row
    return Point(account_id=account, service=service, device_id=device, product=product, kind=_POINT_KINDS[kind],
                 aggregation=_AGGREGATIONS[agg], start=start if start.tzinfo is UTC else utc(start),
                 end=end if end.tzinfo is UTC else utc(end), value=value, active=active, label=label, tie=tie)


async def _fetch(conn: Connection, sql: str, params: list[list[Any]]) -> list[Any]:
    cur = await conn.execute(sql, params, binary=True)
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
    f"(SELECT {_POINT_READ} FROM session_points WHERE account_id = k.a AND service = k.s AND start_ts >= k.t "
    "AND start_ts < k.e ORDER BY start_ts) AS p")


async def save_walks(conn: Connection, outcomes: Sequence[tuple[Group, Outcome]],
                     forms: StoredForms | None = None) -> set[Pair]:
    """Store the replays' marks and sessions; the (account, period) pairs whose sessions changed.

    ``forms``: the stored forms of the marks the replays read (``answer``), reused where a mark holds them."""
    dropped = [(a, s, start) for (a, s), out in outcomes for start in out.dropped]
    if dropped:
        await conn.execute(
            "DELETE FROM session_marks m USING unnest(%b::text[], %b::text[], %b::timestamptz[]) AS d(a, s, t) "
            "WHERE m.account_id = d.a AND m.service = d.s AND m.seg_start = d.t",
            [list(c) for c in zip(*dropped, strict=True)])
    forms = forms or StoredForms()
    marks = [(a, s, m.start, *mark_texts(m, forms), m.points) for (a, s), out in outcomes for m in out.marks]
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
