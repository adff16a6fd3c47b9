"""Keep freed host memory in the process for reuse: the CPU backends' allocator setting (glibc only).

A training step allocates and frees the same temporaries every step. By default glibc hands every block of
32 MB or more (less, for its dynamic threshold) to the kernel with mmap and returns it with munmap on free, and
a thread's arena holds at most 64 MB, so the next step page-faults the same memory in again, 4 KB at a time,
each page zeroed by the kernel:
  * NumPy: tens of thousands of faults per step, 8-22% of the step in the kernel (measured with
    scripts/benchmark.py), before this setting;
  * XLA on the CPU allocates one temporary buffer for all of a compiled step's intermediates on one of its
    threads (650 MB for the `mini` training step at B32 T128, seen with strace: one mmap + munmap per step):
    168,000 page faults and 0.25 s of kernel time per step (getrusage minor faults over 6 steps, dropout 0.1,
    this 2-core machine).

`keep_freed_memory()` sets, process-wide (mallopt, malloc.h): M_ARENA_MAX = 1 (every thread allocates from the
main heap, which can grow without limit), M_MMAP_MAX = 0 (never mmap a block: it comes from the heap and goes
back to it), M_TRIM_THRESHOLD = 1 GB (freed memory at the heap's top stays mapped) and a fixed
M_MMAP_THRESHOLD (fixing it turns off glibc's dynamic thresholds, which would lower the trim threshold again:
without it 27,000 faults per step remained). So a freed temporary is reused by the next step without a fault
(measured: 0 faults per step, and 500 -> 360 ms for the JAX step above). The cost: the process keeps its peak
heap until it exits (its peak RSS is unchanged). Threads that already picked an arena keep it, so it must run
before a library starts its thread pools (the JAX backend calls it before importing JAX). A no-op off
glibc/Linux. tests/test_host_memory.py counts the page faults of a step.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -3, -4, -8     # mallopt parameters (malloc.h)
TRIM_THRESHOLD = 1 << 30
MMAP_THRESHOLD = 32 << 20


def keep_freed_memory() -> bool:
    """Apply the settings above; returns whether glibc accepted all of them (False off glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                    (M_MMAP_THRESHOLD, MMAP_THRESHOLD))
        return all([bool(libc.mallopt(param, value)) for param, value in settings])
    except (OSError, AttributeError):
        return False
