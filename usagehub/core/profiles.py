"""Device profiles: the declarative model of ``device_profiles/*.yaml`` and its parser.

Parsing takes text (no file I/O here); every error names the file, the field and
the line, because a profile mistake must fail at start, not at 3 a.m.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from usagehub.core.codecs import get_codec
from usagehub.core.events import Aggregation, MeterKind
from usagehub.core.paths import PathSyntaxError, compile_path
from usagehub.errors import ConfigError, ConfigErrors

_ID = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_path(value: str | None) -> str | None:
    if value is not None:
        try:
            compile_path(value)
        except PathSyntaxError as err:
            raise ValueError(str(err)) from err
    return value


class MatchSpec(_Model):
    """Which raw messages a profile claims: by transport and topic/path pattern."""

    transport: str
    topic: str | None = Field(None, description="pattern with {placeholders}, e.g. meters/{device_id}/reading")
    port: int | None = Field(None, ge=1, le=65535)


class TimestampSpec(_Model):
    """Where the device time is: an ISO 8601 string with zone, or epoch seconds/ms/µs."""

    path: str
    format: Literal["auto", "iso", "epoch_s", "epoch_ms", "epoch_us"] = "auto"

    _v = field_validator("path")(_check_path)


class WhenSpec(_Model):
    """A filter: the meter reads this message only if ``path`` holds one of ``in``."""

    path: str
    in_: list[str | int | bool] = Field(alias="in")

    _v = field_validator("path")(_check_path)


class MeterSpec(_Model):
    """One meter a profile yields (DESIGN "Meter kinds" and "Aggregations")."""

    kind: MeterKind
    unit: str
    aggregation: Aggregation
    value: str | None = None
    oid: str | None = None
    walk: bool = False
    scale: Decimal = Decimal(1)
    wrap_bits: Literal[16, 32, 64] | None = None
    reset_marker: str | None = None
    missing_values: list[Decimal] = []
    min: Decimal | None = None
    max: Decimal | None = None
    when: WhenSpec | None = None
    active_values: list[str | int | bool] = [True, 1, "on", "active", "armed", "open"]
    product: str | None = None
    alert: Literal["tamper", "fault"] | None = None  # the meter firing raises an alert of this kind

    _v = field_validator("value", "reset_marker")(_check_path)

    @field_validator("oid")
    @classmethod
    def _oid(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\.?\d+(\.\d+)*", value):
            raise ValueError(f"oid {value!r} must be numeric, like 1.3.6.1.2.1.1.3.0")
        return value.lstrip(".") if value else value

    @model_validator(mode="after")
    def _coherent(self) -> MeterSpec:
        if self.value is None and self.oid is None and self.kind not in (MeterKind.EVENT,):
            raise ValueError("a meter needs 'value' (a field path) or 'oid' unless its kind is 'event'")
        if self.wrap_bits is not None and self.kind is not MeterKind.CUMULATIVE:
            raise ValueError("wrap_bits applies to cumulative meters only")
        if self.scale <= 0:
            raise ValueError("scale must be positive")
        return self


class PollSpec(_Model):
    """How a polled device (SNMP) is read; addresses and credentials come from the registry."""

    interval_s: float = Field(300, gt=0)
    version: Literal["1", "2c", "3"] = "2c"
    timeout_s: float = Field(2.0, gt=0)
    retries: int = Field(1, ge=0, le=10)


class CommandSpec(_Model):
    """Where commands to the device go (prepaid block/restore)."""

    transport: str = "mqtt"
    topic: str = "{device_id}/cmd"
    block_payload: str = '{"command": "block"}'
    restore_payload: str = '{"command": "restore"}'


class Profile(_Model):
    """A device model: what it sends and which meters that yields."""

    id: str
    description: str = ""
    match: MatchSpec
    decode: dict[str, Any]
    service: str = "default"
    records: str | None = None
    device_id: str | None = None
    event_id: str | None = None
    timestamp: str | TimestampSpec | None = None
    idle_timeout_s: int = Field(3600, gt=0)
    silent_after_s: int | None = Field(None, gt=0)  # no message for this long raises a "silent" alert
    allow_unauthenticated: bool = False
    poll: PollSpec | None = None
    command: CommandSpec | None = None
    meters: dict[str, MeterSpec] = Field(min_length=1)

    _v = field_validator("records", "device_id", "event_id")(_check_path)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("id must be lower case letters, digits, '.', '_' or '-'")
        return value

    @field_validator("timestamp")
    @classmethod
    def _ts(cls, value: str | TimestampSpec | None) -> TimestampSpec | None:
        if isinstance(value, str):
            _check_path(value)
            return TimestampSpec(path=value)
        return value

    @field_validator("decode")
    @classmethod
    def _decode(cls, value: dict[str, Any]) -> dict[str, Any]:
        kind = value.get("type")
        if not isinstance(kind, str):
            raise ValueError("decode needs a 'type' (json, cbor, binary, mbus, dc09, snmp)")
        try:
            codec = get_codec(kind)
        except KeyError as err:
            raise ValueError(f"unknown decode type {kind!r}") from err
        codec.options_model.model_validate(value)
        return value

    @model_validator(mode="after")
    def _device_id_source(self) -> Profile:
        from_topic = self.match.topic is not None and "{device_id}" in self.match.topic
        polled = self.poll is not None
        if not (from_topic or self.device_id or polled):
            raise ValueError("the device id must come from match.topic '{device_id}' or a 'device_id' path")
        return self

    @property
    def decode_type(self) -> str:
        """The codec name of this profile."""
        return str(self.decode["type"])


_yaml = YAML(typ="rt")


def line_of(node: Any, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the deepest element of ``loc`` found in the YAML tree."""
    line: int | None = None
    for step in loc:
        if isinstance(node, CommentedMap) and step in node:
            pos = node.lc.key(step)
            line = pos[0] + 1
            node = node[step]
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and step < len(node):
            line = node.lc.item(step)[0] + 1
            node = node[step]
        else:
            break
    if line is None and isinstance(node, CommentedMap | CommentedSeq):
        line = node.lc.line + 1
    return line


_UNION_MEMBER = re.compile(r"^([A-Z][a-z0-9]+[A-Z]\w*|bool|int|str|float|decimal|list\[.*|dict\[.*|.*\[.*\].*)$")


def validation_problems(err: ValidationError, tree: Any, source: str, *, root: str = "") -> list[ConfigError]:
    """Every error of a pydantic validation as a ConfigError with file, line and field (in file order).

    Union member names (``SeedPrepaid``, ``bool``, ``function-after[…]``) are left out of the field: a
    user wrote ``prepaid.overdraft``, not a Python type.
    """
    problems = []
    for item in err.errors():
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and _UNION_MEMBER.match(p)))
        message = str(item["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        problems.append(ConfigError(message, file=source, field=".".join(str(p) for p in loc) or root or None,
                                    line=line_of(tree, loc)))
    return sorted(problems, key=lambda p: p.line or 0)


def parse_profile(text: str, source: str, *, expected_id: str | None = None) -> Profile:
    """Parse one profile's YAML ``text``; ``source`` names it in errors.

    ``expected_id`` (the file's stem) must equal the profile's ``id``.
    """
    try:
        tree = _yaml.load(text)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(err, 'problem', err)}", file=source,
                          line=mark.line + 1 if mark else None) from err
    if not isinstance(tree, CommentedMap):
        raise ConfigError("a profile must be a mapping", file=source, line=1)
    problems: list[ConfigError] = []
    if expected_id is not None and tree.get("id") != expected_id:
        problems.append(ConfigError(f"id {tree.get('id')!r} does not match the file name {expected_id!r}",
                                    file=source, field="id", line=line_of(tree, ("id",))))
    try:
        profile = Profile.model_validate(tree)
    except ValidationError as err:
        problems = sorted([*problems, *validation_problems(err, tree, source, root="(profile)")],
                          key=lambda p: p.line or 0)
    else:  # a codec may check the whole profile (dlms_poll: every meter's OBIS code is read)
        check = getattr(get_codec(profile.decode_type), "check_profile", None)
        for loc, message in check(profile) if check is not None else ():
            problems.append(ConfigError(message, file=source, field=".".join(str(p) for p in loc),
                                        line=line_of(tree, loc)))
    if problems:
        raise ConfigErrors(problems)
    return profile
