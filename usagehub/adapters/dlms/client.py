"""One blocking DLMS/COSEM session on the ``dlms-cosem`` client: associate, read, release (run in a thread)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import structlog
from dlms_cosem import cosem, dlms_data, enumerations, exceptions, security
from dlms_cosem.client import ActionError, DataResultError, DlmsClient, HLSError
from dlms_cosem.cosem.capture_object import CaptureObject
from dlms_cosem.cosem.selective_access import RangeDescriptor
from dlms_cosem.io import BlockingTcpIO, HdlcTransport, TcpTransport
from dlms_cosem.time import datetime_from_bytes
from dlms_cosem.utils import parse_as_dlms_data

from usagehub.core.codecs.dlms_poll import DlmsPollOptions

log = logging.getLogger(__name__)
T = TypeVar("T")
Value = tuple[Any, int | None, int | None]  # raw value, scaler, unit code

if not structlog.is_configured():
    # dlms-cosem logs every APDU at INFO through structlog (to stdout by default): keep warnings only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


class PollFailed(Exception):
    """A session got no usable answer; ``auth`` tells a rejected password/key from a transport failure."""

    def __init__(self, reason: str, *, auth: bool = False) -> None:
        self.reason, self.auth = reason, auth
        super().__init__(reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """Where the meter is and how this hub presents itself to it."""

    host: str
    port: int
    timeout_s: float
    password: bytes | None = None
    encryption_key: bytes | None = None
    authentication_key: bytes | None = None
    client_system_title: bytes = b"USH\x00\x00\x00\x00\x01"
    invocation_counter: int = 0


@dataclass(slots=True, kw_only=True)
class Reading:
    """What one session read: the clock, single objects, load-profile rows, and the next invocation counter."""

    clock: datetime | None = None
    objects: dict[str, Value] = field(default_factory=dict)
    rows: list[tuple[datetime, dict[str, Value]]] = field(default_factory=list)
    invocation_counter: int = 0


class _TcpIO(BlockingTcpIO):  # type: ignore[misc]  # attrs class without type hints
    """The library's blocking TCP I/O, except that a closed connection is an error instead of an endless loop."""

    def recv(self, amount: int = 1) -> bytes:
        """Exactly ``amount`` bytes; CommunicationError when the meter closes the connection first."""
        if not self.tcp_socket:
            raise exceptions.CommunicationError("TCP transport not connected")
        data = b""
        while len(data) < amount:
            try:
                chunk = self.tcp_socket.recv(amount - len(data))
            except OSError as err:
                raise exceptions.CommunicationError("could not receive data") from err
            if not chunk:
                raise exceptions.CommunicationError("the meter closed the connection")
            data += chunk
        return data

    def disconnect(self) -> None:
        """Close the socket even when the meter hung up first (the library leaks it when shutdown fails)."""
        sock: socket.socket | None = self.tcp_socket  # type: ignore[has-type]  # attrs field, untyped library
        self.tcp_socket = None
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError as err:
            log.debug("shutdown of %s:%s: %s", self.host, self.port, err)
        finally:
            sock.close()


def _obis(text: str) -> cosem.Obis:
    return cosem.Obis(*(int(p) for p in text.split(".")))


def _attribute(interface: int, obis: str, number: int) -> cosem.CosemAttribute:
    return cosem.CosemAttribute(interface=enumerations.CosemInterface(interface), instance=_obis(obis),
                                attribute=number)


def _authentication(options: DlmsPollOptions, target: Target) -> Any:
    if options.authentication == "lls":
        if not target.password:
            raise PollFailed("LLS needs the device secret 'password'", auth=True)
        return security.LowLevelSecurityAuthentication(secret=target.password)
    if options.authentication == "hls_gmac":
        return security.HighLevelSecurityGmacAuthentication(challenge_length=32)
    return security.NoSecurityAuthentication()


def _client(options: DlmsPollOptions, target: Target) -> DlmsClient:
    if options.is_ciphered and not (target.encryption_key and target.authentication_key):
        raise PollFailed("no keys for this meter (usagehub keys device-set <id> and <id>:auth "
                         "--protocol dlms_poll)", auth=True)
    timeout = max(1, round(target.timeout_s))
    io = _TcpIO(host=target.host, port=target.port, timeout=timeout)
    transport: Any
    if options.transport == "hdlc":
        transport = HdlcTransport(client_logical_address=options.client_address,
                                  server_logical_address=options.server_address, io=io,
                                  server_physical_address=options.server_physical_address, timeout=timeout)
    else:
        transport = TcpTransport(client_logical_address=options.client_address,
                                 server_logical_address=options.server_address, io=io, timeout=timeout)
    ciphered = options.is_ciphered
    return DlmsClient(transport=transport, authentication=_authentication(options, target),
                      encryption_key=target.encryption_key if ciphered else None,
                      authentication_key=target.authentication_key if ciphered else None,
                      client_system_title=target.client_system_title,
                      client_initial_invocation_counter=target.invocation_counter,
                      max_pdu_size=options.max_pdu_size, timeout=timeout)


_AUTH_ERRORS = (HLSError, exceptions.DecryptionError, exceptions.CipheringError)


@contextmanager
def session(options: DlmsPollOptions, target: Target) -> Iterator[DlmsClient]:
    """An associated client; released and disconnected on the way out; PollFailed on any failure."""
    client = _client(options, target)
    try:
        client.connect()
    except (exceptions.CommunicationError, OSError) as err:
        client.transport.io.disconnect()  # HDLC opens the socket before its SNRM/UA exchange
        raise PollFailed(f"cannot connect to {target.host}:{target.port}: {err.__cause__ or err}") from err
    try:
        try:
            client.associate()
        except exceptions.DlmsClientException as err:
            raise PollFailed(f"association refused: {err}", auth=True) from err
        except _AUTH_ERRORS as err:
            raise PollFailed(f"authentication failed: {type(err).__name__}", auth=True) from err
        yield client
        try:
            client.release_association()
        except Exception as err:  # the reading is complete; a meter that hangs up first is common
            log.debug("release of %s failed: %s", target.host, err)
    except PollFailed:
        raise
    except _AUTH_ERRORS as err:
        raise PollFailed(f"ciphering failed: {type(err).__name__}", auth=True) from err
    except (exceptions.CommunicationError, OSError, TimeoutError) as err:
        raise PollFailed(f"connection to {target.host}:{target.port} failed: {err.__cause__ or err}") from err
    except (DataResultError, ActionError, exceptions.LocalDlmsProtocolError) as err:
        raise PollFailed(f"meter refused a request: {err}") from err
    except (ValueError, KeyError, IndexError, TypeError) as err:  # a malformed answer
        raise PollFailed(f"unreadable answer: {type(err).__name__}: {str(err)[:120]}") from err
    finally:
        try:
            client.disconnect()
        except Exception as err:  # already closed by the meter
            log.debug("disconnect from %s: %s", target.host, err)
        finally:  # HDLC's disconnect waits for the meter's UA first and leaves the socket open when that fails
            client.transport.io.disconnect()


def _parsed(data: bytes) -> Any:
    return parse_as_dlms_data(data)


_UNSPECIFIED = b"\x80\x00"


def _when(raw: Any, zone: ZoneInfo) -> datetime:
    """A COSEM date-time as an aware time: with its deviation when the meter gives one (0 = UTC),
    else in the meter's ``clock_zone`` (dlms-cosem returns both cases as naive times)."""
    if isinstance(raw, bytes | bytearray) and len(raw) == 12:
        when: datetime = datetime_from_bytes(bytes(raw))[0]
        if when.tzinfo is None:
            return when.replace(tzinfo=zone if bytes(raw[9:11]) == _UNSPECIFIED else UTC)
        return when
    if isinstance(raw, datetime):
        return raw if raw.tzinfo is not None else raw.replace(tzinfo=zone)
    raise ValueError(f"not a COSEM date-time: {raw!r:.40}")


def _plain(raw: Any) -> Any:
    if isinstance(raw, bytes | bytearray):
        raw = bytes(raw)
        return raw.decode("ascii") if raw and all(32 <= b < 127 for b in raw) else raw.hex().upper()
    if raw is None or isinstance(raw, bool | int | str):
        return raw
    return str(raw)  # a float register arrives as its shortest text, never as a binary float


def scaler_unit(client: DlmsClient, interface: int, obis: str) -> tuple[int | None, int | None]:
    """Attribute 3 of a register (class 3/4): (scaler, unit code)."""
    if interface not in (3, 4, 5):
        return None, None
    found = _parsed(client.get(_attribute(interface, obis, 3)))
    if not (isinstance(found, list) and len(found) == 2):
        raise ValueError(f"scaler_unit of {obis} is not a structure of two")
    return int(found[0]), int(found[1])


def read_objects(client: DlmsClient, options: DlmsPollOptions) -> tuple[datetime | None, dict[str, Value]]:
    """The clock and every single object of the profile (value, scaler, unit)."""
    zone = ZoneInfo(options.clock_zone)
    clock = _when(_parsed(client.get(_attribute(8, options.clock, 2))), zone) if options.clock else None
    objects: dict[str, Value] = {}
    for obis, interface in options.interface_of().items():
        value = _plain(_parsed(client.get(_attribute(interface, obis, 2))))
        objects[obis] = (value, *scaler_unit(client, interface, obis))
    return clock, objects


def read_profile(client: DlmsClient, options: DlmsPollOptions, since: datetime,
                 until: datetime) -> list[tuple[datetime, dict[str, Value]]]:
    """Load-profile rows captured in [since, until], by range on the profile's clock column, oldest first."""
    spec = options.load_profile
    assert spec is not None
    described = _parsed(client.get(_attribute(7, spec.obis, 3)))
    columns = [(int(c[0]), ".".join(str(b) for b in bytes(c[1])), int(c[2])) for c in described or []]
    clock_at = next((i for i, c in enumerate(columns) if c[0] == 8 and c[2] == 2), None)
    if clock_at is None:
        raise ValueError(f"load profile {spec.obis} captures no clock")
    scalers = {i: scaler_unit(client, c[0], c[1]) for i, c in enumerate(columns) if c[2] == 2}
    zone = ZoneInfo(options.clock_zone)
    # in the meter's zone: a meter that ignores the deviation still reads the right wall-clock range
    selection = RangeDescriptor(
        restricting_object=CaptureObject(cosem_attribute=_attribute(8, columns[clock_at][1], 2)),
        from_value=since.astimezone(zone), to_value=until.astimezone(zone))
    buffer = _parsed(client.get(_attribute(7, spec.obis, 2), access_descriptor=selection)) or []
    rows: list[tuple[datetime, dict[str, Value]]] = []
    for entry in buffer:
        if not isinstance(entry, list) or len(entry) != len(columns):
            raise ValueError("a load profile entry does not match its capture objects")
        values = {columns[i][1]: (_plain(v), *scalers.get(i, (None, None)))
                  for i, v in enumerate(entry) if i != clock_at and columns[i][2] == 2}
        rows.append((_when(entry[clock_at], zone), values))
    rows.sort(key=lambda r: r[0])
    return rows


DISCONNECT_METHODS = {"blocked": 1, "restored": 2}  # remote_disconnect, remote_reconnect (class 70)


def control(options: DlmsPollOptions, target: Target, obis: str, kind: str) -> tuple[bool, int, int]:
    """Invoke remote_disconnect/remote_reconnect on a disconnect control object and read it back.

    Returns (output_state, control_state, next invocation counter); the caller decides whether the
    state read back confirms the command (a meter may answer "ready for reconnection", control state 2).
    """
    with session(options, target) as client:
        method = cosem.CosemMethod(enumerations.CosemInterface.DISCONNECT_CONTROL, _obis(obis),
                                   DISCONNECT_METHODS[kind])
        client.action(method, dlms_data.IntegerData(0).to_bytes())
        output = _parsed(client.get(_attribute(70, obis, 2)))
        state = _parsed(client.get(_attribute(70, obis, 3)))
        if not isinstance(output, bool) or not isinstance(state, int):
            raise ValueError(f"disconnect control {obis} answered {output!r:.20}, {state!r:.20}")
        return output, state, client.client_invocation_counter


def poll(options: DlmsPollOptions, target: Target, since: Callable[[datetime | None], datetime] | None,
         until: datetime) -> Reading:
    """One session: clock and objects, then load-profile rows from ``since(meter clock)`` to ``until``."""
    with session(options, target) as client:
        clock, objects = read_objects(client, options)
        rows = read_profile(client, options, since(clock), clock or until) \
            if options.load_profile and since else []
        return Reading(clock=clock, objects=objects, rows=rows,
                       invocation_counter=client.client_invocation_counter)
