# %% [markdown]
# # Walkthrough 2: LayerNorm backward, by hand and by finite differences
#
# `layernorm_forward` / `layernorm_backward` of `minibert/nn/ops.py`: build the Jacobian of `xhat` from its
# formula, check it against finite differences, see the compact backward formula fall out of it, and check the
# whole backward in float64 (and why not float32) with the 4-point stencil of `tests/test_gradcheck.py`.
# Guide: [docs/guide/03-layernorm.md](../docs/guide/03-layernorm.md). Runs on NumPy (float64 everywhere).

# %%
import numpy as np

import backends
from minibert.nn import ops

be = backends.get_backend("numpy")     # NumPy arrays are the backend's arrays: no conversion needed here
rng = np.random.default_rng(0)
N, H, eps = 3, 5, 1e-12
x = rng.standard_normal((N, H)) * 2 + 1
gamma, beta = 1 + 0.3 * rng.standard_normal(H), 0.1 * rng.standard_normal(H)

# %% [markdown]
# Forward: `xhat = (x - mean) * rstd`, `rstd = 1 / sqrt(var + eps)` (biased variance, over the last axis),
# `y = gamma * xhat + beta`. The cache is a named record, `LayerNormCache(xhat, rstd [N, 1], gamma)`.

# %%
y, cache = ops.layernorm_forward(x, gamma, beta, eps)
xhat, rstd = cache.xhat, cache.rstd
print("per row: mean(xhat)", xhat.mean(-1).round(12) + 0.0, " var(xhat)", xhat.var(-1).round(9))
np.testing.assert_allclose(rstd[:, 0], 1 / np.sqrt(x.var(-1) + eps))
np.testing.assert_allclose(xhat.mean(-1), 0, atol=1e-12)
np.testing.assert_allclose(xhat.var(-1), 1, rtol=1e-9)

# %% [markdown]
# The Jacobian of one row. With `d mean / dx_j = 1/H` and `d var / dx_j = 2 (x_j - mean) / H`:
#
#     d xhat_i / d x_j = rstd * (delta_ij - 1/H - xhat_i xhat_j / H)
#
# Check it column by column with central differences.

# %%
row = 0
J = rstd[row, 0] * (np.eye(H) - 1.0 / H - np.outer(xhat[row], xhat[row]) / H)
h = 1e-6
J_numeric = np.empty((H, H))
for j in range(H):
    step = np.zeros(H)
    step[j] = h
    plus = ops.layernorm_forward(x[row:row + 1] + step, gamma, beta, eps)[1].xhat[0]
    minus = ops.layernorm_forward(x[row:row + 1] - step, gamma, beta, eps)[1].xhat[0]
    J_numeric[:, j] = (plus - minus) / (2 * h)
print("max |J - J_numeric| =", np.abs(J - J_numeric).max())
assert np.abs(J - J_numeric).max() < 1e-8
# LayerNorm ignores a shift of x (J @ 1 = 0) and a scaling of x - mean (J @ xhat ~ 0): the gradient below
# has no component along those two directions.
assert np.abs(J @ np.ones(H)).max() < 1e-12 and np.abs(J @ xhat[row]).max() < 1e-9

# %% [markdown]
# Backward. With `g = dy * gamma` (= dL/dxhat), `dx_j = sum_i g_i J_ij`; expanding the three terms of J gives
# the formula of `layernorm_backward`, with no H x H matrix. Like every backward, it returns `(dx, grads)`,
# grads holding the parameters' gradients under local names ("weight" = gamma, "bias" = beta):
#
#     dx = rstd * (g - mean(g) - xhat * mean(g * xhat))      dgamma = sum_rows dy * xhat      dbeta = sum_rows dy

# %%
R = rng.standard_normal((N, H))       # L = sum(y * R), so dL/dy = R
dx, param_grads = ops.layernorm_backward(R, cache)
dgamma, dbeta = param_grads["weight"], param_grads["bias"]
g = R * gamma
np.testing.assert_allclose(dx[row], g[row] @ J, rtol=1e-12, atol=1e-12)
np.testing.assert_allclose(dx, rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True)))
np.testing.assert_allclose(dgamma, (R * xhat).sum(0))
np.testing.assert_allclose(dbeta, R.sum(0))
print("per row: sum(dx)", dx.sum(-1).round(12) + 0.0, " sum(dx * xhat)", (dx * xhat).sum(-1).round(9) + 0.0)
assert np.abs(dx.sum(-1)).max() < 1e-12 and np.abs((dx * xhat).sum(-1)).max() < 1e-9


# %% [markdown]
# Finite differences along random unit directions `d`, with the 4-point central stencil
# `(-L(x+2hd) + 8 L(x+hd) - 8 L(x-hd) + L(x-2hd)) / 12h` (error O(h^4)), compared with `<grad, d>`.

# %%
def relative_errors(dtype, step=1e-4, trials=5):
    inputs = {"x": x, "gamma": gamma, "beta": beta}
    grads = {"x": dx, "gamma": dgamma, "beta": dbeta}
    errors = []
    for name in inputs:
        for _ in range(trials):
            d = rng.standard_normal(inputs[name].shape)
            d /= np.linalg.norm(d)

            def loss(t):
                moved = {k: v.astype(dtype) for k, v in inputs.items()}
                moved[name] = (inputs[name] + t * d).astype(dtype)
                out = ops.layernorm_forward(moved["x"], moved["gamma"], moved["beta"], eps)[0]
                return float(np.sum(out * R.astype(dtype), dtype=dtype))

            numeric = (-loss(2 * step) + 8 * loss(step) - 8 * loss(-step) + loss(-2 * step)) / (12 * step)
            exact = float(np.sum(grads[name] * d))
            errors.append(abs(numeric - exact) / max(abs(numeric), abs(exact)))
    return max(errors)


err64, err32 = relative_errors(np.float64), relative_errors(np.float32)
print(f"worst relative error: float64 {err64:.1e}, float32 {err32:.1e}")
assert err64 < 1e-8          # the test suite asks for 1e-6 on every op and on the whole model
assert err32 > 100 * err64   # float32 rounding (~1e-7 / h) swamps the check: gradient checks run in float64
