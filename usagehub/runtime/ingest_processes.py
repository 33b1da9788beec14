"""``serve --ingest-processes N``: the hub process receives MQTT and acknowledges; N children decode and commit.

One Python process receiving, decoding and committing every message leaves both cores partly idle: while
it builds a batch, PostgreSQL waits for it, and while PostgreSQL works, its other batches wait for their
turn on the one event loop (``bench/fleet.py``: the hub process at 65-85 % of a core, PostgreSQL at 45-60 %).
With ingest processes the hub process keeps the MQTT connection (so its session, its subscriptions and
the order of its acknowledgements stay one) and hands each message to the child its sender's lane key
picks (``Identity.lane_key``, as commit lanes pick within a pipeline: one device's messages always go
to one child, in order). Each child runs the pipeline (``runtime.ingest_child``) and answers with the
tokens of what it committed; only then does the hub acknowledge to the broker, as before.

Nothing is lost when a child dies: the hub keeps every message until its child reports the commit, and
sends what is unreported again to the child restarted in its place (a batch the dead child committed comes
back as duplicates, which the events' identity turns away). The children take the device locks first, as
bus workers do, so a device that moves between children (meter types changed its lane key) or that also
reaches the hub's own pipeline (HTTP) is written by one of them at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from usagehub import metrics
from usagehub.adapters.link import Link
from usagehub.core.events import RawMessage
from usagehub.pipeline.pipeline import Pipeline, lane_index
from usagehub.pipeline.routes import Spread, TopicRoutes
from usagehub.runtime.config import HubConfig
from usagehub.runtime.ingest_counters import add_report, parse_report
from usagehub.runtime.ingest_frames import (
    HELLO_MAX,
    FrameError,
    decode_report,
    encode_messages,
    parse_hello,
    read_frame,
)
from usagehub.runtime.scaleout import WorkerPool
from usagehub.runtime.session_workers import child_environment
from usagehub.storage.ingest_totals import read_totals

log = logging.getLogger(__name__)

Stored = Callable[[], None] | None
_FIGURES_MAX = 64 << 10  # a report's figures beside its tokens (a few hundred bytes in practice)
_ROUTES_MAX = 100_000  # topics remembered per profile version: a flood of invented topics must not grow memory
# What a child's environment carries of the hub's pipeline settings (a TOML file is read by the hub alone).
_PIPELINE = ("batch_max_messages", "batch_max_wait_ms", "session_workers", "worker_metrics_port", "http_host")


def child_index(key: str, children: int, lanes: int) -> int:
    """The child that commits a lane key's messages when each child has ``lanes`` commit lanes.

    The lane among all children's lanes, and the child holding it: a child splits its messages over its
    own lanes by the same key (``lane_index(key, lanes)``), so picking the child by
    ``lane_index(key, children)`` would send all of a child's messages to one of its lanes when the
    counts are equal.
    """
    return lane_index(key, children * lanes) // lanes


class _Child:
    """One ingest process as the hub sees it: its connection and the messages it has not committed yet."""

    __slots__ = ("held_bytes", "index", "pending", "unsent", "waiting_since", "writer")

    def __init__(self, index: int) -> None:
        self.index = index
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, tuple[RawMessage, Stored]] = {}  # by token, in the order received
        self.held_bytes = 0  # payload bytes of ``pending``
        self.unsent: list[int] = []
        self.waiting_since: float | None = None  # since when messages wait with no commit reported


class ProcessSink:
    """Where the MQTT adapter offers messages when ingest runs in child processes (an ``OfferSink``)."""

    def __init__(self, pipeline: Pipeline, count: int, secret: bytes, *, lanes: int = 1, window: int = 20_000,
                 window_bytes: int = 64 << 20) -> None:
        """``lanes``: each child's commit lanes. ``window``/``window_bytes``: messages (payload bytes) a child may
        hold uncommitted; beyond, ``offer`` waits (the broker keeps the rest; one larger message passes alone)."""
        self.pipeline, self.secret, self.window, self.window_bytes = pipeline, secret, window, window_bytes
        self.lanes = lanes
        self.children = [_Child(i) for i in range(count)]
        self.link = Link("ingest-processes")
        self._token = 0
        self._room = asyncio.Event()
        self._flushing = False
        self._spread = Spread(count, lambda key: child_index(key, count, lanes), limit=_ROUTES_MAX)
        self._child_of = TopicRoutes(pipeline.profiles, self._route, limit=_ROUTES_MAX)  # a topic's child, kept
        self.closing = False
        self._received = 0  # messages taken since the last flush, for /metrics
        self._mqtt_in = metrics.MESSAGES_IN.labels("mqtt")
        metrics.COMMIT_WAIT.set_function(self.commit_wait_s)
        metrics.STALLED.set_function(lambda: float(self.stalled))

    def _route(self, message: RawMessage) -> _Child:
        return self.children[self._spread(self.pipeline.identity.lane_key(message))]

    def offer_nowait(self, message: RawMessage, stored: Stored) -> bool:
        """Hand ``message`` to its child (True), or False when that child holds ``window`` messages already."""
        child = self._child_of(message)
        if child.pending and (len(child.pending) >= self.window or child.held_bytes >= self.window_bytes):
            return False
        self._token += 1
        self._received += 1
        child.pending[self._token] = (message, stored)
        child.held_bytes += len(message.payload)
        if child.waiting_since is None:
            child.waiting_since = time.monotonic()
        if child.writer is not None:
            child.unsent.append(self._token)
            self._flush_soon()
        return True

    async def offer(self, message: RawMessage, stored: Stored) -> None:
        """``offer_nowait``, waiting for room."""
        while not self.offer_nowait(message, stored):
            self._room.clear()
            await self._room.wait()

    def commit_wait_s(self) -> float:
        """Seconds messages have waited with no commit in between, here or in the hub's own pipeline."""
        waiting = [c.waiting_since for c in self.children if c.waiting_since is not None]
        own = time.monotonic() - min(waiting) if waiting else 0.0
        return max(own, self.pipeline.commit_wait_s())

    @property
    def stalled(self) -> bool:
        """Whether messages have waited longer than the pipeline's ``stall_after_s`` with no commit."""
        return self.commit_wait_s() > self.pipeline.settings.stall_after_s

    def held(self) -> int:
        """Messages handed to children and not yet committed."""
        return sum(len(c.pending) for c in self.children)

    async def drain(self, timeout_s: float) -> int:
        """Wait until the children committed what they hold (at most ``timeout_s``); what is still held."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.held() and asyncio.get_running_loop().time() < deadline:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._room.wait()
        return self.held()

    def _flush_soon(self) -> None:
        if not self._flushing:  # one frame per child per event-loop pass
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        for child in self.children:
            if child.writer is not None and child.unsent:
                pending = child.pending
                child.writer.write(encode_messages((t, pending[t][0]) for t in child.unsent if t in pending))
                child.unsent = []
        received, self._received = self._received, 0
        if received:
            self._mqtt_in.inc(received)

    def _committed(self, child: _Child, tokens: tuple[int, ...]) -> None:
        pending = child.pending
        for token in tokens:
            entry = pending.pop(token, None)
            if entry is not None:
                child.held_bytes -= len(entry[0].payload)
                if entry[1] is not None:
                    entry[1]()
        child.waiting_since = time.monotonic() if pending else None
        self._room.set()

    async def connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A child's connection (``asyncio.start_unix_server``): its hello, then its committed tokens."""
        child: _Child | None = None
        try:
            async with asyncio.timeout(10):
                body = await read_frame(reader, max_size=HELLO_MAX)
            index = parse_hello(body or b"", self.secret)
            if not 0 <= index < len(self.children):
                raise FrameError(f"no ingest process {index}")
            child = self.children[index]
            if child.writer is not None:  # a child that lost its place: its replacement takes everything over
                child.writer.close()
            child.writer, child.unsent = writer, list(child.pending)  # what was not reported comes again
            self._flush_soon()
            self._link_state()
            while (body := await read_frame(reader, max_size=self.window * 8 + _FIGURES_MAX)) is not None:
                tokens, figures = decode_report(body)
                deltas, batches = parse_report(figures)
                self._committed(child, tokens)
                add_report(deltas, batches)
        except (FrameError, OSError, TimeoutError) as err:
            log.warning("ingest process %s: connection closed (%s)", child.index if child else "?", err)
        finally:
            if child is not None and child.writer is writer:
                child.writer = None
                self._link_state()
            writer.close()

    def _link_state(self) -> None:
        if self.closing:  # the children stop with the hub: not an outage
            return
        up = sum(c.writer is not None for c in self.children)
        if up == len(self.children):
            self.link.connected(f"{up} ingest processes")
        elif self.link.is_up:
            self.link.lost(ConnectionError(f"{len(self.children) - up} of {len(self.children)} ingest processes "
                                           "not connected"))


async def publish_totals(pool: AsyncConnectionPool, every_s: float = 5.0) -> None:
    """Keep ``usagehub_ingest_stored`` current from the durable totals of every process.

    The children's counters (events accepted, duplicates, quarantined...) and their batches' commit seconds
    and sizes reach the hub's /metrics with their reports (``ingest_counters``); with ``worker_metrics_port``
    each child also serves its own.
    """
    while True:
        try:
            for kind, value in (await read_totals(pool)).items():
                metrics.STORED_TOTAL.labels(kind).set(value)
        except Exception:  # a metric; the next round tries again
            log.debug("ingest totals not read", exc_info=True)
        await asyncio.sleep(every_s)


def process_count(config: HubConfig) -> int:
    """How many ingest processes ``config`` asks for (unset: 2 where there are 2 cores or more)."""
    if config.ingest_processes is not None:
        return config.ingest_processes
    return 2 if (os.cpu_count() or 1) >= 2 else 0


def child_lanes(config: HubConfig) -> int:
    """Each ingest process's commit lanes: the hub's ``commit_lanes`` shared among them."""
    return max(1, config.commit_lanes // max(1, process_count(config)))


def child_settings(config: HubConfig, database_url: str, socket_path: Path, secret: bytes) -> dict[str, str]:
    """The environment of an ingest process: the session workers' plus the pipeline settings and the socket.

    The hub's ``commit_lanes`` are shared among its processes: more lanes per process cut each lane's
    batches smaller (more transactions, more CPU per event) for no more parallelism than the processes
    already give (docs/architecture.md, "Ingest processes").
    """
    env = child_environment(config, database_url)
    for name in _PIPELINE:
        if getattr(config, name) is not None:
            env[f"USAGEHUB_{name.upper()}"] = str(getattr(config, name))
    env["USAGEHUB_COMMIT_LANES"] = str(child_lanes(config))
    env["USAGEHUB_INGEST_SOCKET"] = str(socket_path)
    env["USAGEHUB_INGEST_SECRET"] = secret.hex()
    return env


FOLDER_PREFIX = "usagehub-ingest-"  # the sockets' folders: usagehub-ingest-<hub pid>-<random>


def remove_stale_folders(parent: Path | None = None) -> int:
    """Remove the socket folders of hubs that died without cleaning up (SIGKILL); how many were removed.

    Only folders of this user whose hub process is gone: another hub's live folder is never touched.
    """
    removed = 0
    for folder in Path(parent or tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        try:
            pid = int(folder.name.removeprefix(FOLDER_PREFIX).split("-", 1)[0])
            if folder.stat().st_uid != os.getuid() or _alive(pid):
                continue
        except (ValueError, OSError):
            continue  # not one of ours (or gone meanwhile)
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@contextlib.asynccontextmanager
async def ingest_processes(config: HubConfig, pipeline: Pipeline,
                           pool: AsyncConnectionPool) -> AsyncIterator[ProcessSink]:
    """``config.ingest_processes`` children behind a ``ProcessSink``; on exit they commit what they hold and stop."""
    count, secret = process_count(config), secrets.token_bytes(32)
    # A child holds about two full batches per commit lane of its own by messages, and one batch per lane
    # plus one by bytes: enough to commit full batches under load, while the rest of a backlog waits in the
    # broker (once received, its receive→billable clock runs: gateway messages of 50 readings fill a batch's
    # bytes long before its count; at two batches per lane by bytes their p99 was 1.0-1.15 s, at this 0.9-1.0
    # with batches of 512 KiB, 0.7 with 256 KiB: PipelineSettings.batch_max_bytes).
    lanes = child_lanes(config)
    sink = ProcessSink(pipeline, count, secret, lanes=lanes, window=max(1000, 2 * lanes * config.batch_max_messages),
                       window_bytes=(lanes + 1) * pipeline.settings.batch_max_bytes)
    remove_stale_folders()
    # mode 0700: the hub's user alone; the hub's pid in the name lets a later hub remove it if this one is killed
    with tempfile.TemporaryDirectory(prefix=f"{FOLDER_PREFIX}{os.getpid()}-") as folder:
        path = Path(folder) / "ingest.sock"
        server = await asyncio.start_unix_server(sink.connected, path=str(path))
        children = WorkerPool(config, "", count, config.data_dir / "ingest-processes",
                              env=child_settings(config, str(pool.conninfo), path, secret), command="ingest-worker")
        try:
            async with children.running("ingest-processes", {"ingest-totals": publish_totals(pool)}):
                try:
                    yield sink
                finally:
                    sink.closing = True  # the children stop with the hub: their connections closing is no outage
                    sink.link.down()
        finally:
            server.close()
            for child in sink.children:
                if child.writer is not None:
                    child.writer.close()
