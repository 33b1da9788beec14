"""A fleet with a known billed truth: late, duplicated, out-of-order readings, a device moving account, garbage."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson

from usagehub.core.events import RawMessage

START = datetime(2026, 10, 1, tzinfo=UTC)
STEP = timedelta(minutes=15)


@dataclass
class Fleet:
    """Messages to publish and what must be billed to each account afterwards."""

    devices: int
    readings: int
    messages: list[RawMessage] = field(default_factory=list)
    billed: dict[str, Decimal] = field(default_factory=dict)  # account -> kWh
    distinct_events: int = 0
    garbage: int = 0
    moves: dict[str, tuple[str, str, datetime]] = field(default_factory=dict)  # device -> (from, to, at)

    def account_of(self, d: int) -> str:
        return f"acct{d % 4}"

    def seed_yaml(self, path: Path) -> Path:
        """Accounts, devices and bindings (the moving devices get two bindings)."""
        lines = ["accounts:", *[f"  - {{id: acct{a}}}" for a in range(5)], "devices:"]
        lines += [f"  - {{id: m{d:03d}, profile: acme-em340}}" for d in range(self.devices)]
        lines += ["bindings:"]
        for d in range(self.devices):
            dev = f"m{d:03d}"
            if dev in self.moves:
                old, new, at = self.moves[dev]
                lines.append(f'  - {{device: {dev}, account: {old}, valid_from: "2026-01-01T00:00:00Z", '
                             f'valid_to: "{at.isoformat()}"}}')
                lines.append(f'  - {{device: {dev}, account: {new}, valid_from: "{at.isoformat()}"}}')
            else:
                lines.append(f'  - {{device: {dev}, account: {self.account_of(d)}, '
                             'valid_from: "2026-01-01T00:00:00Z"}')
        path.write_text("\n".join(lines) + "\n")
        return path


def build(devices: int = 40, readings: int = 60, seed: int = 20261127, *, now: datetime | None = None) -> Fleet:
    """The fleet: every device's register readings, ~10 % resent, shuffled, a tail of late ones, 3 garbage."""
    rng = random.Random(seed)
    fleet = Fleet(devices=devices, readings=readings)
    received = now or datetime.now(UTC)
    move_at = readings // 2
    fleet.moves["m000"] = ("acct0", "acct4", START + STEP * move_at)
    fleet.billed = {f"acct{a}": Decimal(0) for a in range(5)}
    ordered: list[RawMessage] = []
    for d in range(devices):
        dev, register = f"m{d:03d}", rng.randrange(1000, 10**6)
        values = []
        for k in range(readings):
            if k:
                register += rng.randrange(0, 900)
            values.append(register)
            body = {"seq": k + 1, "ts": (START + STEP * k).isoformat(), "energy_wh": register, "boot": 1}
            ordered.append(RawMessage(transport="mqtt", topic=f"meters/{dev}/reading", payload=orjson.dumps(body),
                                      received_at=received))
        if dev in fleet.moves:
            old, new, _ = fleet.moves[dev]
            fleet.billed[old] += Decimal(values[move_at] - values[0]) / 1000
            fleet.billed[new] += Decimal(values[-1] - values[move_at]) / 1000
        else:
            fleet.billed[fleet.account_of(d)] += Decimal(values[-1] - values[0]) / 1000
    fleet.distinct_events = len(ordered)
    late = [m for m in ordered if orjson.loads(m.payload)["seq"] <= 3]  # the first readings arrive last
    rest = [m for m in ordered if orjson.loads(m.payload)["seq"] > 3]
    rng.shuffle(rest)
    dups = rng.sample(ordered, len(ordered) // 10)
    garbage = [RawMessage(transport="mqtt", topic="meters/m001/reading", payload=b"\xff{not json" + bytes([i]),
                          received_at=received) for i in range(3)]
    fleet.garbage = len(garbage)
    mixed = rest + dups + garbage
    rng.shuffle(mixed)
    fleet.messages = mixed + late
    return fleet
