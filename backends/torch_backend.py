"""PyTorch tensors through array_api_compat.torch (CUDA when present, else CPU); a proof the registry is open.

Only torch's array functions are used: no autograd, no nn modules.
"""
from __future__ import annotations

import numpy as np

from backends.base import Backend, BackendUnavailableError


class TorchBackend(Backend):
    name = "torch"
    inplace = True

    def __init__(self, torch, xp):
        self._torch = torch
        self.xp = xp
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def asarray(self, host_array, dtype=None):
        dtype = None if dtype is None else self.dtype(dtype)
        return self._torch.from_numpy(np.array(host_array, copy=True)).to(device=self.device, dtype=dtype)

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    def scatter_add(self, table, indices, updates):
        return table.index_add_(0, indices, updates)

    def erf(self, x):
        return self._torch.special.erf(x)

    def key(self, seed: int):
        return (int(seed),)

    def fold_in(self, key, data: int):
        return key + (int(data),)

    def uniform(self, key, shape, dtype):
        seed = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> np.uint64(1))
        generator = self._torch.Generator(device=self.device).manual_seed(seed)
        return self._torch.rand(shape, generator=generator, dtype=self.dtype(dtype), device=self.device)

    def synchronize(self, x=None) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize()


def create() -> Backend:
    try:
        import torch
        import array_api_compat.torch as xp
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'torch' needs PyTorch, which is not installed ({exc}); install it with: "
            "pip install torch") from None
    return TorchBackend(torch, xp)
