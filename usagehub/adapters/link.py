"""Connection state of one adapter: readiness, jittered backoff, one log line per outage and per recovery.

``keep_serving`` gives the same to adapters that only bind a port (CoAP, SNMP traps, binary
TCP/UDP, HTTP): when one dies while running it is rebound with backoff, down meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from usagehub import metrics
from usagehub.adapters.base import Adapter, Sink
from usagehub.errors import AdapterError

log = logging.getLogger(__name__)


class Link:
    """Tracks one adapter's connection: ``up`` while connected/listening; outages logged and counted once."""

    def __init__(self, name: str, *, first_delay_s: float = 0.5, max_delay_s: float = 30.0) -> None:
        self.name = name
        self.up = asyncio.Event()
        self.first_delay_s, self.max_delay_s = first_delay_s, max_delay_s
        self.outages = 0
        self._down_since: float | None = None
        self._attempts = 0
        metrics.ADAPTER_UP.labels(name).set(0)

    @property
    def is_up(self) -> bool:
        """Whether the adapter is connected (or listening) now."""
        return self.up.is_set()

    def connected(self, detail: str) -> None:
        """The connection is (again) established; logs the recovery of an outage once."""
        if self._down_since is not None:
            log.info("%s recovered after %.1fs: %s", self.name, time.monotonic() - self._down_since, detail)
            metrics.ADAPTER_RECOVERIES.labels(self.name).inc()
        else:
            log.info("%s connected: %s", self.name, detail)
        self._down_since = None
        self._attempts = 0
        self.up.set()
        metrics.ADAPTER_UP.labels(self.name).set(1)

    def lost(self, err: BaseException) -> float:
        """The connection failed or was lost: log it once per outage; return the jittered delay to wait.

        Raises CancelledError when the calling task is being cancelled: a failure then is the stop's own
        (a disconnect that fails during the cancel replaces the CancelledError, as aiomqtt's ``__aexit__``
        does), and a reconnect loop that took it for an outage would swallow the stop and run for ever.
        """
        try:
            task = asyncio.current_task()
        except RuntimeError:  # called outside an event loop (a callback of a thread)
            task = None
        if task is not None and task.cancelling():
            raise asyncio.CancelledError(f"{self.name} stopping") from err
        self.up.clear()
        metrics.ADAPTER_UP.labels(self.name).set(0)
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.outages += 1
            metrics.ADAPTER_OUTAGES.labels(self.name).inc()
            log.warning("%s connection lost (%s: %s); reconnecting with backoff", self.name,
                        type(err).__name__, err)
        else:
            log.debug("%s still down (%s)", self.name, err)
        ceiling = min(self.max_delay_s, self.first_delay_s * 2 ** min(self._attempts, 16))
        self._attempts += 1
        # Jitter spreads the reconnects of many hubs after a broker restart.
        return float(ceiling * random.uniform(0.5, 1.0))

    def down(self) -> None:
        """Stopped on purpose (shutdown): not an outage."""
        self.up.clear()
        metrics.ADAPTER_UP.labels(self.name).set(0)


async def keep_serving(adapter: Adapter, sink: Sink, link: Link, *, detail: str) -> None:
    """Run an entered, bound ``adapter`` until cancelled; when ``run`` fails or returns, rebind it.

    The link is down from the failure until the adapter is bound again (``/readyz`` says not ready);
    rebinding is ``__aexit__`` then ``__aenter__``, retried with the link's jittered backoff.
    """
    link.connected(detail)
    while True:
        try:
            await adapter.run(sink)
            failure: BaseException = AdapterError(f"{link.name} stopped serving by itself")
        except Exception as err:  # whatever killed it, the hub keeps the door open
            failure = err
        while True:
            await asyncio.sleep(link.lost(failure))
            try:
                await adapter.__aexit__(None, None, None)
                await adapter.__aenter__()
                break
            except Exception as err:  # e.g. the port is still taken: try again later
                failure = err
        link.connected(detail)
