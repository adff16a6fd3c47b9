"""NumPy on the CPU (through array_api_compat.numpy)."""
from __future__ import annotations

import numpy as np
import array_api_compat.numpy as xp_numpy

from backends import _erf
from backends._host_memory import keep_freed_memory
from backends._numpy_fast import create_fast_ops
from backends.base import Backend


class NumpyBackend(Backend):
    name = "numpy"
    xp = xp_numpy
    device = "cpu"
    inplace = True

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

    def key(self, seed: int):
        return (int(seed),)

    def fold_in(self, key, data: int):
        return key + (int(data),)

    def uniform(self, key, shape, dtype):
        return np.random.default_rng(np.random.SeedSequence(key)).random(shape, dtype=self.dtype(dtype))

    def describe(self) -> dict:
        out = {**super().describe(), "numpy": np.__version__}
        try:
            blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
            out["blas"] = f"{blas.get('name')} {blas.get('version')}"
        except Exception:  # older numpy: no dict mode
            pass
        return out


def create() -> Backend:
    keep_freed_memory()          # reuse freed temporaries instead of faulting them in each step
    backend = NumpyBackend()
    backend.fast_ops = create_fast_ops()      # GELU in cache-sized pieces on every core (backends/_numpy_fast.py)
    return backend
