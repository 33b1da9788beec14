"""Writing events and quarantine in one transaction: COPY to a staging table, then insert new ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson

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
_INSERT_NEW = (
    f"INSERT INTO events ({', '.join(_COLUMNS)}) "
    f"SELECT DISTINCT ON (device_id, meter, ts, event_id) {', '.join(_COLUMNS)} FROM events_stage "
    "ORDER BY device_id, meter, ts, event_id, ord "
    "ON CONFLICT DO NOTHING RETURNING device_id, meter, ts, event_id"
)

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
                await copy.write_row((e.device_id, e.meter, e.ts, e.event_id, e.value, e.unit, e.kind.value,
                                      e.profile_id, e.service, e.received_at, e.reset_marker, e.text_value, i))
        await cur.execute(_INSERT_NEW)
        rows = await cur.fetchall()
    return {(str(r[0]), str(r[1]), r[2], str(r[3])) for r in rows}  # type: ignore[misc]


async def insert_quarantine(conn: Connection, items: Sequence[QuarantineItem]) -> list[int]:
    """Store quarantined messages with raw bytes and reason; return their ids in order."""
    ids: list[int] = []
    async with conn.cursor() as cur:
        for item in items:
            m = item.message
            # Text columns refuse NUL; the raw bytes keep everything as received.
            await cur.execute(
                "INSERT INTO quarantine (received_at, transport, topic, source, payload, reason, detail, meta, "
                "device_id, profile_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING quarantine_id",
                (m.received_at, _text(m.transport), _text(m.topic), _text(m.source), m.payload,
                 _text(item.reason), item.detail and _text(item.detail[:500]),
                 orjson.dumps({_text(k): _text(v) for k, v in m.meta.items()}).decode(),
                 item.device_id and _text(item.device_id), item.profile_id))
            row = await cur.fetchone()
            assert row is not None
            ids.append(int(row[0]))  # type: ignore[call-overload]
    return ids


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd")
