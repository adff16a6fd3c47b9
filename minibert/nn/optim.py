"""AdamW with BERT's settings, the learning-rate schedule, global-norm clipping and gradient accumulation.

All array work goes through the arrays' namespace. Updates use augmented assignment (`m *= b1`): on a
backend whose arrays are writeable (`backend.inplace`) that updates the buffer in place, allocating no new
state; on JAX it rebinds the name to a new array. One code path; the returned dicts hold the results either way.
"""
from __future__ import annotations

from dataclasses import dataclass

from array_api_compat import array_namespace

from minibert.nn.layout import is_no_decay


@dataclass(frozen=True)
class AdamWConfig:
    """lr: peak learning rate; warmup_steps then linear decay to 0 at total_steps (BERT's schedule).
    eps 1e-6 and weight_decay 0.01 as in BERT; clip_norm: global gradient-norm limit (None = no clipping)."""

    lr: float = 1e-4
    warmup_steps: int = 0
    total_steps: int = 1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float | None = 1.0

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps < 1:
            raise ValueError(f"total_steps must be an int >= 1, got {self.total_steps!r}")
        if (isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int)
                or not 0 <= self.warmup_steps <= self.total_steps):
            raise ValueError(f"warmup_steps must be an int in [0, total_steps={self.total_steps}], "
                             f"got {self.warmup_steps!r}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm!r} (None: no clipping)")


def learning_rate(step, cfg: AdamWConfig):
    """lr for update number `step` (0-based): lr * (step + 1) / max(warmup, 1) during warm-up, then
    lr * (total - step) / max(total - warmup, 1), reaching 0 after the last step. Works on Python ints and on
    0-d arrays (under jit)."""
    warm = cfg.lr * (step + 1) / max(cfg.warmup_steps, 1)
    decay = cfg.lr * (cfg.total_steps - step) / max(cfg.total_steps - cfg.warmup_steps, 1)
    if isinstance(step, int):
        return warm if step < cfg.warmup_steps else decay
    xp = array_namespace(step)
    return xp.where(step < cfg.warmup_steps, warm, decay)


def init_state(params, backend):
    """AdamW moments: zeros like every parameter."""
    xp = backend.xp
    zeros = {name: xp.zeros(p.shape, dtype=p.dtype, device=backend.device) for name, p in params.items()}
    return {"m": zeros, "v": {name: xp.zeros_like(z) for name, z in zeros.items()}}


def global_norm(grads):
    """sqrt(sum over every gradient of sum(g^2)), a 0-d array."""
    xp = array_namespace(*grads.values())
    return xp.sqrt(sum(xp.sum(g * g) for g in grads.values()))


def accumulate(total, grads):
    """total[name] += grads[name] for every name (in place where the arrays are writeable); returns total.
    `total=None` starts from `grads` itself (no copy)."""
    if total is None:
        return dict(grads)
    for name, g in grads.items():
        buffer = total[name]
        buffer += g
        total[name] = buffer
    return total


def adamw_update(params, grads, state, step, cfg: AdamWConfig, skip_nonfinite: bool = False):
    """One AdamW step (decoupled weight decay, bias-corrected moments, as in torch.optim.AdamW):

        g <- g * min(1, clip / (||g|| + 1e-6))                         (global norm over all parameters)
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr * wd * p      (not for biases and LayerNorm)
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps),   t = step + 1

    Only the parameters named in `grads` are updated (and decayed); the others, e.g. the encoder of a linear
    probe, are left untouched, their moments too. `step` is the 0-based update count (an int, or a 0-d array under jit). Returns (params, state, grad_norm);
    on writeable backends the same dicts and buffers, updated in place. With `skip_nonfinite`, a step whose
    gradient norm is inf or NaN changes nothing (the moments' decay and the learning rate are set to 0 for it).
    """
    xp = array_namespace(*params.values())
    norm = global_norm(grads)
    scale = 1.0 if cfg.clip_norm is None else xp.minimum(1.0, cfg.clip_norm / (norm + 1e-6))
    lr = learning_rate(step, cfg)
    keep_m, keep_v = cfg.beta1, cfg.beta2
    if skip_nonfinite:
        finite = xp.isfinite(norm)
        lr = xp.where(finite, lr, 0.0)
        scale = xp.where(finite, scale, 0.0)
        keep_m, keep_v = xp.where(finite, keep_m, 1.0), xp.where(finite, keep_v, 1.0)
    t = step + 1
    step_size = lr / (1.0 - cfg.beta1 ** t)
    v_correction = 1.0 / (1.0 - cfg.beta2 ** t)
    if not isinstance(t, int):
        v_correction = xp.astype(v_correction, norm.dtype)
        step_size = xp.astype(step_size, norm.dtype)
    sqrt_v_correction = v_correction ** 0.5
    for name, g in grads.items():        # parameters without a gradient (a frozen encoder) stay as they are
        p = params[name]
        g = g * scale
        if skip_nonfinite:
            g = xp.where(xp.isfinite(g), g, 0.0)
        m, v = state["m"][name], state["v"][name]
        m *= keep_m
        m += (1.0 - keep_m) * g
        v *= keep_v
        v += (1.0 - keep_v) * (g * g)
        if cfg.weight_decay and not is_no_decay(name):
            p *= 1.0 - lr * cfg.weight_decay
        p -= step_size * m / (xp.sqrt(v) * sqrt_v_correction + cfg.eps)
        params[name], state["m"][name], state["v"][name] = p, m, v
    return params, state, norm

