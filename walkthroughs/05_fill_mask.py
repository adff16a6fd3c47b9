# %% [markdown]
# # Walkthrough 5: fill-mask with a trained run
#
# `minibert.inference.fill_mask` predicts the tokens behind each `[MASK]`. Give it a run directory
# (`python walkthroughs/05_fill_mask.py RUN_DIR`, or `$MINIBERT_RUN_DIR`), e.g. one made by
# `python scripts/train.py`. Without one, this walkthrough first trains a very small run in-process with
# `minibert.training.pretrain.train` (config `tiny`, Python's own help topics as the corpus, 60 steps: seconds on a CPU)
# into `$MINIBERT_WALKTHROUGH_OUT/fill-mask-run` (default `<temp dir>/minibert-walkthroughs/`).
# Guide: [docs/guide/05-mlm-head-and-weight-tying.md](../docs/guide/05-mlm-head-and-weight-tying.md).

# %%
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from minibert import init_params, mlm_logits
from minibert.inference import fill_mask, load_run
from minibert.training.pretrain import train
from minibert.training.settings import TrainSettings

OUT = Path(os.environ.get("MINIBERT_WALKTHROUGH_OUT") or Path(tempfile.gettempdir()) / "minibert-walkthroughs")
given = os.environ.get("MINIBERT_RUN_DIR") or next((a for a in sys.argv[1:] if Path(a, "config.json").exists()), None)

# %% [markdown]
# The small run: a tokenizer of up to 1000 WordPiece tokens trained on the corpus (cached under
# `$MINIBERT_CACHE`), sequences of 32 tokens, batches of 16, no dropout, and a learning rate of 2e-3 that warms up
# over the first 10% of the steps, then decays linearly to 0. Sixty steps teach a model which tokens are
# *frequent*; using the context takes far longer (`scripts/train.py` defaults to 1500 steps of the `seed` config).

# %%
if given:
    run_dir = Path(given)
    print("using the run in", run_dir)
else:
    OUT.mkdir(parents=True, exist_ok=True)
    from pydoc_data.topics import topics      # the help() texts of the Python language, shipped with CPython
    corpus = OUT / "help-topics.txt"
    corpus.write_text("\n\n".join(topics[name] for name in sorted(topics)), encoding="utf-8")
    run_dir = OUT / "fill-mask-run"
    shutil.rmtree(run_dir, ignore_errors=True)  # this walkthrough's own output from an earlier run
    settings = TrainSettings(config="tiny", corpus=(str(corpus),), vocab_size=1000, seq_len=32, batch_size=16,
                             steps=60, lr=2e-3, dropout=0.0, eval_every=60, eval_batches=2, save_every=60,
                             keep_checkpoints=1, progress=False, out=str(run_dir))
    result = train(settings)
config, params, tokenizer, backend = load_run(run_dir)
print(f"model: {config.num_layers} layers, H={config.hidden_size}, V={config.vocab_size}; backend {backend.name}")

# %% [markdown]
# Fill in some masks. `fill_mask` adds `[CLS]` and `[SEP]`, runs the model in eval mode (no dropout), and turns
# the logits at each `[MASK]` into probabilities with a softmax.

# %%
texts = ["the [MASK] statement is used to leave a loop .", "a list is a sequence of [MASK] .",
         "if the condition is [MASK] , the body of the loop is executed ."]
fills = {text: fill_mask(text, config, params, tokenizer, backend, top_k=5) for text in texts}
for text, per_mask in fills.items():
    print(text)
    for options in per_mask:
        print("    " + "   ".join(f"{token} {p:.3f}" for token, p in options))

# %% [markdown]
# The same thing by hand, with the public `mlm_logits`: logits at every position `[1, T, V]`, a softmax over
# the row of the `[MASK]`, the five largest.

# %%
for text, per_mask in fills.items():
    ids = [tokenizer.cls_id] + tokenizer.encode(text) + [tokenizer.sep_id]
    logits = backend.to_numpy(mlm_logits(params, np.asarray([ids], np.int32), config=config, backend=backend))
    assert logits.shape == (1, len(ids), config.vocab_size)
    row = logits[0, ids.index(tokenizer.mask_id)].astype(np.float64)
    probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
    best = np.argsort(-probs)[:5]
    assert [t for t, _ in per_mask[0]] == [tokenizer.id_to_token(int(i)) for i in best]
    np.testing.assert_allclose([p for _, p in per_mask[0]], probs[best], rtol=1e-6)
    assert all(a >= b for (_, a), (_, b) in zip(per_mask[0], per_mask[0][1:])) and sum(probs[best]) <= 1 + 1e-9
print("fill_mask == softmax of mlm_logits at the [MASK]")

# %% [markdown]
# What did sixty steps learn? (Only for the run trained here.) The loss fell from about ln V (a uniform guess),
# and the predictions moved from near-uniform at initialisation to the corpus's most frequent tokens, whatever
# the context: the first thing a masked-LM learns is the unigram distribution.

# %%
if not given:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in records if "loss" in r]
    uniform = math.log(config.vocab_size)
    print(f"train loss {losses[0]:.2f} -> {np.mean(losses[-10:]):.2f} (last 10), held-out {result['eval_loss']:.2f},"
          f" ln V = {uniform:.2f}")
    assert abs(losses[0] - uniform) < 0.3 and np.mean(losses[-10:]) < losses[0] - 0.5
    assert result["eval_loss"] < uniform - 0.3

    initial = init_params(config, seed=settings.seed, backend=backend)   # the weights the run started from
    before = fill_mask(texts[0], config, initial, tokenizer, backend, top_k=1)[0][0][1]
    after = fills[texts[0]][0][0][1]
    print(f"top-1 probability: {before:.4f} at initialisation, {after:.4f} after training (1/V = "
          f"{1 / config.vocab_size:.4f})")
    assert before < 5 / config.vocab_size and after > 10 * before

    from minibert.data.corpus import load_corpus_files
    train_docs, _ = load_corpus_files([str(corpus)])
    counts = np.bincount(np.concatenate([np.asarray(ids, np.int64) for ids in tokenizer.encode_batch(train_docs)]),
                         minlength=config.vocab_size)
    counts[list(tokenizer.special_ids)] = 0
    frequent = {tokenizer.id_to_token(int(i)) for i in np.argsort(-counts)[:15]}
    print("15 most frequent tokens:", sorted(frequent))
    for per_mask in fills.values():
        assert {token for token, _ in per_mask[0][:3]} <= frequent
