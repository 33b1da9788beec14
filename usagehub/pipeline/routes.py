"""Where a message goes (a commit lane, an ingest process), remembered per topic.

Finding a message's lane asks its profile for the lane key (``Entitlements.lane_key``); a topic names one
device, so the answer is kept per transport and topic. Messages with metadata (an authenticated sender,
fields a profile reads) are routed each time. The memory is emptied when the profiles change (meter types
move topics) and when it holds ``limit`` topics of one transport (a flood of invented topics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage

T = TypeVar("T")


class TopicRoutes(Generic[T]):
    """``route(message)``, remembered per (transport, topic) for messages without metadata."""

    def __init__(self, profiles: ProfileSet, route: Callable[[RawMessage], T], *, limit: int = 65_536) -> None:
        self.profiles, self.route, self.limit = profiles, route, limit
        self._known: dict[str, dict[str, T]] = {}  # transport -> topic -> where
        self._version = profiles.version

    def __call__(self, message: RawMessage) -> T:
        """Where ``message`` goes."""
        if message.meta:
            return self.route(message)
        if self._version != self.profiles.version:
            self._known.clear()
            self._version = self.profiles.version
        known = self._known.get(message.transport)
        if known is None or len(known) >= self.limit:
            known = self._known[message.transport] = {}
        found = known.get(message.topic)
        if found is None:
            found = known[message.topic] = self.route(message)
        return found


class Spread:
    """Lane keys spread over ``n`` places: a key goes, when first seen, to the place holding the fewest keys,
    and stays there (one sender's messages keep to one place, in order).

    A hash spreads many keys evenly but a few heavy senders unevenly: 50 gateways hashed over two ingest
    processes split 30/20, and the busier process was still committing while the other's core idled.
    Beyond ``limit`` keys, new keys take ``fallback`` (a hash): memory stays bounded and no key moves.
    """

    def __init__(self, n: int, fallback: Callable[[str], int], *, limit: int = 100_000) -> None:
        self.fallback, self.limit = fallback, limit
        self.keys = [0] * n  # keys placed in each place
        self._place: dict[str, int] = {}

    def __len__(self) -> int:
        """Keys remembered."""
        return len(self._place)

    def __call__(self, key: str) -> int:
        """The place of ``key``."""
        place = self._place.get(key)
        if place is None:
            if len(self._place) >= self.limit:
                return self.fallback(key)
            keys = self.keys
            place = self._place[key] = keys.index(min(keys))
            keys[place] += 1
        return place
