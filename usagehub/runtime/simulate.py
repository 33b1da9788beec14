"""A simulated fleet: smart meters and alarm panels publishing over MQTT, for demos and benchmarks.

Against a broker that checks who publishes (the embedded one, or Mosquitto with the ACL of
``deploy/acl``) each simulated device logs in as itself: ``--register`` stores a fresh MQTT
password per device in the registry (as a seed file would), and a later run reads them back
from the hub's database (``fleet_logins``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import secrets
from collections.abc import Iterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiomqtt
import orjson

from usagehub.adapters.base import DeviceDirectory
from usagehub.adapters.mqtt.config import MqttConfig
from usagehub.errors import AdapterError

MAX_IN_FLIGHT = 64  # publishes awaiting their PUBACK at once
PASSWORD = "mqtt_password"  # the registry secret the embedded broker checks (runtime/broker.py)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fleet:
    """Device ids of a simulated fleet."""

    meters: list[str]
    panels: list[str]

    @classmethod
    def of_size(cls, meters: int, panels: int) -> Fleet:
        """``meters`` smart meters and ``panels`` alarm panels with stable ids."""
        return cls(meters=[f"sim-m{i:04d}" for i in range(meters)], panels=[f"sim-p{i:03d}" for i in range(panels)])

    @property
    def devices(self) -> list[str]:
        """Every device id, meters first."""
        return [*self.meters, *self.panels]

    def logins(self) -> dict[str, str]:
        """A fresh MQTT password for every device (its username is its id)."""
        return {d: secrets.token_urlsafe(16) for d in self.devices}

    def seed(self, start: datetime, logins: Mapping[str, str] | None = None) -> dict[str, object]:
        """A seed document: one account per meter in DE, FR and NL (every fourth prepaid, from the fourth);
        every fourth account also has an alarm panel. ``logins`` become the devices' MQTT passwords."""
        logins = logins or {}
        accounts = [{"id": f"sim-acct-{i:04d}", "name": f"Household {i}", "market": MARKETS[i % 3][0],
                     "timezone": MARKETS[i % 3][1], "prepaid": i in self.prepaid_indexes}
                    for i in range(len(self.meters))]
        profiles = {**dict.fromkeys(self.meters, "acme-em340"), **dict.fromkeys(self.panels, "acme-alarm-ax")}
        devices = [{"id": d, "profile": profile, **({"secrets": {PASSWORD: logins[d]}} if d in logins else {})}
                   for d, profile in profiles.items()]
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


async def fleet_logins(fleet: Fleet, directory: DeviceDirectory) -> dict[str, str] | None:
    """The MQTT passwords stored for the fleet's devices; None unless every device has one."""
    logins: dict[str, str] = {}
    for device in fleet.devices:
        endpoint = await directory.endpoint(device)
        password = endpoint.secrets.get(PASSWORD) if endpoint is not None else None
        if not password:
            return None
        logins[device] = password
    return logins


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
        self.logins: dict[str, str] = {}  # device -> MQTT password: each publishes as itself; else mqtt's login
        self.stopping = asyncio.Event()
        self.connected = asyncio.Event()  # set once every client is connected: the rate counts from then
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
        """Publish until ``stop()`` or cancelled (QoS 1), paced on the clock so the rate is what was asked.

        Up to ``MAX_IN_FLIGHT`` publishes wait for their PUBACK at once, so a broker's round trip does
        not cap the rate; each connection still sends in the order the messages were made.
        """
        devices = self.fleet.devices
        loop = asyncio.get_running_loop()
        in_flight: set[asyncio.Task[None]] = set()
        async with AsyncExitStack() as stack:
            clients = await self._connect(stack, devices)
            self.connected.set()
            started, n = loop.time(), 0
            try:
                while not self.stopping.is_set():
                    device = self.rng.choice(devices)
                    now = datetime.now(UTC) - timedelta(milliseconds=1)
                    topic, payload = (self.meter_message(device, now) if device in self.registers
                                      else self.panel_message(device, now))
                    in_flight.add(asyncio.create_task(self._publish(clients[device], topic, payload)))
                    n += 1
                    if len(in_flight) >= MAX_IN_FLIGHT:
                        await self._settle(in_flight, asyncio.FIRST_COMPLETED)
                    # Sleep to the n-th slot (not 1/rate after each publish: publishing takes time too).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), max(0.0, started + n / self.rate - loop.time()))
                if in_flight:
                    await self._settle(in_flight, asyncio.ALL_COMPLETED)  # stopped: every PUBACK counted
            finally:
                for task in in_flight:
                    task.cancel()

    async def _publish(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        await client.publish(topic, payload, qos=1)
        self.sent += 1

    @staticmethod
    async def _settle(in_flight: set[asyncio.Task[None]], until: str) -> None:
        done, _ = await asyncio.wait(in_flight, return_when=until)
        in_flight.difference_update(done)
        for task in done:
            task.result()  # a refused publish ends the run with its error

    def stop(self) -> None:
        """Finish the messages being published, then return from ``run`` (so ``sent`` is exact)."""
        self.stopping.set()

    async def _connect(self, stack: AsyncExitStack, devices: list[str]) -> dict[str, aiomqtt.Client]:
        """A connected client per device: its own with a login, else one shared."""
        def client(username: str | None, password: str | None) -> aiomqtt.Client:
            return aiomqtt.Client(self.mqtt.host, self.mqtt.port, username=username, password=password,
                                  identifier=f"usagehub-sim-{random.randrange(1 << 30)}")

        who = [(d, d, self.logins[d]) for d in devices] if self.logins else [("", self.mqtt.username,
                                                                                self.mqtt.password)]
        clients: dict[str, aiomqtt.Client] = {}
        for key, username, password in who:
            try:
                clients[key] = await stack.enter_async_context(client(username, password))
            except aiomqtt.MqttError as err:
                raise AdapterError(f"the broker at {self.mqtt.host}:{self.mqtt.port} refused "
                                   f"{username or 'an anonymous client'}: {err}") from err
        return clients if self.logins else dict.fromkeys(devices, clients[""])
