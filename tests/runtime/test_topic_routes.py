"""A topic's route is asked once, then remembered; never for messages with metadata; bounded; forgotten when
the profiles change."""

from __future__ import annotations

from datetime import UTC, datetime

from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage
from usagehub.pipeline.routes import TopicRoutes
from usagehub.runtime.config import SHIPPED_PROFILES
from usagehub.runtime.profile_files import load_profiles

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def _message(topic: str, transport: str = "mqtt", **meta: str) -> RawMessage:
    return RawMessage(transport=transport, topic=topic, payload=b"{}", received_at=NOW, meta=meta)


def test_a_topic_is_routed_once_and_a_message_with_metadata_every_time() -> None:
    asked: list[str] = []
    routes = TopicRoutes(ProfileSet(load_profiles(SHIPPED_PROFILES)), lambda m: asked.append(m.topic) or len(asked))
    assert routes(_message("meters/m1/reading")) == routes(_message("meters/m1/reading")) == 1
    assert routes(_message("meters/m1/reading", transport="coap")) == 2  # per transport
    assert routes(_message("meters/m2/reading", device_id="m2")) == 3
    assert routes(_message("meters/m2/reading", device_id="m2")) == 4  # an authenticated sender: asked again
    assert asked == ["meters/m1/reading"] * 2 + ["meters/m2/reading"] * 2


def test_routes_are_forgotten_when_the_profiles_change_and_when_full() -> None:
    profiles = ProfileSet(load_profiles(SHIPPED_PROFILES))
    asked: list[str] = []
    routes = TopicRoutes(profiles, lambda m: asked.append(m.topic) or m.topic, limit=3)
    for topic in ("a", "b", "a", "c"):
        routes(_message(topic))
    assert asked == ["a", "b", "c"]
    routes(_message("d"))  # a fourth topic: the memory is emptied first (invented topics never grow it)
    routes(_message("a"))
    assert asked == ["a", "b", "c", "d", "a"]
    profiles.replace(load_profiles(SHIPPED_PROFILES))  # meter types may have moved topics
    routes(_message("a"))
    assert asked[-1] == "a" and len(asked) == 6
