"""Multi-head self-attention with a padding mask on the scores, forward and backward."""
from __future__ import annotations

import math

from array_api_compat import array_namespace

from minibert.ops import (dropout_backward, dropout_forward, linear_backward, linear_forward,
                          softmax_backward, softmax_forward)


def mask_bias(attention_mask, dtype):
    """Additive bias for the scores: 0 where a key is attended (mask 1), the dtype's most negative finite
    number where it is padding (mask 0). [B, T] int -> [B, 1, 1, T], broadcast over heads and queries.
    Finite, not -inf: a fully masked row then becomes uniform instead of NaN."""
    xp = array_namespace(attention_mask)
    blocked = xp.astype(attention_mask == 0, dtype) * xp.finfo(dtype).min
    return blocked[:, None, None, :]


def attention_forward(x, weight_qkv, bias_qkv, weight_out, bias_out, bias_mask, num_heads,
                      dropout_rate, key, backend):
    """Self-attention over x [B*T, H] with A = num_heads heads of size D = H / A:

        [q k v] = x Wqkv + bqkv                          (one fused projection, [B*T, 3H])
        s = (q / sqrt(D)) k^T + mask_bias                 per head, [B, A, T, T]
        p = softmax(s);  p' = dropout(p)
        c = p' v                                          [B, A, T, D] -> heads concatenated [B*T, H]
        y = c Wo + bo

    Weights: Wqkv [H, 3H] (Q | K | V columns), bqkv [3H], Wo [H, H], bo [H]. bias_mask [B, 1, 1, T] comes from
    `mask_bias`. Returns y [B*T, H] and the cache for backward: (x, q / sqrt(D), k, v, p, p', dropout mask,
    c, Wqkv, Wo), with q, k, v [B, A, T, D] and p, p' [B, A, T, T].
    """
    xp = array_namespace(x)
    batch, seq = bias_mask.shape[0], bias_mask.shape[-1]
    hidden = x.shape[1]
    head = hidden // num_heads
    qkv, x_cache = linear_forward(x, weight_qkv, bias_qkv)
    qkv = xp.permute_dims(xp.reshape(qkv, (batch, seq, 3, num_heads, head)), (2, 0, 3, 1, 4))
    q = qkv[0, ...] * (1.0 / math.sqrt(head))
    k, v = qkv[1, ...], qkv[2, ...]
    probs, _ = softmax_forward(q @ xp.matrix_transpose(k) + bias_mask)
    dropped, drop_mask = dropout_forward(probs, dropout_rate, key, backend)
    context = xp.reshape(xp.permute_dims(dropped @ v, (0, 2, 1, 3)), (batch * seq, hidden))
    y, context_cache = linear_forward(context, weight_out, bias_out)
    return y, (x_cache, q, k, v, probs, dropped, drop_mask, context_cache, weight_qkv, weight_out)


def attention_backward(dy, cache):
    """Backward of `attention_forward`, step by step in reverse:

        dc = dy Wo^T;  dWo = c^T dy;  dbo = sum dy
        dp' = dc v^T;  dv = p'^T dc;  dp = dropout_backward(dp')
        ds = p * (dp - sum(dp * p))                       (softmax backward; the mask bias is constant)
        dq = ds k / sqrt(D);  dk = ds^T (q / sqrt(D))
        d[q k v] -> dx = d[qkv] Wqkv^T;  dWqkv = x^T d[qkv];  dbqkv = sum d[qkv]

    Shapes: dc [B*T, H] -> [B, A, T, D]; dp', dp, ds [B, A, T, T]; dq, dk, dv [B, A, T, D], re-stacked into the
    fused layout d[qkv] [B*T, 3H]. Returns dx [B*T, H] and a dict of parameter gradients (qkv.weight [H, 3H],
    qkv.bias [3H], out.weight [H, H], out.bias [H]).
    """
    xp = array_namespace(dy)
    x_cache, q, k, v, probs, dropped, drop_mask, context_cache, weight_qkv, weight_out = cache
    batch, num_heads, seq, head = q.shape
    hidden = num_heads * head
    d_context, d_weight_out, d_bias_out = linear_backward(dy, context_cache, weight_out)
    d_context = xp.permute_dims(xp.reshape(d_context, (batch, seq, num_heads, head)), (0, 2, 1, 3))
    d_dropped = d_context @ xp.matrix_transpose(v)
    dv = xp.matrix_transpose(dropped) @ d_context
    d_scores = softmax_backward(dropout_backward(d_dropped, drop_mask), probs)
    dq = (d_scores @ k) * (1.0 / math.sqrt(head))
    dk = xp.matrix_transpose(d_scores) @ q
    # [B, A, T, D] each -> stacked as [B, T, 3, A, D] in one copy, which is [B*T, 3H] in the fused layout
    d_qkv = xp.reshape(xp.stack([xp.permute_dims(d, (0, 2, 1, 3)) for d in (dq, dk, dv)], axis=2),
                       (batch * seq, 3 * hidden))
    dx, d_weight_qkv, d_bias_qkv = linear_backward(d_qkv, x_cache, weight_qkv)
    return dx, {"qkv.weight": d_weight_qkv, "qkv.bias": d_bias_qkv,
                "out.weight": d_weight_out, "out.bias": d_bias_out}
