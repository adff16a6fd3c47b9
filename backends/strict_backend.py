"""array-api-strict: a minimal, standard-only namespace on the CPU, to prove the model uses nothing else.

The standard has no scatter-add, erf or random numbers, so this backend supplies documented fallbacks:
scatter-add as a one-hot matrix product (O(N * rows * width): for compliance checks on small models, not
for training), erf as an array-API rational approximation, and random numbers drawn on the host.
"""
from __future__ import annotations

import numpy as np

from backends import _erf
from backends.base import Backend, BackendUnavailableError


class StrictBackend(Backend):
    name = "strict"
    inplace = True

    def __init__(self, xp):
        self.xp = xp
        self.device = xp.Device("CPU_DEVICE")

    def describe(self) -> dict:
        return {**super().describe(), "array_api_strict": self.xp.__version__}

    def to_numpy(self, x):
        return np.from_dlpack(x)

    def scatter_add(self, table, indices, updates):
        xp = self.xp
        rows = xp.arange(table.shape[0], dtype=indices.dtype)
        one_hot = xp.astype(indices[None, :] == rows[:, None], updates.dtype)   # [rows, N]
        flat = xp.reshape(updates, (updates.shape[0], -1))
        return table + xp.reshape(one_hot @ flat, table.shape)

    def erf(self, x):
        return _erf.erf(x)

    def no_low_precision_reason(self) -> str:
        return "the array API standard (so array-api-strict) has no bfloat16 or float16"

    def uniform(self, key, shape, dtype):
        dtype = self.dtype(dtype)
        host = np.random.default_rng(np.random.SeedSequence(key)).random(shape)
        return self.xp.asarray(host, dtype=dtype)


def create() -> Backend:
    try:
        import array_api_strict
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'strict' needs array-api-strict, which is not installed ({exc}); install it with: "
            "pip install array-api-strict") from None
    return StrictBackend(array_api_strict)
