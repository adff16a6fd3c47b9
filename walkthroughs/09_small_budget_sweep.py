# %% [markdown]
# # Walkthrough 9: a learning-rate sweep on a small budget
#
# Chapter 14 chose the default recipe by giving every candidate the same compute and comparing held-out losses.
# This is that method in miniature: the `tiny` model, Python's help topics as the corpus, 150 steps each, and only
# the peak learning rate changes (one-cycle schedule, no dropout, 30% masking: the recipe's other choices). The
# held-out set is fixed whatever the recipe (`minibert.training.pretrain.load_data`: the same paragraphs, masked at 15% from
# a fixed seed), so the losses compare. Runs go to `$MINIBERT_WALKTHROUGH_OUT/sweep/` (default
# `<temp dir>/minibert-walkthroughs`), with `sweep.png`. About 20 seconds on two cores.
# Guide: [docs/guide/14-a-pretraining-recipe-for-a-small-budget.md](../docs/guide/14-a-pretraining-recipe-for-a-small-budget.md).

# %%
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from minibert.training.pretrain import train
from minibert.training.settings import TrainSettings

OUT = Path(os.environ.get("MINIBERT_WALKTHROUGH_OUT") or Path(tempfile.gettempdir()) / "minibert-walkthroughs")
SWEEP = OUT / "sweep"
shutil.rmtree(SWEEP, ignore_errors=True)
SWEEP.mkdir(parents=True)
from pydoc_data.topics import topics  # noqa: E402  (the help() texts of the Python language, shipped with CPython)

corpus = OUT / "help-topics.txt"
corpus.write_text("\n\n".join(topics[name] for name in sorted(topics)), encoding="utf-8")

# %% [markdown]
# Four peak learning rates, a factor of 4 apart. Equal compute is automatic here: the same model, batch and number
# of steps.

# %%
rates = [1e-4, 5e-4, 2e-3, 8e-3]
results = {}
for lr in rates:
    settings = TrainSettings(config="tiny", corpus=(str(corpus),), vocab_size=1000, seq_len=32, batch_size=16,
                             steps=150, lr=lr, lr_schedule="one-cycle", mask_rate=0.3, dropout=0.0, eval_every=50,
                             eval_batches=4, save_every=150, keep_checkpoints=1, progress=False,
                             out=str(SWEEP / f"lr-{lr:g}"))
    result = train(settings, log=lambda *_: None)
    records = [json.loads(line) for line in (SWEEP / f"lr-{lr:g}" / "metrics.jsonl").read_text().splitlines()]
    results[lr] = {"eval_loss": result["eval_loss"], "eval_accuracy": result["eval_accuracy"],
                   "curve": [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]}
    print(f"lr {lr:7.0e}: held-out loss {result['eval_loss']:.3f}, masked accuracy {result['eval_accuracy']:.3f}")

# %% [markdown]
# Too small a rate barely moves the weights in 150 steps; too large a one is unstable early. The held-out loss
# is U-shaped in the rate, and the best one is what a sweep is for.

# %%
losses = np.array([results[lr]["eval_loss"] for lr in rates])
best = rates[int(losses.argmin())]
print(f"best peak rate: {best:g} (held-out loss {losses.min():.3f}; the smallest rate ends at {losses[0]:.3f})")
assert best not in (rates[0],) and losses.min() < losses[0] - 0.3

# %%
import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
left.plot(rates, losses, "o-")
left.set_xscale("log")
left.set_xlabel("peak learning rate (one-cycle)")
left.set_ylabel("held-out loss after 150 steps")
left.grid(alpha=0.3)
for lr in rates:
    right.plot(*zip(*results[lr]["curve"]), "o-", label=f"lr {lr:g}")
right.set_xlabel("step")
right.set_ylabel("held-out loss")
right.legend()
right.grid(alpha=0.3)
fig.suptitle("tiny model, help topics, 150 steps each")
fig.tight_layout()
fig.savefig(SWEEP / "sweep.png", dpi=100)
print("wrote", SWEEP / "sweep.png")
