"""The building blocks of BERT, each a forward/backward pair written against the Python array API.

Every `*_forward` returns its output and a cache, a named record (`typing.NamedTuple`, so JAX treats it as a
pytree) of what its backward needs, weights included. A cache holds arrays only (None where an op saved
nothing): shapes are read from those arrays, and the backend and the config are passed, never stored, so a
cache's leaves are exactly what JAX traces. Every `*_backward` has one shape:

    x_backward(d_out, cache) -> (d_in, grads)

and the two whose gradient is a scatter-add, which the standard lacks (`embedding_backward`, and
`minibert.nn.loss.cross_entropy_backward`), take the backend that supplies it after the cache:
`x_backward(d_out, cache, backend)`. d_out is dLoss/dOutput, d_in is dLoss/dInput (None where the input is
integer ids), and grads is a dict of the op's parameter gradients under local names ("weight", "bias"), empty
for ops without parameters. Backwards read cache fields by name, never by position, so a reordered field fails
loudly instead of silently.
Activations are 2-D `[N, features]` (N = batch * sequence) except inside attention.
Notation: `dX` is dLoss/dX; sums over "rows" run over the N axis.

Nothing here imports an array library: `xp` comes from the arrays, and what the standard lacks
(erf, scatter-add, random numbers) from the backend object.

Mixed precision (`minibert.nn.precision`) needs no flag here: the dtypes carry it. A linear layer multiplies in its
weight's dtype (bfloat16 or float16 when the policy cast the weight, else the parameters' own), casting its input
to it; LayerNorm computes in its scale's dtype (the float32 master, never cast); softmax and the loss compute in at
least float32 whatever their input (`float32_at_least`); GELU and dropout follow their input. In float32 and
float64 every cast is a no-op.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

from array_api_compat import array_namespace

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_COEF = 0.044715


def to_dtype(x, dtype):
    """x in `dtype`: x itself when it already is (no copy), else a cast copy."""
    return x if x.dtype == dtype else array_namespace(x).astype(x, dtype)


def float32_at_least(x):
    """x in float32 when it is a narrower float (bfloat16, float16); float32 and float64 arrays unchanged."""
    xp = array_namespace(x)
    return to_dtype(x, wide_dtype(xp, x.dtype))


def wide_dtype(xp, dtype):
    """`dtype` when it is float32 or float64, else float32 (the dtype narrow floats compute in)."""
    return dtype if dtype == xp.float32 or dtype == xp.float64 else xp.float32


# --- linear -------------------------------------------------------------------------------------------

class LinearCache(NamedTuple):
    x: Any          # input [N, I]
    weight: Any     # W [I, O]


def linear_forward(x, weight, bias):
    """y = x W + b, computed in W's dtype (x and b cast to it).   x [N, I], W [I, O], b [O] -> y [N, O];
    cache (x as multiplied, W).
    The bias is added with `+=`: in place on a backend with writeable arrays (y is a fresh array nothing else
    holds), saving a pass over y and its temporary (NumPy, [4096, 1024]: 11.9 -> 9.3 ms); a rebinding on JAX."""
    x = to_dtype(x, weight.dtype)
    y = x @ weight
    y += to_dtype(bias, y.dtype)
    return y, LinearCache(x=x, weight=weight)


def linear_backward(dy, cache: LinearCache):
    """From y = x W + b:  dx = dy W^T [N, I],  dW = x^T dy [I, O],  db = sum_rows dy [O].
    The two products run in W's dtype (dy cast to it); db sums dy as it came (float32 under mixed precision).
    Returns (dx, {"weight": dW, "bias": db})."""
    xp = array_namespace(dy)
    dy_w = to_dtype(dy, cache.weight.dtype)
    # W^T [O, I], x^T [I, N]
    return dy_w @ cache.weight.T, {"weight": cache.x.T @ dy_w, "bias": xp.sum(dy, axis=0)}


# --- layer normalisation ----------------------------------------------------------------------------

class LayerNormCache(NamedTuple):
    xhat: Any       # normalised input [N, H]
    rstd: Any       # 1 / sqrt(var + eps) [N, 1]
    gamma: Any      # scale [H]


def layernorm_forward(x, gamma, beta, eps):
    """y = gamma * xhat + beta,  xhat = (x - mean(x)) / sqrt(var(x) + eps), statistics over the last axis.

    x [N, H], gamma/beta [H] -> y [N, H]; cache (xhat, rstd = 1/sqrt(var + eps) [N, 1], gamma).
    Computed in gamma's dtype (x cast to it): the statistics of a bfloat16 input are taken in float32.
    """
    xp = array_namespace(x)
    x = to_dtype(x, gamma.dtype)
    centered = x - xp.mean(x, axis=-1, keepdims=True)
    rstd = 1.0 / xp.sqrt(xp.mean(centered * centered, axis=-1, keepdims=True) + eps)
    xhat = centered * rstd
    return xhat * gamma + beta, LayerNormCache(xhat=xhat, rstd=rstd, gamma=gamma)


def layernorm_backward(dy, cache: LayerNormCache):
    """With g = dy * gamma (dL/dxhat):
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))      (means over the last axis)
        dgamma = sum_rows dy * xhat,  dbeta = sum_rows dy.
    dy [N, H] -> (dx [N, H], {"weight": dgamma [H], "bias": dbeta [H]}).
    """
    xp = array_namespace(dy)
    xhat = cache.xhat
    dy = to_dtype(dy, cache.gamma.dtype)
    g = dy * cache.gamma
    dx = cache.rstd * (g - xp.mean(g, axis=-1, keepdims=True) - xhat * xp.mean(g * xhat, axis=-1, keepdims=True))
    return dx, {"weight": xp.sum(dy * xhat, axis=0), "bias": xp.sum(dy, axis=0)}


# --- GELU -----------------------------------------------------------------------------------------------

class GeluCache(NamedTuple):
    x: Any          # input [N, F]
    cdf: Any        # Phi(x) [N, F] (exact GELU), else None
    tanh: Any       # tanh(u) [N, F] (tanh approximation), else None: which one is set says which formula ran


def gelu_forward(x, backend, approximate=False):
    """Exact:  y = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2.
    Tanh approximation (approximate=True):  y = x * (1 + tanh(u)) / 2,  u = sqrt(2/pi) (x + 0.044715 x^3).
    x [N, F] -> y [N, F]; cache (x, and Phi(x) or tanh(u), whichever formula ran). `backend` supplies erf.
    Computed in x's dtype, bfloat16 too under mixed precision (as torch.autocast runs it; jax and torch evaluate
    each bfloat16 element in float32 and round the result, and a backend whose erf cannot, widens it there).
    """
    xp = array_namespace(x)
    if approximate:
        t = xp.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_COEF * x * x * x))
        return 0.5 * x * (1.0 + t), GeluCache(x=x, cdf=None, tanh=t)
    cdf = 0.5 * (1.0 + backend.erf(x * SQRT_HALF))
    return x * cdf, GeluCache(x=x, cdf=cdf, tanh=None)


def gelu_backward(dy, cache: GeluCache):
    """Exact:  dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    Tanh:    dy/dx = (1 + t) / 2 + x (1 - t^2) / 2 * sqrt(2/pi) (1 + 3 * 0.044715 x^2),  t = tanh(u).
    dy [N, F] -> (dx [N, F] = dy * dy/dx, {}).
    """
    xp = array_namespace(dy)
    x = cache.x
    if cache.tanh is not None:
        t = cache.tanh
        du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_COEF * x * x)
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx), {}
    return dy * (cache.cdf + x * (INV_SQRT_2PI * xp.exp(-0.5 * x * x))), {}


# --- softmax --------------------------------------------------------------------------------------------

class SoftmaxCache(NamedTuple):
    probs: Any      # p [..., K]


def softmax_forward(scores):
    """p = exp(s - max(s)) / sum(exp(s - max(s))) over the last axis (subtracting the max keeps exp <= 1,
    so scores of any size stay finite). scores [..., K] -> p [..., K] in at least float32; cache (p)."""
    xp = array_namespace(scores)
    scores = float32_at_least(scores)
    e = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))
    p = e / xp.sum(e, axis=-1, keepdims=True)
    return p, SoftmaxCache(probs=p)


def softmax_backward(dp, cache: SoftmaxCache):
    """ds_j = p_j (dp_j - sum_k dp_k p_k)   (the Jacobian diag(p) - p p^T applied to dp).
    dp [..., K] -> (ds [..., K] in p's dtype, {})."""
    p = cache.probs
    xp = array_namespace(dp)
    dp = to_dtype(dp, p.dtype)
    return p * (dp - xp.sum(dp * p, axis=-1, keepdims=True)), {}


# --- dropout --------------------------------------------------------------------------------------------

class DropoutCache(NamedTuple):
    scaled_mask: Any    # m / (1 - rate), same shape as x; None when dropout was the identity


def dropout_forward(x, rate, key, backend):
    """Inverted dropout: y = x * m / (1 - rate), m ~ Bernoulli(1 - rate) elementwise. Identity when
    `key` is None or rate == 0 (evaluation). x [...] -> y [...] (same shape); cache the scaled mask
    m / (1 - rate) (None for identity)."""
    if key is None or rate == 0.0:
        return x, DropoutCache(scaled_mask=None)
    xp = array_namespace(x)
    keep = backend.uniform(key, x.shape, wide_dtype(xp, x.dtype)) >= rate        # the same draws in every precision
    scaled_mask = xp.astype(keep, x.dtype) * (1.0 / (1.0 - rate))
    return x * scaled_mask, DropoutCache(scaled_mask=scaled_mask)


def dropout_backward(dy, cache: DropoutCache):
    """dx = dy * m / (1 - rate): the same mask that was applied forward. dy [...] -> (dx [...], {})."""
    return (dy if cache.scaled_mask is None else dy * cache.scaled_mask), {}


# --- embeddings -----------------------------------------------------------------------------------------

class EmbeddingCache(NamedTuple):
    ids: Any        # looked-up rows, any shape (e.g. [B, T]) int; the gather ran over them in row-major order
    table: Any      # the table [V, H] (its shape makes the gradient)


def embedding_forward(ids, table):
    """y[n] = table[ids_flat[n]]: a row gather.  ids [...] int (N of them, any shape), table [V, H] -> y [N, H]
    in ids' row-major order; cache (ids as given, so their shape survives, and table)."""
    xp = array_namespace(table)
    return xp.take(table, xp.reshape(ids, (-1,)), axis=0), EmbeddingCache(ids=ids, table=table)   # [...] -> [N]


def embedding_backward(dy, cache: EmbeddingCache, backend):
    """dtable[v] = sum over n with ids_flat[n] == v of dy[n]: a scatter-add into zeros that accumulates repeated
    ids (one vectorised call to `backend.scatter_add`, never a Python loop).
    dy [N, H] -> (None (ids have no gradient), {"weight": dtable [V, H] in dy's dtype})."""
    xp = array_namespace(dy)
    zeros = xp.zeros(cache.table.shape, dtype=dy.dtype, device=backend.device)
    return None, {"weight": backend.scatter_add(zeros, xp.reshape(cache.ids, (-1,)), dy)}   # ids [...] -> [N]
