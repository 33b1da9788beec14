"""CoAP ingest: confirmable CBOR POSTs per second with concurrent clients, vs a bare aiocoap resource.

The hub's CoAP adapter runs in this process against a fast in-memory sink (the lead
re-runs it against the real pipeline); the clients run in a separate process so they do
not share the server's event loop. Loopback only; bounded in count and time.

    .venv/bin/python bench/coap_ingest.py [--requests 3000] [--concurrency 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiocoap
import cbor2
from aiocoap import resource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usagehub.adapters.base import AdapterSettings, DeviceEndpoint, Outcome, Receipt
from usagehub.adapters.coap import FACTORY, CoapConfig
from usagehub.core.events import RawMessage
from usagehub.core.profiles import parse_profile

PROFILE = """
id: bench-coap
match: {transport: coap, topic: "u/{device_id}"}
decode: {type: cbor}
allow_unauthenticated: true
event_id: "$.seq"
meters:
  energy: {value: "$.e", kind: cumulative, unit: Wh, aggregation: sum}
"""


class FastSink:
    """Resolves every future at once, as a pipeline with an instant commit would."""

    def __init__(self) -> None:
        self.count = 0

    async def submit(self, message: RawMessage) -> asyncio.Future[Receipt]:
        self.count += 1
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        future.set_result(Receipt(outcome=Outcome.ACCEPTED, accepted=1))
        return future


class Directory:
    async def endpoints(self, profile_id: str | None = None) -> list[DeviceEndpoint]:
        return []

    async def endpoint(self, device_id: str) -> DeviceEndpoint | None:
        return DeviceEndpoint(device_id=device_id, profile_id=None)


class Bare(resource.Resource):  # type: ignore[misc]
    """The baseline: an aiocoap resource that answers 2.04 and does nothing."""

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CHANGED)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _clients(port: int, requests: int, concurrency: int) -> float:
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    per_client = requests // concurrency

    async def one(client_no: int) -> None:
        for seq in range(per_client):
            payload = cbor2.dumps({"seq": seq, "e": seq * 10})
            msg = aiocoap.Message(code=aiocoap.POST, uri=f"coap://127.0.0.1:{port}/u/dev{client_no}",
                                  payload=payload, content_format=60)
            response = await ctx.request(msg).response
            if response.code != aiocoap.CHANGED:
                raise RuntimeError(f"unexpected {response.code}")

    started = time.perf_counter()
    async with asyncio.timeout(120):
        await asyncio.gather(*(one(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    await ctx.shutdown()
    return per_client * concurrency / elapsed


def _client_process(port: int, requests: int, concurrency: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(_clients(port, requests, concurrency)))


async def measure(port: int, requests: int, concurrency: int) -> float:
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    proc = mp.Process(target=_client_process, args=(port, requests, concurrency, out))
    proc.start()
    rate: float = await asyncio.to_thread(out.get, True, 180)
    await asyncio.to_thread(proc.join, 10)
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    port = free_udp_port()
    bare = await aiocoap.Context.create_server_context(
        _site(), bind=("127.0.0.1", port), transports=["udp6"])
    base = [await measure(port, args.requests, args.concurrency) for _ in range(args.rounds)]
    await bare.shutdown()

    port = free_udp_port()
    sink = FastSink()
    with tempfile.TemporaryDirectory() as tmp:
        settings = AdapterSettings(profiles=[parse_profile(PROFILE, "bench")], devices=Directory(),
                                   data_dir=Path(tmp))
        adapter = FACTORY.create(CoapConfig(host="127.0.0.1", port=port, oscore=False), settings)
        async with adapter:
            task = asyncio.create_task(adapter.run(sink))
            hub = [await measure(port, args.requests, args.concurrency) for _ in range(args.rounds)]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    print(f"CoAP confirmable POST, CBOR, {args.concurrency} concurrent clients, {args.requests} requests x "
          f"{args.rounds} rounds ({datetime.now(UTC):%Y-%m-%d})")
    print(f"  baseline bare aiocoap resource: median {statistics.median(base):8.0f} req/s  "
          f"{[round(r) for r in base]}")
    print(f"  usagehub CoAP adapter (fast sink): median {statistics.median(hub):5.0f} req/s  "
          f"{[round(r) for r in hub]}  ({sink.count} messages submitted)")


def _site() -> resource.Site:
    site = resource.Site()
    site.add_resource(["u", "dev0"], Bare())
    for i in range(1, 64):
        site.add_resource(["u", f"dev{i}"], Bare())
    return site


if __name__ == "__main__":
    asyncio.run(main())
