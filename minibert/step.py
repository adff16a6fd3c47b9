"""One training step: forward + hand-written backward over micro-batches, accumulated, then AdamW.

On JAX the whole step is compiled once with jax.jit (params and optimizer state donated, so XLA updates
their buffers in place); elsewhere it runs eagerly, updating buffers in place.
"""
from __future__ import annotations

from minibert.config import BertConfig
from minibert.model import forward_backward
from minibert.optim import AdamWConfig, accumulate, adamw_update


def make_train_step(forward_backward_fn, opt: AdamWConfig, backend, skip_nonfinite: bool = False):
    """step(params, state, micro_batches, key, step_index) -> (params, state, loss, grad_norm).

    micro_batches: list of device batches (`minibert.batch.device_batch`) of equal shapes; their gradients
    are averaged. key: a backend random key for dropout, or None for no dropout. step_index: the 0-based
    update number (int, or a 0-d int array). loss is the mean over micro-batches; grad_norm is before clipping.
    skip_nonfinite: a step with a non-finite gradient leaves params and state unchanged (see `adamw_update`).
    """
    if isinstance(forward_backward_fn, BertConfig):   # TEMPORARY SHIM (wt-loop): old callers pass the config
        config = forward_backward_fn

        def forward_backward_fn(params, arrays, key):
            return forward_backward(params, arrays, key, config=config, backend=backend)

    def step(params, state, micro_batches, key, step_index):
        total, loss = None, 0.0
        for i, arrays in enumerate(micro_batches):
            micro_key = None if key is None else backend.fold_in(key, i)
            micro_loss, grads = forward_backward_fn(params, arrays, micro_key)
            total = accumulate(total, grads)
            loss = loss + micro_loss
        count = len(micro_batches)
        if count > 1:
            for name in total:
                buffer = total[name]
                buffer *= 1.0 / count
                total[name] = buffer
        params, state, grad_norm = adamw_update(params, total, state, step_index, opt, skip_nonfinite)
        return params, state, loss / count, grad_norm

    return backend.jit(step, donate_argnums=(0, 1))
