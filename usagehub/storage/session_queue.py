"""The queue of session segments to replay (migrations 0020, 0029); the stage is ``pipeline.session_worker``.

The queue is a log: ingest appends a row per (account, service, segment) a batch touched, holding the
earliest instant it stored there, without taking any lock a replay holds (so a session round never stalls
ingest). A session round first takes the advisory locks of the accounts it can have at once (the key of
``storage.sessions.lock_accounts``, shared with billing runs and corrections; an account another round or
a billing run holds is passed over, never waited for), then claims their rows (``FOR UPDATE SKIP LOCKED``,
whole segments), replays, and deletes exactly the rows it claimed, by id, in the same transaction. A
billing run claims its accounts' rows, waiting for them, then waits for their locks: a round never waits
for it, so neither can deadlock the other. A point committed
after the claim comes with a row the claim did not take: a later round replays it. A point committed
before the claim is seen by the replay, which reads points after claiming.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from usagehub.core.segments import EPOCH, SEGMENT
from usagehub.storage.pool import Connection
from usagehub.storage.sessions import account_lock_key, utc

# (account, service, instant): the earliest point a batch stored in one segment (column ``seg_start``, named
# when it held segment starts; a replay starts at the chunk holding the instant, see core.segments.CHUNK).
Queued = tuple[str, str, datetime]


async def queue_segments(conn: Connection, rows: Iterable[Queued]) -> None:
    """Queue segments for replay (inside the transaction that stored their points; appends, never waits)."""
    items = sorted(set(rows))
    if items:
        await conn.execute(
            "INSERT INTO session_queue (account_id, service, seg_start) "
            "SELECT * FROM unnest(%b::text[], %b::text[], %b::timestamptz[])", _columns(items))


def _columns(items: list[Queued]) -> tuple[list[str], list[str], list[datetime]]:
    """The accounts, services and segment starts of ``items`` as three arrays (for ``unnest``)."""
    return [a for a, _, _ in items], [s for _, s, _ in items], [t for _, _, t in items]


async def claim(conn: Connection, *, limit: int | None, accounts: list[str] | None = None,
                skip_locked: bool = True, max_segments: int | None = None,
                min_age_s: float = 0.0, quiet_s: float | None = None) -> tuple[list[Queued], list[int]]:
    """Claim queued rows until the transaction ends: of ``limit`` accounts, the longest waiting first.

    Returns the rows and their ids (for ``finish``).
    Rows are claimed by whole segments (``core.segments.SEGMENT``): one replay from a segment's earliest
    instant covers all its rows, so a round never leaves rows of a segment it replays (they would cost a
    second replay). ``max_segments`` claims at most that many segments of those accounts, taken in turns —
    each account's earliest segment in event time, then each one's second… (the longest waiting account
    first in a turn), so a huge account is replayed in bounded rounds and does not hold the others back;
    ``accounts`` restricts the claim to those accounts (a billing run); without ``skip_locked`` the claim
    waits for a replay holding them instead of passing over it. ``min_age_s`` passes over accounts whose
    oldest row is younger (a session worker lets batches gather: one replay then covers more of them),
    unless the newest row of the queue (of ``accounts``) is ``quiet_s`` old: ingest paused or ended, so waiting
    gathers nothing more. (Per account that would not do: a commit lane's batches come seconds apart under load.)

    With ``skip_locked`` the claim takes the accounts' locks first, those it can have at once (the caller
    holds them until the transaction ends): an account another round holds is passed over. Claiming its
    newer rows and then waiting for its lock would serialise two workers, each replaying rows the other
    let gather for only as long as the other's round took (``bench/fleet.py``: 6.3 s of lock waits in ~20 s).
    """
    if skip_locked:
        accounts = await _take_free_accounts(conn, limit=limit, accounts=accounts, min_age_s=min_age_s,
                                             quiet_s=quiet_s)
        if not accounts:
            return [], []
        limit, min_age_s, quiet_s = None, 0.0, None
    skip = " SKIP LOCKED" if skip_locked else ""
    seg = "date_bin(%(width)s, q.seg_start, %(epoch)s)"
    cur = await conn.execute(
        _due(accounts, materialized=False) + " LIMIT %(limit)s), "
        f"segs AS (SELECT q.account_id, q.service, {seg} AS seg, p.waited FROM session_queue q JOIN pick p "
        "USING (account_id) GROUP BY 1, 2, 3, 4), "
        "firsts AS (SELECT account_id, service, seg FROM segs ORDER BY row_number() OVER (PARTITION BY account_id "
        "ORDER BY seg, service), waited, account_id LIMIT %(segments)s) "
        "SELECT q.account_id, q.service, q.seg_start, q.queue_id FROM session_queue q JOIN firsts f "
        f"ON q.account_id = f.account_id AND q.service = f.service AND {seg} = f.seg "
        f"ORDER BY q.account_id, q.service, q.seg_start FOR UPDATE OF q{skip}",
        {"acc": accounts, "limit": limit, "segments": max_segments, "width": SEGMENT, "epoch": EPOCH,
         **_ages(min_age_s, quiet_s)})
    rows: list[Any] = await cur.fetchall()  # LIMIT NULL: every account, every segment
    return [(str(r[0]), str(r[1]), utc(r[2])) for r in rows], [int(r[3]) for r in rows]


async def _take_free_accounts(conn: Connection, *, limit: int | None, accounts: list[str] | None,
                              min_age_s: float, quiet_s: float | None) -> list[str]:
    """Lock up to ``limit`` accounts due for a replay that no one else holds (the longest waiting first).

    ``pick`` is materialised in its order and the lock is tried row by row under the ``LIMIT``, so no account
    beyond the limit is locked, and the locks taken are exactly the accounts returned.
    """
    cur = await conn.execute(
        _due(accounts, materialized=True) + ") "
        f"SELECT account_id FROM pick WHERE pg_try_advisory_xact_lock({account_lock_key('account_id')}) "
        "LIMIT %(limit)s",
        {"acc": accounts, "limit": limit, **_ages(min_age_s, quiet_s)})
    return [str(r[0]) for r in await cur.fetchall()]


def _ages(min_age_s: float, quiet_s: float | None) -> dict[str, float]:
    """The parameters ``age`` and ``quiet`` of ``_due`` (quiet never longer than the age it shortens)."""
    return {"age": min_age_s, "quiet": min_age_s if quiet_s is None else min(quiet_s, min_age_s)}


def _due(accounts: list[str] | None, *, materialized: bool) -> str:
    """The start of a statement: ``pick``, the accounts (of ``accounts``) due for a replay, longest waiting first.

    Left open after its ``ORDER BY`` (for a ``LIMIT``); parameters ``acc``, ``age`` and ``quiet`` (``claim``).
    """
    where = "WHERE account_id = ANY(%(acc)s)" if accounts is not None else ""
    mat = "MATERIALIZED " if materialized else ""
    return (f"WITH rows AS (SELECT account_id, queued_at, max(queued_at) OVER () AS newest FROM session_queue {where}"
            f"), pick AS {mat}(SELECT account_id, min(queued_at) AS waited FROM rows "
            "GROUP BY account_id HAVING min(queued_at) <= now() - make_interval(secs => %(age)s) "
            "OR min(newest) <= now() - make_interval(secs => %(quiet)s) ORDER BY 2, 1")


async def finish(conn: Connection, ids: Iterable[int]) -> None:
    """Delete the claimed rows ``ids`` (in the replay's transaction); rows queued since stay."""
    items = sorted(set(ids))
    if items:
        await conn.execute("DELETE FROM session_queue WHERE queue_id = ANY(%b::bigint[])", (items,))


async def queued_accounts(conn: Connection, *, tenant: str, account_id: str | None) -> list[str]:
    """The accounts of a tenant (or one of its accounts) with queued segments."""
    cur = await conn.execute(
        "SELECT DISTINCT q.account_id FROM session_queue q JOIN accounts a USING (account_id) "
        "WHERE a.tenant = %s AND (%s::text IS NULL OR a.account_id = %s) ORDER BY 1", (tenant, account_id, account_id))
    return [str(r[0]) for r in await cur.fetchall()]


async def backlog(conn: Connection) -> tuple[int, float]:
    """Queued rows (one per batch and segment it touched) and the age in seconds of the oldest (0 when empty)."""
    cur = await conn.execute(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(queued_at)), 0) FROM session_queue")
    row: Any = await cur.fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


async def zones_of(conn: Connection, accounts: Iterable[str]) -> dict[str, str]:
    """The time zone name of each account."""
    cur = await conn.execute("SELECT account_id, timezone FROM accounts WHERE account_id = ANY(%s)",
                             (sorted(set(accounts)),))
    return {str(r[0]): str(r[1]) for r in await cur.fetchall()}
