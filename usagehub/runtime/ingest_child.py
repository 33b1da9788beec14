"""``usagehub ingest-worker``: one of the hub's ingest processes (``runtime.ingest_processes``).

It connects to the hub's socket, runs the pipeline over the messages the hub hands it, and answers with
the tokens of the messages whose batch committed (the hub acknowledges them to the broker then). When the
hub goes, or on SIGTERM, it commits what it holds and ends; what it could not report is sent again by the
hub to the process started in its place, or delivered again by the broker to the next hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os

from usagehub.operations.profiles import ProfileCatalog
from usagehub.pipeline.pipeline import Pipeline
from usagehub.runtime.assembly import build_pipeline, open_storage, serve_worker_metrics, stopping_on_signals
from usagehub.runtime.config import HubConfig
from usagehub.runtime.device_keys import open_keyring, refresh_keyring
from usagehub.runtime.ingest_counters import CounterDeltas, report_figures
from usagehub.runtime.ingest_frames import decode_messages, encode_report, hello, read_frame
from usagehub.runtime.profile_files import load_profiles
from usagehub.runtime.worker import lock_devices_first

log = logging.getLogger(__name__)


class _Reports:
    """Committed tokens, sent to the hub once per event-loop pass with the counters' gains and the batches."""

    def __init__(self, writer: asyncio.StreamWriter, batches: list[tuple[float, int]]) -> None:
        self.writer = writer
        self.tokens: list[int] = []
        self.counters = CounterDeltas()
        self.batches = batches  # the pipeline's committed batches since the last report

    def committed(self, token: int) -> None:
        if not self.tokens:
            asyncio.get_running_loop().call_soon(self.flush)
        self.tokens.append(token)

    def flush(self) -> None:
        if self.tokens and not self.writer.is_closing():
            self.writer.write(encode_report(self.tokens, report_figures(self.counters, self.batches)))
        self.tokens = []


async def _receive(reader: asyncio.StreamReader, pipeline: Pipeline, reports: _Reports) -> None:
    """Offer every message the hub sends to the pipeline until the hub closes the connection."""
    while (body := await read_frame(reader)) is not None:
        for token, message in decode_messages(body):
            stored = functools.partial(reports.committed, token)
            if not pipeline.offer_nowait(message, stored):
                await pipeline.offer(message, stored)


async def run_ingest_child(config: HubConfig, *, index: int, stopping: asyncio.Event | None = None) -> None:
    """Serve as ingest process ``index`` of the hub whose socket and secret are in the environment."""
    try:
        path, secret = os.environ["USAGEHUB_INGEST_SOCKET"], bytes.fromhex(os.environ["USAGEHUB_INGEST_SECRET"])
    except (KeyError, ValueError) as err:
        raise SystemExit("usagehub ingest-worker is started by `usagehub serve --ingest-processes N`, which gives "
                         f"it USAGEHUB_INGEST_SOCKET and USAGEHUB_INGEST_SECRET ({err!r})") from None
    stopping = stopping_on_signals(stopping)
    serve_worker_metrics(config, index, "ingest process")
    files = load_profiles(config.profiles)
    async with open_storage(config) as pool:
        keyring = await open_keyring(config, pool)
        # Its own ingest_totals rows: processes sharing the hub's rows would wait for each other's commits.
        pipeline, billing = build_pipeline(config, pool, files, keyring, totals_node=f"ingest-{index}")
        pipeline.hooks.insert(0, lock_devices_first)
        billing.engine.defer = config.session_workers > 0  # the hub's session workers replay the queue
        catalog = ProfileCatalog(pool, pipeline.profiles, config.profiles, files)
        await catalog.load()
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(hello(index, secret))
        pipeline.batches_observed = []
        reports = _Reports(writer, pipeline.batches_observed)
        pipeline_task = asyncio.create_task(pipeline.run(), name="pipeline")
        receiving = asyncio.create_task(_receive(reader, pipeline, reports), name="receive")
        side = [asyncio.create_task(catalog.listen(), name="meter-types"),
                asyncio.create_task(refresh_keyring(config, pool, keyring), name="device-keys")]
        log.info("ingest process %d ready (pid %d)", index, os.getpid())
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait([stop_wait, receiving, pipeline_task], return_when=asyncio.FIRST_COMPLETED)
        for task in (receiving, pipeline_task):
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("%s failed: %r", task.get_name(), task.exception())
        stop_wait.cancel()
        for task in (receiving, *side):
            task.cancel()
        await asyncio.gather(stop_wait, receiving, *side, return_exceptions=True)
        pipeline_task.cancel()  # the batch being committed is shielded and completes
        await asyncio.gather(pipeline_task, return_exceptions=True)
        await pipeline.drain(timeout_s=30)  # a database that is gone must not keep it alive (unreported: resent)
        reports.flush()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(5):
                await writer.drain()
        writer.close()
        log.info("ingest process %d stopped: %s", index, pipeline.totals)
