"""Every shipped MQTT and Sparkplug profile works under the shipped ACL, and only for the identity in its topic.

A profile whose topic carries no ``{device_id}``/``{gateway_id}`` would let any publisher the broker admits
name any device; one the ACL does not admit cannot work at all (issue 15: the ACL once forbade ``gateways/#``).
The same rules hold on the embedded broker. Real Mosquitto runs them in tests/integration/test_mqtt_identity.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from paho.mqtt.client import topic_matches_sub

from usagehub.runtime.broker import HUB_USER, BrokerGuard
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles

ACL = Path(__file__).resolve().parents[2] / "deploy" / "acl"
BROKER_TRANSPORTS = ("mqtt", "sparkplug")
TOPICS = {p.id: p.match.topic for p in load_profiles(SHIPPED_PROFILES)
          if p.match.transport in BROKER_TRANSPORTS and p.match.topic}


def _rules() -> dict[str, list[tuple[str, str]]]:
    """The ACL as {user or '%pattern': [(access, topic)]}."""
    rules: dict[str, list[tuple[str, str]]] = {}
    user = ""
    for line in ACL.read_text().splitlines():
        words = [] if line.lstrip().startswith("#") else line.split()  # '#' is a comment only at the start
        if not words:
            continue
        if words[0] == "user":
            user = words[1]
        elif words[0] == "topic":
            rules.setdefault(user, []).append((words[1], words[2]))
        elif words[0] == "pattern":
            rules.setdefault("%pattern", []).append((words[1], words[2]))
    return rules


def mosquitto_allows(user: str, access: str, topic: str) -> bool:
    """Mosquitto's ACL check for a publish (``write``) or a delivery (``read``) on a concrete topic."""
    rules = _rules()
    granted = rules.get(user, []) + [(a, t.replace("%u", user)) for a, t in rules.get("%pattern", [])]
    return any(a in (access, "readwrite") and topic_matches_sub(t, topic) for a, t in granted)


def instance(topic: str, **ids: str) -> str:
    """A concrete topic of a profile's topic pattern (``+`` segments become ``x``)."""
    out = re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "other"), topic)
    return "/".join("x" if s == "+" else s for s in out.split("/"))


def publisher(topic: str) -> str:
    return "gateway_id" if "{gateway_id}" in topic else "device_id"


def test_there_are_broker_profiles_to_check() -> None:
    assert {"acme-em340", "acme-dc100-gateway", "oms-meter-mqtt", "sparkplug-energy-meter"} <= set(TOPICS)


@pytest.mark.parametrize("profile", sorted(TOPICS))
def test_each_topic_names_the_identity_that_publishes(profile: str) -> None:
    assert "{device_id}" in TOPICS[profile] or "{gateway_id}" in TOPICS[profile], (
        f"{profile}: a topic without {{device_id}} or {{gateway_id}} lets any publisher name any device")


@pytest.mark.parametrize("profile", sorted(TOPICS))
def test_the_shipped_acl_admits_the_owner_and_the_hub_only(profile: str) -> None:
    who = publisher(TOPICS[profile])
    topic = instance(TOPICS[profile], **{who: "dev-1", "device_id": "dev-1"})
    assert mosquitto_allows("dev-1", "write", topic), f"{profile}: deploy/acl refuses {topic} to its owner"
    assert mosquitto_allows(HUB_USER, "read", topic), f"{profile}: deploy/acl hides {topic} from the hub"
    assert not mosquitto_allows("dev-2", "write", topic), f"{profile}: deploy/acl lets another user write {topic}"


@pytest.mark.parametrize("profile", sorted(TOPICS))
def test_the_embedded_broker_admits_the_owner_only(profile: str) -> None:
    guard = BrokerGuard("hub-pw")
    who = publisher(TOPICS[profile])
    topic = instance(TOPICS[profile], **{who: "dev-1", "device_id": "dev-1"})
    assert guard.allowed("dev-1", topic, "publish"), f"{profile}: the embedded broker refuses {topic} to its owner"
    assert not guard.allowed("dev-2", topic, "publish")
    assert guard.allowed(HUB_USER, topic, "subscribe")
