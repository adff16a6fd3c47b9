#!/usr/bin/env python
"""Fill in the [MASK] tokens of a sentence with a trained run: top-k tokens with their probabilities.

    python scripts/predict.py runs/20261127-120000 "the [MASK] function returns a list" [--top-k 5]
"""
from __future__ import annotations

import argparse
import sys

from minibert.inference import fill_mask, load_run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a directory written by scripts/train.py")
    p.add_argument("text", help="text with one or more [MASK] tokens")
    p.add_argument("--top-k", type=int, default=5, help="fills to show per [MASK] (default 5)")
    p.add_argument("--backend", help="array backend (default: $MINIBERT_BACKEND, else numpy)")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error(f"--top-k must be >= 1, got {args.top_k}")
    try:
        config, params, tokenizer, backend = load_run(args.run_dir, args.backend)
        fills = fill_mask(args.text, config, params, tokenizer, backend, args.top_k)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:   # CheckpointError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for n, candidates in enumerate(fills, 1):
        print(f"[MASK] #{n}:")
        for token, prob in candidates:
            print(f"  {prob:7.2%}  {token}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
