# %% [markdown]
# # Walkthrough 1: attention and the padding mask
#
# Multi-head self-attention step by step, with the ops of `minibert/nn/ops.py` and the mask of
# `minibert/nn/attention.py`, on a padded batch; then a picture of the attention weights, next to the weights of
# the classic bug (padding zeroed in the embeddings instead of masked in the scores).
# Guide: [docs/guide/02-attention-and-padding-mask.md](../docs/guide/02-attention-and-padding-mask.md).
#
# Run `python walkthroughs/01_attention_and_masking.py`; it writes `attention.png` to `$MINIBERT_WALKTHROUGH_OUT`
# (default: `<temp dir>/minibert-walkthroughs`). The backend is `$MINIBERT_BACKEND` (default numpy).

# %%
import math
import os
import tempfile
from pathlib import Path

import numpy as np

import backends
from minibert.nn import ops
from minibert.nn.attention import attention_forward, mask_bias

OUT = Path(os.environ.get("MINIBERT_WALKTHROUGH_OUT") or Path(tempfile.gettempdir()) / "minibert-walkthroughs")
OUT.mkdir(parents=True, exist_ok=True)
be = backends.get_backend()
xp = be.xp
print("backend:", be.name)

# %% [markdown]
# Two sequences of T = 7 tokens; the second is shorter and ends in two `[PAD]`, where `attention_mask` is 0.
# `x` stands for the hidden states entering a layer, `[B*T, H]`, with H = 16 split over A = 2 heads of D = 8.

# %%
tokens = [["[CLS]", "the", "cat", "sat", "down", ".", "[SEP]"],
          ["[CLS]", "a", "dog", "ran", "[SEP]", "[PAD]", "[PAD]"]]
mask = np.array([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]], np.int32)
B, T, H, A = 2, 7, 16, 2
D = H // A
rng = np.random.default_rng(0)


def dev(a):
    return be.asarray(a, dtype="float32")


x_host = rng.standard_normal((B * T, H))
w_qkv, b_qkv = dev(rng.standard_normal((H, 3 * H)) * 0.3), dev(rng.standard_normal(3 * H) * 0.1)
w_out, b_out = dev(rng.standard_normal((H, H)) * 0.3), dev(rng.standard_normal(H) * 0.1)

# %% [markdown]
# The mask becomes an additive bias on the scores: 0 where a key is attended, the dtype's most negative finite
# number where it is padding, shaped `[B, 1, 1, T]` to broadcast over heads and queries.

# %%
bias = mask_bias(be.asarray(mask), be.dtype("float32"))
bias_host = be.to_numpy(bias)
print("mask bias", bias_host.shape, "row 1:", bias_host[1, 0, 0] + 0.0)   # + 0.0 turns -0.0 into 0.0
assert bias_host.shape == (B, 1, 1, T)
assert np.all(bias_host[mask[:, None, None, :] == 1] == 0.0)
assert np.all(bias_host[mask[:, None, None, :] == 0] == np.finfo(np.float32).min)


# %% [markdown]
# The forward pass, one line per formula of `attention_forward`:
# `[q k v] = x Wqkv + bqkv`; `s = (q / sqrt(D)) k^T + bias`; `p = softmax(s)`; `c = p v`; `y = c Wo + bo`.

# %%
def attention_by_hand(x, bias):
    qkv, _ = ops.linear_forward(x, w_qkv, b_qkv)                                    # [B*T, 3H]
    qkv = xp.permute_dims(xp.reshape(qkv, (B, T, 3, A, D)), (2, 0, 3, 1, 4))        # [3, B, A, T, D]
    q, k, v = qkv[0, ...] * (1.0 / math.sqrt(D)), qkv[1, ...], qkv[2, ...]          # each [B, A, T, D]
    scores = q @ xp.matrix_transpose(k) + bias                                       # [B, A, T, T]
    probs, _ = ops.softmax_forward(scores)                                           # rows sum to 1
    context = xp.reshape(xp.permute_dims(probs @ v, (0, 2, 1, 3)), (B * T, H))      # heads side by side
    y, _ = ops.linear_forward(context, w_out, b_out)                                 # [B*T, H]
    return y, be.to_numpy(probs)


y, probs = attention_by_hand(dev(x_host), bias)
y_lib, _ = attention_forward(dev(x_host), w_qkv, b_qkv, w_out, b_out, bias, A, 0.0, None, be)
np.testing.assert_allclose(be.to_numpy(y), be.to_numpy(y_lib), rtol=1e-5, atol=1e-5)
print("by hand == attention_forward; probs", probs.shape)

# Masked keys get exactly zero weight (exp of a huge negative number underflows to 0); rows still sum to 1.
assert np.all(probs[1, :, :, 5:] == 0.0)
np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)

# %% [markdown]
# The bias masks *keys* only: a padded *query* row still attends to the real keys of its sequence (the
# `[PAD]` rows of the picture below are not empty). Its output is never used, and transformers does the same.
#
# So whatever sits at a padded position cannot reach the real tokens: replace the padded rows of `x` by
# anything, and the outputs at real positions do not move.

# %%
pad_rows = np.flatnonzero(mask.reshape(-1) == 0)                 # flat indices 12, 13
other = x_host.copy()
other[pad_rows] = rng.standard_normal((len(pad_rows), H)) * 10
y_other, _ = attention_by_hand(dev(other), bias)
real = mask.reshape(-1) == 1
np.testing.assert_allclose(be.to_numpy(y_other)[real], be.to_numpy(y)[real], rtol=1e-5, atol=1e-5)
print("padded tokens changed, real outputs unchanged")

# %% [markdown]
# The classic bug: multiply the *embeddings* by the mask and leave the scores alone. The padded keys become
# `k = 0 Wk + bk = bk`, whose scores are not -inf, so real queries still attend to them, and the outputs at
# real positions now depend on how much padding a sequence has.

# %%
no_bias = mask_bias(be.asarray(np.ones_like(mask)), be.dtype("float32"))   # all zeros
y_bug, probs_bug = attention_by_hand(dev(x_host * mask.reshape(-1, 1)), no_bias)
leaked = probs_bug[1, :, :5, 5:].sum(-1)                                    # weight real queries give to [PAD]
print("weight on [PAD] keys with the bug, per head and query:\n", leaked.round(3))
assert leaked.mean() > 0.05
assert not np.allclose(be.to_numpy(y_bug)[real], be.to_numpy(y)[real], atol=1e-3)

# %%
import matplotlib                                                   # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt                                     # noqa: E402

fig, axes = plt.subplots(2, A, figsize=(4.2 * A, 8))
panels = [("mask on the scores (correct)", probs), ("mask on the embeddings (bug)", probs_bug)]
for row, (title, p) in enumerate(panels):
    for h in range(A):
        ax = axes[row, h]
        ax.imshow(p[1, h], vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(T), tokens[1], rotation=60, fontsize=8)
        ax.set_yticks(range(T), tokens[1], fontsize=8)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        ax.set_title(f"head {h}: {title}", fontsize=9)
fig.suptitle("attention weights p[1, head] of the padded sequence")
fig.tight_layout()
png = OUT / "attention.png"
fig.savefig(png, dpi=80)
plt.close(fig)
assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
print("wrote", png)
