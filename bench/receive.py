"""The MQTT receive path alone: the hub's adapter against a bare paho subscriber, on one stored backlog.

Both drain the same backlog of the realistic fleet (``bench/fleet.py``) from a persistent session on a
real Mosquitto, at QoS 1 with a PUBACK per message, and nothing behind them: the hub's ``MqttAdapter``
hands each message to a sink whose commit is already done (what is measured is receive, ``RawMessage``,
submit and the ack after "commit"); the bare subscriber is paho's own loop with ``on_message`` and
manual acks, as the glue baselines use it. Printed: CPU µs per message of each (median of the rounds)
and their ratio. ``--profile FILE`` writes a cProfile of the hub's adapter.

    .venv/bin/python bench/receive.py [MESSAGES] [ROUNDS] [--profile /tmp/recv.prof]   # 30000 3
"""

from __future__ import annotations

import asyncio
import cProfile
import statistics
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.fleet import fleet  # noqa: E402
from bench.ingest import Broker, forget_session  # noqa: E402
from bench.rawpub import publish  # noqa: E402
from bench.scratch import scratch  # noqa: E402
from usagehub.adapters.base import AdapterSettings, Receipt  # noqa: E402
from usagehub.adapters.mqtt.adapter import MqttAdapter  # noqa: E402
from usagehub.adapters.mqtt.config import MqttConfig  # noqa: E402
from usagehub.core.events import RawMessage  # noqa: E402

TOPICS = ["meters/+/reading", "security/+/event"]


class DoneSink:
    """A pipeline whose every commit has already happened: counts, and resolves at once."""

    def __init__(self, expect: int) -> None:
        self.got = 0
        self.expect = expect
        self.done = asyncio.Event()
        self.receipt = Receipt(outcome="accepted", accepted=1)

    async def submit(self, message: RawMessage) -> asyncio.Future[Receipt]:
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        future.set_result(self.receipt)
        self.got += 1
        if self.got >= self.expect:
            self.done.set()
        return future


def cpu() -> float:
    return time.process_time()


async def backlog(port: int, client_id: str, msgs: list[tuple[bytes, bytes]]) -> None:
    """A persistent session for ``client_id`` subscribed to the fleet's topics, holding every message."""
    ready = asyncio.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.on_subscribe = lambda *_: ready.set()
    client.connect("127.0.0.1", port)
    client.subscribe([(t, 1) for t in TOPICS])
    while not ready.is_set():
        client.loop(0.05)
    client.disconnect()
    await publish(msgs, port)


async def hub_adapter(port: int, n: int, prof: cProfile.Profile | None) -> float:
    """CPU seconds the hub's MQTT adapter spends draining ``n`` stored messages."""
    client_id = f"recv-hub-{uuid.uuid4().hex[:6]}"
    await backlog(port, client_id, MSGS[:n])
    config = MqttConfig(url=f"mqtt://127.0.0.1:{port}", client_id=client_id, topics=TOPICS, protocol="5")
    adapter = MqttAdapter(config, AdapterSettings(profiles=[], devices=None, data_dir=Path("."),  # type: ignore[arg-type]
                                                  ))
    sink = DoneSink(n)
    if prof:
        prof.enable()
    c0 = cpu()
    task = asyncio.create_task(adapter.run(sink))
    await asyncio.wait_for(sink.done.wait(), 600)
    used = cpu() - c0
    if prof:
        prof.disable()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await forget_session(port, client_id)
    return used


def bare_paho(port: int, n: int) -> float:
    """CPU seconds paho's own loop spends draining ``n`` stored messages (on_message + manual ack)."""
    client_id = f"recv-bare-{uuid.uuid4().hex[:6]}"
    asyncio.run(backlog(port, client_id, MSGS[:n]))
    got = 0

    def on_message(client: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        nonlocal got
        got += 1
        client.ack(msg.mid, msg.qos)

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                         protocol=paho.MQTTv311, manual_ack=True)
    client.on_message = on_message
    c0 = cpu()
    client.connect("127.0.0.1", port)
    while got < n:
        client.loop(0.05)
    used = cpu() - c0
    client.disconnect()
    asyncio.run(forget_session(port, client_id))
    return used


MSGS: list[tuple[bytes, bytes]] = []


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--") and not a.endswith(".prof")]
    n = int(args[0]) if args else 30000
    rounds = int(args[1]) if len(args) > 1 else 3
    profile = sys.argv[sys.argv.index("--profile") + 1] if "--profile" in sys.argv else None
    weeks = 1
    while True:
        MSGS[:] = fleet(weeks, 40)[0]
        if len(MSGS) >= n:
            break
        weeks += 1
    broker = Broker(scratch("usagehub-recv-"))
    hub, bare = [], []
    try:
        for r in range(rounds):
            prof = cProfile.Profile() if profile and r == rounds - 1 else None
            bare.append(bare_paho(broker.port, n))
            hub.append(asyncio.run(hub_adapter(broker.port, n, prof)))
            if prof:
                prof.dump_stats(profile)
            print(f"  round {r + 1}: bare paho {1e6 * bare[-1] / n:.1f} us/msg, hub adapter {1e6 * hub[-1] / n:.1f}"
                  " us/msg")
    finally:
        broker.proc.terminate()
    b, h = statistics.median(bare), statistics.median(hub)
    print(f"receive path, {n} stored messages, QoS 1, median of {rounds}:")
    print(f"  bare paho loop (3.1.1, on_message, manual ack)  {1e6 * b / n:6.1f} us/msg CPU")
    print(f"  usagehub MqttAdapter (MQTT 5, RawMessage, ack)  {1e6 * h / n:6.1f} us/msg CPU  ({h / b:.2f}x bare)")


if __name__ == "__main__":
    main()
