#!/usr/bin/env python
"""Pretrain a BERT masked-LM from scratch, on any backend, with no download.

    python scripts/train.py                                  # numpy (or $MINIBERT_BACKEND), `tiny` preset,
                                                             # the embedded corpus, about 6 minutes on 2 cores
    MINIBERT_BACKEND=jax python scripts/train.py --config mini --seq-len 128
    python scripts/train.py --resume runs/20261127-120000    # continue a stopped run exactly
    python scripts/prepare_data.py --corpus big/*.txt --out data/big && python scripts/train.py --data data/big
    python scripts/train.py --backend jax --devices all      # data-parallel over every device of this machine
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from minibert.training.command import add_optimizer_flags, add_run_directory_flags, run_command
from minibert.config import PRESETS
from minibert.training.pretrain import train
from minibert.training.settings import LR_SCHEDULES, TrainSettings

DEFAULTS = TrainSettings()


def parse_args(argv=None) -> argparse.Namespace:
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--backend", help="array backend: numpy, jax, cupy, strict, torch "
                   "(default: $MINIBERT_BACKEND, else numpy)")
    p.add_argument("--config", help=f"model size preset: {', '.join(PRESETS)} (default {d.config})")
    p.add_argument("--corpus", nargs="+", metavar="PATH",
                   help="UTF-8 text files or globs to train on (default: the embedded corpus of Python's docs); "
                   "tokenized once into a cache under $MINIBERT_CACHE/data and streamed from it")
    p.add_argument("--data", metavar="DATA_DIR",
                   help="a prepared corpus (scripts/prepare_data.py): memory-mapped token shards, streamed; its "
                   "tokenizer is the run's")
    p.add_argument("--vocab-size", type=int, help=f"WordPiece vocabulary to train (default {d.vocab_size})")
    p.add_argument("--steps", type=int, help=f"optimizer updates (default {d.steps})")
    p.add_argument("--batch-size", type=int, help=f"sequences per micro-batch (default {d.batch_size})")
    p.add_argument("--seq-len", type=int, help=f"tokens per sequence, [CLS] A [SEP] B [SEP] (default {d.seq_len})")
    p.add_argument("--accum-steps", type=int, help=f"micro-batches accumulated per update (default {d.accum_steps})")
    p.add_argument("--mask-rate", type=float, help="share of each sequence's tokens to predict, of those 80%% "
                   f"[MASK], 10%% random, 10%% unchanged (default {d.mask_rate}; held-out evaluation always masks 15%%)")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="linear: --warmup steps up, then linear decay to 0; one-cycle: linear up to the peak at half "
                        f"the steps, then linear down to 0 (default {d.lr_schedule})")
    p.add_argument("--warmup", type=int, help="linear warm-up steps, then linear decay to 0 (default: 10%% of --steps; "
                   "--lr-schedule linear only)")
    add_optimizer_flags(p, d)
    p.add_argument("--dropout", type=float, help=f"hidden and attention dropout (default {d.dropout})")
    p.add_argument("--seed", type=int, help=f"seed for weights, data order, masking and dropout (default {d.seed})")
    p.add_argument("--eval-every", type=int, help=f"evaluate on the held-out split every N steps (default {d.eval_every})")
    p.add_argument("--eval-batches", type=int, help="held-out batches per evaluation (default 0 = all)")
    p.add_argument("--save-every", type=int, help=f"write a checkpoint every N steps (default {d.save_every})")
    p.add_argument("--init-from", metavar="HF_DIR",
                   help="start from a transformers BERT folder as downloaded (config.json, model.safetensors or "
                        "shards, vocab.txt or tokenizer.json; BertForMaskedLM, BertForPreTraining, or BertModel with "
                        "a fresh MLM head) instead of random weights: its architecture and tokenizer replace "
                        "--config and --vocab-size, and --dropout applies")
    p.add_argument("--skip-nonfinite", action="store_true",
                   help="skip steps with a non-finite loss or gradient (counted in metrics) instead of stopping")
    add_run_directory_flags(p, d)
    g = p.add_argument_group("many devices and hosts (JAX backend; see README, Training on many devices)")
    g.add_argument("--devices", type=_devices, metavar="N|all",
                   help="split each batch by rows over N devices (all: every device of every process); "
                        "--batch-size must divide by N (default 1, or all with several processes)")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process run whose cluster JAX detects (Slurm, Open MPI, ...)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="multi-process run: process 0's address")
    g.add_argument("--num-processes", type=int, metavar="P", help="multi-process run: number of processes")
    g.add_argument("--process-id", type=int, metavar="I", help="multi-process run: this process, 0..P-1")
    g.add_argument("--init-timeout", type=int, metavar="S",
                   help=f"seconds to wait for the coordinator and the other processes (default {d.init_timeout})")
    return p.parse_args(argv)


def _devices(text: str):
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'all', got {text!r}") from None


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    given = vars(args)
    if "corpus" in given:
        given["corpus"] = tuple(given["corpus"])
    if "resume" in given:
        return TrainSettings.resumed(given.pop("resume"), **given)
    return dataclasses.replace(DEFAULTS, **given)


def main(argv=None) -> int:
    """Exit status: 0 done; 2 bad input, an --out that cannot be written or a run directory in use by another
    process (nothing started); 1 non-finite loss or gradient, or a failed write (disk full, ...) during the run
    (the last complete checkpoint kept); 130 / 143 stopped by SIGINT / SIGTERM (a checkpoint was written if
    training had started)."""
    return run_command(lambda: train(settings_from_args(parse_args(argv))))


if __name__ == "__main__":
    sys.exit(main())
