"""CuPy on an NVIDIA GPU (through array_api_compat.cupy)."""
from __future__ import annotations

import numpy as np

from backends.base import Backend, BackendUnavailableError


class CupyBackend(Backend):
    name = "cupy"
    inplace = True

    def __init__(self, cupy, cupyx_special, xp):
        self._cupy = cupy
        self._erf = cupyx_special.erf
        self.xp = xp
        self.device = cupy.cuda.Device()

    def to_numpy(self, x):
        return self._cupy.asnumpy(x)

    def scatter_add(self, table, indices, updates):
        self._cupy.add.at(table, indices, updates)
        return table

    def erf(self, x):
        return self._erf(x)

    def key(self, seed: int):
        return (int(seed),)

    def fold_in(self, key, data: int):
        return key + (int(data),)

    def uniform(self, key, shape, dtype):
        seed = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0])
        return self._cupy.random.default_rng(seed).random(shape, dtype=self.dtype(dtype))

    def synchronize(self, x=None) -> None:
        self._cupy.cuda.Device().synchronize()


def create() -> Backend:
    try:
        import cupy
        import cupyx.scipy.special as cupyx_special
        import array_api_compat.cupy as xp
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'cupy' needs CuPy, which is not installed ({exc}); on a machine with an NVIDIA GPU "
            "install it with: pip install cupy-cuda12x  (or cupy-cuda13x to match your CUDA)") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        raise BackendUnavailableError(f"backend 'cupy' found no usable CUDA device ({exc}); "
                                      "use --backend numpy or jax on this machine") from None
    if count == 0:
        raise BackendUnavailableError("backend 'cupy' found no CUDA device; use --backend numpy or jax here")
    return CupyBackend(cupy, cupyx_special, xp)
