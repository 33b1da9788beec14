"""Give memory back to the OS after large messages (glibc otherwise keeps the freed heap for good).

glibc raises its mmap threshold each time a large block is freed, so later
large payloads, decoded documents and COPY buffers come from the heap, where
small survivors pin them. Fixing the threshold keeps large blocks in their own
mappings (returned on free), and a trim after a large batch returns the rest.
Elsewhere than glibc both are no-ops.

The cyclic garbage collector is tuned for a long-running process that allocates many short-lived
objects per event (decoded readings, points, rows): with CPython's defaults it ran ~3,000 young and
~24 full collections for a 142K-message fleet and took about a tenth of the pipeline's CPU
(``bench/pipeline_cpu.py``). What the process holds after start is frozen out of the collector's
scans, and collections run less often; reference counting still frees acyclic garbage at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def bound_heap(mmap_threshold: int = 1 << 20, trim_threshold: int = 8 << 20) -> bool:
    """Blocks above ``mmap_threshold`` get their own mapping; free heap above ``trim_threshold`` is returned."""
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(_LIBC.mallopt(_M_TRIM_THRESHOLD,
                                                                                      trim_threshold))
    log.debug("heap bounded: mmap threshold %d, trim threshold %d (%s)", mmap_threshold, trim_threshold, ok)
    return ok


def trim() -> bool:
    """Return free heap memory to the OS now (a few milliseconds; call after large batches only)."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))


# Young collections every 200K net container allocations (default 700); a full one every 200 young ones.
# A batch in flight keeps its messages, events and points alive, so a young collection mostly scans survivors:
# at 20K the hub spent 1.7 s in the collector over bench/fleet.py's 135K events, at 200K 0.35 s (wall, loaded
# machine), and its CPU per event went 60 -> 58 us in two pairs of runs. Cyclic garbage (rare: reference
# counting frees the rest at once) waits longer, nothing else does.
COLLECTOR_THRESHOLDS = (200_000, 20, 10)


def tune_collector() -> None:
    """Freeze what is alive after start-up out of the collector's scans and collect less often (idempotent)."""
    if gc.get_threshold() == COLLECTOR_THRESHOLDS:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    log.debug("collector tuned: %d objects frozen, thresholds %s", gc.get_freeze_count(), COLLECTOR_THRESHOLDS)
