"""A simulated fleet: smart meters and alarm panels publishing over MQTT, for demos and benchmarks."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiomqtt
import orjson

from usagehub.adapters.mqtt.config import MqttConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class Fleet:
    """Device ids of a simulated fleet."""

    meters: list[str]
    panels: list[str]

    @classmethod
    def of_size(cls, meters: int, panels: int) -> Fleet:
        """``meters`` smart meters and ``panels`` alarm panels with stable ids."""
        return cls(meters=[f"sim-m{i:04d}" for i in range(meters)], panels=[f"sim-p{i:03d}" for i in range(panels)])

    def seed(self, start: datetime) -> dict[str, object]:
        """A seed document: one account per meter; every fourth account also has an alarm panel."""
        accounts = [{"id": f"sim-acct-{i:04d}", "name": f"Household {i}", "timezone": "Europe/Berlin"}
                    for i in range(len(self.meters))]
        devices = ([{"id": m, "profile": "acme-em340"} for m in self.meters]
                   + [{"id": p, "profile": "acme-alarm-ax"} for p in self.panels])
        bindings = ([{"device": m, "account": f"sim-acct-{i:04d}", "valid_from": start.isoformat()}
                     for i, m in enumerate(self.meters)]
                    + [{"device": p, "account": f"sim-acct-{(4 * i) % max(1, len(self.meters)):04d}",
                        "valid_from": start.isoformat()} for i, p in enumerate(self.panels)])
        return {"accounts": accounts, "devices": devices, "bindings": bindings}


class Simulator:
    """Publishes readings at ``rate_per_s`` until cancelled; each device keeps a monotonic register."""

    def __init__(self, fleet: Fleet, mqtt: MqttConfig, *, rate_per_s: float = 20.0, seed: int = 7) -> None:
        self.fleet, self.mqtt, self.rate = fleet, mqtt, rate_per_s
        self.rng = random.Random(seed)
        self.registers = {m: self.rng.randrange(10_000, 5_000_000) for m in fleet.meters}
        self.seq = dict.fromkeys(fleet.meters + fleet.panels, 0)
        self.sent = 0

    def meter_message(self, device: str, now: datetime) -> tuple[str, bytes]:
        """One reading of a smart meter."""
        self.seq[device] += 1
        self.registers[device] += self.rng.randrange(1, 400)
        body = {"seq": self.seq[device], "ts": now.isoformat(), "energy_wh": self.registers[device],
                "power_w": self.rng.randrange(50, 4000), "boot": 1}
        return f"meters/{device}/reading", orjson.dumps(body)

    def panel_message(self, device: str, now: datetime) -> tuple[str, bytes]:
        """One alarm panel event: arming changes, door openings, now and then an alarm."""
        self.seq[device] += 1
        kind = self.rng.choices(["state", "door_open", "alarm"], weights=[2, 6, 1])[0]
        body: dict[str, object] = {"id": self.seq[device], "t": int(now.timestamp() * 1000), "type": kind}
        if kind == "state":
            body["state"] = self.rng.choice(["armed_away", "disarmed"])
        return f"security/{device}/event", orjson.dumps(body)

    async def run(self) -> None:
        """Publish until cancelled (QoS 1)."""
        devices = self.fleet.meters + self.fleet.panels
        client_id = f"usagehub-sim-{random.randrange(1 << 30)}"
        async with aiomqtt.Client(self.mqtt.host, self.mqtt.port, username=self.mqtt.username,
                                  password=self.mqtt.password, identifier=client_id) as client:
            while True:
                device = self.rng.choice(devices)
                now = datetime.now(UTC) - timedelta(milliseconds=1)
                topic, payload = (self.meter_message(device, now) if device in self.registers
                                  else self.panel_message(device, now))
                await client.publish(topic, payload, qos=1)
                self.sent += 1
                await asyncio.sleep(1 / self.rate)
