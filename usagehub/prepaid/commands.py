"""Block and restore commands to an account's devices, sent after the commit that blocked or restored it.

Every hub hears every event (``storage.prepaid_events``); the first to lock the
event row (``FOR UPDATE SKIP LOCKED``) sends the commands — to each device bound
to the account, as its profile's ``command:`` block says (MQTT topic, or CoAP to
the device's registered address) — and marks the event sent in the same
transaction. A periodic sweep sends what a crashed hub left unsent. An event that a later
block/restore of the same account supersedes is marked sent with no command: devices get the
account's latest state, never a stale one after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool

from usagehub.core.profiles import CommandSpec, Profile
from usagehub.storage.ledger import PrepaidEvent
from usagehub.storage.pool import mapped_errors

log = logging.getLogger(__name__)
Publish = Callable[[str, bytes], Awaitable[None]]
DlmsCommand = Callable[[str, str, str], Awaitable[None]]  # (device id, blocked/restored, disconnect OBIS)
COMMAND_KINDS = ("blocked", "restored")


class CoapCommands:
    """POSTs commands to devices over CoAP (a client context created on first use)."""

    def __init__(self) -> None:
        self._context: Any = None

    async def send(self, host: str, port: int | None, path: str, payload: bytes) -> None:
        """A confirmable POST; raises on failure or a non-success answer."""
        import aiocoap

        if self._context is None:
            self._context = await aiocoap.Context.create_client_context()
        hostport = f"[{host}]" if ":" in host else host
        uri = f"coap://{hostport}:{port or 5683}/{path.lstrip('/')}"
        response = await self._context.request(aiocoap.Message(code=aiocoap.POST, uri=uri, payload=payload)).response
        if not response.code.is_successful():
            raise ConnectionError(f"{uri} answered {response.code}")

    async def close(self) -> None:
        """Release the client context."""
        if self._context is not None:
            await self._context.shutdown()
            self._context = None


class CommandDispatcher:
    """Sends the device commands of block/restore events exactly once across hubs (at least once on crashes)."""

    def __init__(self, pool: AsyncConnectionPool, profiles: Sequence[Profile], mqtt: Publish | None,
                 coap: CoapCommands | None = None, *, timeout_s: float = 5.0,
                 retry_s: float = 60.0) -> None:
        self.pool, self.mqtt, self.coap = pool, mqtt, coap
        self.commands: dict[str, CommandSpec] = {p.id: p.command for p in profiles if p.command is not None}
        self.timeout_s = timeout_s
        self.retry_s = retry_s  # failed sends are retried by the sweep for this long after the event
        self.sent = 0
        self.dlms: DlmsCommand | None = None  # the dlms adapter's class 70 command, when the hub polls DLMS meters

    async def on_event(self, event: PrepaidEvent) -> None:
        """Event handler: dispatch block/restore events."""
        if event.kind in COMMAND_KINDS:
            await self.dispatch(event.event_id)

    async def dispatch(self, event_id: int) -> int | None:
        """Send an event's commands unless another hub has or is; the number sent, or None if not ours."""
        async with mapped_errors(), self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT e.account_id, e.kind, now() - e.at < make_interval(secs => %(retry)s), EXISTS ("
                " SELECT 1 FROM prepaid_events later WHERE later.account_id = e.account_id "
                " AND later.kind = ANY(%(kinds)s) AND later.event_id > e.event_id) "
                "FROM prepaid_events e WHERE e.event_id = %(id)s AND e.commands_sent_at IS NULL "
                "AND e.kind = ANY(%(kinds)s) FOR UPDATE SKIP LOCKED",
                {"retry": self.retry_s, "id": event_id, "kinds": list(COMMAND_KINDS)})
            row = await cur.fetchone()
            if row is None:
                return None
            account, kind, recent, superseded = str(row[0]), str(row[1]), bool(row[2]), bool(row[3])
            if superseded:
                # A later block/restore of the account says what its devices must do now: a stale command
                # sent late (the sweep, after a failed send) would only flip them back and forth.
                await conn.execute("UPDATE prepaid_events SET commands_sent_at = now(), commands = 0 "
                                   "WHERE event_id = %s", (event_id,))
                return 0
            cur = await conn.execute(
                "SELECT d.device_id, d.profile_id, d.address, d.port FROM bindings b JOIN devices d USING (device_id) "
                "WHERE b.account_id = %s AND b.valid @> now() ORDER BY d.device_id", (account,))
            sent = failed = 0
            for device_id, profile_id, address, port in await cur.fetchall():
                outcome = await self._send(kind, str(device_id), profile_id, address, port)
                sent += outcome is True
                failed += outcome is False
            if failed and recent:
                return None  # the sweep retries (a device gets a block twice at worst: commands are idempotent)
            await conn.execute("UPDATE prepaid_events SET commands_sent_at = now(), commands = %s "
                               "WHERE event_id = %s", (sent, event_id))
        self.sent += sent
        return sent

    async def _send(self, kind: str, device_id: str, profile_id: str | None, address: str | None,
                    port: int | None) -> bool | None:
        """True: sent; False: failed (retry); None: this device takes no commands."""
        spec = self.commands.get(profile_id or "")
        if spec is None:
            return None
        payload = (spec.block_payload if kind == "blocked" else spec.restore_payload).encode()
        topic = spec.topic.replace("{device_id}", device_id)
        try:
            # a DLMS session (association, HLS, action, read-back) takes longer than one publish
            async with asyncio.timeout(self.timeout_s * (6 if spec.transport == "dlms" else 1)):
                if spec.transport == "mqtt" and self.mqtt is not None:
                    await self.mqtt(topic, payload)
                elif spec.transport == "coap" and self.coap is not None and address:
                    await self.coap.send(address, port, topic, payload)
                elif spec.transport == "dlms" and self.dlms is not None:
                    await self.dlms(device_id, kind, topic)  # topic: the disconnect control object's OBIS
                else:
                    return None
        except (TimeoutError, OSError, ConnectionError) as err:
            log.warning("%s command to %s not delivered: %s", kind, device_id, err)
            return False
        except Exception as err:  # a transport library error: the device misses this command, others go on
            log.warning("%s command to %s failed: %r", kind, device_id, err)
            return False
        return True

    async def sweep(self, older_than_s: float = 2.0) -> int:
        """Send commands of events left unsent (a hub crashed, a notification was missed)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT event_id FROM prepaid_events WHERE commands_sent_at IS NULL AND kind = ANY(%s) "
                "AND at < now() - make_interval(secs => %s) ORDER BY event_id LIMIT 100",
                (list(COMMAND_KINDS), older_than_s))
            ids = [int(r[0]) for r in await cur.fetchall()]
        done = 0
        for event_id in ids:
            if await self.dispatch(event_id) is not None:
                done += 1
        return done
