# %% [markdown]
# # Walkthrough 3: embedding gradients are a scatter-add, on every backend
#
# The forward of an embedding is a gather, `y[n] = table[ids[n]]`; its backward sends each row of `dy` back to
# the table row it came from, *adding* when an id repeats: `dtable[v] = sum over n with ids[n] == v of dy[n]`.
# The array API standard has no such operation, so each backend supplies `scatter_add` (backends/*.py), and
# `embedding_backward` in `minibert/ops.py` makes exactly one call to it.
# Guide: [docs/guide/01-tokens-to-embeddings.md](../docs/guide/01-tokens-to-embeddings.md) and
# [docs/guide/10-backends-and-the-array-api.md](../docs/guide/10-backends-and-the-array-api.md).

# %%
import time

import numpy as np

import backends
from minibert import ops

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
# Now `embedding_backward` on every registered backend. A backend that cannot run here (library missing,
# no GPU) says why and is skipped. On backends with writeable arrays the table is usually updated in place
# and returned; on JAX (immutable arrays) a new array is returned and the input is untouched. Either way the
# model only ever uses the *returned* array.

# %%
ran = []
for name in backends.registered():
    try:
        be = backends.get_backend(name)
    except backends.BackendUnavailableError as exc:
        print(f"{name:7s} skipped: {exc}")
        continue
    table = be.asarray(np.zeros((V, W)), dtype="float32")
    result = ops.embedding_backward(be.asarray(dy), be.asarray(ids), table, be)
    got = be.to_numpy(result)
    np.testing.assert_allclose(got, loop, rtol=1e-6, atol=1e-6)
    if not be.inplace:
        assert not be.to_numpy(table).any(), "an immutable backend must leave its input alone"
    print(f"{name:7s} ok: rows 2 and 4 stay 0, row 3 = dy[0] + dy[2] + dy[3];"
          f" returned its input buffer: {result is table} (inplace={be.inplace})")
    ran.append(name)
assert "numpy" in ran

# %% [markdown]
# In the model, `embedding_backward` adds into a table that may already hold something: the word-embedding
# gradient first receives the MLM decoder's share (weight tying), then the input gather's share on top.

# %%
be = backends.get_backend("numpy")
decoder_share = np.full((V, W), 0.5, np.float32)
total = ops.embedding_backward(dy, ids, decoder_share.copy(), be)
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
    ops.embedding_backward(d_dy, d_ids, be.asarray(np.zeros((8192, 128)), dtype="float32"), be)   # warm-up
    start = time.perf_counter()
    fast = ops.embedding_backward(d_dy, d_ids, be.asarray(np.zeros((8192, 128)), dtype="float32"), be)
    be.synchronize(fast)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = be.asarray(np.zeros((8192, 128)), dtype="float32")
    for n in range(64):
        slow = be.scatter_add(slow, d_ids[n:n + 1], d_dy[n:n + 1])
    be.synchronize(slow)
    loop_s = (time.perf_counter() - start) * big_ids.size / 64
    np.testing.assert_allclose(be.to_numpy(slow), ops.embedding_backward(
        big_dy[:64], big_ids[:64], np.zeros((8192, 128), np.float32), backends.get_backend("numpy")), atol=1e-5)
    print(f"{name:7s} one scatter_add call {fast_s * 1e3:7.1f} ms   per-token loop ~{loop_s * 1e3:8.1f} ms")
