"""Multi-head self-attention with a padding mask on the scores, forward and backward."""
from __future__ import annotations

import math
from typing import Any, NamedTuple

from array_api_compat import array_namespace

from minibert.nn.ops import (DropoutCache, LinearCache, SoftmaxCache, dropout_backward, dropout_forward,
                          float32_at_least, linear_backward, linear_forward, softmax_backward, softmax_forward,
                          to_dtype)


class AttentionCache(NamedTuple):
    qkv: LinearCache            # the fused projection's input x [B*T, H] and Wqkv [H, 3H]
    q: Any                      # q / sqrt(D) [B, A, T, D]
    k: Any                      # [B, A, T, D]
    v: Any                      # [B, A, T, D]
    softmax: SoftmaxCache       # p [B, A, T, T]
    dropped: Any                # p' = dropout(p) [B, A, T, T], in v's dtype (as multiplied)
    dropout: DropoutCache       # the mask of p'
    out: LinearCache            # the output projection's input c [B*T, H] and Wo [H, H]


def mask_bias(attention_mask, dtype):
    """Additive bias for the scores: 0 where a key is attended (mask 1), the dtype's most negative finite
    number where it is padding (mask 0). [B, T] int -> [B, 1, 1, T], broadcast over heads and queries.
    Finite, not -inf: a fully masked row then becomes uniform instead of NaN."""
    xp = array_namespace(attention_mask)
    blocked = xp.astype(attention_mask == 0, dtype) * xp.finfo(dtype).min
    return blocked[:, None, None, :]                                # [B, T] -> [B, 1, 1, T]


def attention_forward(x, weight_qkv, bias_qkv, weight_out, bias_out, bias_mask, num_heads,
                      dropout_rate, key, backend):
    """Self-attention over x [B*T, H] with A = num_heads heads of size D = H / A:

        [q k v] = x Wqkv + bqkv                          (one fused projection, [B*T, 3H])
        s = (q / sqrt(D)) k^T + mask_bias                 per head, [B, A, T, T]
        p = softmax(s);  p' = dropout(p)
        c = p' v                                          [B, A, T, D] -> heads concatenated [B*T, H]
        y = c Wo + bo

    Weights: Wqkv [H, 3H] (Q | K | V columns), bqkv [3H], Wo [H, H], bo [H]. bias_mask [B, 1, 1, T] comes from
    `mask_bias`. Returns y [B*T, H] and an `AttentionCache` for backward.
    Under mixed precision the four products run in the projections' dtype (bfloat16/float16) and the scores, the
    mask and the softmax in float32 (p' is cast back for p' v), as torch.autocast runs eager attention.
    """
    xp = array_namespace(x)
    batch, seq = bias_mask.shape[0], bias_mask.shape[-1]
    hidden = x.shape[1]
    head = hidden // num_heads
    qkv, qkv_cache = linear_forward(x, weight_qkv, bias_qkv)
    # [B*T, 3H] -> [B, T, 3, A, D] -> [3, B, A, T, D]
    qkv = xp.permute_dims(xp.reshape(qkv, (batch, seq, 3, num_heads, head)), (2, 0, 3, 1, 4))
    q = qkv[0, ...] * (1.0 / math.sqrt(head))
    k, v = qkv[1, ...], qkv[2, ...]
    # k: [B, A, T, D] -> k^T [B, A, D, T]; scores [B, A, T, T]
    scores = float32_at_least(q @ xp.matrix_transpose(k))
    scores += bias_mask                                             # in place where writeable (as linear_forward)
    probs, softmax_cache = softmax_forward(scores)
    dropped, drop_cache = dropout_forward(probs, dropout_rate, key, backend)
    dropped = to_dtype(dropped, v.dtype)
    # p' v [B, A, T, D] -> [B, T, A, D] -> [B*T, H] (heads concatenated)
    context = xp.reshape(xp.permute_dims(dropped @ v, (0, 2, 1, 3)), (batch * seq, hidden))
    y, out_cache = linear_forward(context, weight_out, bias_out)
    return y, AttentionCache(qkv=qkv_cache, q=q, k=k, v=v, softmax=softmax_cache, dropped=dropped,
                             dropout=drop_cache, out=out_cache)


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
    q, k, v = cache.q, cache.k, cache.v
    batch, num_heads, seq, head = q.shape
    hidden = num_heads * head
    d_context, out_grads = linear_backward(dy, cache.out)
    # [B*T, H] -> [B, T, A, D] -> [B, A, T, D]
    d_context = xp.permute_dims(xp.reshape(d_context, (batch, seq, num_heads, head)), (0, 2, 1, 3))
    d_dropped = d_context @ xp.matrix_transpose(v)                  # v^T [B, A, D, T]; dp' [B, A, T, T]
    dv = xp.matrix_transpose(cache.dropped) @ d_context             # p'^T [B, A, T, T]; dv [B, A, T, D]
    d_probs, _ = dropout_backward(d_dropped, cache.dropout)
    d_scores, _ = softmax_backward(d_probs, cache.softmax)
    d_scores = to_dtype(d_scores, q.dtype)                          # float32 -> the products' dtype
    dq = (d_scores @ k) * (1.0 / math.sqrt(head))
    dk = xp.matrix_transpose(d_scores) @ q                          # ds^T [B, A, T, T]; dk [B, A, T, D]
    # [B, A, T, D] each -> [B, T, A, D] each -> stacked [B, T, 3, A, D] in one copy -> [B*T, 3H] (fused layout)
    d_qkv = xp.reshape(xp.stack([xp.permute_dims(d, (0, 2, 1, 3)) for d in (dq, dk, dv)], axis=2),
                       (batch * seq, 3 * hidden))
    dx, qkv_grads = linear_backward(d_qkv, cache.qkv)
    return dx, {"qkv.weight": qkv_grads["weight"], "qkv.bias": qkv_grads["bias"],
                "out.weight": out_grads["weight"], "out.bias": out_grads["bias"]}
