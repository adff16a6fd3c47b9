"""Classification heads on the encoder, forward and backward by hand, as transformers' BERT heads:

    sequence (BertForSequenceClassification):  pooled = tanh(h[:, 0] Wp + bp);  logits = dropout(pooled) Wc + bc
    token (BertForTokenClassification):        logits = dropout(h) Wc + bc   at every position
    losses:  class cross-entropy over the labelled rows (label -100 ignored, mean over the rest), or mean squared
             error for regression (num_labels == 1).

Every `*_forward` returns (output, cache) with the cache a NamedTuple holding what the backward needs (the weights
included); every `*_backward(d_out, cache)` returns (d_input, grads), grads a dict named relative to the head's
parameters ("pooler.dense.weight", "classifier.bias", ...). Losses take d_out = dLoss (normally 1.0).

Nothing here imports an array library: `xp` comes from the arrays, random numbers from the backend object.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import array_namespace

from minibert.loss import cross_entropy_backward, cross_entropy_forward
from minibert.ops import dropout_backward, dropout_forward, linear_backward, linear_forward

# --- pooler: dense + tanh on the [CLS] row ----------------------------------------------------------------------

class PoolerCache(NamedTuple):
    x: Any           # the [CLS] rows [B, H] (the dense layer's input)
    weight: Any      # Wp [H, H]
    pooled: Any      # tanh output [B, H]; tanh' = 1 - pooled^2


def pooler_forward(cls_rows, weight, bias):
    """pooled = tanh(x Wp + bp).   x [B, H] (the [CLS] rows), Wp [H, H], bp [H] -> pooled [B, H]."""
    xp = array_namespace(cls_rows)
    pre, x = linear_forward(cls_rows, weight, bias)
    pooled = xp.tanh(pre)
    return pooled, PoolerCache(x, weight, pooled)


def pooler_backward(d_pooled, cache: PoolerCache):
    """From pooled = tanh(u), u = x Wp + bp:  du = d_pooled * (1 - pooled^2)   (tanh' = 1 - tanh^2), then
    dx = du Wp^T [B, H],  dWp = x^T du [H, H],  dbp = sum_rows du [H]."""
    d_pre = d_pooled * (1.0 - cache.pooled * cache.pooled)
    dx, d_weight, d_bias = linear_backward(d_pre, cache.x, cache.weight)
    return dx, {"dense.weight": d_weight, "dense.bias": d_bias}


# --- classifier: dropout + dense to num_labels ----------------------------------------------------------------------

class ClassifierCache(NamedTuple):
    mask: Any        # dropout's scaled mask m / (1 - rate) [N, H], or None (no dropout)
    x: Any           # the dropped input [N, H] (the dense layer's input)
    weight: Any      # Wc [H, C]


def classifier_forward(x, weight, bias, rate, key, backend):
    """logits = dropout(x) Wc + bc.   x [N, H], Wc [H, C], bc [C] -> logits [N, C]. Dropout (inverted, rate
    `rate`) only when `key` is given."""
    dropped, mask = dropout_forward(x, rate, key, backend)
    logits, dropped = linear_forward(dropped, weight, bias)
    return logits, ClassifierCache(mask, dropped, weight)


def classifier_backward(d_logits, cache: ClassifierCache):
    """From logits = x' Wc + bc, x' = x * m / (1 - rate):  dx' = d_logits Wc^T,  dWc = x'^T d_logits [H, C],
    dbc = sum_rows d_logits [C],  dx = dx' * m / (1 - rate)  [N, H]."""
    d_dropped, d_weight, d_bias = linear_backward(d_logits, cache.x, cache.weight)
    return dropout_backward(d_dropped, cache.mask), {"weight": d_weight, "bias": d_bias}


# --- the two heads on the encoder's output --------------------------------------------------------------------------

class SequenceHeadCache(NamedTuple):
    batch: int
    seq: int
    pooler: PoolerCache
    classifier: ClassifierCache


def sequence_head_forward(params, hidden, batch, seq, rate, key, backend):
    """BertForSequenceClassification's head: hidden [B*T, H] -> logits [B, C].

        x = h[:, 0]  ([CLS]);  pooled = tanh(x Wp + bp);  logits = dropout(pooled) Wc + bc
    """
    xp = array_namespace(hidden)
    cls_rows = xp.reshape(hidden, (batch, seq, hidden.shape[-1]))[:, 0, :]      # [B*T, H] -> [B, T, H] -> [B, H]
    pooled, pooler_cache = pooler_forward(cls_rows, params["pooler.dense.weight"], params["pooler.dense.bias"])
    logits, classifier_cache = classifier_forward(pooled, params["classifier.weight"], params["classifier.bias"],
                                                  rate, key, backend)
    return logits, SequenceHeadCache(batch, seq, pooler_cache, classifier_cache)


def sequence_head_backward(d_logits, cache: SequenceHeadCache):
    """d logits [B, C] -> (d hidden [B*T, H], head grads). Only the [CLS] rows feed the head, so d hidden is
    d x at position 0 of each sequence and 0 at every other position."""
    xp = array_namespace(d_logits)
    d_pooled, classifier_grads = classifier_backward(d_logits, cache.classifier)
    d_cls, pooler_grads = pooler_backward(d_pooled, cache.pooler)
    hidden = d_cls.shape[-1]
    rest = xp.broadcast_to(xp.zeros_like(d_cls)[:, None, :], (cache.batch, cache.seq - 1, hidden))
    d_hidden = xp.concat([d_cls[:, None, :], rest], axis=1)                    # [B, 1, H] + [B, T-1, H] -> [B, T, H]
    d_hidden = xp.reshape(d_hidden, (cache.batch * cache.seq, hidden))          # [B, T, H] -> [B*T, H]
    grads = {"pooler." + name: value for name, value in pooler_grads.items()}
    grads.update({"classifier." + name: value for name, value in classifier_grads.items()})
    return d_hidden, grads


def token_head_forward(params, hidden, rate, key, backend):
    """BertForTokenClassification's head: hidden [B*T, H] -> logits [B*T, C] = dropout(h) Wc + bc, every row."""
    return classifier_forward(hidden, params["classifier.weight"], params["classifier.bias"], rate, key, backend)


def token_head_backward(d_logits, cache: ClassifierCache):
    """d logits [B*T, C] -> (d hidden [B*T, H], head grads): `classifier_backward` on every row."""
    d_hidden, grads = classifier_backward(d_logits, cache)
    return d_hidden, {"classifier." + name: value for name, value in grads.items()}


# --- losses ---------------------------------------------------------------------------------------------------------

class ClassLossCache(NamedTuple):
    cross_entropy: tuple   # `minibert.loss.cross_entropy_forward`'s cache (softmax, flat targets, w / sum w)
    backend: Any           # for the scatter-add of the one-hot term


def class_cross_entropy_forward(logits, targets, weights, backend):
    """loss = sum_n w_n (logsumexp(z_n) - z_n[y_n]) / sum_n w_n   (`minibert.loss.cross_entropy_forward`).

    logits z [N, C], targets y [N] int in [0, C), weights w [N]: 1 at a labelled row, 0 where the label was
    -100 (its target is then any valid class: the host batch puts 0 there): the mean over the labelled rows,
    transformers' CrossEntropyLoss(ignore_index=-100)."""
    loss, cache = cross_entropy_forward(logits, targets, weights)
    return loss, ClassLossCache(cache, backend)


def class_cross_entropy_backward(d_loss, cache: ClassLossCache):
    """dz_n = d_loss * (softmax(z_n) - onehot(y_n)) * w_n / sum(w)   -> (dz [N, C], {})."""
    return d_loss * cross_entropy_backward(cache.cross_entropy, cache.backend), {}


class MseCache(NamedTuple):
    diff: Any            # z - y [N]
    norm_weights: Any    # w / sum(w) [N]


def mse_forward(logits, targets, weights):
    """loss = sum_n w_n (z_n - y_n)^2 / sum_n w_n   (transformers' MSELoss over the labelled rows).

    logits z [N, 1] (num_labels == 1), targets y [N] float, weights w [N] (0 for rows without a label)."""
    xp = array_namespace(logits)
    diff = xp.reshape(logits, (-1,)) - targets                 # [N, 1] -> [N]
    norm_weights = weights / xp.sum(weights)
    return xp.sum(norm_weights * diff * diff), MseCache(diff, norm_weights)


def mse_backward(d_loss, cache: MseCache):
    """dz_n = d_loss * 2 w_n (z_n - y_n) / sum(w)   -> (dz [N, 1], {})."""
    d_logits = d_loss * 2.0 * cache.norm_weights * cache.diff
    return d_logits[:, None], {}                               # [N] -> [N, 1]

