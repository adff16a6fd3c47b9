# %% [markdown]
# # Walkthrough 8: the classification head's backward, checked twice
#
# BertForSequenceClassification's head: pooled = tanh(h_[CLS] Wp + bp), logits = pooled Wc + bc, cross-entropy.
# Its backward by hand (`minibert.nn.heads`): d logits = softmax - onehot (over the batch), dWc = pooled^T d logits,
# d pooled = d logits Wc^T, d pre = d pooled * (1 - pooled^2) (tanh' = 1 - tanh^2), dWp = h_[CLS]^T d pre, and
# d hidden is d h_[CLS] at position 0 of each row, 0 elsewhere. Here it is checked against central finite
# differences in float64 (NumPy), then against transformers' own model with torch autograd, on the same weights.
# Guide: [docs/guide/13-classification-heads.md](../docs/guide/13-classification-heads.md).

# %%
import numpy as np

import backends
from minibert import BertConfig, classify_loss_and_grads
from minibert.params import init_host_params

backend = backends.get_backend("numpy")
config = BertConfig(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=24, max_position=10,
                    task="sequence", num_labels=3, hidden_dropout=0.0, attention_dropout=0.0)
params64 = {k: v.astype(np.float64) for k, v in init_host_params(config, seed=1).items()}
rng = np.random.default_rng(0)
for name in params64:              # move every head weight and bias away from its initial value
    if name.startswith(("pooler", "classifier")):
        params64[name] = params64[name] + rng.normal(0, 0.3, params64[name].shape)
ids = rng.integers(5, config.vocab_size, (4, 8))
mask = np.ones_like(ids)
mask[2, 5:] = 0                    # one padded row: the head reads [CLS] only, so padding must not matter
batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
         "labels": np.array([0, 2, 1, 2])}


def loss_of(params):
    return classify_loss_and_grads({k: backend.asarray(v) for k, v in params.items()}, batch, config=config,
                                   backend=backend)[0]


loss, grads = classify_loss_and_grads({k: backend.asarray(v) for k, v in params64.items()}, batch, config=config,
                                      backend=backend)
print(f"loss {loss:.6f} (ln 3 = {np.log(3):.6f} for a uniform guess)")

# %% [markdown]
# Central differences, (L(w + e) - L(w - e)) / 2e with e = 1e-6, at a few entries of every head parameter and of
# the encoder's LayerNorm and Q|K|V (reached through d hidden at the [CLS] rows). In float64 they agree to within
# about 1e-6 (each error relative to max(|gradient|, 1e-4): a gradient near 0 has no relative precision).

# %%
worst = 0.0
for name in ("classifier.weight", "classifier.bias", "pooler.dense.weight", "pooler.dense.bias",
             "layers.0.ffn.ln.weight", "layers.0.attn.qkv.weight"):
    flat = params64[name].reshape(-1)
    for index in rng.choice(flat.size, size=min(4, flat.size), replace=False):
        saved = flat[index]
        flat[index] = saved + 1e-6
        up = loss_of(params64)
        flat[index] = saved - 1e-6
        down = loss_of(params64)
        flat[index] = saved
        numeric, analytic = (up - down) / 2e-6, float(np.asarray(grads[name]).reshape(-1)[index])
        error = abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-4)   # floor: tiny gradients
        worst = max(worst, error)
        print(f"  {name:26} [{index:3d}]  by hand {analytic:+.8f}  numeric {numeric:+.8f}")
print(f"worst relative error: {worst:.1e}")
assert worst < 1e-5
print("head backward == finite differences")

# %% [markdown]
# Now against transformers: the same weights in BertForSequenceClassification (`minibert.interop.hf.to_transformers` writes
# the folder, `from_pretrained` reads it), eval mode, the same batch, torch autograd. Every gradient must match.
# (Skipped, with a message, where torch and transformers are not installed.)

# %%
try:
    import torch
    import transformers
except ImportError as exc:
    print(f"transformers comparison skipped: {exc} (pip install -e '.[interop]')")
else:
    import tempfile

    from minibert.interop.hf import params_from_state_dict, to_transformers
    transformers.logging.set_verbosity_error()
    params32 = {k: v.astype(np.float32) for k, v in params64.items()}
    with tempfile.TemporaryDirectory() as folder:
        to_transformers(params32, config, folder)
        model = transformers.BertForSequenceClassification.from_pretrained(folder).eval()
    out = model(**{k: torch.from_numpy(v) for k, v in batch.items() if k != "labels"},
                labels=torch.from_numpy(batch["labels"]))
    out.loss.backward()
    theirs = params_from_state_dict({n: p.grad.numpy() for n, p in model.named_parameters()}, config, dtype=None)
    ours_loss, ours = classify_loss_and_grads({k: backend.asarray(v) for k, v in params32.items()}, batch,
                                              config=config, backend=backend)
    their_loss = float(out.loss.detach())
    print(f"loss: Mini-BERT {ours_loss:.6f}, transformers {their_loss:.6f}")
    assert abs(ours_loss - their_loss) < 1e-5
    for name in theirs:
        scale = np.abs(theirs[name]).max() + 1e-12
        assert np.abs(np.asarray(ours[name]) - theirs[name]).max() <= 1e-4 * scale, name
    print(f"all {len(theirs)} gradients == transformers' (within 1e-4 of each tensor's largest entry)")
