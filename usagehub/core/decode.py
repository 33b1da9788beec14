"""Decode raw messages into usage events by profile: match, codec, field paths, validation.

Pure: the caller passes the message and gets events or a :class:`DecodeError`
(whose reason goes to quarantine). Nothing here reads a clock or a socket.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from usagehub.core.codecs import DecodeFn, get_codec
from usagehub.core.codecs.keyring import KeyRing
from usagehub.core.events import MeterKind, RawMessage, UsageEvent, content_event_id
from usagehub.core.paths import MISSING, FieldPath, compile_path
from usagehub.core.profiles import MeterSpec, Profile, TimestampSpec
from usagehub.errors import DecodeError, ValidationFailed

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DIV = {"epoch_s": 1, "epoch_ms": 1_000, "epoch_us": 1_000_000}
# Readings stamped further than this in the future are a broken device clock.
MAX_CLOCK_AHEAD = timedelta(days=1)
# Readings stamped before this come from a device whose clock was never set (epoch 0 and friends).
CLOCK_NOT_SET = datetime(2000, 1, 1, tzinfo=UTC)
# Nothing reads 10^20 of anything (a Counter64 tops out at 1.8e19); bigger numbers are corrupt or hostile.
_IMPLAUSIBLE_DIGITS = 20  # a device value of 10**20 or more is refused (a glitch, not a reading)
_ZERO = Decimal(0)  # Decimal against Decimal: comparing with the int 0 converts it each time (~80 ns per reading)


def topic_regex(pattern: str) -> re.Pattern[str]:
    """``meters/{device_id}/reading`` -> a regex with named groups; ``+``/``#`` are MQTT wildcards."""
    out, pos = [], 0
    for m in re.finditer(r"\{([a-z_]+)\}|\+|#", pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        token = m.group(0)
        out.append(f"(?P<{m.group(1)}>[^/]+)" if m.group(1) else ("[^/]+" if token == "+" else ".*"))
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(out) + "$")


def to_decimal(value: object) -> Decimal:
    """A device number as an exact Decimal; floats go through their shortest repr, bools are refused."""
    if type(value) is int:  # the common case first (bool is a subclass of int, not int itself)
        return Decimal(value)
    if isinstance(value, bool):
        raise InvalidOperation("boolean is not a number")
    if isinstance(value, int | Decimal):
        result = Decimal(value)
        if not result.is_finite():  # a Decimal from a binary codec (CBOR) may be NaN or infinite
            raise InvalidOperation("not a finite number")
        return result
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidOperation("not a finite number")
        return Decimal(repr(value))
    if isinstance(value, str):
        result = Decimal(value.strip())
        if not result.is_finite():
            raise InvalidOperation("not a finite number")
        return result
    raise InvalidOperation(f"{type(value).__name__} is not a number")


def parse_timestamp(value: object, spec: TimestampSpec) -> datetime:
    """Device time as an aware UTC datetime; a string without zone is refused."""
    fmt = spec.format
    if fmt == "auto":
        fmt = "iso" if isinstance(value, str) else "epoch_s"
    if fmt == "iso":
        if not isinstance(value, str):
            raise ValidationFailed("bad timestamp", detail=f"{spec.path} is not an ISO 8601 string")
        try:
            ts = datetime.fromisoformat(value)
        except ValueError as err:
            raise ValidationFailed("bad timestamp", detail=f"{spec.path}: {value[:40]!r}") from err
        if ts.tzinfo is UTC:  # "Z" or "+00:00": already as events carry it
            return ts
        if ts.tzinfo is None:
            raise ValidationFailed("timestamp without zone", detail=f"{spec.path}: {value[:40]!r}")
        return ts.astimezone(UTC)
    try:
        number = to_decimal(value)
        micros = int(number * 1_000_000 / _EPOCH_DIV[fmt])
        return _EPOCH + timedelta(microseconds=micros)
    except (InvalidOperation, OverflowError, ValueError) as err:
        raise ValidationFailed("bad timestamp", detail=f"{spec.path}: {str(value)[:40]!r}") from err


@dataclass(frozen=True, slots=True)
class _Meter:
    name: str
    spec: MeterSpec
    value: FieldPath | None
    reset: FieldPath | None
    when: FieldPath | None
    missing: frozenset[Decimal]


class CompiledProfile:
    """A profile prepared for the hot path: topic regex, codec function, compiled paths."""

    def __init__(self, profile: Profile, keyring: KeyRing | None = None, ids: DeviceIds | None = None) -> None:
        self.profile = profile
        self.ids = ids if ids is not None else DeviceIds()
        self.topic_re = topic_regex(profile.match.topic) if profile.match.topic else None
        codec = get_codec(profile.decode_type)
        options = codec.options_model.model_validate(profile.decode)
        with_keys = getattr(codec, "compile_with_keys", None)  # codecs that decrypt (wmbus) get the key ring
        self.decode_fn: DecodeFn = (with_keys(options, keyring.lookup_for(profile.decode_type))
                                    if with_keys is not None and keyring is not None else codec.compile(options))
        self.records = compile_path(profile.records) if profile.records else None
        self.device_id = compile_path(profile.device_id) if profile.device_id else None
        self.event_id = compile_path(profile.event_id) if profile.event_id else None
        ts = profile.timestamp
        self.timestamp = ts if isinstance(ts, TimestampSpec) else (TimestampSpec(path=ts) if ts else None)
        self.ts_path = compile_path(self.timestamp.path) if self.timestamp else None
        self._last_ts: tuple[str, datetime] | None = None  # the last timestamp text parsed, and its time
        self.meters = tuple(
            _Meter(name, spec,
                   compile_path(spec.value) if spec.value else None,
                   compile_path(spec.reset_marker) if spec.reset_marker else None,
                   compile_path(spec.when.path) if spec.when else None,
                   frozenset(spec.missing_values))
            for name, spec in profile.meters.items()
        )

    def decode(self, message: RawMessage, captures: Mapping[str, str]) -> list[UsageEvent]:
        """All usage events in ``message``; raise DecodeError with a reason otherwise."""
        document = self.decode_fn(message.payload)
        if self.records is not None:
            records = self.records.get(document)
            if not isinstance(records, Sequence) or isinstance(records, str | bytes):
                raise ValidationFailed("missing field", detail=f"{self.records.text} is not a list")
        else:
            records = (document,)
        events: list[UsageEvent] = []
        for record in records:
            events.extend(self._record_events(record, message, captures))
        if not events:
            raise ValidationFailed("no readings", detail="the message yields no meter value")
        return events

    def _record_events(self, record: object, message: RawMessage,
                       captures: Mapping[str, str]) -> Iterable[UsageEvent]:
        device_id = self._device_id(record, captures)
        ts = self._timestamp(record, message)
        if ts - message.received_at > MAX_CLOCK_AHEAD:
            raise ValidationFailed("timestamp in the future", detail=ts.isoformat())
        if ts < CLOCK_NOT_SET:
            raise ValidationFailed("bad timestamp", detail=f"{ts.isoformat()}: device clock not set")
        seq = self.event_id.get(record) if self.event_id else MISSING
        if self.event_id is not None and (seq is MISSING or seq is None):
            raise ValidationFailed("missing field", detail=self.event_id.text)
        for meter in self.meters:
            event = self._meter_event(meter, record, device_id, ts, seq, message)
            if event is not None:
                yield event

    def _device_id(self, record: object, captures: Mapping[str, str]) -> str:
        if self.device_id is not None:
            found = self.device_id.get(record)
            if found is MISSING or found is None or found == "":
                raise ValidationFailed("missing field", detail=self.device_id.text)
            return self.ids.clean(str(found))
        device_id = captures.get("device_id")
        if not device_id:
            raise ValidationFailed("missing field", detail="device_id")
        return self.ids.clean(device_id)

    def _timestamp(self, record: object, message: RawMessage) -> datetime:
        if self.ts_path is None or self.timestamp is None:
            return message.received_at
        raw = self.ts_path.get(record)
        if raw is MISSING or raw is None:
            raise ValidationFailed("missing field", detail=self.ts_path.text)
        if type(raw) is str:  # a gateway's readings often share one: the last text parsed is kept
            last = self._last_ts
            if last is not None and last[0] == raw:
                return last[1]
            ts = parse_timestamp(raw, self.timestamp)
            self._last_ts = (raw, ts)
            return ts
        return parse_timestamp(raw, self.timestamp)

    def _meter_event(self, meter: _Meter, record: object, device_id: str, ts: datetime,
                     seq: object, message: RawMessage) -> UsageEvent | None:
        spec = meter.spec
        kind = spec.kind
        if meter.when is not None and spec.when is not None and meter.when.get(record) not in spec.when.in_:
            return None
        raw = meter.value.get(record) if meter.value else (spec.oid and _oid_value(record, spec.oid))
        text_value: str | None = None
        if kind is MeterKind.EVENT and meter.value is None:
            value = Decimal(1)
        elif raw is MISSING or raw is None:
            return None  # this message does not carry this meter
        elif kind is MeterKind.STATE:
            active = raw in spec.active_values or str(raw).lower() in {str(v).lower() for v in spec.active_values}
            value, text_value = Decimal(1 if active else 0), str(raw)[:200]
        else:
            try:
                number = to_decimal(raw)
            except InvalidOperation as err:
                raise ValidationFailed("not a number", detail=f"{meter.name}: {str(raw)[:40]!r}") from err
            if meter.missing and number in meter.missing:
                return None
            # |number| >= 10**20, read off the exponent of its first digit (adjusted) without building abs()
            if number.adjusted() >= _IMPLAUSIBLE_DIGITS and number:
                raise ValidationFailed("value out of range", detail=f"{meter.name}: implausibly large")
            if (spec.min is not None and number < spec.min) or (spec.max is not None and number > spec.max):
                raise ValidationFailed("value out of range", detail=f"{meter.name}={number}")
            value = number * spec.scale
            if kind is MeterKind.CUMULATIVE and value < _ZERO:
                raise ValidationFailed("value out of range", detail=f"{meter.name}={number} (negative register)")
        reset = None
        if meter.reset is not None:
            marker = meter.reset.get(record)
            reset = None if marker is MISSING or marker is None else str(marker)[:64]
        if seq is not MISSING:
            event_id = str(seq)
            if len(event_id) > 64:
                event_id = event_id[:64]
        else:
            event_id = content_event_id(device_id, meter.name, ts, text_value or value)
        return UsageEvent(device_id=device_id, event_id=event_id, meter=meter.name, ts=ts, value=value,
                          unit=spec.unit, kind=spec.kind, profile_id=self.profile.id,
                          service=self.profile.service, received_at=message.received_at,
                          reset_marker=reset, text_value=text_value)


_ID_OK = re.compile(r"[^\x00-\x1f\x7f]{1,128}")  # the whole id (fullmatch: "$" would let a last "\n" pass)


class DeviceIds:
    """Device ids checked once: a fleet's devices repeat in every message, the pattern runs for new ones only.

    Bounded: past ``limit`` ids the set starts again, so a flood of made-up ids only costs the pattern again.
    One per ``ProfileSet``, shared by its compiled profiles.
    """

    def __init__(self, limit: int = 262_144) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def clean(self, device_id: str) -> str:
        """``device_id`` when it is a valid id (ValidationFailed otherwise)."""
        seen = self._seen
        if device_id in seen:
            return device_id
        if not _ID_OK.fullmatch(device_id):
            raise ValidationFailed("bad device id", detail=repr(device_id[:40]))
        if len(seen) >= self.limit:
            seen.clear()
        seen.add(device_id)
        return device_id


def _oid_value(record: object, oid: str) -> object:
    if isinstance(record, Mapping):
        return record.get(oid, MISSING)
    return MISSING


class ProfileSet:
    """All loaded profiles; finds the one that claims a message."""

    def __init__(self, profiles: Iterable[Profile], keyring: KeyRing | None = None) -> None:
        self.keyring = keyring
        self.version = 0
        self.ids = DeviceIds()  # kept across replace: the fleet's ids stay checked
        self.replace(profiles)

    def replace(self, profiles: Iterable[Profile]) -> None:
        """Put ``profiles`` in force in place, so every holder of this set decodes with them from now on."""
        compiled = [CompiledProfile(p, self.keyring, self.ids) for p in profiles]
        self.compiled, self.by_id = compiled, {c.profile.id: c for c in compiled}
        self._match = lru_cache(maxsize=65536)(self._match_uncached)
        self.version += 1

    def _match_uncached(self, transport: str, topic: str) -> tuple[CompiledProfile, dict[str, str]] | None:
        for compiled in self.compiled:
            if compiled.profile.match.transport != transport:
                continue
            if compiled.topic_re is None:
                return compiled, {}
            m = compiled.topic_re.match(topic)
            if m:
                return compiled, m.groupdict()
        return None

    def match(self, message: RawMessage) -> tuple[CompiledProfile, dict[str, str]]:
        """The profile claiming ``message`` and the topic captures; DecodeError if none does."""
        if "profile" in message.meta:
            compiled = self.by_id.get(message.meta["profile"])
            if compiled is None:
                raise DecodeError("unknown profile", detail=message.meta["profile"])
            found: tuple[CompiledProfile, dict[str, str]] | None = (compiled, self._captures(compiled, message))
        else:
            found = self._match(message.transport, message.topic)
        if found is None:
            raise DecodeError("unknown topic", detail=f"{message.transport}:{message.topic[:200]}")
        return found

    @staticmethod
    def _captures(compiled: CompiledProfile, message: RawMessage) -> dict[str, str]:
        captures = {}
        if compiled.topic_re is not None and (m := compiled.topic_re.match(message.topic)):
            captures = m.groupdict()
        if "device_id" in message.meta:
            captures["device_id"] = message.meta["device_id"]
        return captures

    def decode(self, message: RawMessage) -> list[UsageEvent]:
        """Match and decode ``message``; raise DecodeError (reason for quarantine) otherwise."""
        compiled, captures = self.match(message)
        try:
            return compiled.decode(message, captures)
        except DecodeError:
            raise
        except RecursionError as err:  # deeply nested hostile documents
            raise DecodeError("document too deep") from err
