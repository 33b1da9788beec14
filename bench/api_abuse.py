"""Device ingest latency while the GraphQL API is abused, with the request limits off ("before") and on ("after").

uvicorn serves the hub's real ASGI app (GraphQL over an embedded PostgreSQL with 1,000 accounts, plus
``POST /ingest`` into an in-memory sink) in this process. A prober process posts one reading at a time
and records each answer's latency; attacker processes post abusive documents meanwhile: a 4.5 MB body of
``__typename``, 1,000 aliases of ``accounts(first: 500)``, a fragment bomb. Baseline: no attackers.
"Before" answers GraphQL as main did before issue 15 (caches and a depth limit only); "after" with the
limits of ``usagehub.graphql.cost`` and parsing off the event loop.

    .venv/bin/python bench/api_abuse.py [--seconds 10] [--attackers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from coap_ingest import FastSink
from http_ingest import TOKEN, Directory

from bench.scratch import scratch
from tests.peers import free_port
from usagehub.adapters.http import HttpConfig, ingest_routes
from usagehub.graphql.context import Services
from usagehub.graphql.cost import Limits
from usagehub.storage.embedded import embedded_database_url
from usagehub.storage.keys import ApiKeys
from usagehub.storage.migrations import migrate
from usagehub.storage.pool import open_pool
from usagehub.storage.queries import Reads
from usagehub.storage.registry import Registry


def _before(app: Any) -> None:
    """Make ``app`` answer GraphQL as main did before issue 15: no body limit, parser and validation caches
    and a depth limit on the event loop, nothing else."""
    from strawberry.extensions import AddValidationRules, ParserCache, ValidationCache
    from strawberry.extensions.query_depth_limiter import create_validator

    from usagehub.graphql.schema import Mutation, Query, Subscription, _Schema

    depth = create_validator(12, None, None)
    schema = _Schema(query=Query, mutation=Mutation, subscription=Subscription,
                     extensions=[lambda: ParserCache(maxsize=256), lambda: ValidationCache(maxsize=256),
                                 lambda: AddValidationRules([depth])])
    patched = 0
    for route in app.routes:
        inner = getattr(route, "app", None)
        inner = getattr(inner, "graphql", inner)  # under the GraphiQL page wrapper (web.graphiql.WithGraphiQL)
        if getattr(route, "path", "") == "/graphql" and hasattr(inner, "max_bytes"):
            inner.max_bytes = 10**12
            inner.app.schema = schema
            patched += 1
    if patched != 1:  # the "before" run must not silently measure the limits
        raise RuntimeError("bench: /graphql's BodyLimit not found; update _before for the app's layout")
ATTACKS = [
    "{ " + "__typename " * 450_000 + "}",
    "{ " + " ".join(f"a{i}: accounts(first: 500) {{ edges {{ node {{ id name }} }} }}" for i in range(1000)) + " }",
    "{ ...F17 } fragment F0 on Query { __typename } " + " ".join(
        f"fragment F{i} on Query {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, 18)),
]


async def _probe(port: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        end, seq = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            seq += 1
            body = orjson.dumps({"seq": seq, "ts": "2026-01-01T00:00:00Z", "wh": seq}) + b"\n"
            started = time.perf_counter()
            response = await client.post("/ingest", content=body, headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 202:
                raise RuntimeError(response.text)
            await asyncio.sleep(0.02)
    return latencies


async def _attack(port: int, key: str, seconds: float) -> int:
    sent = 0
    bodies = [orjson.dumps({"query": doc}) for doc in ATTACKS]  # encoded once: the attacker spends little CPU
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for body in bodies:
                with contextlib.suppress(httpx.HTTPError):  # refused mid-upload (413, close): the point
                    await client.post("/graphql", content=body, headers=headers)
                sent += 1
    return sent


def _prober(port: int, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(_probe(port, seconds)))


def _attacker(port: int, key: str, seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(_attack(port, key, seconds)))


async def _run(services: Services, keys: ApiKeys, key: str, before: bool, attackers: int,
               seconds: float) -> dict[str, Any]:
    from usagehub.web.app import create_app

    routes = ingest_routes(FastSink(), Directory(), HttpConfig(), [])  # type: ignore[arg-type]
    app = create_app(services, keys, ready=lambda: True, limits=Limits(), extra_routes=list(routes))
    if before:
        _before(app)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 — uvicorn offers only a flag
        await asyncio.sleep(0.02)
    ctx = mp.get_context("spawn")
    probe_out, attack_out = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_prober, args=(port, seconds, probe_out))]
    procs += [ctx.Process(target=_attacker, args=(port, key, seconds, attack_out)) for _ in range(attackers)]
    for p in procs:
        p.start()
    latencies: list[float] = await asyncio.to_thread(probe_out.get)
    sent = [await asyncio.to_thread(attack_out.get) for _ in range(attackers)]
    for p in procs:
        await asyncio.to_thread(p.join)
    server.should_exit = True
    await task
    latencies.sort()
    return {"probes": len(latencies), "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1], "max_ms": latencies[-1], "attacks": sum(sent)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--attackers", type=int, default=2)
    args = parser.parse_args()
    folder = scratch("usagehub-bench-")
    pool = await open_pool(await asyncio.to_thread(embedded_database_url, folder), max_size=8)
    await migrate(pool)
    registry = Registry(pool)
    for i in range(1000):
        await registry.upsert_account(account_id=f"acc-{i:04d}", name=f"Household {i}")

    async def replay(_: list[int]) -> list[Any]:
        return []

    services = Services(registry=registry, reads=Reads(pool), ingest_totals={}, replay=replay, extra={})
    keys = ApiKeys(pool)
    key, _ = await keys.create(role="admin")
    print(f"device ingest latency, {args.seconds:.0f} s per run, {args.attackers} attacker processes")
    runs = (("baseline (no attack)", False, 0), ("abused, before (main)", True, args.attackers),
            ("abused, after (limits)", False, args.attackers))
    for name, before, attackers in runs:
        r = await _run(services, keys, key, before, attackers, args.seconds)
        print(f"{name:24} probes {r['probes']:5}  p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  "
              f"max {r['max_ms']:8.1f} ms  abusive requests {r['attacks']}")
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
