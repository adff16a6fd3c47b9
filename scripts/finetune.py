#!/usr/bin/env python
"""Fine-tune a pretrained Mini-BERT for sentence or token classification (or regression), on any backend.

    python scripts/finetune.py          # the newest complete pretrained run under runs/ (make one with
                                        # `python scripts/train.py`) on the built-in task: which standard-library
                                        # package a docstring comes from; prints held-out accuracy beside the
                                        # majority-class baseline
    python scripts/finetune.py --from-scratch --config seed          # the same model, random weights
    python scripts/finetune.py --freeze-encoder                      # a linear probe: only the head trains
    python scripts/finetune.py --init-from runs/X --train train.tsv --eval dev.tsv --text-column sentence
    python scripts/finetune.py --task token --train train.conll --eval dev.conll
    python scripts/finetune.py --resume runs/ft-20261129-120000      # continue a stopped run exactly

Files: sequence task .tsv (GLUE style, header row, unquoted), .csv (header row, standard quoting), .jsonl (one
object a line); token task CoNLL (`word<TAB>tag` a line, blank line between sentences, --tag-column picks the
column) or .jsonl with `tokens` and `tags` lists. Labels may be strings or integers; the label map is stored in
the run's config.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from minibert.training.command import add_optimizer_flags, add_run_directory_flags, run_command
from minibert.config import PRESETS
from minibert.training.finetune import finetune
from minibert.training.finetune_settings import FinetuneSettings

DEFAULTS = FinetuneSettings()


def parse_args(argv=None) -> argparse.Namespace:
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--init-from", metavar="RUN_DIR|HF_DIR",
                   help="a Mini-BERT run directory or a transformers BERT folder to start the encoder from "
                        "(default: the newest complete pretrained run under runs/)")
    p.add_argument("--from-scratch", action="store_true", help="random weights of --config instead")
    p.add_argument("--config", help=f"model preset for --from-scratch: {', '.join(PRESETS)} (default {d.config})")
    p.add_argument("--vocab-size", type=int,
                   help=f"WordPiece vocabulary trained on the training texts, for --from-scratch "
                        f"(default {d.vocab_size})")
    p.add_argument("--task", help=f"sequence or token (default {d.task})")
    p.add_argument("--train", metavar="FILE", help="training examples (default: the built-in task)")
    p.add_argument("--eval", metavar="FILE", help="held-out examples (needed with --train)")
    p.add_argument("--text-column", help="column of the text (default: 'sentence' or 'text')")
    p.add_argument("--text-pair-column", help="column of the second text of sentence-pair tasks")
    p.add_argument("--label-column", help=f"column of the label (default {d.label_column!r})")
    p.add_argument("--tag-column", type=int, help="CoNLL column of the tags (default -1, the last)")
    p.add_argument("--regression", action="store_true", help="numeric labels: one output, MSE loss")
    p.add_argument("--epochs", type=int, help=f"passes over the training examples (default {d.epochs})")
    p.add_argument("--batch-size", type=int, help=f"examples per batch (default {d.batch_size})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--warmup", type=int, help="linear warm-up steps, then linear decay to 0 (default: 10%% of steps)")
    add_optimizer_flags(p, d)
    p.add_argument("--max-len", type=int,
                   help="tokens per example with [CLS]/[SEP]; longer texts are truncated and counted "
                        "(default: 128, or the model's max_position if smaller)")
    p.add_argument("--dropout", type=float, help=f"hidden, attention and classifier dropout (default {d.dropout})")
    p.add_argument("--seed", type=int, help=f"seed for the new head, data order and dropout (default {d.seed})")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="a linear probe: the encoder stays as loaded, only the pooler and classifier train")
    p.add_argument("--backend", help="array backend: numpy, jax, cupy, strict, torch "
                   "(default: $MINIBERT_BACKEND, else numpy)")
    p.add_argument("--eval-every", type=int, help="evaluate every N steps (default: once per epoch)")
    p.add_argument("--save-every", type=int, help="write a checkpoint every N steps (default: once per epoch)")
    add_run_directory_flags(p, d)
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> FinetuneSettings:
    given = vars(args)
    if "resume" in given:
        return FinetuneSettings.resumed(given.pop("resume"), **given)
    return dataclasses.replace(DEFAULTS, **given)


def main(argv=None) -> int:
    """Exit status as scripts/train.py: 0 done; 2 bad input (a data file, a flag, an --init-from that is not a
    BERT, a --resume that does not fit; nothing started, no run directory left); 1 non-finite loss or a failed
    write during the run; 130 / 143 stopped by SIGINT / SIGTERM."""
    return run_command(lambda: finetune(settings_from_args(parse_args(argv))))


if __name__ == "__main__":
    sys.exit(main())
