# %% [markdown]
# # Walkthrough 3: embedding gradients are a scatter-add, on every backend
#
# The forward of an embedding is a gather, `y[n] = table[ids[n]]`; its backward sends each row of `dy` back to
# the table row it came from, *adding* when an id repeats: `dtable[v] = sum over n with ids[n] == v of dy[n]`.
# The array API standard has no such operation, so each backend supplies `scatter_add` (backends/*.py), and
# `embedding_backward` in `minibert/nn/ops.py` makes exactly one call to it.
# Guide: [docs/guide/01-tokens-to-embeddings.md](../docs/guide/01-tokens-to-embeddings.md) and
# [docs/guide/10-backends-and-the-array-api.md](../docs/guide/10-backends-and-the-array-api.md).

# %%
import time

import numpy as np

import backends
from minibert.nn import ops

# %% [markdown]
# Six token positions, vocabulary of 5, width 4. Id 3 appears three times and id 1 twice; ids 2 and 4 never.

# %%
ids = np.array([3, 1, 3, 3, 0, 1], np.int32)
V, W = 5, 4
dy = np.random.default_rng(0).standard_normal((len(ids), W)).astype(np.float32)

# The reference, written as the obvious Python loop (correct, but one interpreter step per token:
# the second classic bug when N = batch * sequence is in the thousands).
loop = np.zeros((V, W), np.float32)
for n, v in enumerate(ids):
    loop[v] += dy[n]
np.testing.assert_allclose(loop[3], dy[0] + dy[2] + dy[3], rtol=1e-6)
assert not loop[2].any() and not loop[4].any()

# A tempting vectorisation that is wrong: with repeated ids, NumPy's fancy-index `+=` keeps only one update.
wrong = np.zeros((V, W), np.float32)
wrong[ids] += dy
print("fancy-index += row 3:", wrong[3].round(3), " correct:", loop[3].round(3))
assert not np.allclose(wrong[3], loop[3])

# %% [markdown]
# Now `backend.scatter_add` and `embedding_backward` on every registered backend. A backend that cannot run
# here (library missing, no GPU) says why and is skipped. On backends with writeable arrays `scatter_add`
# usually updates the table in place and returns it; on JAX (immutable arrays) a new array is returned and the
# input is untouched. Either way the model only ever uses the *returned* array. `embedding_backward(dy, cache,
# backend)` has the shape of every backward in `minibert/nn/ops.py` (plus the backend that supplies the
# scatter-add, which the array API lacks): it returns `(d_in, grads)`, here `(None, {"weight": dtable})`
# (integer ids have no gradient), scattering into a fresh zero table. The cache from `embedding_forward` is a
# named record of arrays only: `cache.ids`, `cache.table` (the backend is passed, never stored).

# %%
ran = []
for name in backends.registered():
    try:
        be = backends.get_backend(name)
    except backends.BackendUnavailableError as exc:
        print(f"{name:7s} skipped: {exc}")
        continue
    table = be.asarray(np.zeros((V, W)), dtype="float32")
    result = be.scatter_add(table, be.asarray(ids), be.asarray(dy))
    np.testing.assert_allclose(be.to_numpy(result), loop, rtol=1e-6, atol=1e-6)
    if not be.inplace:
        assert not be.to_numpy(table).any(), "an immutable backend must leave its input alone"
    _, cache = ops.embedding_forward(be.asarray(ids), be.asarray(np.ones((V, W)), dtype="float32"))
    d_ids, grads = ops.embedding_backward(be.asarray(dy), cache, be)
    assert d_ids is None
    np.testing.assert_allclose(be.to_numpy(grads["weight"]), loop, rtol=1e-6, atol=1e-6)
    print(f"{name:7s} ok: rows 2 and 4 stay 0, row 3 = dy[0] + dy[2] + dy[3];"
          f" scatter_add returned its input buffer: {result is table} (inplace={be.inplace})")
    ran.append(name)
assert "numpy" in ran

# %% [markdown]
# In the model the word-embedding table is used twice (weight tying): as the input lookup and as the MLM
# decoder. Its gradient is the sum of both shares; `forward_backward` adds the decoder's share (from
# `mlm_head_backward`) to the input gather's (from `encoder_backward`, this scatter-add).

# %%
be = backends.get_backend("numpy")
decoder_share = np.full((V, W), 0.5, np.float32)
_, grads = ops.embedding_backward(dy, ops.embedding_forward(ids, np.zeros((V, W), np.float32))[1], be)
total = decoder_share + grads["weight"]
np.testing.assert_allclose(total, decoder_share + loop, rtol=1e-6)

# %% [markdown]
# Why it matters: one vectorised call against a per-token loop (`table = scatter_add(table, ids[n:n+1], ...)`
# for each n) at the scale of one tiny-model batch: B*T = 32 * 64 tokens, width 128, vocabulary 8192. The loop
# is timed over its first 64 tokens and extrapolated. On NumPy it costs one interpreter step per token; on JAX
# every step copies the whole immutable table (and under `jit` the loop would unroll into thousands of ops).
# Timings are printed, not asserted.

# %%
rng = np.random.default_rng(1)
big_ids = rng.integers(0, 8192, 32 * 64).astype(np.int32)
big_dy = rng.standard_normal((big_ids.size, 128)).astype(np.float32)
for name in ran:
    be = backends.get_backend(name)
    if name == "strict":
        continue                        # its fallback is a one-hot matrix product: for small checks only
    d_ids, d_dy = be.asarray(big_ids), be.asarray(big_dy)
    _, cache = ops.embedding_forward(d_ids, be.asarray(np.zeros((8192, 128)), dtype="float32"))
    ops.embedding_backward(d_dy, cache, be)                                               # warm-up
    start = time.perf_counter()
    fast = ops.embedding_backward(d_dy, cache, be)[1]["weight"]
    be.synchronize(fast)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = be.asarray(np.zeros((8192, 128)), dtype="float32")
    for n in range(64):
        slow = be.scatter_add(slow, d_ids[n:n + 1], d_dy[n:n + 1])
    be.synchronize(slow)
    loop_s = (time.perf_counter() - start) * big_ids.size / 64
    numpy_be = backends.get_backend("numpy")
    first = ops.embedding_forward(big_ids[:64], np.zeros((8192, 128), np.float32))[1]
    np.testing.assert_allclose(be.to_numpy(slow), ops.embedding_backward(big_dy[:64], first, numpy_be)[1]["weight"],
                               atol=1e-5)
    print(f"{name:7s} one scatter_add call {fast_s * 1e3:7.1f} ms   per-token loop ~{loop_s * 1e3:8.1f} ms")
