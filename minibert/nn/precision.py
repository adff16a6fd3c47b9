"""Mixed precision: which dtype each part of a step runs in, and fp16's dynamic loss scaling.

A policy is data, applied in two places:

* the step casts every linear weight (a 2-D parameter named `*.weight`: the Q/K/V, attention-output, feed-forward,
  MLM-head, pooler and classifier matrices) to the compute dtype once per step (`cast_params`), and the model math
  follows the dtypes (see `minibert.nn.ops`): the matmuls, and what feeds them, in bfloat16 or float16; LayerNorm,
  softmax, GELU, the loss and the residual stream in float32. Every gradient is cast back to float32 as it leaves
  the micro-batch (`master_grads`), so accumulation over micro-batches, the (all-reduced) norm, clipping and AdamW
  all run in float32 on the float32 master weights and moments, which are what checkpoints hold.
* fp16, whose 5-bit exponent underflows small gradients, multiplies the loss by a scale S before the backward
  (the step divides the loss normaliser by S: L' = sum w l / (D / S) = S L, so every gradient is S times the
  true one), divides the gradients by S in float32, and skips the update when any is inf or NaN. S starts at
  2^16, doubles after 2000 finite steps in a row and halves (the step skipped) on an overflow, as PyTorch's
  GradScaler (`update_loss_scale`).

Compared with PyTorch's autocast (its CPU and CUDA op lists): the same split for matmuls (low precision),
softmax, LayerNorm and the losses (float32), and GELU, dropout and tanh in the dtype of their input (bfloat16
after a linear layer; jax and torch evaluate each element in float32 and round it, cupy's erf is widened to
float32 by the backend). The embedding lookup reads the float32 table (autocast too), and the tied decoder
multiplies by the table cast to the compute dtype. Differences: bias gradients are summed from the float32
incoming gradient where there is one (autocast sums the bfloat16 one), and the attention mask is added to
float32 scores (autocast adds it to the bfloat16 ones, then the softmax widens them).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from array_api_compat import array_namespace

from minibert.nn.ops import float32_at_least

INITIAL_LOSS_SCALE = 2.0 ** 16
GROWTH_INTERVAL = 2000           # finite steps in a row before the scale doubles
MIN_LOSS_SCALE = 2.0 ** -24      # below this, every step overflowed for ~40 steps in a row: training has diverged


@dataclass(frozen=True)
class Precision:
    """name: "fp32" | "bf16" | "fp16"; compute: the dtype name of the matmuls (None: the parameters' own dtype);
    loss_scaling: dynamic loss scaling (fp16)."""

    name: str
    compute: str | None
    loss_scaling: bool


PRECISIONS = {"fp32": Precision("fp32", None, False),
              "bf16": Precision("bf16", "bfloat16", False),
              "fp16": Precision("fp16", "float16", True)}
FP32 = PRECISIONS["fp32"]


def precision_policy(name, backend, dtype="float32") -> Precision:
    """The policy called `name` for `backend`, whose parameters are `dtype` (a name or the backend's dtype);
    ValueError naming what is missing
    (an unknown name, master weights that are not float32, a backend without the compute dtype)."""
    if isinstance(name, Precision):
        name = name.name
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    policy = PRECISIONS[name]
    if policy.compute is None:
        return policy
    if backend.dtype(dtype) != backend.dtype("float32"):
        raise ValueError(f"precision {name} keeps float32 master weights: use dtype float32 (got {dtype}); "
                         "float64 is for gradient checks, in full precision")
    if policy.compute not in backend.low_precision:
        raise ValueError(f"precision {name} needs {policy.compute} matmuls, which backend {backend.name!r} does "
                         f"not have: {backend.low_precision_hint()}")
    return policy


def is_linear_weight(name: str, array) -> bool:
    """The parameters a policy casts: the 2-D weights of linear layers (not embedding tables, not LayerNorm)."""
    return name.endswith(".weight") and array.ndim == 2


def cast_params(params: dict, precision: Precision, backend) -> dict:
    """params with every linear weight cast to the compute dtype (new arrays; the float32 masters untouched);
    `params` itself under fp32."""
    if precision.compute is None:
        return params
    xp = array_namespace(*params.values())
    dtype = backend.dtype(precision.compute)
    return {name: xp.astype(p, dtype) if is_linear_weight(name, p) else p for name, p in params.items()}


@functools.cache
def under_precision(fn, precision: Precision):
    """A model function fn(params, *args, config=, backend=) -> (loss, grads) run under `precision`: its linear
    weights cast (`cast_params`), its gradients returned in float32 (`master_grads`); `fn` itself under fp32.
    The same function object for the same (fn, precision), so what `minibert.api.compiled` compiles is reused."""
    if precision.compute is None:
        return fn

    def run(params, *args, config, backend):
        loss, grads = fn(cast_params(params, precision, backend), *args, config=config, backend=backend)
        return loss, master_grads(grads)
    return run


def master_grads(grads: dict) -> dict:
    """Every gradient in at least float32 (those of cast weights come out of their products in bfloat16/float16)."""
    return {name: float32_at_least(g) for name, g in grads.items()}


# --- dynamic loss scaling (fp16) -------------------------------------------------------------------------------------

def init_loss_scale(backend, scale: float = INITIAL_LOSS_SCALE, good_steps: int = 0) -> dict:
    """The scaler's state as device arrays: {"scale": float32, "good_steps": int32} (finite steps since the last
    change). A resumed run passes the values its checkpoint stored."""
    return {"scale": backend.asarray(float(scale), dtype="float32"),
            "good_steps": backend.asarray(int(good_steps), dtype="int32")}


def update_loss_scale(scaler: dict, finite) -> dict:
    """After a step: an overflow (`finite` false) halves the scale and restarts the count; a finite step counts,
    and the GROWTH_INTERVAL-th in a row doubles the scale and restarts the count. Branch-free (runs under jit)."""
    xp = array_namespace(scaler["scale"])
    counted = scaler["good_steps"] + 1
    grow = counted >= GROWTH_INTERVAL
    scale = xp.where(finite, xp.where(grow, scaler["scale"] * 2.0, scaler["scale"]), scaler["scale"] * 0.5)
    good_steps = xp.where(finite & ~grow, counted, xp.zeros_like(counted))
    return {"scale": scale, "good_steps": good_steps}


def host_loss_scale(scaler: dict, backend) -> dict:
    """The scaler as JSON numbers (stored in each checkpoint's sidecar; a power of two and an int, so exact)."""
    return {"scale": float(backend.to_numpy(scaler["scale"])),
            "good_steps": int(backend.to_numpy(scaler["good_steps"]))}
