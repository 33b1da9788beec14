"""Readiness of a hub: every enabled adapter connected or listening, and the pipeline committing."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from usagehub.adapters.link import Link


class Committing(Protocol):
    """What readiness asks of ingest: how long messages have waited with no commit (the pipeline, or the
    hub's ingest processes with it)."""

    def commit_wait_s(self) -> float: ...

    @property
    def stalled(self) -> bool: ...


def adapter_up(adapter: object) -> bool:
    """Whether one adapter is connected/listening: its ``link``, else its ``ready`` event, else it is up."""
    link = getattr(adapter, "link", None)
    if isinstance(link, Link):
        return link.is_up
    ready = getattr(adapter, "ready", None)
    if isinstance(ready, asyncio.Event):
        return ready.is_set()
    return True  # bound in __aenter__ (CoAP, HTTP, SNMP traps) or nothing to connect to (files)


class Readiness:
    """What /readyz and /healthz answer for one hub."""

    def __init__(self, adapters: Mapping[str, object], pipeline: Committing, links: Mapping[str, Link]) -> None:
        self.adapters, self.pipeline, self.links = adapters, pipeline, links
        self.started = asyncio.Event()  # set once every adapter was up for the first time

    def adapter_states(self) -> dict[str, bool]:
        """Connected/listening per adapter (and per side connection such as prepaid MQTT)."""
        states = {name: adapter_up(a) for name, a in self.adapters.items()}
        states.update({name: link.is_up for name, link in self.links.items()})
        return states

    def all_up(self) -> bool:
        """Whether every adapter is connected/listening now."""
        return all(self.adapter_states().values())

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready: started, every adapter up, and no messages waiting longer than the stall threshold."""
        states = self.adapter_states()
        wait = self.pipeline.commit_wait_s()
        ok = self.started.is_set() and all(states.values()) and not self.pipeline.stalled
        return ok, {"started": self.started.is_set(), "adapters": states, "commit_wait_s": round(wait, 3),
                    "stalled": self.pipeline.stalled}

    def live(self) -> bool:
        """Alive once started (liveness must not flap with a broker outage)."""
        return self.started.is_set()

    async def wait_started(self, poll_s: float = 0.05) -> None:
        """Return once every adapter has been up; sets ``started``."""
        while not self.all_up():  # noqa: ASYNC110 — adapters expose state, not a common event
            await asyncio.sleep(poll_s)
        self.started.set()
