"""A small in-memory stand-in for the ingest pipeline: real profile decoding, dedupe by identity.

It is a fake of OUR Sink port (like tests.fakes.RecordingSink) that answers with the
Receipts the real pipeline would give, so adapters can be tested for exactly-once counting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from usagehub.adapters.base import Outcome, Receipt
from usagehub.core.decode import ProfileSet
from usagehub.core.events import RawMessage, UsageEvent
from usagehub.core.profiles import Profile, parse_profile
from usagehub.errors import DecodeError

PROFILES_DIR = Path(__file__).resolve().parents[3] / "device_profiles"


def load_profiles(*ids: str) -> list[Profile]:
    """Shipped profiles by id."""
    return [parse_profile((PROFILES_DIR / f"{i}.yaml").read_text(), f"{i}.yaml", expected_id=i) for i in ids]


class MiniPipeline:
    """Decodes each message with its profile; stores new identities; quarantines what fails."""

    def __init__(self, profiles: Iterable[Profile], *, fail: BaseException | None = None) -> None:
        self.profiles = ProfileSet(profiles)
        self.events: dict[tuple[str, str, str, str], UsageEvent] = {}
        self.quarantine: list[tuple[RawMessage, str]] = []
        self.messages: list[RawMessage] = []
        self.fail = fail

    async def submit(self, message: RawMessage) -> asyncio.Future[Receipt]:
        self.messages.append(message)
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        if isinstance(self.fail, asyncio.CancelledError):
            future.cancel()  # the pipeline shut down under the message
            return future
        if self.fail is not None:
            future.set_exception(self.fail)
            return future
        future.set_result(self._decide(message))
        return future

    def _decide(self, message: RawMessage) -> Receipt:
        try:
            events = self.profiles.decode(message)
        except DecodeError as err:
            self.quarantine.append((message, str(err)))
            return Receipt(outcome=Outcome.QUARANTINED, reason=str(err), quarantine_id=len(self.quarantine))
        new = 0
        for e in events:
            key = (e.device_id, e.event_id, e.meter, e.ts.isoformat())
            if key not in self.events:
                self.events[key] = e
                new += 1
        outcome = Outcome.ACCEPTED if new else Outcome.DUPLICATE
        return Receipt(outcome=outcome, accepted=new, duplicates=len(events) - new,
                       device_id=events[0].device_id)
