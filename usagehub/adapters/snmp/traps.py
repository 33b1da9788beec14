"""Trap and inform receiver: every datagram on the trap port becomes a RawMessage or a counted handshake.

pysnmp authenticates (community or USM) and decodes; we take over the engine's
receive callback so that a datagram pysnmp refuses (unknown community, wrong
digest, garbage) is still submitted, as a ``rejected`` message that decodes to a
quarantine reason. Informs are answered only after the pipeline has durably
stored the trap, so a hub crash makes the device retransmit instead of losing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config as snmp_config
from pysnmp.entity.engine import SnmpEngine
from pysnmp.proto import rfc3411
from pysnmp.proto.api import v1, v2c
from pysnmp.proto.proxy import rfc2576

from usagehub.adapters.base import DeviceDirectory, Sink
from usagehub.adapters.ratelimit import SourceLimiter
from usagehub.adapters.snmp import metrics
from usagehub.adapters.snmp.config import TrapConfig
from usagehub.adapters.snmp.trapauth import Sender, TrapAuth
from usagehub.adapters.snmp.values import to_json, type_name
from usagehub.core.codecs.snmp import encode_payload
from usagehub.core.events import RawMessage

log = logging.getLogger(__name__)

SNMP_TRAP_OID = "1.3.6.1.6.3.1.1.4.1.0"
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
_PDU_TYPES = (v1.TrapPDU.tagSet, v2c.SNMPv2TrapPDU.tagSet, v2c.InformRequestPDU.tagSet)
_VERSIONS = {0: "1", 1: "2c", 3: "3"}
# Counters pysnmp bumps when it refuses a datagram, and what that means for us.
_REASONS = (
    ("__SNMPv2-MIB", "snmpInBadCommunityNames", "unauthenticated: unknown community"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnknownUserNames", "unauthenticated: unknown user"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsWrongDigests", "unauthenticated: wrong digest"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsDecryptionErrors", "unauthenticated: decryption failed"),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnsupportedSecLevels", "unauthenticated: unsupported level"),
    ("__SNMPv2-MIB", "snmpInASNParseErrs", "malformed: not an SNMP message"),
    ("__SNMPv2-MIB", "snmpInBadVersions", "malformed: unsupported SNMP version"),
    ("__SNMP-MPD-MIB", "snmpUnknownSecurityModels", "malformed: unknown security model"),
    ("__SNMP-MPD-MIB", "snmpInvalidMsgs", "malformed: invalid message"),
    # RFC 3414 discovery and time synchronisation: answered with a Report, carries no data.
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsUnknownEngineIDs", ""),
    ("__SNMP-USER-BASED-SM-MIB", "usmStatsNotInTimeWindows", ""),
)

Respond = Callable[[], None]


class TrapReceiver:
    """Listens on the trap port; ``run(sink)`` submits what arrives."""

    def __init__(self, config: TrapConfig, directory: DeviceDirectory, refresh_s: float) -> None:
        self._config, self._directory, self._refresh_s = config, directory, refresh_s
        self._engine: SnmpEngine | None = None
        self._auth: TrapAuth | None = None
        self._queue: asyncio.Queue[tuple[RawMessage, Respond | None]] = asyncio.Queue(config.queue_max)
        self._seen: dict[tuple[Any, ...], tuple[datetime, float]] = {}
        self._handled = False
        self._datagram_address: tuple[str, int] = ("", 0)
        self._community = ""
        self._limiter = SourceLimiter(config.rate_limit)
        self._waiting: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        """Bind the port and install the registry's credentials."""
        self._engine = engine = SnmpEngine()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _large_receive_buffer(sock)
        try:
            sock.bind((self._config.host, self._config.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        transport = udp.UdpAsyncioTransport().open_server_mode(sock=sock)
        snmp_config.add_transport(engine, udp.DOMAIN_NAME, transport)
        dispatcher = engine.transport_dispatcher
        dispatcher.unregister_recv_callback(None)
        dispatcher.register_recv_callback(self._on_datagram)
        engine.message_dispatcher.register_context_engine_id(b"", _PDU_TYPES, self._on_notification)
        engine.observer.register_observer(self._on_community, "rfc2576.processIncomingMsg")
        self._counters = [(engine.get_mib_builder().import_symbols(mib, name)[0], reason)
                          for mib, name, reason in _REASONS]
        self._auth = TrapAuth(engine)
        self._auth.load(await self._directory.endpoints())
        for _ in range(1000):  # the asyncio endpoint is created by a task pysnmp scheduled
            if transport.transport is not None:
                break
            await asyncio.sleep(0.001)
        log.info("snmp trap receiver listening on %s:%d", self._config.host, self.port)

    def close(self) -> None:
        """Release the port."""
        for task in self._waiting:
            task.cancel()
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None

    async def run(self, sink: Sink) -> None:
        """Submit queued traps; answer informs after commit; re-read credentials every ``refresh_s``."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._refresh_loop(), name="snmp-trap-refresh")
            while True:
                message, respond = await self._queue.get()
                future = await sink.submit(message)
                if respond is None:
                    future.add_done_callback(_consume)
                else:
                    task = asyncio.create_task(_respond_after(future, respond), name="snmp-inform-ack")
                    self._waiting.add(task)
                    task.add_done_callback(self._waiting.discard)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            if self._auth is not None:
                self._auth.load(await self._directory.endpoints())

    # --- pysnmp callbacks (synchronous, inside the datagram handler) ---------------------

    def _on_datagram(self, dispatcher: Any, domain: Any, address: Any, whole_msg: bytes) -> None:
        assert self._engine is not None
        # A flood from one address never reaches quarantine; the total bounds what spoofed addresses
        # write, and is taken only by traps that no registered device's credentials vouch for (_refused),
        # so garbage from many addresses cannot crowd out a panel's alarm.
        if not self._limiter.allow_source(str(address[0])):
            metrics.TRAPS.labels("rate_limited").inc()
            return
        before = [int(counter.syntax) for counter, _ in self._counters]
        self._handled, self._datagram_address, self._community = False, (str(address[0]), int(address[1])), ""
        try:
            self._engine.message_dispatcher.receive_message(self._engine, domain, address, whole_msg)
        except Exception as err:  # pysnmp on hostile bytes: quarantine, never crash
            self._reject(whole_msg, f"malformed: {type(err).__name__}")
            return
        if self._handled:
            return
        reason = "not a notification"
        for (counter, why), old in zip(self._counters, before, strict=True):
            if int(counter.syntax) != old:
                reason = why
                break
        if not reason:
            metrics.TRAPS.labels("handshake").inc()
            return
        self._reject(whole_msg, reason)

    def _on_community(self, engine: Any, execpoint: str, variables: dict[str, Any], ctx: Any) -> None:
        self._community = str(variables.get("communityName", ""))

    def _on_notification(self, engine: Any, mp_model: int, sec_model: int, sec_name: Any, sec_level: Any,
                         context_engine_id: Any, context_name: Any, pdu_version: Any, pdu: Any,
                         max_size: Any, state_reference: Any) -> None:
        self._handled = True
        v2_pdu = rfc2576.v1_to_v2(pdu, snmpTrapCommunity=self._community) if mp_model == 0 else pdu
        respond: Respond | None = None
        if v2_pdu.tagSet in rfc3411.CONFIRMED_CLASS_PDUS:
            def respond() -> None:
                response = v2c.apiPDU.get_response(v2_pdu)
                v2c.apiPDU.set_error_status(response, "noError")
                v2c.apiPDU.set_error_index(response, 0)
                v2c.apiPDU.set_varbinds(response, v2c.apiPDU.get_varbinds(v2_pdu))
                engine.message_dispatcher.return_response_pdu(
                    engine, mp_model, sec_model, sec_name, sec_level, context_engine_id, context_name,
                    pdu_version, response, max_size, state_reference, {})
        sender = Sender(address=self._datagram_address[0], security_model=int(sec_model),
                        security_name=str(sec_name))
        varbinds = v2c.apiPDU.get_varbinds(v2_pdu)
        self._accept(sender, _VERSIONS.get(mp_model, str(mp_model)), v2_pdu, varbinds, respond)

    # --- building messages ----------------------------------------------------------------

    def _accept(self, sender: Sender, version: str, pdu: Any, varbinds: Any, respond: Respond | None) -> None:
        values = {str(oid): to_json(value) for oid, value in varbinds}
        types = {str(oid): type_name(value) for oid, value in varbinds}
        trap_oid = values.pop(SNMP_TRAP_OID, None)
        uptime = values.pop(SYS_UPTIME, None)
        request_id = int(v2c.apiPDU.get_request_id(pdu))
        ts = self._first_seen((sender, request_id, uptime, trap_oid))
        source = f"{self._datagram_address[0]}:{self._datagram_address[1]}"
        body: dict[str, Any] = {
            "kind": "trap", "ts": ts.isoformat(), "source": source, "version": version,
            "security_name": sender.security_name, "inform": respond is not None, "request_id": request_id,
            "trap": str(trap_oid) if trap_oid is not None else None,
            "uptime_ticks": uptime if isinstance(uptime, int) else None, "varbinds": values, "types": types}
        assert self._auth is not None
        device = self._auth.device_for(sender)
        if device is None:
            if not self._limiter.allow_total():
                metrics.TRAPS.labels("rate_limited").inc()
                return
            body.update(kind="rejected", reason=f"unknown device: no registered device at {sender.address} "
                                                f"uses these credentials")
            self._enqueue(_message(body, "rejected", source, ts, {"rejected": body["reason"]}), respond,
                          "unknown_device")
            return
        body["device_id"] = device.device_id
        meta = {"device_id": device.device_id}
        if device.profile_id:
            meta["profile"] = device.profile_id
        self._enqueue(_message(body, body["trap"] or "trap", source, ts, meta), respond, "accepted")

    def _reject(self, whole_msg: bytes, reason: str) -> None:
        if not self._limiter.allow_total():
            metrics.TRAPS.labels("rate_limited").inc()
            return
        now = datetime.now(UTC)
        source = f"{self._datagram_address[0]}:{self._datagram_address[1]}"
        body = {"kind": "rejected", "ts": now.isoformat(), "source": source, "reason": reason,
                "datagram": whole_msg.hex()}
        self._enqueue(_message(body, "rejected", source, now, {"rejected": reason}), None, "rejected")

    def _enqueue(self, message: RawMessage, respond: Respond | None, result: str) -> None:
        try:
            self._queue.put_nowait((message, respond))
        except asyncio.QueueFull:
            metrics.TRAPS.labels("overflow").inc()  # an inform is not answered: the device resends
            return
        metrics.TRAPS.labels(result).inc()

    def _first_seen(self, key: tuple[Any, ...]) -> datetime:
        """The time a notification was first received, so a retransmitted inform keeps its identity."""
        now = datetime.now(UTC)
        horizon = now.timestamp()
        if len(self._seen) > 10_000 or (self._seen and next(iter(self._seen.values()))[1] < horizon):
            self._seen = {k: v for k, v in self._seen.items() if v[1] >= horizon}
        first = self._seen.get(key)
        if first is not None:
            return first[0]
        self._seen[key] = (now, horizon + self._config.dedupe_window_s)
        return now


def _large_receive_buffer(sock: socket.socket, size: int = 4 * 1024 * 1024) -> None:
    """Room for a burst, so datagrams are dropped (and counted) by us, not silently by the kernel."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    with contextlib.suppress(OSError):
        if force is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)  # needs CAP_NET_ADMIN
                return
            except OSError:
                pass
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)  # capped by net.core.rmem_max


def _message(body: dict[str, Any], topic: str, source: str, ts: datetime, meta: dict[str, str]) -> RawMessage:
    return RawMessage(transport="snmp-trap", topic=topic, payload=encode_payload(body), received_at=ts,
                      source=source, meta=meta)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _respond_after(future: asyncio.Future[Any], respond: Respond) -> None:
    """Answer an inform once its trap is durably stored (accepted, duplicate or quarantined)."""
    try:
        await future
    except Exception:  # not stored: stay silent so the device retransmits
        return
    respond()
