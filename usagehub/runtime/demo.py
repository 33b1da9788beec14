"""``usagehub demo``: a hub on embedded defaults showing the whole product, then a live fleet and a summary line."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
from datetime import UTC, date, datetime, timedelta

from usagehub.adapters.mqtt.config import MqttConfig
from usagehub.runtime.config import HubConfig
from usagehub.runtime.demo_story import LOW_TOPUP, Story, set_up, watch_low_account
from usagehub.runtime.hub import Hub, run_hub
from usagehub.runtime.simulate import Fleet, Simulator
from usagehub.storage.queries import Reads


async def run_demo(config: HubConfig, *, meters: int, panels: int, rate: float, duration_s: float,
                   history_days: int = 90, install_signals: bool = True) -> None:
    """Serve, set up history, plans and prepaid accounts, print where to look, then run the live fleet."""
    fleet = Fleet.of_size(meters, panels)
    broker = config.mqtt_url or f"mqtt://127.0.0.1:{config.embedded_broker_port}"
    now = datetime.now(UTC)
    # A run on a data folder that already has the fleet continues it: new message ids, a new register baseline.
    later = {"first_seq": int(now.timestamp() * 1000), "boot": int(now.timestamp())}
    sim: Simulator | None = None

    async def on_ready(hub: Hub) -> None:
        nonlocal sim
        again = bool(meters) and await hub.registry.account("sim-acct-0000", tenant="default") is not None
        url = broker
        if hub.broker is not None:  # the embedded broker wants a login: one for the simulated fleet
            password = secrets.token_urlsafe(16)
            hub.broker.guard.add_publisher("demo-fleet", password, [*fleet.meters, *fleet.panels])
            url = hub.broker.url("demo-fleet", password)
        sim = Simulator(fleet, MqttConfig(url=url), rate_per_s=rate, **(later if again else {}))
        if again:
            print(f"usagehub demo: {config.data_dir} already holds the demo fleet and its history; continuing it "
                  "(a fresh folder: --data-dir)", flush=True)
        else:
            print(f"usagehub demo: loading {history_days} days of history for {meters} meters and {panels} alarm "
                  "panels through the pipeline…", flush=True)
        story = await set_up(hub, sim, now=now, days=history_days, fresh=not again)
        key, _ = await hub.keys.create(role="admin", name="demo")
        base = f"http://{config.http_host}:{hub.http_port}"
        print(banner(base, key, story, fleet, now.date()), flush=True)
        hub.background.append(asyncio.create_task(_summary(hub, sim, duration_s), name="demo-summary"))
        if hub.prepaid is not None and story.low_account:
            hub.background.append(asyncio.create_task(
                watch_low_account(hub.prepaid.service, story.low_account, _say), name="demo-prepaid"))
        if install_signals:  # end the summary line before the hub logs that it is stopping
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, _stop, hub)

    await run_hub(config, on_ready=on_ready, install_signals=install_signals)


def banner(base: str, key: str, story: Story, fleet: Fleet, today: date) -> str:
    """What the demo did and where to look, with three queries that return something."""
    last_month = (today.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    since, until = (today - timedelta(days=84)).isoformat(), (today + timedelta(days=1)).isoformat()
    account = fleet.meters and "sim-acct-0001"
    history = (f"{story.history_messages} messages in {story.history_seconds:.1f} s "
               f"({story.history_messages / max(story.history_seconds, 0.001):.0f} msg/s)"
               if story.history_messages else "none loaded now (--history-days 0, or kept from an earlier run)")
    lines = [
        f"  history:   {history}",
        f"  plans:     {story.plans} price plans (energy, power, armed, alarms, door_openings in DE, FR, NL; "
        "VAT by market)",
    ]
    if story.prepaid:
        lines.append(f"  prepaid:   {', '.join(story.prepaid)}")
    if story.low_account:
        lines.append(f"             {story.low_account} has {LOW_TOPUP} EUR left: watch it run out, be blocked, "
                     "and be restored by a top-up")
    lines.append(f"  segment:   {story.segment} ({story.segment_members} members)")
    lines += [f"  quarantined (kept with the reason, replayable): {q}" for q in story.quarantined]
    queries = [
        f'{{ invoicePreview(accountId: "{account}", period: "{last_month}") '
        "{ lines { product quantity unit unitPrice { amount } net { amount } } "
        "vat { rate vat { amount } } gross { amount currency } } }",
        f'{{ consumptionSeries(scope: MARKET, key: "DE", product: "energy", bucket: WEEK, since: "{since}", '
        f'until: "{until}") {{ start quantity accounts }} }}',
        f'{{ prepaidEvents(accountId: "{story.low_account or account}") {{ kind balance funds at }} '
        "segments { name rule members } quarantine { edges { node { reason topic } } } }",
    ]
    return "\n".join([
        "usagehub demo is running.",
        *lines,
        f"  GraphiQL:  {base}/graphql#key={key}",
        f"  analytics: {base}/analytics#key={key}",
        f"  exports:   {base}/exports/invoices/{account}/{last_month}.csv   "
        f"{base}/analytics/export/series.csv?product=energy",
        f"             (send the header  Authorization: Bearer {key})",
        f"  API key:   {key}",
        "  try in GraphiQL:",
        *(f"    {q}" for q in queries),
        "Ctrl-C stops.",
    ])


def summary_line(sent: int, totals: dict[str, int]) -> str:
    """One line: messages (the unit devices send) and events (what a message decodes into) apart."""
    return (f"messages: {sent} published live, {totals['messages']} received, {totals['quarantined']} quarantined"
            f" | events: {totals['accepted']} stored, {totals['duplicates']} duplicates"
            f" | batches: {totals['batches']}")


def _say(text: str) -> None:
    """A line of its own, above the redrawn summary line on a terminal."""
    sys.stdout.write(f"\r\x1b[K{text}\n" if sys.stdout.isatty() else f"{text}\n")
    sys.stdout.flush()


def _stop(hub: Hub) -> None:
    if sys.stdout.isatty() and not hub.stopping.is_set():
        sys.stdout.write("\n")  # the summary line was redrawn with \r: the stop line starts on its own line
        sys.stdout.flush()
    hub.stop()


async def _summary(hub: Hub, sim: Simulator, duration_s: float) -> None:
    sim_task = asyncio.create_task(sim.run(), name="simulator")
    started = asyncio.get_running_loop().time()
    tty = sys.stdout.isatty()
    try:
        while not hub.stopping.is_set():
            await asyncio.sleep(1)
            # Stored totals of every process (ingest processes commit beside the hub's own pipeline).
            line = summary_line(sim.sent, await Reads(hub.pool).ingest_totals())
            sys.stdout.write(f"\r{line}   " if tty else f"{line}\n")
            sys.stdout.flush()
            if sim_task.done():
                sim_task.result()
            if duration_s and asyncio.get_running_loop().time() - started >= duration_s:
                _stop(hub)
    finally:
        sim_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sim_task
