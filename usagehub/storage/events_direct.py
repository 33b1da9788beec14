"""Events straight into ``events`` when none of them can be stored already, else the staged insert.

The staged insert (``events.insert_events``) copies a batch into a temporary table and inserts what is
new with ``ON CONFLICT DO NOTHING``: two statements over every event, so that a redelivery or a resend
is found by the primary key. Most batches hold no event the database has: their duplicates are copies
inside the batch or of a batch this process committed moments ago (a redelivery after a reconnect, a
device repeating itself). So a pipeline keeps the identities it committed recently and the meta ids
of ``event_meta``; a batch keeps the first claim of each identity (as the staged insert does), leaves
out the identities it committed recently, and copies the rest into ``events`` directly, in a
savepoint. An identity stored by anyone else (another process, a lane's batch committed meanwhile, an
identity older than the ones kept) makes the copy fail on the primary key: the savepoint is rolled
back and the batch takes the staged insert. The database stays the judge; what is kept here only
saves it work. An identity of an archived month (``storage/archive.py``) is no row of ``events``: the
empty partition that replaced the month refuses it with the same unique violation (a trigger), and the
staged insert leaves it out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from psycopg import errors

from usagehub import metrics
from usagehub.core.events import UsageEvent
from usagehub.storage.events import WHOLE, EventKey, arrival_ms, compact_id, compact_ids, insert_events
from usagehub.storage.pool import Connection

_COLUMNS = "device_id, meter, ts, event_id, value, meta_id, received_at, reset_marker, text_value"
_TYPES = ("text", "text", "timestamptz", "text", "numeric", "int4", "timestamptz", "text", "text")
# Where ids are compact (TimescaleDB, migration 0044): a canonical integer id as event_seq, event_id NULL.
_COMPACT_COLUMNS = _COLUMNS + ", event_seq"
_COMPACT_TYPES = (*_TYPES, "int8")
Meta = tuple[str, str, str, str]  # unit, kind, profile id, service


class DirectInserts:
    """Inserts a pipeline's events, directly when it can (see the module docstring)."""

    def __init__(self, keep: int = 65_536) -> None:
        self.keep = keep
        # Two generations: new identities go to the first; when it holds keep/2, it becomes the second and the
        # old second is dropped at once (between keep/2 and keep identities are kept, none copied).
        self._recent: set[EventKey] = set()
        self._older: set[EventKey] = set()
        self._meta: dict[Meta, int] = {}

    def committed(self, keys: Iterable[EventKey]) -> None:
        """Remember identities whose batch committed (only then are they duplicates for sure)."""
        self._recent.update(keys)
        if len(self._recent) >= self.keep // 2:
            self._older, self._recent = self._recent, set()

    async def insert(self, conn: Connection, events: Sequence[UsageEvent]) -> set[EventKey]:
        """Insert the events not stored yet; return the identities that are new (as ``insert_events``)."""
        fresh: list[UsageEvent] = []
        claimed: set[EventKey] = set()
        recent, older = self._recent, self._older
        for e in events:
            key = (e.device_id, e.meter, e.ts, e.event_id)
            if key in claimed or key in recent or key in older:
                continue
            claimed.add(key)
            fresh.append(e)
        if not fresh:
            return set()
        meta = await self._meta_ids(conn, fresh)
        if meta is not None:
            try:
                async with conn.transaction():  # a savepoint: a key stored already undoes only the copy
                    await _copy(conn, fresh, meta, compact=await compact_ids(conn))
                return claimed
            except errors.UniqueViolation:
                metrics.EVENT_INSERT_FALLBACKS.inc()
        return await insert_events(conn, events)

    async def _meta_ids(self, conn: Connection, events: Sequence[UsageEvent]) -> list[int] | None:
        """Each event's meta id, or None when a combination is not in ``event_meta`` yet (staged insert adds it)."""
        known = self._meta
        # The kind as its StrEnum member: it hashes and compares as its value, without the enum's property call.
        combos = [(e.unit, e.kind, e.profile_id, e.service) for e in events]
        try:
            return [known[c] for c in combos]
        except KeyError:
            pass
        missing = list({c for c in combos if c not in known})
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT m.meta_id, m.unit, m.kind, m.profile_id, m.service FROM event_meta m "
                "JOIN unnest(%b::text[], %b::text[], %b::text[], %b::text[]) AS k(u, k, p, s) "
                "ON (m.unit, m.kind, m.profile_id, m.service) = (k.u, k.k, k.p, k.s)",
                [[str(v) for v in col] for col in zip(*missing, strict=True)])
            for row in await cur.fetchall():
                known[(str(row[1]), str(row[2]), str(row[3]), str(row[4]))] = int(str(row[0]))
        if any(c not in known for c in missing):
            return None
        return [known[c] for c in combos]


async def _copy(conn: Connection, events: Sequence[UsageEvent], meta: Sequence[int], *, compact: bool) -> None:
    columns, types = (_COMPACT_COLUMNS, _COMPACT_TYPES) if compact else (_COLUMNS, _TYPES)
    async with conn.cursor() as cur, cur.copy(f"COPY events ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(list(types))
        write = copy.write_row
        arrived, at_ms = None, None  # the events of one message share their arrival: truncated once
        if not compact:
            for e, meta_id in zip(events, meta, strict=True):
                if e.received_at is not arrived:
                    arrived, at_ms = e.received_at, arrival_ms(e.received_at)
                v = e.value  # whole values as ints (events.WHOLE): inlined, this loop runs per reading
                await write((e.device_id, e.meter, e.ts, e.event_id, int(v) if v.same_quantum(WHOLE) else v, meta_id,
                             at_ms, e.reset_marker, e.text_value))
            return
        for e, meta_id in zip(events, meta, strict=True):
            if e.received_at is not arrived:
                arrived, at_ms = e.received_at, arrival_ms(e.received_at)
            seq, v = compact_id(e.event_id), e.value
            await write((e.device_id, e.meter, e.ts, None if seq is not None else e.event_id,
                         int(v) if v.same_quantum(WHOLE) else v, meta_id, at_ms, e.reset_marker, e.text_value, seq))
