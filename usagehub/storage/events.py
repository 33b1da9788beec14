"""Writing events and quarantine in one transaction: COPY to a staging table, then insert new ones."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import orjson

from usagehub import metrics
from usagehub.core.events import RawMessage, UsageEvent
from usagehub.storage.pool import Connection

_COLUMNS = ("device_id", "meter", "ts", "event_id", "value", "unit", "kind", "profile_id", "service",
            "received_at", "reset_marker", "text_value")
_TYPES = ("text", "text", "timestamptz", "text", "numeric", "text", "text", "text", "text",
          "timestamptz", "text", "text")
_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS events_stage (device_id text, meter text, ts timestamptz, "
    "event_id text, value numeric, unit text, kind text, profile_id text, service text, "
    "received_at timestamptz, reset_marker text, text_value text, ord int) ON COMMIT DELETE ROWS"
)
# unit, kind, profile_id and service are stored once in event_meta (migration 0024). A combination new
# to the database is inserted first; one inserted by a concurrent batch makes this wait for its commit,
# so the next statement (a new snapshot) finds it.
_META = "(m.unit, m.kind, m.profile_id, m.service) = (s.unit, s.kind, s.profile_id, s.service)"
_INSERT_META = (
    "INSERT INTO event_meta (unit, kind, profile_id, service) "
    "SELECT DISTINCT unit, kind, profile_id, service FROM events_stage s "
    f"WHERE NOT EXISTS (SELECT 1 FROM event_meta m WHERE {_META}) ORDER BY 1, 2, 3, 4 ON CONFLICT DO NOTHING"
)
_STORED = ("device_id", "meter", "ts", "event_id", "value", "meta_id", "received_at", "reset_marker", "text_value")
# On TimescaleDB (migration 0044) an id that is the canonical decimal of an integer below 10^18 is stored as
# event_seq with event_id NULL. Writers store that form themselves: TimescaleDB 2.29.2 checks a row against
# compressed chunks as it was before BEFORE triggers, so the table's trigger (for other writers) is not enough.
CANONICAL_ID = "^(0|[1-9][0-9]{0,17})$"  # as in migration 0044
_CANONICAL = re.compile(CANONICAL_ID[1:-1])
_SELECTED = {"meta_id": "m.meta_id", "event_id": (
    f"CASE WHEN s.event_id ~ '{CANONICAL_ID}' THEN NULL ELSE s.event_id END, "
    f"CASE WHEN s.event_id ~ '{CANONICAL_ID}' THEN s.event_id::bigint END")}


def _insert_new(compact: bool) -> str:
    stored = [c + (", event_seq" if compact and c == "event_id" else "") for c in _STORED]
    selected = [_SELECTED[c] if c == "meta_id" or (compact and c == "event_id") else "s." + c for c in _STORED]
    return (
        f"INSERT INTO events ({', '.join(stored)}) "
        f"SELECT DISTINCT ON (s.device_id, s.meter, s.ts, s.event_id) {', '.join(selected)} "
        f"FROM events_stage s JOIN event_meta m ON {_META} "
        # An identity in an archived month (storage/archive.py) is a duplicate like a stored row; only rows
        # before the end of the last archived month are looked up there.
        "WHERE CASE WHEN s.ts < (SELECT max(month_end) FROM events_archived) "
        "THEN NOT events_archived_has(s.device_id, s.meter, s.ts, s.event_id) ELSE true END "
        "ORDER BY s.device_id, s.meter, s.ts, s.event_id, s.ord "
        "ON CONFLICT DO NOTHING RETURNING device_id, meter, ts, "
        + ("coalesce(event_id, event_seq::text)" if compact else "event_id"))


_INSERT_NEW = {compact: _insert_new(compact) for compact in (False, True)}
_COMPACT_IDS: dict[tuple[str, int, str], bool] = {}


def arrival_ms(at: datetime) -> datetime:
    """``at`` truncated to the whole millisecond: how events record the hub's arrival stamps (migration 0047).

    ``received_at`` is the hub's clock, not a device fact; to the millisecond it compresses to ~2 B instead of
    ~4 B per event on TimescaleDB. Both storages store it so, and give the same answers.
    """
    return at.replace(microsecond=at.microsecond - at.microsecond % 1000)


WHOLE = Decimal(1)
"""``v.same_quantum(WHOLE)``: ``v`` has exponent 0, so ``int(v)`` is the same numeric to PostgreSQL.

A binary COPY dumps a Decimal into ``numeric`` in ~0.66 us (through ``as_tuple``) and an int in ~0.17 us
(formatter microbench); both give the same value and display scale (0). Whole registers, pulse and event
counts are common, so the hot copies (events, session points) pass such values as ints. Scaled values
(Wh to kWh: exponent -3) stay Decimals.
"""


def copy_numeric(value: Decimal) -> Decimal | int:
    """``value`` as a binary COPY into ``numeric`` takes it fastest: an int when its exponent is 0 (``WHOLE``)."""
    return int(value) if value.same_quantum(WHOLE) else value


def compact_id(event_id: str) -> int | None:
    """The event_seq that stores ``event_id`` where ids are compact (TimescaleDB, migration 0044), else None."""
    return int(event_id) if _CANONICAL.fullmatch(event_id) else None


async def compact_ids(conn: Connection) -> bool:
    """Whether this database stores canonical integer ids as event_seq (migration 0044 on TimescaleDB).

    Known for good once 0044 is applied (then remembered per database); before it, asked again each time.
    """
    info = conn.info
    key = (info.host, info.port, info.dbname)
    if key in _COMPACT_IDS:
        return _COMPACT_IDS[key]
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'events'::regclass AND attname = 'event_seq' "
        "AND NOT attisdropped), EXISTS (SELECT 1 FROM schema_migrations WHERE name = '0044_events_compact')")
    row = await cur.fetchone()
    compact, final = (bool(row[0]), bool(row[1])) if row else (False, False)
    if final:
        _COMPACT_IDS[key] = compact
    return compact

EventKey = tuple[str, str, datetime, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class QuarantineItem:
    """A message that could not become events, with the reason."""

    message: RawMessage
    reason: str
    detail: str | None = None
    device_id: str | None = None
    profile_id: str | None = None


def event_key(event: UsageEvent) -> EventKey:
    """The stored identity of ``event``."""
    return (event.device_id, event.meter, event.ts, event.event_id)


async def insert_events(conn: Connection, events: Sequence[UsageEvent]) -> set[EventKey]:
    """Insert ``events`` that are not stored yet; return the identities that are new.

    Must run inside the caller's transaction: the events, the usage derived from
    them and the quarantine rows of the batch commit together.
    """
    if not events:
        return set()
    await conn.execute(_STAGE)
    async with conn.cursor() as cur:
        async with cur.copy(f"COPY events_stage ({', '.join(_COLUMNS)}, ord) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([*_TYPES, "int4"])
            for i, e in enumerate(events):
                await copy.write_row((e.device_id, e.meter, e.ts, e.event_id, copy_numeric(e.value), e.unit,
                                      e.kind.value, e.profile_id, e.service, arrival_ms(e.received_at), e.reset_marker,
                                      e.text_value, i))
        await cur.execute(_INSERT_META)
        await cur.execute(_INSERT_NEW[await compact_ids(conn)])
        rows = await cur.fetchall()
    return {(str(r[0]), str(r[1]), r[2], str(r[3])) for r in rows}  # type: ignore[misc]


# A quarantine row keeps at most this much of the payload; the size and SHA-256 of the whole stay.
QUARANTINE_PAYLOAD_MAX = 256 * 1024
_INSERT_QUARANTINE = (
    "INSERT INTO quarantine (received_at, transport, topic, source, payload, reason, detail, meta, device_id, "
    "profile_id, fingerprint, payload_size, payload_sha256, last_seen_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (fingerprint) WHERE replayed_at IS NULL DO UPDATE SET seen_count = quarantine.seen_count + 1, "
    "last_seen_at = greatest(quarantine.last_seen_at, EXCLUDED.last_seen_at) "
    "RETURNING quarantine_id, seen_count"
)


def quarantine_fingerprint(item: QuarantineItem) -> bytes:
    """The identity of a quarantine entry: the same message refused for the same reason is one entry."""
    m = item.message
    digest = hashlib.blake2b(digest_size=16)
    for part in (m.transport, m.topic, item.reason, item.device_id or ""):
        digest.update(part.encode("utf-8", "replace") + b"\x1f")
    digest.update(m.payload)
    return digest.digest()


async def insert_quarantine(conn: Connection, items: Sequence[QuarantineItem]) -> list[int]:
    """Store quarantined messages with raw bytes and reason; return their ids in order.

    An open entry with the same identity (:func:`quarantine_fingerprint`: a redelivery,
    a device repeating itself) is counted (``seen_count``) instead of stored again; a
    payload over :data:`QUARANTINE_PAYLOAD_MAX` is cut, with its full size and SHA-256 kept.
    """
    ids: list[int] = []
    async with conn.cursor() as cur:
        for item in items:
            m = item.message
            payload, detail = m.payload, item.detail
            if len(payload) > QUARANTINE_PAYLOAD_MAX:
                payload = payload[:QUARANTINE_PAYLOAD_MAX]
                detail = f"{detail or ''} (payload of {len(m.payload)} bytes cut to {QUARANTINE_PAYLOAD_MAX})"
                metrics.QUARANTINE_TRUNCATED.inc()
            # Text columns refuse NUL; the raw bytes keep everything as received.
            await cur.execute(_INSERT_QUARANTINE, (
                m.received_at, _text(m.transport[:100]), _text(m.topic[:1000]), _text(m.source[:200]), payload,
                _text(item.reason[:200]), detail and _text(detail[:500]),
                orjson.dumps({_text(k[:100]): _text(v[:1000]) for k, v in list(m.meta.items())[:32]}).decode(),
                item.device_id and _text(item.device_id[:200]), item.profile_id, quarantine_fingerprint(item),
                len(m.payload), hashlib.sha256(m.payload).digest(), m.received_at))
            row = await cur.fetchone()
            assert row is not None
            ids.append(int(row[0]))  # type: ignore[call-overload]
            if int(row[1]) > 1:  # type: ignore[call-overload]
                metrics.QUARANTINE_MERGED.inc()
    return ids


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd")
