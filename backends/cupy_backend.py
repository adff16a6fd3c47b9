"""CuPy on an NVIDIA GPU (through array_api_compat.cupy).

Install the CuPy wheel that matches the machine's CUDA major version: `pip install cupy-cuda12x` (CUDA 12) or
`pip install cupy-cuda13x` (CUDA 13). The project's `cupy` extra does not pin one (see pyproject.toml), so a
machine that already has CuPy keeps its own build.
"""
from __future__ import annotations

import os

from backends import _philox
from backends.base import Backend, BackendUnavailableError, PeakMemory

INSTALL_HINT = ("pip install cupy-cuda12x (CUDA 12) or cupy-cuda13x (CUDA 13), matching the CUDA major version "
                "that nvidia-smi reports")


class CupyBackend(Backend):
    name = "cupy"
    inplace = True
    on_gpu = True

    def __init__(self, cupy, cupyx_special, xp):
        self._cupy = cupy
        self._erf = cupyx_special.erf
        self.xp = xp
        self.device = cupy.cuda.Device()
        # dropout's random numbers: one counter-based Philox kernel per dtype (backends/_philox.py), so a draw
        # allocates nothing but its output (cupy.random generators build cuRAND states for every new seed)
        self._uniform_kernels = {
            dtype: cupy.ElementwiseKernel("uint32 k0, uint32 k1", f"{ctype} out",
                                          _philox.CUDA_BODY.replace("CONVERT", _philox.CUDA_CONVERT[dtype]),
                                          f"minibert_philox_uniform_{dtype}")
            for dtype, ctype in (("float32", "float32"), ("float64", "float64"))}

    @property
    def low_precision(self) -> tuple[str, ...]:
        """float16 always; bfloat16 where CuPy takes ml_dtypes' bfloat16 (CuPy 14 on, experimental there)."""
        return ("float16",) + (("bfloat16",) if self._bfloat16() is not None else ())

    def _bfloat16(self):
        """ml_dtypes' bfloat16 when CuPy can multiply matrices in it here, else None (probed once)."""
        if not hasattr(self, "_bfloat16_dtype"):
            self._bfloat16_dtype = None
            try:
                import ml_dtypes
                import numpy as np
                probe = self._cupy.asarray(np.ones((2, 2), dtype=ml_dtypes.bfloat16))
                if float((probe @ probe).astype(np.float32)[0, 0]) == 2.0:
                    self._bfloat16_dtype = np.dtype(ml_dtypes.bfloat16)
            except Exception:        # no ml_dtypes, or a CuPy without bfloat16 kernels: reported by low_precision
                pass
        return self._bfloat16_dtype

    def dtype(self, name):
        if name == "bfloat16":
            if self._bfloat16() is None:
                raise ValueError(f"dtype 'bfloat16' is not available on backend 'cupy' {self._cupy.__version__}: "
                                 "it needs CuPy >= 14 and ml_dtypes (pip install ml-dtypes); float16 is")
            return self._bfloat16()
        return super().dtype(name)

    def low_precision_hint(self) -> str:
        return ("CuPy computes in float16 here, and in bfloat16 only from CuPy 14 with ml_dtypes installed: use "
                "--precision fp16, or --backend jax / torch for bf16")

    def to_numpy(self, x):
        return self._cupy.asnumpy(x)

    def scatter_add(self, table, indices, updates):
        # atomicAdd: duplicate indices are summed in a run-dependent order, so float results can differ in
        # the last bits from run to run (GPU runs are not bit-identical; NumPy's are)
        self._cupy.add.at(table, indices, updates)
        return table

    def erf(self, x):
        if x.dtype.itemsize < 4:         # bfloat16/float16 (mixed precision): in float32, rounded back
            return self._erf(x.astype(self._cupy.float32)).astype(x.dtype)
        return self._erf(x)

    def uniform(self, key, shape, dtype):
        """Philox4x32-10 keyed by the key's seeds; element i uses counter i (backends/_philox.py's layout)."""
        dtype = self.dtype(dtype)
        name = self._cupy.dtype(dtype).name
        if name not in self._uniform_kernels:
            raise ValueError(f"uniform: dtype must be float32 or float64, got {name}")
        k0, k1 = _philox.key_from_seeds(key)
        out = self._cupy.empty(shape, dtype=dtype)
        if out.size:
            self._uniform_kernels[name](self._cupy.uint32(k0), self._cupy.uint32(k1), out)
        return out

    def synchronize(self, x=None) -> None:
        self._cupy.cuda.Device().synchronize()

    def describe(self) -> dict:
        cupy = self._cupy
        props = cupy.cuda.runtime.getDeviceProperties(self.device.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return {**super().describe(), "cupy": cupy.__version__, "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                "device_name": name, "tf32": os.environ.get("CUPY_TF32") == "1"}

    def set_matmul_precision(self, allow_tf32: bool) -> None:
        """CuPy reads CUPY_TF32 once, when it is imported: it can only be checked here, not changed."""
        if (os.environ.get("CUPY_TF32") == "1") != bool(allow_tf32):
            raise ValueError(f"allow_tf32={allow_tf32!r}, but CUPY_TF32 is {os.environ.get('CUPY_TF32')!r}: set "
                             "CUPY_TF32=1 (TF32) or leave it unset (full float32) before cupy is imported")

    def track_peak_memory(self) -> PeakMemory:
        return _CupyPeakMemory(self._cupy)


class _CupyPeakMemory(PeakMemory):
    """Bytes of the default memory pool handed out to arrays and not yet freed (its `used_bytes`), followed
    through every malloc and free by a cupy.cuda.MemoryHook while open; the pool's cached free blocks
    (`total_bytes - used_bytes`) are not counted, as torch.cuda.max_memory_allocated does not count torch's."""
    method = "cupy memory-pool bytes in use (MemoryHook on malloc/free), peak"

    def __init__(self, cupy):
        super().__init__()
        self._cupy = cupy
        tracker = self

        class Hook(cupy.cuda.MemoryHook):
            name = "minibert_peak_memory"

            def malloc_postprocess(self, **kw):
                tracker._in_use += kw["mem_size"]
                tracker._peak = max(tracker._peak, tracker._in_use)

            def free_postprocess(self, **kw):
                tracker._in_use -= kw["mem_size"]

        self._hook = Hook()

    def start(self) -> None:
        self._in_use = self._peak = int(self._cupy.get_default_memory_pool().used_bytes())
        self._hook.__enter__()

    def stop(self) -> int:
        self._hook.__exit__(None, None, None)
        return int(self._peak)


def create() -> Backend:
    try:
        import cupy
        import cupyx.scipy.special as cupyx_special
        import array_api_compat.cupy as xp
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'cupy' needs CuPy, which is not installed ({exc}); on a machine with an NVIDIA GPU "
            f"install it with: {INSTALL_HINT}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        raise BackendUnavailableError(f"backend 'cupy' found no usable CUDA device ({exc}); "
                                      "use --backend numpy or jax on this machine") from None
    if count == 0:
        raise BackendUnavailableError("backend 'cupy' found no CUDA device; use --backend numpy or jax here")
    return CupyBackend(cupy, cupyx_special, xp)
