"""Meter state saved by polls of several meters at once, and a state that cannot be saved."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from tests.adapters.dlms.meters import AK, EK, meter_conf, sim_meter
from tests.adapters.dlms.test_poll import _adapter, _endpoint, _profile
from tests.fakes import RecordingSink
from usagehub.adapters.dlms.state import StateStore
from usagehub.core.codecs.keyring import KeyRing


def test_concurrent_writes_keep_the_newest_state(tmp_path: Path) -> None:
    """Snapshots written from threads in any order: none fails, and the file ends with the newest one (an older
    snapshot never replaces it: a meter refuses an invocation counter it has seen)."""
    store = StateStore(tmp_path / "dlms-state.json")
    snapshots = []
    for counter in range(1, 201):
        store.get(f"meter-{counter % 3}").invocation_counter = counter
        snapshots.append(store.snapshot())
    random.Random(7).shuffle(snapshots)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(store.write, snapshots))  # re-raises the first failure
    saved = orjson.loads((tmp_path / "dlms-state.json").read_bytes())
    assert {d: s["invocation_counter"] for d, s in saved.items()} == {"meter-0": 198, "meter-1": 199,
                                                                       "meter-2": 200}
    assert not (tmp_path / "dlms-state.tmp").exists()


async def test_a_state_that_cannot_be_saved_fails_each_poll_and_polling_goes_on(tmp_path: Path) -> None:
    """A ciphered meter needs its counter reservation on disk before a session: when the state file cannot be
    written, each poll fails (counted, with the reason) and the meter's loop keeps going; no session is opened."""
    profile = _profile("hls_gmac")
    ring = KeyRing()
    ring.put("dlms_poll", "meter-a", EK)
    ring.put("dlms_poll", "meter-a:auth", AK)
    (tmp_path / "data" / "dlms-state.json").mkdir(parents=True)  # a folder where the file should be
    with sim_meter(tmp_path, meter_conf(authentication="hls_gmac")) as meter:
        adapter = _adapter(profile, [_endpoint(meter, "meter-a", profile)], tmp_path / "data", ring)
        sink = RecordingSink()
        async with adapter:
            task = asyncio.create_task(adapter.run(sink))
            try:
                async with asyncio.timeout(30):
                    while getattr(adapter.health.get("meter-a"), "failures", 0) < 3:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        health = adapter.health["meter-a"]
        assert health.streak >= 3 and "meter state not saved" in str(health.last_error)
        assert not sink.messages and not meter.requests()
