"""Masked-LM cross-entropy over the labelled positions only (label -100 = ignored, as in BERT)."""
from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import array_namespace

from minibert.nn.ops import float32_at_least


def flat_index_dtype(xp, size: int):
    """The integer dtype for flat indices into an array of `size` elements: the namespace's default indexing
    dtype (array API inspection: int64 on NumPy, CuPy, torch, array-api-strict and JAX with x64), which cannot
    wrap for any array that fits in memory. JAX without x64 has only int32; there an index that would wrap
    (`size` > 2^31 - 1) is refused rather than silently wrapped."""
    dtype = xp.__array_namespace_info__().default_dtypes()["indexing"]
    if size - 1 > xp.iinfo(dtype).max:
        raise ValueError(f"{size} elements need 64-bit flat indices, but this namespace indexes with {dtype} "
                         "(JAX without x64): use fewer labelled rows per micro-batch, or set JAX_ENABLE_X64=1")
    return dtype


class CrossEntropyCache(NamedTuple):
    probs: Any          # softmax(z) [N, V]
    flat_target: Any    # n * V + y_n [N], the targets' indices in the flattened logits
    norm_weights: Any   # w / normaliser [N]


def cross_entropy_forward(logits, labels, weights, normaliser=None):
    """loss = sum_n w_n * (logsumexp(z_n) - z_n[y_n]) / D,   D = normaliser, or sum_n w_n when None (the mean).

    logits z [N, V], labels y [N] int, weights w [N] (1 for a real label, 0 for padding rows). A step that
    accumulates micro-batches (or shards a batch over devices) passes D = the labelled tokens of the whole step,
    so the pieces' losses and gradients add up to those of the whole batch (`minibert.nn.step`).
    logsumexp is taken after subtracting the row max, so it never overflows. Computed in at least float32.
    Cache (softmax(z) [N, V], flat indices n * V + y_n of the targets, w / D).
    """
    xp = array_namespace(logits)
    logits = float32_at_least(logits)                                   # bfloat16/float16 logits: in float32
    num_rows, vocab = logits.shape
    row_max = xp.max(logits, axis=-1, keepdims=True)
    exp_shifted = xp.exp(logits - row_max)
    sum_exp = xp.sum(exp_shifted, axis=-1, keepdims=True)
    log_z = xp.log(sum_exp) + row_max                                     # [N, 1]
    index = flat_index_dtype(xp, num_rows * vocab)                      # labelled rows x V can pass 2^31
    flat_target = xp.arange(num_rows, dtype=index) * vocab + xp.astype(labels, index)
    target_logit = xp.take(xp.reshape(logits, (-1,)), flat_target)      # [N, V] -> [N*V]; z_n[y_n], [N]
    norm_weights = weights / (xp.sum(weights) if normaliser is None else normaliser)
    loss = xp.sum(norm_weights * (log_z[:, 0] - target_logit))
    return loss, CrossEntropyCache(probs=exp_shifted / sum_exp, flat_target=flat_target,
                                   norm_weights=norm_weights)


def cross_entropy_backward(d_loss, cache: CrossEntropyCache, backend):
    """dz_n = d_loss * (softmax(z_n) - onehot(y_n)) * w_n / D (D as in the forward); d_loss is dLoss/dloss (1.0 when the
    cross-entropy is the loss). Returns (dz [N, V], {}).

    The one-hot term touches one entry per row, so it is a scatter-add of -d_loss * w_n / D at the N flat
    target indices (`backend.scatter_add`) rather than an [N, V] one-hot matrix."""
    probs = cache.probs
    xp = array_namespace(probs)
    scaled = cache.norm_weights * d_loss                                  # [N]
    d_logits = xp.reshape(probs * scaled[:, None], (-1, 1))               # w [N, 1]; [N, V] -> [N*V, 1]
    d_logits = backend.scatter_add(d_logits, cache.flat_target, -scaled[:, None])   # [N] -> [N, 1]
    return xp.reshape(d_logits, probs.shape), {}                          # [N*V, 1] -> [N, V]
