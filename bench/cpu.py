"""CPU seconds of the parts of a benchmark run, and CPU per message beside the baseline's.

Rates on a shared 2-core machine move with the load; CPU per message moves much less, so the fleet and
ingest benchmarks also print each part's CPU per stored message for glue_batch.py and the hub.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import psutil
import psycopg


class CpuMeter:
    """CPU seconds of each part of one run (the program measured, PostgreSQL, the broker, this bench's publisher).

    Rates on a shared 2-core machine move with the load; CPU per message moves much less, so the run also
    prints both programs' CPU per stored message, all parts counted, and their ratio.
    """

    def __init__(self, url: str, broker_pid: int, program_pid: int) -> None:
        self.parts = {"program": lambda: tree_cpu_s(program_pid), "PostgreSQL": lambda: postgres_cpu_s(url),
                      "broker": lambda: tree_cpu_s(broker_pid), "publisher": time.process_time}
        self.program_pid = program_pid
        self.start = {k: f() for k, f in self.parts.items()}
        self.start_processes = process_cpu_s(program_pid)

    def spent(self) -> dict[str, float]:
        return {k: f() - self.start[k] for k, f in self.parts.items()}

    def per_process(self) -> dict[str, float]:
        """CPU seconds of each of the program's processes since the start, by role (``process_cpu_s``)."""
        return {k: v - self.start_processes.get(k, 0.0) for k, v in process_cpu_s(self.program_pid).items()}


def process_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of a hub and each of its child processes, by role: "hub", "ingest N", "session worker"."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out: dict[str, float] = {}
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            args = proc.cmdline()
            if proc.pid == pid:
                role = "hub"
            elif "ingest-worker" in args and "--index" in args:
                role = f"ingest {args[args.index('--index') + 1]}"
            elif "session-worker" in args:
                role = "session worker"
            else:
                role = f"pid {proc.pid}"
            t = proc.cpu_times()
            out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def tree_cpu_s(pid: int, *, children: bool = True) -> float:
    """CPU seconds (user + system) of a process and (unless told otherwise) its live descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if children else [])]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def postgres_pid(url: str) -> int:
    """The postmaster's pid of the PostgreSQL server behind ``url``."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT setting FROM pg_settings WHERE name = 'data_directory'").fetchone()
    assert row is not None
    return int((Path(str(row[0])) / "postmaster.pid").read_text().split()[0])


def postgres_cpu_s(url: str) -> float:
    """CPU seconds of the PostgreSQL server behind ``url`` (the postmaster and its backends)."""
    return tree_cpu_s(postgres_pid(url))


def print_cpu(glue_cpu: dict[str, float], hub_cpu: dict[str, float]) -> None:
    """CPU us per stored message of each part, glue_batch.py beside the hub, and the ratio (load moves it little)."""
    if not glue_cpu:
        return
    print("  CPU us per stored message      " + "  ".join(f"{k:>10}" for k in [*hub_cpu, "all"]))
    for name, cpu in (("glue_batch.py", glue_cpu), ("usagehub serve (+ workers)", hub_cpu)):
        print(f"  {name:<30}" + "  ".join(f"{1e6 * v:>10.1f}" for v in [*cpu.values(), sum(cpu.values())]))
    ours, theirs = sum(hub_cpu.values()) - hub_cpu["publisher"], sum(glue_cpu.values()) - glue_cpu["publisher"]
    print(f"  CPU per message without the publisher: usagehub/glue_batch {ours / theirs:.2f} "
          "(the glue's PostgreSQL part counts its own rows only)")
