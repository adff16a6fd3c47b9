"""One training step: forward + hand-written backward over micro-batches, accumulated, then AdamW.

The step is generic in the task: it takes the per-micro-batch loss-and-gradient function, so masked-LM
pre-training (`minibert.nn.model.forward_backward`) and fine-tuning heads share it. On JAX the whole step is
compiled once with jax.jit (params and optimizer state donated, so XLA updates their buffers in place);
elsewhere it runs eagerly, updating buffers in place.

Token-weighted accumulation. A step of k micro-batches b_1..b_k holds C = sum_i c_i labelled items
(c_i = count_fn(b_i): the labelled tokens of an MLM batch, the non-ignored labels of a classification batch).
Its loss is the mean over all C of them, which splits into per-micro-batch terms with one shared normaliser:

    L = (1/C) sum_i sum_{n in b_i} w_n l_n = sum_i L_i(C),      L_i(D) = sum_{n in b_i} w_n l_n / D
    dL/dp = sum_i dL_i(C)/dp

so every micro-batch's forward_backward gets D = C (the step-wide normaliser) and the losses and gradients are
summed, not averaged. Then k micro-batches of B/k rows give the loss and gradients of one batch of B rows whatever
their label counts (the mean of the micro-batch means would weigh each label of a sparsely labelled micro-batch
more; transformers' Trainer moved to this form in 4.46). On a backend sharded over devices
(`Backend.data_parallel`) every array of a batch is split by rows across the devices and the same code runs as
one program: C and every sum over rows are global, the compiler adds the cross-device reductions (the gradient
all-reduce, see docs/guide/12-data-parallel-training.md), so N devices give the result of one. On a backend with
row threads (`Backend.row_threads`: numpy on several cores) each micro-batch's rows are split into blocks that run
at once on one device, summed the same way (`forward_backward_by_rows`).
"""
from __future__ import annotations

from minibert.nn.optim import AdamWConfig, accumulate, adamw_update
from minibert.nn.precision import FP32, Precision, cast_params, master_grads, update_loss_scale


def accumulate_gradients(forward_backward_fn, params, micro_batches, key, backend, count_fn=None, loss_scale=None):
    """(loss, grads) of one step's micro-batches, before the optimizer.

    With `count_fn` (arrays -> 0-d count of labelled items): D = sum_i count_fn(b_i), and
        loss = sum_i loss_i,  grads = sum_i grads_i,  (loss_i, grads_i) = forward_backward_fn(params, b_i, key_i, D)
    the token-weighted mean over the whole step. Without it, every micro-batch weighs the same:
        loss = (1/k) sum_i loss_i,  grads = (1/k) sum_i grads_i,
        (loss_i, grads_i) = forward_backward_fn(params, b_i, key_i)
    (right only when all micro-batches hold the same number of items). key_i = fold_in(key, i), or None.
    Each micro-batch's gradients are cast to at least float32 before they are summed (`master_grads`: those of
    bfloat16/float16 weights under mixed precision). With `loss_scale` S (a 0-d array; needs `count_fn`), every
    micro-batch gets D / S: the loss and every gradient come out S times the true ones (fp16 loss scaling).
    """
    if loss_scale is not None and count_fn is None:
        raise ValueError("loss scaling needs count_fn: the scale is applied through the step's loss normaliser")
    normaliser = None if count_fn is None else sum(count_fn(arrays) for arrays in micro_batches)
    if loss_scale is not None:
        normaliser = normaliser / loss_scale
    total, loss = None, 0.0
    for i, arrays in enumerate(micro_batches):
        micro_key = None if key is None else backend.fold_in(key, i)
        if normaliser is None:
            micro_loss, grads = forward_backward_fn(params, arrays, micro_key)
        else:
            micro_loss, grads = forward_backward_by_rows(forward_backward_fn, params, arrays, micro_key, normaliser,
                                                         backend)
        total = accumulate(total, master_grads(grads))
        loss = loss + micro_loss
    count = len(micro_batches)
    if normaliser is None and count > 1:
        for name in total:
            buffer = total[name]
            buffer *= 1.0 / count
            total[name] = buffer
        loss = loss / count
    return loss, total


def forward_backward_by_rows(forward_backward_fn, params, arrays, key, normaliser, backend):
    """forward_backward_fn(params, arrays, key, normaliser), with the batch's rows split over the backend's
    `row_threads` (the numpy backend on several cores) where the batch can split (`arrays.split_rows`):

        loss = sum_s loss_s,  grads = sum_s grads_s   (s = 0, 1, ... in order),
        (loss_s, grads_s) = forward_backward_fn(params, block_s, fold_in(key, s), D)

    the same token-weighted sum as micro-batches (module docstring), the blocks run at once by
    `backend.thread_map`. The result is deterministic for a given thread count; another count splits the rows
    and the dropout keys differently (as another micro-batch split would)."""
    splittable = backend.row_threads > 1 and hasattr(arrays, "split_rows")
    blocks = arrays.split_rows(backend.row_threads) if splittable else [arrays]
    if len(blocks) == 1:
        return forward_backward_fn(params, arrays, key, normaliser)
    results = backend.thread_map(
        lambda s: forward_backward_fn(params, blocks[s], None if key is None else backend.fold_in(key, s),
                                      normaliser), range(len(blocks)))
    total, loss = None, 0.0
    for block_loss, grads in results:
        total = accumulate(total, grads)
        loss = loss + block_loss
    return loss, total


def make_train_step(forward_backward_fn, opt: AdamWConfig, backend, skip_nonfinite: bool = False, count_fn=None,
                    precision: Precision = FP32):
    """step(params, state, micro_batches, key, step_index) -> (params, state, loss, grad_norm).

    forward_backward_fn(params, arrays, key[, normaliser]) -> (loss as a 0-d array, dict of gradients named like
    params), for one micro-batch; e.g. `functools.partial(minibert.nn.model.forward_backward, config=config,
    backend=backend)`. count_fn(arrays) -> 0-d array: the labelled items of a micro-batch (e.g.
    `minibert.nn.model.label_count`); given, the step is token-weighted and forward_backward_fn is called with the
    step's normaliser (see the module docstring and `accumulate_gradients`); None: micro-batches weigh the same.
    micro_batches: list of device batches (pytrees, e.g. `minibert.data.batch.DeviceBatch`) of equal shapes.
    key: a backend random key for dropout, or None for no dropout; micro-batch i gets fold_in(key, i).
    step_index: the 0-based update number (int, or a 0-d int array). grad_norm is before clipping.
    skip_nonfinite: a step with a non-finite gradient leaves params and state unchanged (see `adamw_update`).
    precision: a `minibert.nn.precision.Precision`. Its linear weights are cast to the compute dtype once per step
    and the gradients come back in float32 (module `minibert.nn.precision`); with loss scaling (fp16) `state` also
    holds "loss_scale" (`init_loss_scale`): the step scales the loss by it, divides the gradients by it in
    float32, skips the update on inf/NaN and updates the scale (`update_loss_scale`). The returned loss and
    grad_norm are the unscaled ones (grad_norm inf or NaN on an overflow).
    """
    if not callable(forward_backward_fn):
        raise TypeError("forward_backward_fn must be a function (params, arrays, key) -> (loss, grads), got "
                        f"{type(forward_backward_fn).__name__}")
    if count_fn is not None and not callable(count_fn):
        raise TypeError(f"count_fn must be a function (arrays) -> count, or None; got {type(count_fn).__name__}")

    def step(params, state, micro_batches, key, step_index):
        scale = state["loss_scale"]["scale"] if precision.loss_scaling else None
        loss, grads = accumulate_gradients(forward_backward_fn, cast_params(params, precision, backend),
                                           micro_batches, key, backend, count_fn, loss_scale=scale)
        if scale is not None:
            unscale = 1.0 / scale
            loss = loss * unscale
            grads = {name: g * unscale for name, g in grads.items()}
        params, state, grad_norm = adamw_update(params, grads, state, step_index, opt,
                                                skip_nonfinite or precision.loss_scaling)
        if scale is not None:
            xp = backend.xp
            state["loss_scale"] = update_loss_scale(state["loss_scale"], xp.isfinite(grad_norm))
        return params, state, loss, grad_norm

    return backend.jit(step, donate_argnums=(0, 1))
