"""host_memory.retain_freed_memory: a freed large block is reused without faulting its pages in again."""
import subprocess
import sys

import pytest

from gristmill.models import host_memory

PROBE = r"""
import ctypes, resource, sys
from gristmill.models import host_memory
if sys.argv[1] == "retain":
    assert host_memory.retain_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
def touch_once():
    block = libc.malloc(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(block, 1, size)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(block)
    return faults
touch_once()
print(touch_once())
"""


def _second_touch_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_block_is_not_faulted_in_again():
    pages = (64 << 20) // 4096
    assert _second_touch_faults("default") > pages // 2  # glibc unmapped it: every page faults again
    assert _second_touch_faults("retain") < pages // 20


def test_opt_out(monkeypatch):
    monkeypatch.setattr(host_memory, "_applied", False)
    monkeypatch.setenv("GRISTMILL_RETAIN_HEAP", "0")
    assert host_memory.retain_freed_memory() is False
