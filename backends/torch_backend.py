"""PyTorch tensors through array_api_compat.torch (CUDA when present, else CPU); a proof the registry is open.

Only torch's array functions are used: no autograd, no nn modules.
"""
from __future__ import annotations

import numpy as np

from backends._host_memory import keep_freed_memory
from backends.base import Backend, BackendUnavailableError, PeakMemory


class TorchBackend(Backend):
    name = "torch"
    inplace = True
    low_precision = ("bfloat16", "float16")

    def __init__(self, torch, xp):
        self._torch = torch
        self.xp = xp
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.on_gpu = self.device.type == "cuda"

    def asarray(self, host_array, dtype=None):
        dtype = None if dtype is None else self.dtype(dtype)
        return self._torch.from_numpy(np.array(host_array, copy=True)).to(device=self.device, dtype=dtype)

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    def scatter_add(self, table, indices, updates):
        return table.index_add_(0, indices, updates)

    def erf(self, x):
        return self._torch.special.erf(x)

    def uniform(self, key, shape, dtype):
        seed = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> np.uint64(1))
        generator = self._torch.Generator(device=self.device).manual_seed(seed)
        return self._torch.rand(shape, generator=generator, dtype=self.dtype(dtype), device=self.device)

    def synchronize(self, x=None) -> None:
        if self.on_gpu:
            self._torch.cuda.synchronize()

    def describe(self) -> dict:
        return {**super().describe(), **torch_description(self._torch)}

    def set_matmul_precision(self, allow_tf32: bool) -> None:
        if self.on_gpu:
            self._torch.backends.cuda.matmul.allow_tf32 = bool(allow_tf32)
            self._torch.backends.cudnn.allow_tf32 = bool(allow_tf32)

    def track_peak_memory(self) -> PeakMemory:
        return TorchPeakMemory(self._torch) if self.on_gpu else PeakMemory()


def torch_description(torch) -> dict:
    """torch's version, CPU threads and BLAS, and its CUDA device where it has one (also used for the PyTorch
    reference of scripts/benchmark.py, which runs transformers' BERT on torch directly)."""
    import re
    blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    out = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "torch_blas": blas.group(1) if blas else None}
    if torch.cuda.is_available():
        out.update(cuda_device=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return out


class TorchPeakMemory(PeakMemory):
    """torch's CUDA caching allocator: bytes allocated to live tensors, peak since the reset at the start."""
    method = "torch.cuda.max_memory_allocated (reset by reset_peak_memory_stats at the start)"

    def __init__(self, torch):
        super().__init__()
        self._torch = torch

    def start(self) -> None:
        self._torch.cuda.reset_peak_memory_stats()

    def stop(self) -> int:
        return int(self._torch.cuda.max_memory_allocated())


def create() -> Backend:
    try:
        import torch
        import array_api_compat.torch as xp
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'torch' needs PyTorch, which is not installed ({exc}); install it with: "
            "pip install torch") from None
    backend = TorchBackend(torch, xp)
    if not backend.on_gpu:
        keep_freed_memory()      # reuse freed temporaries instead of faulting them in each step
    return backend
