"""Small fakes of our own ports (like OTel's consumertest), never of real peers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from usagehub.adapters.base import DeviceEndpoint, Outcome, Receipt
from usagehub.core.events import RawMessage


class RecordingSink:
    """A Sink that records messages and resolves each future with ``decide(message)``."""

    def __init__(self, decide: Callable[[RawMessage], Receipt] | None = None, *, delay_s: float = 0.0) -> None:
        self.messages: list[RawMessage] = []
        self._decide = decide or (lambda m: Receipt(outcome=Outcome.ACCEPTED, accepted=1))
        self._delay_s = delay_s
        self.received = asyncio.Event()

    async def submit(self, message: RawMessage) -> asyncio.Future[Receipt]:
        self.messages.append(message)
        self.received.set()
        fut: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        receipt = self._decide(message)
        if self._delay_s:
            asyncio.get_running_loop().call_later(self._delay_s, _resolve, fut, receipt)
        else:
            fut.set_result(receipt)
        return fut

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[RawMessage]:
        async with asyncio.timeout(timeout_s):
            while len(self.messages) < count:
                self.received.clear()
                await self.received.wait()
        return self.messages


def _resolve(fut: asyncio.Future[Receipt], receipt: Receipt) -> None:
    if not fut.done():  # the adapter may have cancelled it (stopped) before the delay ran out
        fut.set_result(receipt)


class StaticDirectory:
    """A DeviceDirectory over a fixed list of endpoints."""

    def __init__(self, endpoints: Sequence[DeviceEndpoint] = ()) -> None:
        self._endpoints = {e.device_id: e for e in endpoints}

    async def endpoints(self, profile_id: str | None = None) -> Sequence[DeviceEndpoint]:
        return [e for e in self._endpoints.values() if profile_id is None or e.profile_id == profile_id]

    async def endpoint(self, device_id: str) -> DeviceEndpoint | None:
        return self._endpoints.get(device_id)
