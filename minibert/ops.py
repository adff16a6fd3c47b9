"""The building blocks of BERT, each a forward/backward pair written against the Python array API.

Every `*_forward` returns its output and a cache (what its backward needs); every `*_backward` takes the
gradient of the loss with respect to the output and the cache, and returns gradients with respect to the
inputs and parameters. Activations are 2-D `[N, features]` (N = batch * sequence) except inside attention.
Notation: `dX` is dLoss/dX; sums over "rows" run over the N axis.

Nothing here imports an array library: `xp` comes from the arrays, and what the standard lacks
(erf, scatter-add, random numbers) from the backend object.
"""
from __future__ import annotations

import math

from array_api_compat import array_namespace

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_COEF = 0.044715


# --- linear -------------------------------------------------------------------------------------------

def linear_forward(x, weight, bias):
    """y = x W + b.   x [N, I], W [I, O], b [O] -> y [N, O]; cache x."""
    return x @ weight + bias, x


def linear_backward(dy, x, weight):
    """From y = x W + b:  dx = dy W^T [N, I],  dW = x^T dy [I, O],  db = sum_rows dy [O]."""
    xp = array_namespace(dy)
    return dy @ weight.T, x.T @ dy, xp.sum(dy, axis=0)


# --- layer normalisation ----------------------------------------------------------------------------

def layernorm_forward(x, gamma, beta, eps):
    """y = gamma * xhat + beta,  xhat = (x - mean(x)) / sqrt(var(x) + eps), statistics over the last axis.

    x [N, H], gamma/beta [H] -> y [N, H]; cache (xhat, rstd = 1/sqrt(var + eps) [N, 1], gamma).
    """
    xp = array_namespace(x)
    centered = x - xp.mean(x, axis=-1, keepdims=True)
    rstd = 1.0 / xp.sqrt(xp.mean(centered * centered, axis=-1, keepdims=True) + eps)
    xhat = centered * rstd
    return xhat * gamma + beta, (xhat, rstd, gamma)


def layernorm_backward(dy, cache):
    """With g = dy * gamma (dL/dxhat):
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))      (means over the last axis)
        dgamma = sum_rows dy * xhat,  dbeta = sum_rows dy.
    dy [N, H] -> (dx [N, H], dgamma [H], dbeta [H]).
    """
    xp = array_namespace(dy)
    xhat, rstd, gamma = cache
    g = dy * gamma
    dx = rstd * (g - xp.mean(g, axis=-1, keepdims=True) - xhat * xp.mean(g * xhat, axis=-1, keepdims=True))
    return dx, xp.sum(dy * xhat, axis=0), xp.sum(dy, axis=0)


# --- GELU -----------------------------------------------------------------------------------------------

def gelu_forward(x, backend, approximate=False):
    """Exact:  y = x * Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2.
    Tanh approximation (approximate=True):  y = x * (1 + tanh(u)) / 2,  u = sqrt(2/pi) (x + 0.044715 x^3).
    x [N, F] -> y [N, F]; cache (x, Phi(x) or tanh(u)).
    """
    xp = array_namespace(x)
    if approximate:
        t = xp.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_COEF * x * x * x))
        return 0.5 * x * (1.0 + t), (x, t, True)
    cdf = 0.5 * (1.0 + backend.erf(x * SQRT_HALF))
    return x * cdf, (x, cdf, False)


def gelu_backward(dy, cache):
    """Exact:  dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    Tanh:    dy/dx = (1 + t) / 2 + x (1 - t^2) / 2 * sqrt(2/pi) (1 + 3 * 0.044715 x^2),  t = tanh(u).
    dy [N, F] -> dx [N, F] (= dy * dy/dx); cache is (x, Phi(x) or t, approximate) from `gelu_forward`.
    """
    xp = array_namespace(dy)
    x, saved, approximate = cache
    if approximate:
        du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_COEF * x * x)
        return dy * (0.5 * (1.0 + saved) + 0.5 * x * (1.0 - saved * saved) * du_dx)
    return dy * (saved + x * (INV_SQRT_2PI * xp.exp(-0.5 * x * x)))


# --- softmax --------------------------------------------------------------------------------------------

def softmax_forward(scores):
    """p = exp(s - max(s)) / sum(exp(s - max(s))) over the last axis (subtracting the max keeps exp <= 1,
    so scores of any size stay finite). scores [..., K] -> p [..., K]; cache p."""
    xp = array_namespace(scores)
    e = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))
    p = e / xp.sum(e, axis=-1, keepdims=True)
    return p, p


def softmax_backward(dp, p):
    """ds_j = p_j (dp_j - sum_k dp_k p_k)   (the Jacobian diag(p) - p p^T applied to dp).
    dp [..., K], p [..., K] -> ds [..., K]."""
    xp = array_namespace(dp)
    return p * (dp - xp.sum(dp * p, axis=-1, keepdims=True))


# --- dropout --------------------------------------------------------------------------------------------

def dropout_forward(x, rate, key, backend):
    """Inverted dropout: y = x * m / (1 - rate), m ~ Bernoulli(1 - rate) elementwise. Identity when
    `key` is None or rate == 0 (evaluation). x [...] -> y [...] (same shape); cache the scaled mask
    m / (1 - rate) (None for identity)."""
    if key is None or rate == 0.0:
        return x, None
    xp = array_namespace(x)
    keep = backend.uniform(key, x.shape, x.dtype) >= rate
    scaled_mask = xp.astype(keep, x.dtype) * (1.0 / (1.0 - rate))
    return x * scaled_mask, scaled_mask


def dropout_backward(dy, scaled_mask):
    """dx = dy * m / (1 - rate): the same mask that was applied forward. dy [...] -> dx [...]."""
    return dy if scaled_mask is None else dy * scaled_mask


# --- embeddings -----------------------------------------------------------------------------------------

def embedding_forward(ids, table):
    """y[n] = table[ids[n]]: a row gather.  ids [N] int, table [V, H] -> y [N, H]; cache ids."""
    xp = array_namespace(table)
    return xp.take(table, ids, axis=0), ids


def embedding_backward(dy, ids, grad_table, backend):
    """dtable[v] = sum over n with ids[n] == v of dy[n]: a scatter-add that accumulates repeated ids
    (one vectorised call, never a Python loop). dy [N, H], ids [N] -> `grad_table` [V, H] plus the scatter
    (use the returned array: see `Backend.scatter_add`)."""
    return backend.scatter_add(grad_table, ids, dy)
