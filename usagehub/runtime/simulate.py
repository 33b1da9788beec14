"""A simulated fleet: smart meters and alarm panels publishing over MQTT, for demos and benchmarks."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterator
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
        """A seed document: one account per meter in DE, FR and NL (every fourth prepaid, from the fourth);
        every fourth account also has an alarm panel."""
        accounts = [{"id": f"sim-acct-{i:04d}", "name": f"Household {i}", "market": MARKETS[i % 3][0],
                     "timezone": MARKETS[i % 3][1], "prepaid": i in self.prepaid_indexes}
                    for i in range(len(self.meters))]
        devices = ([{"id": m, "profile": "acme-em340"} for m in self.meters]
                   + [{"id": p, "profile": "acme-alarm-ax"} for p in self.panels])
        bindings = ([{"device": m, "account": f"sim-acct-{i:04d}", "valid_from": start.isoformat()}
                     for i, m in enumerate(self.meters)]
                    + [{"device": p, "account": f"sim-acct-{(4 * i) % max(1, len(self.meters)):04d}",
                        "valid_from": start.isoformat()} for i, p in enumerate(self.panels)])
        return {"accounts": accounts, "devices": devices, "bindings": bindings}

    @property
    def prepaid_indexes(self) -> list[int]:
        """Which accounts are prepaid: the 4th, 8th, 12th… (at most three)."""
        return list(range(3, len(self.meters), 4))[:3]

    @property
    def prepaid_accounts(self) -> list[str]:
        """The prepaid accounts' ids."""
        return [f"sim-acct-{i:04d}" for i in self.prepaid_indexes]


MARKETS = (("DE", "Europe/Berlin"), ("FR", "Europe/Paris"), ("NL", "Europe/Amsterdam"))
# A household's share of its daily energy per local hour: low at night, peaks at 7-8 and 18-21.
_HOURLY = [0.5, 0.4, 0.4, 0.4, 0.4, 0.5, 0.9, 1.6, 1.4, 0.9, 0.8, 0.9,
           1.0, 0.9, 0.8, 0.9, 1.1, 1.5, 2.0, 2.2, 1.9, 1.4, 1.0, 0.7]


class Simulator:
    """Publishes readings at ``rate_per_s`` until cancelled; each device keeps a monotonic register."""

    def __init__(self, fleet: Fleet, mqtt: MqttConfig, *, rate_per_s: float = 20.0, seed: int = 7,
                 first_seq: int = 0, boot: int = 1) -> None:
        """``first_seq`` and ``boot`` let a later run of the same fleet continue without reusing message ids
        (``boot`` is the meters' reset marker: a new value starts a new register baseline)."""
        self.fleet, self.mqtt, self.rate = fleet, mqtt, rate_per_s
        self.rng = random.Random(seed)
        self.registers = {m: self.rng.randrange(10_000, 5_000_000) for m in fleet.meters}
        self.seq = dict.fromkeys(fleet.meters + fleet.panels, first_seq)
        self.boot = boot
        self.sent = 0

    def meter_message(self, device: str, now: datetime) -> tuple[str, bytes]:
        """One reading of a smart meter."""
        self.seq[device] += 1
        self.registers[device] += self.rng.randrange(1, 40)  # a few seconds of a busy home, not hours
        body = {"seq": self.seq[device], "ts": now.isoformat(), "energy_wh": self.registers[device],
                "power_w": self.rng.randrange(50, 4000), "boot": self.boot}
        return f"meters/{device}/reading", orjson.dumps(body)

    def panel_message(self, device: str, now: datetime) -> tuple[str, bytes]:
        """One alarm panel event: arming changes, door openings, now and then an alarm."""
        self.seq[device] += 1
        kind = self.rng.choices(["state", "door_open", "alarm"], weights=[2, 6, 1])[0]
        body: dict[str, object] = {"id": self.seq[device], "t": int(now.timestamp() * 1000), "type": kind}
        if kind == "state":
            body["state"] = self.rng.choice(["armed_away", "disarmed"])
        return f"security/{device}/event", orjson.dumps(body)

    def history(self, since: datetime, until: datetime, *, hourly_since: datetime | None = None
                ) -> Iterator[tuple[str, bytes, datetime]]:
        """Past readings in time order: meter registers with a household's daily shape (every 3 hours
        before ``hourly_since``, hourly after), panels armed by day, doors opening, now and then an alarm.
        Live readings continue from them."""
        scale = {m: 0.6 + 1.4 * self.rng.random() for m in self.fleet.meters}  # 0.6-2 x a 10 kWh/day home
        evening = {m: 0.5 + 1.2 * self.rng.random() for m in self.fleet.meters}  # some homes live at night
        hourly_since = hourly_since or since
        t = since
        while t < until:
            weekend = 1.25 if t.weekday() >= 5 else 1.0
            report = t >= hourly_since or t.hour % 3 == 0
            for m in self.fleet.meters:
                shape = _HOURLY[t.hour] * (evening[m] if 17 <= t.hour <= 22 else 1.0)
                wh = 10_000 / 24 * shape * scale[m] * weekend * (0.8 + 0.4 * self.rng.random())
                self.registers[m] += math.ceil(wh)
                if report:
                    self.seq[m] += 1
                    body = {"seq": self.seq[m], "ts": t.isoformat(), "energy_wh": self.registers[m],
                            "power_w": math.ceil(wh), "boot": self.boot}
                    yield f"meters/{m}/reading", orjson.dumps(body), t
            for p in self.fleet.panels:
                for kind, state in self._panel_hour(t):
                    self.seq[p] += 1
                    body = {"id": self.seq[p], "t": int(t.timestamp() * 1000), "type": kind}
                    if state:
                        body["state"] = state
                    yield f"security/{p}/event", orjson.dumps(body), t
            t += timedelta(hours=1)

    def _panel_hour(self, t: datetime) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        if t.hour == 8:
            out.append(("state", "armed_away"))
        elif t.hour == 17:
            out.append(("state", "disarmed"))
        if 7 <= t.hour <= 22 and self.rng.random() < 0.3:
            out.append(("door_open", None))
        if self.rng.random() < 0.002:  # about one alarm a panel every three weeks
            out.append(("alarm", None))
        return out

    async def run(self) -> None:
        """Publish until cancelled (QoS 1), paced on the clock so the rate is what was asked."""
        devices = self.fleet.meters + self.fleet.panels
        client_id = f"usagehub-sim-{random.randrange(1 << 30)}"
        loop = asyncio.get_running_loop()
        async with aiomqtt.Client(self.mqtt.host, self.mqtt.port, username=self.mqtt.username,
                                  password=self.mqtt.password, identifier=client_id) as client:
            started, n = loop.time(), 0
            while True:
                device = self.rng.choice(devices)
                now = datetime.now(UTC) - timedelta(milliseconds=1)
                topic, payload = (self.meter_message(device, now) if device in self.registers
                                  else self.panel_message(device, now))
                await client.publish(topic, payload, qos=1)
                self.sent += 1
                n += 1
                # Sleep to the n-th slot (not 1/rate after each publish: publishing takes time too).
                await asyncio.sleep(max(0.0, started + n / self.rate - loop.time()))
