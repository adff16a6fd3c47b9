"""Classification heads on the encoder, forward and backward by hand, as transformers' BERT heads:

    sequence (BertForSequenceClassification):  pooled = tanh(h[:, 0] Wp + bp);  logits = dropout(pooled) Wc + bc
    token (BertForTokenClassification):        logits = dropout(h) Wc + bc   at every position
    losses:  class cross-entropy over the labelled rows (label -100 ignored, mean over the rest: the masked-LM
             `minibert.nn.loss.cross_entropy_*` with C classes in place of V words), or mean squared error for
             regression (num_labels == 1).

Every `*_forward` returns (output, cache) with the cache a NamedTuple of the arrays the backward needs (the
weights included; shapes are read from them, nothing else is stored); every `*_backward(d_out, cache)` returns
(d_input, grads), grads a dict named relative to the head's parameters ("pooler.dense.weight", "classifier.bias",
...). Losses take d_out = dLoss (normally 1.0).

Nothing here imports an array library: `xp` comes from the arrays, random numbers from the backend object.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import array_namespace

from minibert.nn.ops import (DropoutCache, LinearCache, dropout_backward, dropout_forward, float32_at_least,
                          linear_backward, linear_forward)

# --- pooler: dense + tanh on the [CLS] row ----------------------------------------------------------------------

class PoolerCache(NamedTuple):
    dense: LinearCache   # the dense layer's input (the [CLS] rows [B, H]) and Wp [H, H]
    pooled: Any          # tanh output [B, H]; tanh' = 1 - pooled^2


def pooler_forward(cls_rows, weight, bias):
    """pooled = tanh(x Wp + bp).   x [B, H] (the [CLS] rows), Wp [H, H], bp [H] -> pooled [B, H]."""
    xp = array_namespace(cls_rows)
    pre, dense_cache = linear_forward(cls_rows, weight, bias)
    pooled = xp.tanh(pre)
    return pooled, PoolerCache(dense=dense_cache, pooled=pooled)


def pooler_backward(d_pooled, cache: PoolerCache):
    """From pooled = tanh(u), u = x Wp + bp:  du = d_pooled * (1 - pooled^2)   (tanh' = 1 - tanh^2), then
    dx = du Wp^T [B, H],  dWp = x^T du [H, H],  dbp = sum_rows du [H]."""
    d_pre = d_pooled * (1.0 - cache.pooled * cache.pooled)
    dx, dense_grads = linear_backward(d_pre, cache.dense)
    return dx, {"dense." + name: value for name, value in dense_grads.items()}


# --- classifier: dropout + dense to num_labels ----------------------------------------------------------------------

class ClassifierCache(NamedTuple):
    dropout: DropoutCache   # the scaled mask m / (1 - rate) [N, H], or None (no dropout)
    dense: LinearCache      # the dropped input [N, H] and Wc [H, C]


def classifier_forward(x, weight, bias, rate, key, backend):
    """logits = dropout(x) Wc + bc.   x [N, H], Wc [H, C], bc [C] -> logits [N, C]. Dropout (inverted, rate
    `rate`) only when `key` is given."""
    dropped, dropout_cache = dropout_forward(x, rate, key, backend)
    logits, dense_cache = linear_forward(dropped, weight, bias)
    return logits, ClassifierCache(dropout=dropout_cache, dense=dense_cache)


def classifier_backward(d_logits, cache: ClassifierCache):
    """From logits = x' Wc + bc, x' = x * m / (1 - rate):  dx' = d_logits Wc^T,  dWc = x'^T d_logits [H, C],
    dbc = sum_rows d_logits [C],  dx = dx' * m / (1 - rate)  [N, H]."""
    d_dropped, grads = linear_backward(d_logits, cache.dense)
    dx, _ = dropout_backward(d_dropped, cache.dropout)
    return dx, grads


# --- the two heads on the encoder's output --------------------------------------------------------------------------

def cls_rows(hidden, seq):
    """The [CLS] row (position 0) of each sequence: hidden [B*T, H] -> x [B, H], the sequence head's input."""
    xp = array_namespace(hidden)
    width = hidden.shape[-1]
    return xp.reshape(hidden, (-1, seq, width))[:, 0, :]                        # [B*T, H] -> [B, T, H] -> [B, H]


def cls_rows_gradient(d_cls, seq):
    """The gradient through `cls_rows`: only the [CLS] rows were read, so d hidden is d x at position 0 of each
    sequence and 0 at the other T - 1.   d x [B, H] -> d hidden [B*T, H]."""
    xp = array_namespace(d_cls)
    batch, width = d_cls.shape
    rest = xp.broadcast_to(xp.zeros_like(d_cls)[:, None, :], (batch, seq - 1, width))
    d_hidden = xp.concat([d_cls[:, None, :], rest], axis=1)                    # [B, 1, H] + [B, T-1, H] -> [B, T, H]
    return xp.reshape(d_hidden, (batch * seq, width))                           # [B, T, H] -> [B*T, H]


class SequenceHeadCache(NamedTuple):
    pooler: PoolerCache
    classifier: ClassifierCache


def sequence_head_forward(params, cls_hidden, rate, key, backend):
    """BertForSequenceClassification's head on the [CLS] rows (`cls_rows`): x [B, H] -> logits [B, C].

        pooled = tanh(x Wp + bp);  logits = dropout(pooled) Wc + bc
    """
    pooled, pooler_cache = pooler_forward(cls_hidden, params["pooler.dense.weight"], params["pooler.dense.bias"])
    logits, classifier_cache = classifier_forward(pooled, params["classifier.weight"], params["classifier.bias"],
                                                  rate, key, backend)
    return logits, SequenceHeadCache(pooler=pooler_cache, classifier=classifier_cache)


def sequence_head_backward(d_logits, cache: SequenceHeadCache):
    """d logits [B, C] -> (d x [B, H] at the [CLS] rows (`cls_rows_gradient` spreads it over [B*T, H]),
    head grads)."""
    d_pooled, classifier_grads = classifier_backward(d_logits, cache.classifier)
    d_cls, pooler_grads = pooler_backward(d_pooled, cache.pooler)
    grads = {"pooler." + name: value for name, value in pooler_grads.items()}
    grads.update({"classifier." + name: value for name, value in classifier_grads.items()})
    return d_cls, grads


def token_head_forward(params, hidden, rate, key, backend):
    """BertForTokenClassification's head: hidden [B*T, H] -> logits [B*T, C] = dropout(h) Wc + bc, every row."""
    return classifier_forward(hidden, params["classifier.weight"], params["classifier.bias"], rate, key, backend)


def token_head_backward(d_logits, cache: ClassifierCache):
    """d logits [B*T, C] -> (d hidden [B*T, H], head grads): `classifier_backward` on every row."""
    d_hidden, grads = classifier_backward(d_logits, cache)
    return d_hidden, {"classifier." + name: value for name, value in grads.items()}


# --- losses ---------------------------------------------------------------------------------------------------------

class MseCache(NamedTuple):
    diff: Any            # z - y [N]
    norm_weights: Any    # w / D [N]


def mse_forward(logits, targets, weights, normaliser=None):
    """loss = sum_n w_n (z_n - y_n)^2 / D,  D = normaliser, or sum_n w_n when None (transformers' MSELoss over
    the labelled rows; a step over several micro-batches or devices passes D = the rows of the whole step).

    logits z [N, 1] (num_labels == 1), targets y [N] float, weights w [N] (0 for rows without a label).
    Computed in at least float32."""
    xp = array_namespace(logits)
    diff = xp.reshape(float32_at_least(logits), (-1,)) - targets                 # [N, 1] -> [N]
    norm_weights = weights / (xp.sum(weights) if normaliser is None else normaliser)
    return xp.sum(norm_weights * diff * diff), MseCache(diff=diff, norm_weights=norm_weights)


def mse_backward(d_loss, cache: MseCache):
    """dz_n = d_loss * 2 w_n (z_n - y_n) / D   -> (dz [N, 1], {})."""
    d_logits = d_loss * 2.0 * cache.norm_weights * cache.diff
    return d_logits[:, None], {}                               # [N] -> [N, 1]

