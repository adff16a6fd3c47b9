"""Host memory: make glibc's malloc keep freed temporaries for reuse (the CPU backends call it when created)."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

MALLOC_MMAP_THRESHOLD = 32 << 20     # glibc mallopt parameters (malloc.h): M_MMAP_THRESHOLD = -3,
MALLOC_TRIM_THRESHOLD = 1 << 30      # M_TRIM_THRESHOLD = -1,
MALLOC_ARENA_MAX = 1                 # M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks up to 32 MB in the heap instead of returning them to the kernel. The CPU
    backends call it when created: numpy, torch, and jax (before it is imported, see below).

    A training step allocates and frees many temporaries of a few MB; by default glibc maps each with mmap and
    unmaps it on free, so the next step page-faults the memory in again (tens of thousands of faults per step,
    8-22% of the step in the kernel, measured with scripts/benchmark.py; the torch backend's bf16 step, mini
    B32 T128: 98,000 faults and 487 ms per step without, 2,000 and 417 ms with). With these thresholds the memory is
    reused. One arena for every thread: a row thread (NumpyBackend.thread_map) would otherwise allocate from its
    own arena, whose heaps hold at most 64 MB and give freed memory back (11,000 faults per step measured with
    two row threads, mini B8, tests/test_host_memory.py). glibc fixes the number of arenas when a second thread
    first allocates, so this must run before a library starts its threads (JAX's do at import).

    Not done, measured: JAX's CPU client allocates one temporary buffer per compiled step (650 MB for mini B32
    T128), which stays above the 32 MB threshold and is mapped afresh each step (167,000 faults). A 1 GB
    threshold keeps it (748 -> 628 ms per step) but fragments the heap: +500 MB resident, 2.5x PyTorch's memory
    (the target is 1.5x); glibc.malloc.hugetlb=1 in GLIBC_TUNABLES (set before the process starts) maps it in
    2 MB pages (900 faults, 672 ms) on this machine's kernel (THP on madvise).
    Process-wide and harmless elsewhere; a no-op off glibc. Returns whether it was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all([bool(libc.mallopt(-3, MALLOC_MMAP_THRESHOLD)), bool(libc.mallopt(-1, MALLOC_TRIM_THRESHOLD)),
                    bool(libc.mallopt(-8, MALLOC_ARENA_MAX))])
    except (OSError, AttributeError):
        return False
