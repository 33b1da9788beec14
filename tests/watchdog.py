"""What a hung test run needs: databases dropped without deadlocking the run, and a dump of who waits on whom.

DROP DATABASE (PostgreSQL 15+) waits until *every* backend of the server has absorbed a signal barrier, and a
backend absorbs it only at an interrupt check. A backend blocked on this very process (in COPY FROM STDIN, or
sending to a client that does not read) never checks, while this process waits for the DROP: a deadlock that hung
CI twice. So the DROP runs in a thread with a deadline; past it, the backends the server says it is waiting for
(its log names them) are recorded with what they were doing and ended, and the run goes on. Each such incident is
printed in the test summary, so a leak that causes it is seen, not hidden.
"""

from __future__ import annotations

import asyncio
import gc
import io
import re
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg

# every server this run started or uses (the watchdog dumps their activity)
SERVERS: list[str] = []
# what the run had to break to go on; printed by the terminal summary (tests/conftest.py)
INCIDENTS: list[str] = []

_WAITING = re.compile(r"still waiting for backend with PID (\d+) to accept ProcSignalBarrier")
_ACTIVITY = ("SELECT pid, datname, backend_type, application_name, state, wait_event_type, wait_event, "
             "now() - query_start AS for, left(query, 160) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
             "ORDER BY pid")


def _log_of(server_url: str) -> Path | None:
    host = psycopg.conninfo.conninfo_to_dict(server_url).get("host")
    log = Path(str(host)) / "log" if host else None
    return log if log is not None and log.is_file() else None


def activity(server_url: str) -> str:
    """Every other backend of the server: what it runs and what it waits for."""
    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SET statement_timeout = '5s'")
            rows = conn.execute(_ACTIVITY).fetchall()
    except psycopg.Error as err:
        return f"  (cannot read pg_stat_activity of {server_url}: {err})"
    return "\n".join("  " + " | ".join(str(v) for v in row) for row in rows)


def drop_database(server_url: str, name: str, deadline_s: float = 30.0) -> None:
    """``DROP DATABASE name WITH (FORCE)``; past ``deadline_s`` break what blocks it (recorded) and finish."""
    failure: list[BaseException] = []

    def drop() -> None:
        try:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except BaseException as err:  # re-raised in the caller's thread
            failure.append(err)

    worker = threading.Thread(target=drop, name=f"drop-{name}", daemon=True)
    worker.start()
    worker.join(deadline_s)
    if worker.is_alive():
        _break_barrier(server_url, name, deadline_s)
        worker.join(60)
        if worker.is_alive():
            INCIDENTS.append(f"DROP DATABASE {name} still blocked after breaking its barrier; left behind")
            return
    if failure:
        raise failure[0]


def _break_barrier(server_url: str, name: str, waited_s: float) -> None:
    log = _log_of(server_url)
    text = log.read_text(errors="replace")[-20000:] if log else ""
    pids = sorted({int(p) for p in _WAITING.findall(text)})
    report = [f"DROP DATABASE {name} blocked for {waited_s:.0f} s; backends it waited for: {pids or 'unknown'}",
              activity(server_url), tasks_of_every_loop()]
    INCIDENTS.append("\n".join(report))
    print("\n".join(report), file=sys.__stderr__, flush=True)
    if pids:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
            for pid in pids:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def tasks_of_every_loop() -> str:
    """The stack of every pending asyncio task of every open loop of this process (from any thread)."""
    out = io.StringIO()
    gc.unfreeze()  # a running pipeline froze what was alive (pipeline.memory): get_objects skips frozen objects
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and not o.is_closed()]
    for loop in loops:
        try:
            tasks: set[Any] = asyncio.all_tasks(loop)
        except RuntimeError as err:
            print(f"  (tasks of {loop!r} unreadable: {err})", file=out)
            continue
        print(f"  {len(tasks)} pending tasks of {loop!r}", file=out)
        for task in tasks:
            print(f"  - {task!r:.160}", file=out)
            for where in _awaiting(task.get_coro()):
                print(f"      {where}", file=out)
    return out.getvalue()


def _awaiting(coro: Any) -> list[str]:
    """Where a coroutine waits, outermost first, through every coroutine and async generator it awaits."""
    chain = []
    while coro is not None and len(chain) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        awaited = (getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
                   or getattr(coro, "gi_yieldfrom", None))
        if awaited is not None and not hasattr(awaited, "cr_frame") and frame is not None:
            # an async generator's asend/athrow hides its generator: find the running one among the locals
            running = [v for v in frame.f_locals.values() if getattr(v, "ag_running", False)]
            if running:
                awaited = running[0]
        coro = awaited
    return chain


class Watchdog:
    """Dump tasks, threads and server activity if one test (with its fixtures) runs longer than ``after_s``."""

    def __init__(self, test: str, after_s: float) -> None:
        self.test = test
        self.timer = threading.Timer(after_s, self.dump)
        self.timer.daemon = True

    def __enter__(self) -> Watchdog:
        self.timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.timer.cancel()

    def dump(self) -> None:
        import faulthandler

        err = sys.__stderr__  # the process's own fd 2 (pytest captures it per test, and shows it on failure)
        assert err is not None
        print(f"\n==== watchdog: {self.test} is still running ====", file=err, flush=True)
        faulthandler.dump_traceback(file=err, all_threads=True)
        print(tasks_of_every_loop(), file=err)
        for url in SERVERS:
            print(f"-- activity of {url}\n{activity(url)}", file=err, flush=True)
