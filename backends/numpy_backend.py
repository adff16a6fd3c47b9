"""NumPy on the CPU (through array_api_compat.numpy)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import array_api_compat.numpy as xp_numpy

from backends import _blas_threads, _erf
from backends._host_memory import keep_freed_memory
from backends.base import Backend


class NumpyBackend(Backend):
    """NumPy on the CPU. With `row_threads` > 1 a training step splits each batch's rows over that many threads
    (minibert/nn/step.py), which `thread_map` runs at once, each with single-threaded BLAS: NumPy's elementwise work
    (GELU, softmax, LayerNorm, dropout, ...) runs on one core per call, so splitting the rows keeps every core busy
    for all of the step instead of only in the GEMMs. Measured, mini preset B32 T128 on 2 cores: forward +
    backward 600 ms on one thread with 2-thread BLAS, 505 ms on two row threads (the single-threaded 980 ms
    halved). Needs OpenBLAS's thread control (backends/_blas_threads.py); without it, and with OMP_NUM_THREADS /
    OPENBLAS_NUM_THREADS = 1, rows stay on one thread. Each row thread holds a full set of gradients until they
    are summed (base preset: 440 MB each): cap them with OMP_NUM_THREADS."""

    name = "numpy"
    xp = xp_numpy
    device = "cpu"
    inplace = True

    def __init__(self, row_threads: int = 1, blas=None):
        self.row_threads = row_threads if blas is not None else 1
        self._blas = blas
        self._executor, self._executor_pid = None, None

    def thread_map(self, fn, items):
        items = list(items)
        if self.row_threads == 1 or len(items) < 2:
            return [fn(item) for item in items]
        if self._executor_pid != os.getpid():      # started on first use, and again in a forked child
            self._executor = ThreadPoolExecutor(self.row_threads - 1, thread_name_prefix="minibert-rows")
            self._executor_pid = os.getpid()

        with self._blas.limit(1):
            futures = [self._executor.submit(fn, item) for item in items[1:]]
            first = fn(items[0])
            return [first] + [future.result() for future in futures]

    def asarray(self, host_array, dtype=None):
        return np.asarray(host_array, dtype=None if dtype is None else self.dtype(dtype))

    def to_numpy(self, x):
        return np.asarray(x)

    def scatter_add(self, table, indices, updates):
        # np.add.at is fast only for a 1-D target and 1-D index, so scatter into the flat table
        # at element offsets row * width + column.
        width = table.size // table.shape[0]
        flat_index = (indices.astype(np.intp)[:, None] * width + np.arange(width)).reshape(-1)
        np.add.at(table.reshape(-1), flat_index, updates.reshape(-1))
        return table

    def erf(self, x):
        return _erf.erf(x)

    def no_low_precision_reason(self) -> str:
        return "NumPy has no bfloat16, and its float16 matmul does not use BLAS (slower than float32)"

    def uniform(self, key, shape, dtype):
        return np.random.default_rng(np.random.SeedSequence(key)).random(shape, dtype=self.dtype(dtype))

    def describe(self) -> dict:
        out = {**super().describe(), "numpy": np.__version__, "row_threads": self.row_threads}
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            out["blas"] = f"{blas.get('name')} {blas.get('version')}"
        except Exception:  # older numpy: no dict mode
            pass
        return out


def create() -> Backend:
    keep_freed_memory()          # reuse freed temporaries instead of faulting them in each step
    return NumpyBackend(row_threads=usable_threads(), blas=_blas_threads.find())


def usable_threads() -> int:
    """Row threads (see NumpyBackend): the cores this process may run on, capped by OMP_NUM_THREADS /
    OPENBLAS_NUM_THREADS when set (so a run pinned to one thread stays on one)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            count = min(count, int(value))
    return max(1, count)
