"""Masked-LM cross-entropy over the labelled positions only (label -100 = ignored, as in BERT)."""
from __future__ import annotations

from array_api_compat import array_namespace


def cross_entropy_forward(logits, labels, weights):
    """loss = sum_n w_n * (logsumexp(z_n) - z_n[y_n]) / sum_n w_n.

    logits z [N, V], labels y [N] int, weights w [N] (1 for a real label, 0 for padding rows).
    logsumexp is taken after subtracting the row max, so it never overflows.
    Cache (softmax(z) [N, V], flat indices n * V + y_n of the targets, w / sum(w)).
    """
    xp = array_namespace(logits)
    num_rows, vocab = logits.shape
    row_max = xp.max(logits, axis=-1, keepdims=True)
    exp_shifted = xp.exp(logits - row_max)
    sum_exp = xp.sum(exp_shifted, axis=-1, keepdims=True)
    log_z = xp.log(sum_exp) + row_max                                     # [N, 1]
    flat_target = xp.arange(num_rows, dtype=labels.dtype) * vocab + labels
    target_logit = xp.take(xp.reshape(logits, (-1,)), flat_target)      # z_n[y_n], [N]
    norm_weights = weights / xp.sum(weights)
    loss = xp.sum(norm_weights * (log_z[:, 0] - target_logit))
    return loss, (exp_shifted / sum_exp, flat_target, norm_weights)


def cross_entropy_backward(cache, backend):
    """dz_n = (softmax(z_n) - onehot(y_n)) * w_n / sum(w)   (for dLoss = 1); returns dz [N, V].

    The one-hot term touches one entry per row, so it is a scatter-add of -w_n / sum(w) at the N flat
    target indices rather than an [N, V] one-hot matrix."""
    probs, flat_target, norm_weights = cache
    xp = array_namespace(probs)
    d_logits = xp.reshape(probs * norm_weights[:, None], (-1, 1))
    d_logits = backend.scatter_add(d_logits, flat_target, -norm_weights[:, None])
    return xp.reshape(d_logits, probs.shape)
