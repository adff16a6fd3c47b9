"""JAX on its default device (CPU or GPU); arrays are immutable, the training step is compiled with jax.jit."""
from __future__ import annotations

import numpy as np

from backends.base import Backend, BackendUnavailableError, PeakMemory

INSTALL_HINT = ("pip install -e '.[jax]'  (or: pip install jax; for NVIDIA GPUs: pip install 'jax[cuda12]' "
                "(CUDA 12) or 'jax[cuda13]' (CUDA 13), matching the CUDA major version that nvidia-smi reports)")


class JaxBackend(Backend):
    name = "jax"
    inplace = False
    static_shapes = True

    def __init__(self, jax):
        self._jax = jax
        self.xp = jax.numpy
        self.device = jax.devices()[0]
        self.on_gpu = self.device.platform == "gpu"
        if self.on_gpu:
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
        """Wait for `x`; with no `x`, for every computation queued so far: JAX dispatches asynchronously and
        each queued computation writes a live array, so blocking on all live arrays waits for all of them
        (`effects_barrier` alone waits only for side effects such as callbacks)."""
        if x is not None:
            self._jax.block_until_ready(x)
        else:
            self._jax.block_until_ready(self._jax.live_arrays())
            self._jax.effects_barrier()

    def describe(self) -> dict:
        import jaxlib
        return {**super().describe(), "jax": self._jax.__version__, "jaxlib": jaxlib.__version__,
                "device_kind": self.device.device_kind,
                "matmul_precision": str(self._jax.config.jax_default_matmul_precision)}

    def set_matmul_precision(self, allow_tf32: bool) -> None:
        if self.on_gpu:
            self._jax.config.update("jax_default_matmul_precision", "tensorfloat32" if allow_tf32 else "highest")

    def track_peak_memory(self) -> PeakMemory:
        return _JaxPeakMemory(self.device)


class _JaxPeakMemory(PeakMemory):
    """XLA's allocator statistic `peak_bytes_in_use` (bytes held by live buffers, not the allocator's reserve).
    XLA cannot reset it, so the peak covers the process from its start to the end of the block; None on the
    CPU, where the device reports no memory statistics."""
    method = "jax device.memory_stats()['peak_bytes_in_use'] (since the process started)"

    def __init__(self, device):
        super().__init__()
        self._device = device

    def stop(self) -> int | None:
        stats = self._device.memory_stats()
        return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def create() -> Backend:
    try:
        import jax
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'jax' needs JAX, which is not installed ({exc}); install it with: {INSTALL_HINT}") from None
    return JaxBackend(jax)
