"""Which CoAP profile claims a request path, and the device id the path names."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from usagehub.core.decode import topic_regex
from usagehub.core.profiles import Profile

DEFAULT_PATH = "u/{device_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """A matched request: the profile, and the device id named by the path (if any)."""

    profile: Profile
    path_device_id: str | None


class Router:
    """Matches request paths (without leading slash) against the profiles of one transport."""

    def __init__(self, profiles: Iterable[Profile], transport: str = "coap") -> None:
        self._routes = [(p, topic_regex((p.match.topic or DEFAULT_PATH).lstrip("/")))
                        for p in profiles if p.match.transport == transport]

    def __bool__(self) -> bool:
        return bool(self._routes)

    def match(self, path: str) -> Route | None:
        """The first profile whose pattern matches ``path``, or None."""
        for profile, regex in self._routes:
            m = regex.match(path)
            if m:
                return Route(profile=profile, path_device_id=m.groupdict().get("device_id"))
        return None
