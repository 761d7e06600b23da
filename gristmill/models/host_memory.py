"""Keep freed host memory mapped, so XLA:CPU does not page-fault its buffers in again on every call.

XLA frees a call's temporary buffers when the call returns, and glibc hands freed blocks back to
the kernel (blocks above the mmap threshold, and the heap's top above the trim threshold). The
next call then faults every page of its working set in afresh and the kernel zeroes it: SmolLM2-135M
at 8 x 512 tokens took 324k minor faults and 0.76 s of kernel time per 5.8 s call. With both
thresholds at 1 GiB the pages stay mapped between calls: 26k faults, 0.08 s, 5.2 s per call
(BENCHMARKS.md, "CPU speed"). The cost is that the process keeps its peak heap until it exits,
which is what a scoring or training worker does anyway.

Set GRISTMILL_RETAIN_HEAP=0 to leave glibc's defaults alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

RETAIN_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
_applied = False


def retain_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds to RETAIN_BYTES, once per process.

    Returns True when they are set (now or before); False off glibc or when opted out.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("GRISTMILL_RETAIN_HEAP", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl and macOS differ)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_TRIM_THRESHOLD, RETAIN_BYTES)) and bool(mallopt(_M_MMAP_THRESHOLD, RETAIN_BYTES))
    if _applied:
        log.debug("glibc trim and mmap thresholds set to %d bytes", RETAIN_BYTES)
    return _applied
