#!/usr/bin/env python
"""Speed of Mini-BERT's training step and inference forward, measured side by side with PyTorch.

    python scripts/benchmark.py                        # numpy + jax vs PyTorch, presets seed and mini, B32 T128
    python scripts/benchmark.py --quick                # fewer repeats: under 2 minutes on 2 cores
    python scripts/benchmark.py --gpu                  # cupy + jax vs PyTorch CUDA, presets mini and small
    python scripts/benchmark.py --help                 # every flag, and what is timed and how

The benchmark itself is the `bench` package (installed with the project: pip install -e .); see bench/__init__.py.
"""
import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
