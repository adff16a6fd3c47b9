"""The run directory (host side): where a run goes, what it resumes from, and everything it writes.

    DIR/config.json      model config, training settings, backend, the task's own entries
    DIR/<task files>     e.g. vocab.txt
    DIR/ckpt-*.safetensors + ckpt-*.json, DIR/latest     (minibert.storage.checkpoint)
    DIR/metrics.jsonl    one JSON record per step and per evaluation
    DIR/loss.png         training and held-out loss against step
    DIR/.lock            while a writer holds the directory (minibert.storage.fileio.DirectoryLock)

`open_run` decides and checks everything before any work: a fresh `--out` is created and locked (refused if it
cannot be, if another process holds it, or if it already holds a run); a `--resume DIR` is locked and its latest
checkpoint verified and its settings compared. The lock is held until the `RunDir` is closed. Every write error
(a full disk, permission denied, a read-only file system, the directory removed) becomes one `RunIOError` that
says what failed, which checkpoint is safe and the command that resumes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minibert.data.tokenizer import load_tokenizer
from minibert.storage import checkpoint as ckpt
from minibert.storage.fileio import DirectoryLock, atomic_write_bytes, atomic_write_json, remove_stale_temporaries

METRICS = "metrics.jsonl"
PLOT = "loss.png"


class RunIOError(RuntimeError):
    """Writing into the run directory failed (the OS error is in the message); the run stopped."""


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: Path          # verified (size, sha256)
    sidecar: dict             # its step, data position ("batcher"), skipped_nonfinite
    saved: dict               # the run's config.json

    @property
    def step(self) -> int:
        return self.sidecar["step"]


class RunDir:
    """A locked run directory (a context manager: leaving it releases the lock; leaving it with an error before
    `start` removes the directories it created, so a refused run leaves nothing behind)."""

    def __init__(self, path: Path, lock: DirectoryLock, resume_command: str, resume: ResumePoint | None = None,
                 created: Path | None = None):
        self.path, self.resume_command, self.resume = path, resume_command, resume
        self.last_checkpoint = resume.checkpoint if resume is not None else None
        self._lock, self._created, self._started = lock, created, False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> None:
        """Release the lock; after a failure before `start`/`restart`, also remove the directories `open_run`
        created."""
        self._lock.release()
        if failed and not self._started:
            _remove_created(self.path, self._created)

    def _io_error(self, what: str, exc: OSError) -> RunIOError:
        try:           # what `latest` names now, verified (also if the failed write was after `latest` moved)
            path, sidecar = ckpt.latest_checkpoint(self.path)
            safe = (f"the last complete checkpoint, {path} (step {sidecar['step']}), is safe and `latest` names "
                    f"it. Once the cause is fixed, resume with: {self.resume_command}")
        except (OSError, ValueError) as unreadable:     # CheckpointError is a ValueError
            safe = (f"no complete checkpoint can be read in {self.path} ({unreadable}). Once the cause is fixed, "
                    "start the run again" if self.last_checkpoint is None else
                    f"no complete checkpoint can be read in {self.path} any more ({unreadable})")
        return RunIOError(f"could not write {what} in {self.path}: {exc}. Training stopped; no partial file was "
                          f"left; {safe}")

    def start(self, run_config: dict, files: dict[str, bytes]) -> None:
        """A fresh run's first files: config.json, the task's `files` (name -> content), an empty metrics.jsonl."""
        self._started = True
        try:
            remove_stale_temporaries(self.path)
            atomic_write_json(self.path / ckpt.RUN_CONFIG, run_config)
            for name, content in files.items():
                atomic_write_bytes(self.path / name, content)
            atomic_write_bytes(self.path / METRICS, b"")
        except OSError as exc:
            raise self._io_error("the run's first files", exc) from None

    def restart(self, step: int) -> None:
        """A resumed run: drop killed writers' temporaries and the metrics after `step` (and a half line)."""
        self._started = True
        path = self.path / METRICS
        try:
            remove_stale_temporaries(self.path)
            kept = []
            for line in (path.read_text(errors="replace").splitlines() if path.exists() else []):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                    kept.append(line)
            atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())
        except OSError as exc:
            raise self._io_error(METRICS, exc) from None

    def append_metrics(self, record: dict) -> None:
        try:
            with open(self.path / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise self._io_error(METRICS, exc) from None

    def save_checkpoint(self, step: int, params: dict, state: dict, extra: dict, keep: int) -> Path:
        """`minibert.storage.checkpoint.save_checkpoint` (host arrays), once per step."""
        if self.last_checkpoint is not None and ckpt.checkpoint_step(self.last_checkpoint) == step:
            return self.last_checkpoint
        try:
            self.last_checkpoint = ckpt.save_checkpoint(self.path, step, params, state, extra, keep=keep)
        except OSError as exc:
            raise self._io_error(f"checkpoint {ckpt.checkpoint_name(step)} (step {step})", exc) from None
        return self.last_checkpoint

    def resumed_model(self, dtype: str, check=None) -> tuple:
        """(the run's model config, its tokenizer) for a resumed run: `check(config)` first where given (a task's own
        condition, e.g. unchanged labels), then the checkpoint's tensors against the config and `dtype`, then the
        run's vocabulary, which must be there."""
        config = ckpt.run_model_config(self.path)
        if check is not None:
            check(config)
        ckpt.check_checkpoint_tensors(self.resume.checkpoint, config, dtype)
        try:
            return config, load_tokenizer(self.path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.path / 'vocab.txt'} not found: --resume {self.path} needs the run's own "
                                    "vocabulary") from None

    def plot(self, strict: bool = True) -> None:
        """loss.png from metrics.jsonl; `strict=False` (while another error is being reported) ignores I/O errors."""
        try:
            plot_metrics(self.path)
        except OSError as exc:
            if strict:
                raise self._io_error(PLOT, exc) from None


class FollowerRunDir(RunDir):
    """A run directory as processes other than 0 of a multi-process run see it: the same path and resume point
    (read from the shared file system), but no lock and no writes: process 0 writes everything."""

    def __init__(self, path: Path, resume_command: str, resume: ResumePoint | None = None):
        super().__init__(path, lock=None, resume_command=resume_command, resume=resume)

    def close(self, failed: bool = False) -> None:
        pass

    def start(self, run_config: dict, files: dict[str, bytes]) -> None:
        self._started = True

    def restart(self, step: int) -> None:
        self._started = True

    def append_metrics(self, record: dict) -> None:
        pass

    def save_checkpoint(self, step: int, params: dict, state: dict, extra: dict, keep: int) -> Path | None:
        return self.last_checkpoint

    def plot(self, strict: bool = True) -> None:
        pass


# held-out metrics drawn under the losses when a run records them (fine-tuning; eval_accuracy: pretraining)
PLOTTED_METRICS = ("accuracy", "macro_f1", "token_accuracy", "span_f1", "pearson", "spearman", "eval_accuracy",
                   "baseline_accuracy")


def plot_metrics(run_dir: Path) -> None:
    """loss.png: training loss (and its running mean) and held-out loss against step; below them, the held-out
    metrics the run records (accuracy, macro-F1, span F1, correlations, the majority-class baseline)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    curves = {name: [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
              for name in PLOTTED_METRICS}
    curves = {name: points for name, points in curves.items() if points}
    if curves:
        fig, (ax, below) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True, height_ratios=(3, 2))
        for name, points in curves.items():
            style = "--" if name == "baseline_accuracy" else "o-"
            below.plot(*zip(*points), style, label=name.replace("_", " "))
        below.set_xlabel("step")
        below.set_ylabel("held-out metric")
        below.grid(alpha=0.3)
        below.legend(fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        steps, losses = map(np.asarray, zip(*train))
        ax.plot(steps, losses, color="0.75", linewidth=0.8, label="train loss")
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="C0", label=f"train loss ({window}-step mean)")
    if evals:
        ax.plot(*zip(*evals), "o-", color="C1", label="held-out loss")
    if not curves:
        ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / PLOT, dpi=100)
    plt.close(fig)


def _remove_created(run_dir: Path, created: Path | None) -> None:
    """Remove `run_dir` and its parents up to `created` (the topmost one `open_run` made), if still empty."""
    if created is None:
        return
    for directory in [run_dir, *run_dir.parents]:
        try:
            directory.rmdir()
        except OSError:
            return
        if directory == created:
            return


def _lock(run_dir: Path, flag: str) -> DirectoryLock:
    try:
        return DirectoryLock(run_dir, "run directory").acquire()
    except OSError as exc:
        raise type(exc)(f"{flag} {run_dir} is not writable: {exc}") from None


def open_run(*, out: str | None, resume: str | None, settings: dict, fixed: tuple[str, ...], fallback: bool,
             script: str, writer: bool = True) -> RunDir:
    """The locked run directory, all checked before any work (on a refusal the lock is released and nothing is
    left behind).

    out: a fresh run's directory (None: runs/<date-time>). resume: a run to continue; its config.json's
    "training" must equal `settings` on each of `fixed`, and its latest checkpoint must verify (`fallback`: or
    the newest older one that does) and carry its data position. script: the command line's script, for the
    resume command in messages (`python scripts/train.py --resume DIR`). writer=False (processes other than 0
    of a multi-process run): a `FollowerRunDir`, which reads the resume point but creates, locks and writes
    nothing."""
    if not writer:
        run_dir = Path(resume or out or "runs/(process 0's run)")
        if resume and not run_dir.is_dir():
            raise FileNotFoundError(f"--resume {run_dir}: no such directory (every process must see the run "
                                    "directory, on a shared file system)")
        point = _resume_point(run_dir, settings, fixed, fallback, script) if resume else None
        return FollowerRunDir(run_dir, f"python {script} --resume {run_dir}", point)
    if resume:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume {run_dir}: no such directory")
        run = RunDir(run_dir, _lock(run_dir, "--resume"), f"python {script} --resume {run_dir}")
        try:
            run.resume = _resume_point(run_dir, settings, fixed, fallback, script)
        except BaseException:
            run.close(failed=True)
            raise
        run.last_checkpoint = run.resume.checkpoint
        return run
    run_dir = Path(out or time.strftime("runs/%Y%m%d-%H%M%S"))
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} exists and is not a directory")
    created = next((d for d in reversed([run_dir, *run_dir.parents]) if not d.exists()), None)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_created(run_dir, created)
        raise type(exc)(f"--out {run_dir} cannot be created: {exc}") from None
    try:
        lock = _lock(run_dir, "--out")
    except BaseException:
        _remove_created(run_dir, created)
        raise
    run = RunDir(run_dir, lock, f"python {script} --resume {run_dir}", created=created)
    if (run_dir / ckpt.LATEST).exists() or ckpt.complete_checkpoints(run_dir):
        run.close(failed=True)
        raise FileExistsError(f"--out {run_dir} already holds a run with checkpoints; use --resume {run_dir} "
                              "(add --resume-fallback if its latest checkpoint is damaged) or another --out")
    return run


def _resume_point(run_dir: Path, settings: dict, fixed: tuple[str, ...], fallback: bool, script: str) -> ResumePoint:
    saved = ckpt.read_run_config(run_dir)
    if not isinstance(saved.get("training"), dict):
        raise ckpt.CheckpointError(f"{run_dir / ckpt.RUN_CONFIG} has no \"training\" section: "
                                   f"--resume {run_dir} needs a run written by {script}")
    mismatched = {k: (saved["training"][k], settings[k]) for k in fixed
                  if k in saved["training"] and settings[k] != saved["training"][k]}
    if mismatched:
        detail = ", ".join(f"--{k.replace('_', '-')}: run has {a!r}, asked {b!r}" for k, (a, b) in mismatched.items())
        raise ckpt.CheckpointError(f"cannot resume {run_dir}: settings differ from the run's ({detail}); "
                                   "pass the run's own settings or leave them out")
    path, sidecar = ckpt.latest_checkpoint(run_dir, fallback=fallback)
    if not isinstance(sidecar.get("batcher"), dict):
        raise ckpt.CheckpointError(f"checkpoint {path} has no data position (\"batcher\") in its sidecar "
                                   f"{path.with_suffix('.json').name}: it cannot be resumed exactly")
    return ResumePoint(path, sidecar, saved)
