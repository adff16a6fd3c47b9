# %% [markdown]
# # Walkthrough 4: one training step, traced with shapes
#
# `forward_backward` (minibert/nn/model.py) on a small padded batch, with every op of `minibert/nn/ops.py` and
# `minibert/nn/loss.py` (and the backend's `scatter_add`) wrapped so that each call prints its inputs and outputs:
# the forward and the hand-written backward in the order they really run. Then one AdamW update
# (minibert/nn/optim.py), checked against its closed form, and against `make_train_step` (minibert/nn/step.py).
# Guide: [docs/guide/07-the-backward-pass.md](../docs/guide/07-the-backward-pass.md) and
# [docs/guide/08-adamw.md](../docs/guide/08-adamw.md).

# %%
import inspect
from functools import partial

import numpy as np

import backends
import minibert.nn.attention
import minibert.nn.model
from minibert import BertConfig, forward_backward, init_params
from minibert.nn import loss, ops
from minibert.data.batch import check_batch, device_batch
from minibert.nn.optim import AdamWConfig, adamw_update, init_state, learning_rate
from minibert.nn.layout import is_no_decay
from minibert.nn.step import make_train_step

be = backends.get_backend()
config = BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position=12)
B, T = 2, 8
print(f"backend {be.name}; B={B} T={T} H={config.hidden_size} A={config.num_heads} D={config.head_size} "
      f"I={config.intermediate_size} V={config.vocab_size} P={config.max_position}; one layer (BERT repeats it)")

# %% [markdown]
# A batch as the data pipeline makes it: `[CLS]`=2 ... `[SEP]`=3, `[MASK]`=4, `[PAD]`=0; labels hold the
# original id at the 5 masked positions and -100 elsewhere. `device_batch` turns the labels into the rows the
# MLM head will see: `positions` (flat indices into B*T), `targets`, `weights`, padded to N = 8 rows.

# %%
batch = {"input_ids": np.array([[2, 11, 4, 13, 14, 3, 16, 3], [2, 21, 22, 4, 3, 0, 0, 0]]),
         "attention_mask": np.array([[1] * 8, [1] * 5 + [0] * 3]),
         "token_type_ids": np.array([[0] * 6 + [1] * 2, [0] * 8]),
         "labels": np.full((B, T), -100)}
batch["labels"][0, [2, 4, 6]] = [12, 14, 16]
batch["labels"][1, [1, 3]] = [21, 23]
arrays = device_batch(check_batch(batch, config), be, "float32")
print({k: tuple(v.shape) for k, v in arrays._asdict().items()}, "positions:", be.to_numpy(arrays.positions))
params = init_params(config, seed=0, backend=be)

# %% [markdown]
# The tracer: every op, wherever the model looks it up, is replaced by a wrapper that prints its arguments
# (parameters by name, caches as `cache`) and its output. Dropout is left out: with no random key it is the identity.

# %%
NAMES = {id(v): k for k, v in params.items()}
CALLS, DEPTH, TRACING = [], [0], [True]     # traced calls (label, arguments); nesting level; printing on/off
LEAF_OPS = [ops.embedding_forward, ops.linear_forward, ops.linear_backward, ops.layernorm_forward,
            ops.layernorm_backward, ops.gelu_forward, ops.gelu_backward, ops.softmax_forward, ops.softmax_backward,
            loss.cross_entropy_forward, loss.cross_entropy_backward]


def describe(value):
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return NAMES.get(id(value), "") + str(list(value.shape))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
    return ", ".join(map(describe, value)) if isinstance(value, (tuple, list)) else repr(value)


def traced(fn, label):
    signature = inspect.signature(fn)

    def wrapper(*args, **kwargs):
        if not TRACING[0]:
            return fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs).arguments
        CALLS.append((label, bound))
        pad = "  " * (DEPTH[0] + 1)
        print(pad + f"{label:22s} " + " ".join(f"{k}={'cache' if 'cache' in k else describe(v)}"
                                              for k, v in bound.items() if k != "backend"))
        DEPTH[0] += 1
        out = fn(*args, **kwargs)
        DEPTH[0] -= 1
        print(f"{pad}{'':22s} -> {describe(out[0] if label.endswith('_forward') else out)}")
        return out
    return wrapper


for module in (ops, loss, minibert.nn.attention, minibert.nn.model):
    for fn in LEAF_OPS:
        if getattr(module, fn.__name__, None) is fn:
            setattr(module, fn.__name__, traced(fn, fn.__name__))
be.scatter_add = traced(be.scatter_add, "backend.scatter_add")

# %% [markdown]
# Forward: embeddings, then the layer (attention's qkv projection, softmax over [B, A, T, T], output projection,
# residual + LayerNorm, the FFN with GELU, residual + LayerNorm), then the head on the N labelled rows only and the
# loss. Backward: the same ops in reverse, each `*_backward(d_out, cache)` (the backend after the cache for the two
# that scatter-add) returning `(d_in, grads)`: the gradient
# of its input and a dict of its parameters' gradients (`{}` for GELU and softmax). Each
# `backend.scatter_add` is one vectorised call: the head's N rows going back to their [B*T, H] positions, the
# token-type ids and the word ids (B*T each), and wherever else the model scatters (e.g. the loss's one-hot term).

# %%
loss_value, grads = forward_backward(params, arrays, None, config=config, backend=be)
TRACING[0] = False
print(f"loss {float(be.to_numpy(loss_value)):.4f} (uniform guess: ln V = {np.log(config.vocab_size):.4f})")
assert set(grads) == set(params) and all(tuple(g.shape) == tuple(params[k].shape) for k, g in grads.items())
print("every parameter has a gradient of its own shape:", len(grads), "tensors")
scatters = [tuple(args["indices"].shape) for label, args in CALLS if label == "backend.scatter_add"]
assert scatters.count((B * T,)) == 2 and len(scatters) <= 4, scatters   # word + token type: one call each

# %% [markdown]
# One AdamW update. At the first step the bias corrections make `m_hat = g` and `v_hat = g^2`, so every entry
# moves by `lr * g / (|g| + eps)`, about `lr` (g after clipping); parameters with decay also shrink by the factor
# `1 - lr * weight_decay`. Position rows T..P-1 got no gradient, so they only decay.

# %%
opt = AdamWConfig(lr=1e-3, warmup_steps=2, total_steps=10)
schedule = [learning_rate(s, opt) for s in range(opt.total_steps)]
print("learning rate by step:", [f"{lr:.2e}" for lr in schedule])
assert schedule[1] == schedule[2] == opt.lr and schedule[-1] == opt.lr / (opt.total_steps - opt.warmup_steps)

before = {k: np.array(be.to_numpy(v), copy=True) for k, v in params.items()}
host_grads = {k: np.array(be.to_numpy(g), dtype=np.float64) for k, g in grads.items()}
params, state, norm = adamw_update(params, grads, init_state(params, be), 0, opt)
norm = float(be.to_numpy(norm))
np.testing.assert_allclose(norm, np.sqrt(sum(np.sum(g * g) for g in host_grads.values())), rtol=1e-5)
scale = min(1.0, opt.clip_norm / (norm + 1e-6))
lr0 = schedule[0]
print(f"gradient norm {norm:.4f}, clip scale {scale:.4f}, lr at step 0 {lr0:.1e}")
for name, p in params.items():
    g = host_grads[name] * scale
    decay = 0.0 if is_no_decay(name) else opt.weight_decay
    expected = before[name] * (1 - lr0 * decay) - lr0 * g / (np.abs(g) + opt.eps)
    np.testing.assert_allclose(be.to_numpy(p), expected, rtol=1e-5, atol=1e-8, err_msg=name)
np.testing.assert_allclose(be.to_numpy(params["embeddings.position"])[T:],       # no gradient: decay only
                           before["embeddings.position"][T:] * (1 - lr0 * opt.weight_decay), rtol=1e-6)
print("every parameter moved exactly as the closed form says; no decay for:",
      sorted(k for k in params if is_no_decay(k))[:4], "...")

# %% [markdown]
# `make_train_step` does the same (the loss-and-gradient function it is given, here `forward_backward`, over
# the micro-batches, gradients accumulated and averaged, then `adamw_update`), compiled with `jit` on JAX.

# %%
fresh = init_params(config, seed=0, backend=be)
step = make_train_step(partial(forward_backward, config=config, backend=be), opt, be)
fresh, _, step_loss, _ = step(fresh, init_state(fresh, be), [arrays], None, 0)
assert abs(float(be.to_numpy(step_loss)) - float(be.to_numpy(loss_value))) < 1e-6
for name in params:
    np.testing.assert_allclose(be.to_numpy(fresh[name]), be.to_numpy(params[name]), rtol=1e-5, atol=1e-7)
print("make_train_step gives the same parameters")
