"""HTTP ingest: events per second through ``POST /ingest`` (NDJSON batches) vs a bare Starlette endpoint.

uvicorn serves in this process against a fast in-memory sink (the lead re-runs it against
the real pipeline); httpx clients post from a separate process. Loopback only, bounded.

    .venv/bin/python bench/http_ingest.py [--batches 200] [--batch 500] [--concurrency 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from coap_ingest import FastSink

from usagehub.adapters.base import DeviceEndpoint
from usagehub.adapters.http import HttpConfig, ingest_routes

TOKEN = "bench-token"


class Directory:
    async def endpoints(self, profile_id: str | None = None) -> list[DeviceEndpoint]:
        return [DeviceEndpoint(device_id="plug", profile_id="acme-http-meter", secrets={"http_token": TOKEN})]

    async def endpoint(self, device_id: str) -> DeviceEndpoint | None:
        return None


async def bare(request: Request) -> Response:
    """The baseline: read the body, split lines, answer 202."""
    body = await request.body()
    return Response(orjson.dumps({"lines": body.count(b"\n")}), status_code=202)


def body(batch_no: int, size: int) -> bytes:
    return b"".join(orjson.dumps({"seq": batch_no * size + i, "ts": "2026-01-01T00:00:00Z", "wh": i}) + b"\n"
                    for i in range(size))


async def _clients(port: int, batches: int, size: int, concurrency: int) -> float:
    bodies = [body(i, size) for i in range(batches)]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
    queue = list(range(batches))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        async def worker() -> None:
            while queue:
                n = queue.pop()
                response = await client.post("/ingest", content=bodies[n], headers=headers)
                if response.status_code != 202:
                    raise RuntimeError(response.text)

        started = time.perf_counter()
        async with asyncio.timeout(300):
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return batches * size / (time.perf_counter() - started)


def _client_process(port: int, batches: int, size: int, concurrency: int,
                    out: mp.Queue) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(_clients(port, batches, size, concurrency)))


async def serve_and_measure(app: Starlette, args: argparse.Namespace) -> list[float]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(1000):  # uvicorn offers no started event
        if server.started:
            break
        await asyncio.sleep(0.01)
    rates = []
    for _ in range(args.rounds):
        out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        client_args = (port, args.batches, args.batch, args.concurrency, out)
        proc = mp.Process(target=_client_process, args=client_args)
        proc.start()
        rates.append(await asyncio.to_thread(out.get, True, 300))
        await asyncio.to_thread(proc.join, 10)
    server.should_exit = True
    await task
    sock.close()
    return rates


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = await serve_and_measure(Starlette(routes=[Route("/ingest", bare, methods=["POST"])]), args)
    sink = FastSink()
    app = Starlette(routes=ingest_routes(sink, Directory(), HttpConfig()))
    hub = await serve_and_measure(app, args)
    print(f"HTTP POST /ingest, NDJSON {args.batch} events/request, {args.concurrency} connections, "
          f"{args.batches} requests x {args.rounds} rounds")
    print(f"  baseline bare Starlette endpoint: median {statistics.median(base):9.0f} events/s  "
          f"{[round(r) for r in base]}")
    print(f"  usagehub ingest (fast sink):      median {statistics.median(hub):9.0f} events/s  "
          f"{[round(r) for r in hub]}  ({sink.count} messages submitted)")


if __name__ == "__main__":
    asyncio.run(main())
