"""The embedded MQTT broker (amqtt) for demos and zero-config runs; production uses Mosquitto.

It holds clients to the same rules as the shipped Mosquitto ACL (deploy/acl): every client
logs in; the hub with a password generated at start; a device with its registered id as
username and its registry secret ``mqtt_password`` (or ``mqtt_password_sha256``); a device
publishes only on topics that carry its own id (``meters/<id>/reading``,
``security/<id>/event``, ``gateways/<id>/batch``, ``wmbus/<id>/telegram``, Sparkplug
``spBv1.0/<group>/<type>/<id>[/<device>]``) and reads only its own command topics.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from usagehub.adapters.base import DeviceDirectory

log = logging.getLogger(__name__)

HUB_USER = "usagehub"
# The Mosquitto ACL patterns of deploy/acl, with %u the client's username.
DEVICE_WRITE = ("meters/%u/reading", "security/%u/event", "gateways/%u/batch", "wmbus/%u/telegram",
                "spBv1.0/+/+/%u", "spBv1.0/+/+/%u/+")
DEVICE_READ = ("meters/%u/cmd", "security/%u/cmd", "gateways/%u/cmd", "spBv1.0/+/NCMD/%u", "spBv1.0/+/DCMD/%u/+",
               "spBv1.0/STATE/+")
_SAFE_USER = re.compile(r"^[^/+#\x00-\x1f\x7f]{1,128}$")


class BrokerGuard:
    """Who may log in, publish and subscribe on the embedded broker."""

    def __init__(self, hub_password: str | None = None) -> None:
        self.hub_password = hub_password or secrets.token_urlsafe(24)
        self.directory: DeviceDirectory | None = None  # set once storage is open
        self._extra: dict[str, tuple[str, frozenset[str]]] = {}

    def add_publisher(self, username: str, password: str, devices: Iterable[str]) -> None:
        """A client allowed to publish for ``devices`` (the demo's simulated fleet)."""
        self._extra[username] = (password, frozenset(devices))

    async def authenticate(self, username: str | None, password: str | None) -> bool:
        """Whether this username and password may connect."""
        if not username or password is None or not _SAFE_USER.match(username):
            return False
        if username == HUB_USER:
            return hmac.compare_digest(password.encode(), self.hub_password.encode())
        if username in self._extra:
            return hmac.compare_digest(password.encode(), self._extra[username][0].encode())
        if self.directory is None:
            return False
        endpoint = await self.directory.endpoint(username)
        if endpoint is None:
            return False
        digest = hashlib.sha256(password.encode()).digest()
        stored = endpoint.secrets.get("mqtt_password_sha256")
        if stored:
            try:
                return hmac.compare_digest(bytes.fromhex(stored), digest)
            except ValueError:
                return False
        plain = endpoint.secrets.get("mqtt_password")
        return plain is not None and hmac.compare_digest(hashlib.sha256(plain.encode()).digest(), digest)

    def allowed(self, username: str | None, topic: str | None, action: str) -> bool:
        """Whether ``username`` may ``action`` (publish, subscribe, receive) on ``topic``."""
        if not username or not topic:
            return False
        if username == HUB_USER:
            return True
        if action == "receive":
            return True  # what a client receives was already checked when it subscribed
        owners = self._extra[username][1] if username in self._extra else frozenset((username,))
        patterns = DEVICE_WRITE if action == "publish" else DEVICE_READ
        if action == "publish" and any(c in topic for c in "+#"):
            return False
        return any(_covers(p.replace("%u", owner), topic) for owner in owners for p in patterns)


def _covers(pattern: str, topic: str) -> bool:
    """Whether an ACL ``pattern`` (``+`` one level) covers a topic or a subscription filter no wider than it."""
    want, got = pattern.split("/"), topic.split("/")
    return len(want) == len(got) and all(w == g or (w == "+" and g != "#") for w, g in zip(want, got, strict=True))


def _guard_plugins() -> tuple[type, type]:
    from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

    class GuardAuth(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type information
        """amqtt authentication through the BrokerGuard."""

        @dataclass
        class Config:
            guard: Any = None

        async def authenticate(self, *, session: Any) -> bool | None:
            guard: BrokerGuard = self.config.guard
            return await guard.authenticate(session.username, session.password)

    class GuardTopics(BaseTopicPlugin):  # type: ignore[misc]
        """amqtt topic filtering through the BrokerGuard."""

        @dataclass
        class Config:
            guard: Any = None

        async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                                  action: Any = None) -> bool | None:
            guard: BrokerGuard = self.config.guard
            return guard.allowed(session.username if session else None, topic, str(action))

    return GuardAuth, GuardTopics


_PLUGINS: dict[str, type] = {}


def __getattr__(name: str) -> type:
    """The amqtt plugin classes, importable by path (amqtt loads plugins by dotted name)."""
    if name in ("GuardAuth", "GuardTopics"):
        if not _PLUGINS:
            _PLUGINS["GuardAuth"], _PLUGINS["GuardTopics"] = _guard_plugins()
        return _PLUGINS[name]
    raise AttributeError(name)


@dataclass
class EmbeddedBroker:
    """An amqtt broker on 127.0.0.1:``port`` inside the hub process; clients must log in (``guard``)."""

    port: int
    guard: BrokerGuard = field(default_factory=BrokerGuard)
    _broker: Any = None

    def url(self, username: str = HUB_USER, password: str | None = None) -> str:
        """The broker URL with credentials (the hub's by default)."""
        return f"mqtt://{username}:{password or self.guard.hub_password}@127.0.0.1:{self.port}"

    async def __aenter__(self) -> EmbeddedBroker:
        from amqtt.broker import Broker  # only when the embedded broker is used

        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {f"{__name__}.GuardAuth": {"guard": self.guard},
                        f"{__name__}.GuardTopics": {"guard": self.guard}},
        }
        self._broker = Broker(config)
        await self._broker.start()
        log.info("embedded MQTT broker (amqtt) on 127.0.0.1:%d, clients must log in", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
