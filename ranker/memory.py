"""Keep freed heap memory in the process instead of returning it to the kernel after every request.

A forward over 500 candidates allocates several 1-4 MB temporaries. With glibc's defaults, blocks of
that size are mmap'ed, or the heap top is trimmed once more than the (adaptive) trim threshold is free,
so every request gets fresh pages from the kernel and pays a page fault per 4 KiB: ~2,500 faults (10 MB
zeroed) per request on the bench's model, measured as ``faults_per_request`` by ``keep bench ranker``,
and far more than the arithmetic on a loaded machine. Raising the mmap and trim thresholds lets the
allocator reuse the same memory: the working set stays at its peak (tens of MB per worker), zero faults.
glibc only (``mallopt``); elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (glibc caps the mmap threshold at 32 MiB on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Free memory above the heap top kept before trimming.
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; whether it took effect."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc thresholds raised (mmap %d, trim %d): %s", MMAP_THRESHOLD, TRIM_THRESHOLD, ok)
    return ok
