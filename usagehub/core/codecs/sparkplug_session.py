"""Sparkplug B host-side session rules, pure: topics, births, deaths, seq/bdSeq, aliases, rebirth requests.

One :class:`SparkplugSessions` per host application. ``receive`` takes a topic,
the payload bytes and the time, and says what to do: forward a payload (with
every alias replaced by the name its birth gave), ask the edge node for a
rebirth (NCMD ``Node Control/Rebirth``) and/or drop the message. Aliases, bdSeq
and seq survive restarts through ``to_json``/``from_json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from usagehub.core.codecs.sparkplug import Payload, parse_payload
from usagehub.errors import DecodeError

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
_TYPES = frozenset({"NBIRTH", "NDEATH", "NDATA", "NCMD", "DBIRTH", "DDEATH", "DDATA", "DCMD"})
BOOLEAN = 11


@dataclass(frozen=True, slots=True)
class Topic:
    """``spBv1.0/group/TYPE/edge[/device]``."""

    group: str
    kind: str
    edge: str
    device: str | None

    @property
    def node(self) -> tuple[str, str]:
        """The edge node this message belongs to."""
        return (self.group, self.edge)


def parse_topic(topic: str) -> Topic:
    """A Sparkplug B topic; DecodeError if it is not one (STATE and others are not metrics)."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE or parts[2] not in _TYPES or not all(parts):
        raise DecodeError("not a Sparkplug B topic", detail=topic[:200])
    if (len(parts) == 5) != parts[2].startswith("D"):
        raise DecodeError("Sparkplug topic and message type disagree", detail=topic[:200])
    return Topic(parts[1], parts[2], parts[3], parts[4] if len(parts) == 5 else None)


@dataclass(slots=True)
class _Node:
    online: bool = False
    bd_seq: int | None = None
    seq: int | None = None
    aliases: dict[str, dict[int, str]] = field(default_factory=dict)  # "" = node, else device id
    devices_online: set[str] = field(default_factory=set)
    rebirth_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one message: forward ``payload`` (aliases resolved) if any, request a rebirth or not."""

    payload: bytes | None = None
    rebirth: bool = False
    reason: str | None = None


def rebirth_command(now_ms: int) -> bytes:
    """The NCMD payload asking an edge node to publish its births again."""
    payload = Payload(timestamp=now_ms)
    metric = payload.metrics.add()
    metric.name, metric.datatype, metric.boolean_value = REBIRTH_METRIC, BOOLEAN, True
    return bytes(payload.SerializeToString())


class SparkplugSessions:
    """Session state of every edge node seen; decides forwards and rebirth requests."""

    def __init__(self, *, rebirth_interval_ms: int = 5_000) -> None:
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.rebirth_interval_ms = rebirth_interval_ms

    def receive(self, topic: Topic, data: bytes, now_ms: int) -> Verdict:
        """Apply one message; DecodeError when the payload is not protobuf (the caller quarantines it).

        Data is forwarded even when something is wrong with the session (the values are still the
        device's): a gap or an unknown alias adds a rebirth request; an unresolved alias stays
        ``alias:<n>`` and the pipeline quarantines what no profile can read.
        """
        payload = parse_payload(data)
        node = self.nodes.setdefault(topic.node, _Node())
        if topic.kind in ("NCMD", "DCMD"):
            return Verdict(reason="command")  # our own or another host's; not usage
        if topic.kind == "NBIRTH":
            return self._nbirth(node, payload)
        if topic.kind == "NDEATH":
            return self._ndeath(node, payload)
        problems = self._check_seq(node, payload)
        device = topic.device or ""
        if topic.kind == "DBIRTH":
            node.devices_online.add(device)
            node.aliases[device] = _learn(payload)
        elif topic.kind == "DDEATH":
            node.devices_online.discard(device)
            return self._verdict(node, None, problems, now_ms, "device death")
        elif topic.device is not None and device not in node.devices_online:
            problems.append(f"data from device {device!r} without its birth")
        resolved, unknown = _resolve(node.aliases.get(device, {}), payload)
        problems += [f"unknown alias {alias}" for alias in unknown]
        return self._verdict(node, resolved or data, problems, now_ms, None)

    def _check_seq(self, node: _Node, payload: Any) -> list[str]:
        if not node.online:
            return ["message from an edge node that is not online"]
        if not payload.HasField("seq"):
            return []
        expected = None if node.seq is None else (node.seq + 1) % 256
        node.seq = payload.seq
        return [f"seq gap: expected {expected}, got {payload.seq}"] if expected not in (None, payload.seq) else []

    def _verdict(self, node: _Node, payload: bytes | None, problems: list[str], now_ms: int,
                 reason: str | None) -> Verdict:
        if not problems:
            return Verdict(payload=payload, reason=reason)
        # ask again only when no request is still fresh: no storm of NCMDs while the node reboots
        due = node.rebirth_at_ms is None or now_ms - node.rebirth_at_ms >= self.rebirth_interval_ms
        if due:
            node.rebirth_at_ms = now_ms
        return Verdict(payload=payload, rebirth=due, reason="; ".join(problems))

    def _nbirth(self, node: _Node, payload: Any) -> Verdict:
        node.online, node.devices_online = True, set()
        node.seq = payload.seq if payload.HasField("seq") else 0
        node.bd_seq = _bd_seq(payload)
        node.aliases = {"": _learn(payload)}
        node.rebirth_at_ms = None
        return Verdict(payload=bytes(payload.SerializeToString()))

    def _ndeath(self, node: _Node, payload: Any) -> Verdict:
        bd_seq = _bd_seq(payload)
        if node.bd_seq is not None and bd_seq is not None and bd_seq != node.bd_seq:
            return Verdict(reason=f"stale death: bdSeq {bd_seq}, session {node.bd_seq}")
        node.online, node.devices_online, node.seq = False, set(), None
        return Verdict(reason="node death")

    def to_json(self) -> dict[str, Any]:
        """The state worth keeping across a restart: aliases, bdSeq, seq, who is online."""
        return {"/".join(key): {"online": n.online, "bd_seq": n.bd_seq, "seq": n.seq,
                                "devices_online": sorted(n.devices_online),
                                "aliases": {d: {str(a): name for a, name in m.items()} for d, m in n.aliases.items()}}
                for key, n in self.nodes.items()}

    @classmethod
    def from_json(cls, state: dict[str, Any], **kwargs: Any) -> SparkplugSessions:
        """Sessions restored from ``to_json`` output; malformed entries are skipped."""
        sessions = cls(**kwargs)
        for key, value in state.items():
            group, _, edge = key.partition("/")
            try:
                sessions.nodes[(group, edge)] = _Node(
                    online=bool(value["online"]), bd_seq=value["bd_seq"], seq=value["seq"],
                    devices_online=set(value["devices_online"]),
                    aliases={d: {int(a): str(n) for a, n in m.items()} for d, m in value["aliases"].items()})
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        return sessions


def _resolve(aliases: dict[int, str], payload: Any) -> tuple[bytes | None, list[int]]:
    """The payload re-encoded with names for aliases (None if nothing changed), and the unknown aliases."""
    changed, unknown = False, []
    for metric in payload.metrics:
        if metric.HasField("name") or not metric.HasField("alias"):
            continue
        name = aliases.get(metric.alias)
        if name is None:
            unknown.append(metric.alias)
        else:
            metric.name, changed = name, True
    return (bytes(payload.SerializeToString()) if changed else None), unknown


def _learn(payload: Any) -> dict[int, str]:
    return {m.alias: m.name for m in payload.metrics if m.HasField("alias") and m.HasField("name")}


def _bd_seq(payload: Any) -> int | None:
    for metric in payload.metrics:
        if metric.name == "bdSeq":
            kind = metric.WhichOneof("value")
            return int(getattr(metric, kind)) if kind in ("int_value", "long_value") else None
    return None
