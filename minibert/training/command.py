"""What `scripts/train.py` and `scripts/finetune.py` share around a run: exit statuses and signals (host side).

    0 done;  2 bad input, an --out that cannot be written or a run directory in use (nothing started, no run
    directory left);  1 non-finite loss or gradient, or a failed write during the run (the last complete
    checkpoint kept);  130 / 143 stopped by SIGINT / SIGTERM (the loop writes a checkpoint first once training
    has started; before that nothing is saved).
"""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable

from minibert.training.loop import NonFiniteError
from minibert.training.rundir import RunIOError


class _Terminated(Exception):
    """SIGTERM outside the training loop (which turns it into a checkpoint and a clean stop itself)."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def run_command(start: Callable[[], dict]) -> int:
    """Run `start()` (parse the flags, then train; returns the run's result dict) and map what ends it to the
    exit statuses above, printing one `error: ...` line for a failure."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = start()
    except (NonFiniteError, RunIOError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, RuntimeError) as exc:   # DataFileError, CheckpointError: ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Terminated) as exc:
        name = "SIGTERM" if isinstance(exc, _Terminated) or "SIGTERM" in str(exc) else "SIGINT"
        print(f"{name}: stopped at once, without saving; checkpoints already written are intact (resume with "
              "--resume DIR if the run had written one)", file=sys.stderr)
        return 128 + signal.Signals[name].value
    finally:
        signal.signal(signal.SIGTERM, previous)
    if result.get("interrupted"):
        return 128 + signal.Signals[result["interrupted"]].value
    return 0


def add_optimizer_flags(parser: argparse.ArgumentParser, defaults) -> None:
    """--weight-decay and --clip-norm, as train.py and finetune.py both take them (`defaults`: their settings)."""
    parser.add_argument("--weight-decay", type=float,
                        help=f"AdamW decoupled weight decay (default {defaults.weight_decay})")
    parser.add_argument("--clip-norm", type=float, help=f"global gradient-norm clipping (default {defaults.clip_norm})")


def add_run_directory_flags(parser: argparse.ArgumentParser, defaults) -> None:
    """The run-directory flags train.py and finetune.py share: checkpoints kept, dtype, --out, --resume, progress."""
    parser.add_argument("--keep-checkpoints", type=int, help=f"checkpoints kept (default {defaults.keep_checkpoints})")
    parser.add_argument("--dtype", help=f"float32 or float64 (default {defaults.dtype})")
    parser.add_argument("--precision", help="fp32, bf16 or fp16: the matmuls' dtype, with float32 master weights, "
                                            "optimizer and loss; fp16 adds dynamic loss scaling; torch, jax and "
                                            f"cupy only (default {defaults.precision})")
    parser.add_argument("--out", help="run directory to create (default runs/<date-time>)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    parser.add_argument("--resume-fallback", action="store_true",
                        help="with --resume: if the latest checkpoint is corrupted, use the newest older one that "
                             "verifies")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
