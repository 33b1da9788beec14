"""What ``usagehub demo`` sets up before the live fleet starts: plans, prepaid accounts, history, a segment.

Everything goes through the product's own services and the real ingest pipeline,
so what the demo shows is what a real fleet would produce.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_UP, Decimal
from importlib import resources

from usagehub.adapters.base import Outcome, Receipt
from usagehub.analytics.service import AnalyticsService, Segment
from usagehub.core.events import RawMessage
from usagehub.pipeline.session_worker import wait_replayed
from usagehub.prepaid.service import PrepaidService
from usagehub.rating.service import RatingService
from usagehub.runtime.hub import Hub
from usagehub.runtime.seed import SeedFile, apply_seed
from usagehub.runtime.simulate import Simulator

log = logging.getLogger(__name__)

HISTORY_DAYS = 90
HOURLY_DAYS = 35  # the features read the last 30 days hour by hour; older history is read every 3 hours
PLANS_FILE = "demo_plans.yaml"
LOW_TOPUP, LOW_THRESHOLD, TOPUP, RESTORE_TOPUP = Decimal("0.15"), Decimal("0.08"), Decimal(200), Decimal(20)
SEGMENT_RULE = "evening_share >= 0.4"
# Bytes a broken or unknown device might send: each is quarantined with its reason, never dropped.
MALFORMED = (
    ("meters/sim-m0000/reading", b"\x00\xffnot json at all"),
    ("meters/sim-m0000/reading", b'{"seq": "x", "ts": "yesterday"}'),
    ("meters/unregistered-7/reading", b'{"seq": 1, "ts": "2026-01-01T00:00:00Z", "energy_wh": 5, "boot": 1}'),
)


@dataclass
class Story:
    """What the set-up did, for the demo's banner."""

    history_messages: int = 0
    history_seconds: float = 0.0
    plans: int = 0
    prepaid: list[str] = field(default_factory=list)
    low_account: str | None = None
    quarantined: list[str] = field(default_factory=list)
    segment: str = ""
    segment_members: int = 0


async def set_up(hub: Hub, sim: Simulator, *, now: datetime, days: int = HISTORY_DAYS, fresh: bool = True) -> Story:
    """Seed, price, make accounts prepaid, backfill ``days`` of history, quarantine junk, save a segment.

    ``fresh=False``: the data folder has the fleet and its history from an earlier run; only the rest is done.
    """
    story = Story()
    fleet = sim.fleet
    since = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    if fresh:
        await apply_seed(hub.registry, SeedFile.model_validate(fleet.seed(since - timedelta(hours=1))))
    rating = RatingService(hub.pool)
    text = (resources.files("usagehub") / "data" / PLANS_FILE).read_text(encoding="utf-8")
    story.plans = len(await rating.load_plans(text, PLANS_FILE, author="demo"))
    if hub.prepaid is not None and fleet.prepaid_accounts:
        await _prepaid(hub.prepaid.service, fleet.prepaid_accounts, story, run=int(now.timestamp()))
    started = asyncio.get_running_loop().time()
    if days > 0 and fresh:
        story.history_messages = await backfill(hub, sim, since, now - timedelta(minutes=5))
    if not await wait_replayed(hub.pool):  # session workers bill the history: show it billed
        log.warning("sessions of the history are still being replayed; invoices fill in as they are")
    story.history_seconds = asyncio.get_running_loop().time() - started
    if hub.prepaid is not None:  # from now on live usage is debited as it is stored
        for account in fleet.prepaid_accounts:
            await hub.prepaid.service.configure(account_id=account, debit_mode="metered")
    story.quarantined = await _malformed(hub, now)
    analytics = AnalyticsService(hub.pool)
    segment = await _segment(analytics)
    await analytics.daily(now.date() - timedelta(days=1), now)
    story.segment = segment.name
    story.segment_members = (await analytics.segment("default", segment.segment_id)).members
    return story


async def backfill(hub: Hub, sim: Simulator, since: datetime, until: datetime) -> int:
    """Submit the fleet's history to the pipeline (no broker: the fast way in); the number of messages."""
    pending: list[asyncio.Future[Receipt]] = []
    count = 0
    received = datetime.now(UTC)
    for topic, payload, _ in sim.history(since, until, hourly_since=until - timedelta(days=HOURLY_DAYS)):
        pending.append(await hub.pipeline.submit(RawMessage(transport="mqtt", topic=topic, payload=payload,
                                                            received_at=received, source="demo-history")))
        count += 1
        if len(pending) >= 20_000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return count


async def _prepaid(service: PrepaidService, accounts: list[str], story: Story, *, run: int) -> None:
    """Top the prepaid accounts up; the first gets just enough for a few seconds of live usage.

    Topped up first (an empty account would be blocked at once); then the history is not debited
    (``reservation`` mode: it happened before the accounts became prepaid), live usage will be.
    """
    story.prepaid = accounts
    story.low_account = accounts[0]
    for i, account in enumerate(accounts):
        await service.top_up(account_id=account, amount=LOW_TOPUP if i == 0 else TOPUP,
                             payment_ref=f"demo-{run}-first-topup-{account}")
        await service.configure(account_id=account, low_threshold=LOW_THRESHOLD if i == 0 else Decimal(10),
                                debit_mode="reservation")


async def watch_low_account(service: PrepaidService, account: str, say: Callable[[str], None], *,
                            every_s: float = 1.0, wait_s: float = 3.0) -> None:
    """Live: tell when the low account is blocked, top it up ``wait_s`` later, tell when it is restored."""
    while True:
        await asyncio.sleep(every_s)
        state = await service.account(account)
        if state is not None and state.blocked:
            break
    say(f"{account} ran out of credit: blocked, a block command went to its meter; topping up in {wait_s:.0f} s")
    await asyncio.sleep(wait_s)
    amount = (state.arrears + max(Decimal(0), -state.funds) + RESTORE_TOPUP).quantize(Decimal("0.01"), ROUND_UP)
    await service.top_up(account_id=account, amount=amount, payment_ref=f"demo-{int(time.time())}-topup-{account}")
    state = await service.account(account)
    say(f"{account} topped up {amount} {state.currency if state else ''}: "
        + ("restored" if state is not None and not state.blocked else "still blocked"))


async def _malformed(hub: Hub, now: datetime) -> list[str]:
    futures = [await hub.pipeline.submit(RawMessage(transport="mqtt", topic=topic, payload=payload,
                                                    received_at=now, source="demo-junk"))
               for topic, payload in MALFORMED]
    receipts = await asyncio.gather(*futures)
    return [f"{topic}: {r.reason}" for (topic, _), r in zip(MALFORMED, receipts, strict=True)
            if r.outcome is Outcome.QUARANTINED]


async def _segment(analytics: AnalyticsService) -> Segment:
    existing = [s for s in await analytics.segments("default") if s.name == "evening-heavy"]
    if existing:
        return existing[0]
    return await analytics.save_segment(tenant="default", name="evening-heavy", rule=SEGMENT_RULE, product="energy",
                                        description="households using 40 % or more of their energy 17-23 h")
