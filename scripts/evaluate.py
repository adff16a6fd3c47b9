#!/usr/bin/env python
"""Held-out masked-LM loss, perplexity and accuracy of a training run, beside the most-frequent-token baseline.

    python scripts/evaluate.py runs/20261127-120000 [--backend jax] [--json out.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minibert.fileio import atomic_write_json
from minibert.inference import load_run
from minibert.pretrain import evaluate, load_data
from minibert.settings import resume_settings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a directory written by scripts/train.py")
    p.add_argument("--backend", help="array backend (default: $MINIBERT_BACKEND, else numpy)")
    p.add_argument("--eval-batches", type=int, default=0, help="held-out batches to use (default 0 = all)")
    p.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
    args = p.parse_args(argv)
    if args.eval_batches < 0:
        p.error(f"--eval-batches must be >= 0 (0 = all), got {args.eval_batches}")
    try:
        config, params, tokenizer, backend = load_run(args.run_dir, args.backend)
        settings = resume_settings(args.run_dir, backend=backend.name)
        data = load_data(settings, Path(args.run_dir) / "vocab.txt")
        metrics = evaluate(params, data, config, backend, args.eval_batches)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:   # CheckpointError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    baseline_token = tokenizer.id_to_token(data.baseline_token)
    print(f"run:                    {args.run_dir}  (backend {backend.name})")
    print(f"held-out masked tokens: {metrics['eval_tokens']}")
    print(f"{'':24}{'model':>10}{'most-frequent token':>22}")
    print(f"{'masked-token accuracy':24}{metrics['eval_accuracy']:>10.4f}{metrics['baseline_accuracy']:>15.4f} "
          f"({baseline_token!r})")
    print(f"{'loss (nats/token)':24}{metrics['eval_loss']:>10.4f}")
    print(f"{'perplexity':24}{metrics['eval_perplexity']:>10.2f}")
    print(f"accuracy / baseline:    {metrics['eval_accuracy'] / max(metrics['baseline_accuracy'], 1e-12):.2f}x")
    if args.json:
        atomic_write_json(args.json, {**metrics, "baseline_token": baseline_token})
    return 0


if __name__ == "__main__":
    sys.exit(main())
