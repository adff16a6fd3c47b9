"""What `scripts/train.py` and `scripts/finetune.py` share around a run: exit statuses and signals (host side).

    0 done;  2 bad input, an --out that cannot be written or a run directory in use (nothing started, no run
    directory left);  1 non-finite loss or gradient, or a failed write during the run (the last complete
    checkpoint kept);  130 / 143 stopped by SIGINT / SIGTERM (the loop writes a checkpoint first once training
    has started; before that nothing is saved).
"""
from __future__ import annotations

import signal
import sys
from typing import Callable

from minibert.loop import NonFiniteError
from minibert.rundir import RunIOError


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
