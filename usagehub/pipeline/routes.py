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
