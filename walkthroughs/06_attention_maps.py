# %% [markdown]
# # Walkthrough 6: what the attention heads look at
#
# Every layer's attention computes p = softmax(q k^T / sqrt(D) + mask), one T x T map per head, and keeps it for
# the backward. `minibert.attention_maps.attention_maps` runs the encoder once and reads those maps out;
# `plot_attention` draws every layer x head (`python scripts/predict.py RUN "text" --attention attn.png` does both).
# Give it a run (`python walkthroughs/06_attention_maps.py RUN_DIR`, or `$MINIBERT_RUN_DIR`, e.g. the default run
# of `python scripts/train.py`); without one it trains a very small run in-process first, as walkthrough 5 does
# (config `tiny`, Python's help topics, 200 steps: seconds), into `$MINIBERT_WALKTHROUGH_OUT/attention-run`.
# Guide: [docs/guide/02-attention-and-padding-mask.md](../docs/guide/02-attention-and-padding-mask.md).

# %%
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from minibert import init_params
from minibert.attention_maps import attention_maps, plot_attention
from minibert.inference import load_run
from minibert.training.pretrain import train
from minibert.training.settings import TrainSettings

OUT = Path(os.environ.get("MINIBERT_WALKTHROUGH_OUT") or Path(tempfile.gettempdir()) / "minibert-walkthroughs")
given = os.environ.get("MINIBERT_RUN_DIR") or next((a for a in sys.argv[1:] if Path(a, "config.json").exists()), None)

# %%
OUT.mkdir(parents=True, exist_ok=True)
if given:
    run_dir = Path(given)
    print("using the run in", run_dir)
else:
    from pydoc_data.topics import topics
    corpus = OUT / "help-topics.txt"
    corpus.write_text("\n\n".join(topics[name] for name in sorted(topics)), encoding="utf-8")
    run_dir = OUT / "attention-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    train(TrainSettings(config="tiny", corpus=(str(corpus),), vocab_size=1000, seq_len=32, batch_size=16, steps=200,
                        lr=2e-3, dropout=0.0, eval_every=200, eval_batches=2, save_every=200, keep_checkpoints=1,
                        progress=False, out=str(run_dir)))
config, params, tokenizer, backend = load_run(run_dir)
print(f"model: {config.num_layers} layers x {config.num_heads} heads; backend {backend.name}")

# %% [markdown]
# The maps of one sentence: `tokens` are the T word pieces with `[CLS]` and `[SEP]`, `probs` is [L, A, T, T].
# Row i of a map is a probability distribution: where token i looks.

# %%
text = "the break statement is used to leave a loop ."
tokens, probs = attention_maps(text, config, params, tokenizer, backend)
print(len(tokens), "tokens:", " ".join(tokens))
assert probs.shape == (config.num_layers, config.num_heads, len(tokens), len(tokens))
np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
print("every row sums to 1")

# %% [markdown]
# They are the forward pass's own numbers. Recompute layer 0 by hand from the weights: the embeddings
# (word + position + token type, then LayerNorm), the fused Q|K|V projection, and softmax(q k^T / sqrt(D)).

# %%
host = {name: np.asarray(backend.to_numpy(value), np.float64) for name, value in params.items()}
ids = [tokenizer.cls_id, *tokenizer.encode(text), tokenizer.sep_id]
e = host["embeddings.word"][ids] + host["embeddings.position"][:len(ids)] + host["embeddings.token_type"][0]
h = (e - e.mean(-1, keepdims=True)) / np.sqrt(e.var(-1, keepdims=True) + config.layer_norm_eps)
h = h * host["embeddings.ln.weight"] + host["embeddings.ln.bias"]
qkv = h @ host["layers.0.attn.qkv.weight"] + host["layers.0.attn.qkv.bias"]          # [T, 3H]
head = config.hidden_size // config.num_heads
q, k = (qkv[:, i * config.hidden_size:(i + 1) * config.hidden_size] for i in (0, 1))
for a in range(config.num_heads):
    cols = slice(a * head, (a + 1) * head)
    scores = q[:, cols] @ k[:, cols].T / math.sqrt(head)
    by_hand = np.exp(scores - scores.max(-1, keepdims=True))
    by_hand /= by_hand.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs[0, a], by_hand, atol=2e-5)
print("layer 0 by hand == attention_maps")

# %% [markdown]
# What do the heads do? Four usual patterns, each as the average attention a token gives to it: the `[CLS]`
# token, the `[SEP]` token, itself (the diagonal) and the token before it. A uniform head would give 1/T to each.

# %%
def patterns(maps):
    """[L, A, T, T] -> per head (on [CLS], on [SEP], on itself, on the previous token), averaged over the rows."""
    seq = maps.shape[-1]
    rows = np.arange(1, seq)
    return np.stack([maps[..., :, 0].mean(-1), maps[..., :, seq - 1].mean(-1),
                     np.diagonal(maps, axis1=-2, axis2=-1).mean(-1), maps[..., rows, rows - 1].mean(-1)], axis=-1)


found = patterns(probs)
print(f"uniform would be {1 / len(tokens):.3f} for each")
print("layer head   [CLS]  [SEP]   self  previous")
for layer in range(config.num_layers):
    for a in range(config.num_heads):
        print(f"{layer:5d} {a:4d}  " + "  ".join(f"{v:5.3f}" for v in found[layer, a]))

# %% [markdown]
# Training is what made them so. At initialisation (weights ~ N(0, 0.02^2)) the scores q k^T are all close to 0
# and every head spreads its attention almost evenly: entropy close to ln T. After training the heads are sharper:
# they have learned where to look.

# %%
def entropy(maps):
    return float(-(maps * np.log(maps + 1e-12)).sum(-1).mean())


_, initial = attention_maps(text, config, init_params(config, seed=0, backend=backend), tokenizer, backend)
print(f"mean row entropy: {entropy(initial):.3f} at initialisation, {entropy(probs):.3f} trained "
      f"(ln T = {math.log(len(tokens)):.3f})")
assert entropy(initial) > 0.98 * math.log(len(tokens)) > entropy(probs)

# %%
picture = OUT / "attention-maps.png"
plot_attention(tokens, probs, picture, f"{run_dir.name}: row = the token that attends")
print("wrote", picture)
