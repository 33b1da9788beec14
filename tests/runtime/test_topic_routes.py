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


def test_heavy_senders_are_spread_evenly_and_keep_their_place() -> None:
    """50 gateways over two ingest processes: 25 each (a hash split them 30/20); a key's place never changes,
    and past the limit new keys take the fallback without moving the others."""
    from usagehub.pipeline.routes import Spread
    from usagehub.runtime.ingest_processes import child_index

    spread = Spread(2, lambda key: child_index(key, 2, 2), limit=60)
    gateways = [f"g{g:02d}" for g in range(50)]
    places = {key: spread(key) for key in gateways}
    assert sorted(places.values()).count(0) == 25 and spread.keys == [25, 25]
    hashed = [child_index(key, 2, 2) for key in gateways]
    assert abs(hashed.count(0) - hashed.count(1)) >= 10  # what the hash alone gave this fleet
    for key in reversed(gateways):  # asked again, in any order: the same place
        assert spread(key) == places[key]
    later = [f"m{d:04d}" for d in range(20)]
    for key in later:
        spread(key)
    assert len(spread) == 60  # the limit: the last ten keys were hashed, not remembered
    assert [spread(key) for key in later[10:]] == [child_index(key, 2, 2) for key in later[10:]]
    assert all(spread(key) == places[key] for key in gateways)
