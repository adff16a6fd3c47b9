"""JAX on its default device (CPU or GPU); arrays are immutable, the training step is compiled with jax.jit."""
from __future__ import annotations

import numpy as np

from backends.base import Backend, BackendUnavailableError


class JaxBackend(Backend):
    name = "jax"
    inplace = False
    static_shapes = True

    def __init__(self, jax):
        self._jax = jax
        self.xp = jax.numpy
        self.device = jax.devices()[0]
        if self.device.platform == "gpu":
            # float32 matmuls on NVIDIA GPUs default to TF32 in XLA (10-bit mantissa); ask for true float32,
            # as PyTorch does by default, so results match the CPU backends and transformers.
            jax.config.update("jax_default_matmul_precision", "highest")

    @property
    def supports_float64(self) -> bool:
        return bool(self._jax.config.jax_enable_x64)

    def float64_hint(self) -> str:
        return ("JAX is float32 unless x64 is enabled: set JAX_ENABLE_X64=1, or call "
                "jax.config.update('jax_enable_x64', True) before any array is made")

    def asarray(self, host_array, dtype=None):
        dtype = None if dtype is None else self.dtype(dtype)
        # a fresh host copy: on the CPU, device_put may alias a 64-byte-aligned NumPy buffer (no copy), and a later
        # write to the caller's array would then change this "immutable" JAX array
        return self._jax.device_put(np.array(host_array, dtype=dtype, copy=True), self.device)

    def to_numpy(self, x):
        return np.asarray(x)

    def scatter_add(self, table, indices, updates):
        return table.at[indices].add(updates)

    def erf(self, x):
        return self._jax.scipy.special.erf(x)

    def key(self, seed: int):
        return self._jax.random.key(int(seed))

    def fold_in(self, key, data):
        return self._jax.random.fold_in(key, data)

    def uniform(self, key, shape, dtype):
        return self._jax.random.uniform(key, shape, dtype=self.dtype(dtype))

    def jit(self, fn, **kwargs):
        return self._jax.jit(fn, **kwargs)

    def synchronize(self, x=None) -> None:
        if x is not None:
            self._jax.block_until_ready(x)
        else:
            self._jax.effects_barrier()


def create() -> Backend:
    try:
        import jax
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'jax' needs JAX, which is not installed ({exc}); install it with: "
            "pip install -e '.[jax]'  (or: pip install jax; for NVIDIA GPUs: pip install 'jax[cuda12]')") from None
    return JaxBackend(jax)
