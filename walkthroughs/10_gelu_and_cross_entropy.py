# %% [markdown]
# # Walkthrough 10: GELU and the masked cross-entropy, forward and backward
#
# Two ops with a derivation behind their backward. GELU (chapter 4): y = x Phi(x), exact with erf or with the tanh
# approximation, dy/dx = Phi(x) + x phi(x). The masked-LM loss (chapter 6): the mean negative log-likelihood over
# the labelled rows only, whose gradient is (softmax(z) - onehot(y)) w / sum(w): padding rows (weight 0) get none.
# Each is checked here against central differences in float64. Guides:
# [docs/guide/04-gelu.md](../docs/guide/04-gelu.md), [docs/guide/06-cross-entropy.md](../docs/guide/06-cross-entropy.md).

# %%
import math

import numpy as np

import backends
from minibert.nn.loss import cross_entropy_backward, cross_entropy_forward
from minibert.nn.ops import gelu_backward, gelu_forward

backend = backends.get_backend("numpy")
x = np.linspace(-4.0, 4.0, 17)

# %% [markdown]
# GELU's two formulas side by side: on [-4, 4] the tanh approximation stays within 5e-4 of the exact curve, which
# is why a BERT checkpoint trained with one runs with the other (chapter 4 measures what the difference does).

# %%
exact, exact_cache = gelu_forward(x, backend)
approx, approx_cache = gelu_forward(x, backend, approximate=True)
phi = 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x]))
np.testing.assert_allclose(exact, x * phi, rtol=1e-12, atol=1e-15)
print("   x    exact GELU   tanh approx   difference")
for v, a, b in zip(x[::4], exact[::4], approx[::4]):
    print(f"{v:5.1f}  {a:11.6f}  {b:12.6f}  {b - a:+.2e}")
gap = np.abs(approx - exact).max()
print(f"largest |tanh - exact| on [-4, 4]: {gap:.1e}")
assert gap < 5e-4

# %% [markdown]
# The backward of both, against (f(x + e) - f(x - e)) / 2e with e = 1e-6.

# %%
ones = np.ones_like(x)
for name, cache, approximate in (("exact", exact_cache, False), ("tanh", approx_cache, True)):
    by_hand, _ = gelu_backward(ones, cache)
    numeric = (gelu_forward(x + 1e-6, backend, approximate)[0] - gelu_forward(x - 1e-6, backend, approximate)[0]) / 2e-6
    error = np.abs(by_hand - numeric).max()
    print(f"GELU {name:5} derivative: largest difference from finite differences {error:.1e}")
    assert error < 1e-8
print("GELU backward == finite differences")

# %% [markdown]
# Cross-entropy over 5 rows of logits, the last two padding (weight 0). The loss is the mean over the 3 real rows;
# the gradient by hand, softmax minus one-hot scaled by w / sum(w), is 0 on the padding rows.

# %%
rng = np.random.default_rng(0)
logits = rng.normal(0.0, 2.0, (5, 7))
targets = np.array([3, 0, 6, 1, 2])
weights = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
loss, cache = cross_entropy_forward(logits, targets, weights)
log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
expected = -log_probs[np.arange(3), targets[:3]].mean()
print(f"loss {float(loss):.6f} = mean NLL of the 3 real rows {expected:.6f}")
assert abs(float(loss) - expected) < 1e-12
d_logits, _ = cross_entropy_backward(1.0, cache, backend)
probs = np.exp(log_probs)
onehot = np.eye(7)[targets]
np.testing.assert_allclose(d_logits, (probs - onehot) * weights[:, None] / weights.sum(), atol=1e-15)
assert not d_logits[3:].any()
print("gradient == (softmax - onehot) * w / sum(w); padding rows get 0")

# %% [markdown]
# And against finite differences at every logit.

# %%
numeric = np.zeros_like(logits)
for index in np.ndindex(*logits.shape):
    for sign in (1, -1):
        moved = logits.copy()
        moved[index] += sign * 1e-6
        numeric[index] += sign * float(cross_entropy_forward(moved, targets, weights)[0]) / 2e-6
error = np.abs(numeric - d_logits).max()
print(f"largest difference from finite differences: {error:.1e}")
assert error < 1e-8
print("cross-entropy backward == finite differences")
