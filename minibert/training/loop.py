"""The training loop, shared by every task (host side): steps, metrics, evaluation, checkpoints, resume, signals.

A task (masked-LM pretraining in `minibert.training.pretrain`, fine-tuning next) supplies its model config, its data, its
loss and its metrics through the `Task` interface; `run_loop` does the rest the same way for all of them:

    for each step:  task.train_batches -> step (forward_backward per micro-batch, AdamW) -> metrics.jsonl
                    every eval_every: task.evaluate;  every save_every (and at the end, or on SIGINT/SIGTERM):
                    a checkpoint with the task's data position;  a non-finite loss stops (or is skipped)
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from minibert.storage import checkpoint as ckpt
from minibert.config import BertConfig
from minibert.nn.optim import AdamWConfig, init_state, learning_rate
from minibert.nn.precision import MIN_LOSS_SCALE, host_loss_scale, init_loss_scale, precision_policy
from minibert.training.rundir import RunDir
from minibert.nn.step import make_train_step


class Task(Protocol):
    """What a training task gives the loop. Built for one backend and dtype, before the loop starts."""

    config: BertConfig          # the model's config; any dropout in it (`has_dropout`) makes the loop draw a key per step
    tokens_per_batch: int       # tokens in one micro-batch (for tokens/s)

    def initial_params(self) -> dict[str, np.ndarray]:
        """A fresh run's parameters as host arrays (the loop casts them to its dtype)."""

    def forward_backward(self, params, arrays, key, normaliser) -> tuple:
        """(loss as a 0-d array, grads named like params) for one micro-batch of device arrays; pure array code
        (the loop compiles it into the step where the backend can). key: a dropout key, or None.
        loss = (sum of the micro-batch's per-item losses) / normaliser, where normaliser (a 0-d array) is the sum
        of `label_count` over every micro-batch of the step (on every device): the step sums these losses and
        their gradients, so the step's loss is the mean over all its labelled items (`minibert.nn.step`);
        normaliser=None must give the micro-batch's own mean (what evaluation and `loss_and_grads` report)."""

    def label_count(self, arrays):
        """The labelled items of one micro-batch as a 0-d float array on the device (MLM: labelled tokens; a
        classification head: labels that are not ignored; regression: rows), padding excluded."""

    def train_batches(self, count: int) -> list:
        """The next `count` micro-batches of one step, as device arrays with one shape."""

    def data_state(self) -> dict:
        """The training stream's position after the batches drawn so far (JSON), stored with each checkpoint."""

    def load_data_state(self, state: dict) -> None:
        """Continue from a stored position; ValueError (or KeyError/TypeError) if it does not fit the data."""

    def evaluate(self, params) -> dict:
        """Held-out metrics (JSON numbers) for metrics.jsonl; "eval_loss" is plotted."""

    def run_config(self) -> dict:
        """The task's entries in config.json besides "model", "training" and "backend"."""

    def run_files(self) -> dict[str, bytes]:
        """Files the run directory keeps (name -> content), e.g. vocab.txt; written once, atomically."""

    def summary(self, metrics: dict) -> str:
        """One line for the end of the run, from the final `evaluate` metrics."""


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    optimizer: AdamWConfig
    seed: int                   # dropout key
    dtype: str
    eval_every: int
    save_every: int
    keep_checkpoints: int
    accum_steps: int = 1
    skip_nonfinite: bool = False
    precision: str = "fp32"     # fp32 | bf16 | fp16 (minibert.nn.precision)
    progress: bool = True
    record: dict | None = None  # the run's settings, stored as config.json's "training"


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


class StopRequested:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step (so a checkpoint can be written).
    A second signal stops at once (KeyboardInterrupt), without saving: checkpoints already written stay intact."""

    def __init__(self):
        self.signal_name = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice")
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_loop(task: Task, run: RunDir, loop: LoopSettings, backend, log: Callable = print) -> dict:
    """Train `task` from `run`'s checkpoint (or from the start) to `loop.steps`; returns the final metrics, or
    {"step", "interrupted", "run_dir"} after SIGINT/SIGTERM (a checkpoint written first)."""
    precision = precision_policy(loop.precision, backend, loop.dtype)
    params, state, start, skipped = _begin(task, run, loop, backend, log, precision.loss_scaling)
    step_fn = make_train_step(task.forward_backward, loop.optimizer, backend, skip_nonfinite=loop.skip_nonfinite,
                              count_fn=task.label_count, precision=precision)
    # a step that is not finite is skipped and counted, never fatal, when asked or when fp16 loss scaling expects it
    skips = loop.skip_nonfinite or precision.loss_scaling
    base_key = backend.key(loop.seed)
    dropout = task.config.has_dropout
    from tqdm import tqdm
    bar = tqdm(total=loop.steps, initial=start, disable=not loop.progress, unit="step", dynamic_ncols=True)

    def save(step):
        extra = {"batcher": task.data_state(), "skipped_nonfinite": skipped}
        if precision.loss_scaling:
            extra["loss_scale"] = host_loss_scale(state["loss_scale"], backend)
        return _save(run, loop, backend, step, params, state, extra)

    with StopRequested() as stop:
        try:
            for step in range(start, loop.steps):
                started, done = time.perf_counter(), step + 1
                key = backend.fold_in(base_key, step) if dropout else None
                scale = host_loss_scale(state["loss_scale"], backend)["scale"] if precision.loss_scaling else None
                params, state, loss, grad_norm = step_fn(params, state, task.train_batches(loop.accum_steps), key, step)
                loss, grad_norm = float(backend.to_numpy(loss)), float(backend.to_numpy(grad_norm))
                finite = math.isfinite(loss) and math.isfinite(grad_norm)
                skipped += not finite
                record = {"step": done, "loss": loss, "lr": float(learning_rate(step, loop.optimizer)),
                          "grad_norm": grad_norm,
                          "tokens_per_s": task.tokens_per_batch * loop.accum_steps / (time.perf_counter() - started)}
                if scale is not None:
                    record["loss_scale"] = scale        # the scale this step's loss was multiplied by
                run.append_metrics({**record, "skipped_nonfinite": skipped} if skips else record)
                if not finite and not skips:
                    raise NonFiniteError(_nonfinite_message(run, done, loss, grad_norm))
                if scale is not None and scale * 0.5 < MIN_LOSS_SCALE and not finite:
                    raise NonFiniteError(f"fp16 loss scale fell below {MIN_LOSS_SCALE:g} at step {done}: every "
                                         "recent step overflowed, even with the loss scaled down, so training "
                                         f"has diverged; the last good checkpoint is {run.last_checkpoint}. Start "
                                         "again with a lower --lr, or with --precision bf16 (float32's range)")
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}", lr=f"{record['lr']:.2e}")
                if done % loop.eval_every == 0 and done < loop.steps:
                    metrics = task.evaluate(params)
                    run.append_metrics({"step": done, **metrics})
                    (bar.write if loop.progress else log)(f"step {done}: {task.summary(metrics)}")
                if done % loop.save_every == 0 or done == loop.steps:
                    save(done)
                if stop.signal_name and done < loop.steps:
                    path = save(done)
                    bar.close()
                    run.plot()
                    log(f"{stop.signal_name} received: saved {path} at step {done}. Resume with: {run.resume_command}")
                    return {"step": done, "interrupted": stop.signal_name, "run_dir": str(run.path)}
        except BaseException:
            run.plot(strict=False)
            raise
        finally:
            bar.close()
    metrics = {"step": loop.steps, **task.evaluate(params)}
    run.append_metrics(metrics)
    run.plot()
    log(f"done: {run.path}  {task.summary(metrics)}")
    return {**metrics, "run_dir": str(run.path)}


def _begin(task: Task, run: RunDir, loop: LoopSettings, backend, log, loss_scaling: bool = False) -> tuple:
    """(params, optimizer state on the backend, first step, skipped steps so far): from the run's checkpoint,
    or fresh (writing config.json and the task's files). With `loss_scaling` the state also holds the fp16 loss
    scaler, from the checkpoint's sidecar when resuming."""
    scaler = {}
    if run.resume is not None:
        point = run.resume
        try:
            task.load_data_state(point.sidecar["batcher"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ckpt.CheckpointError(f"cannot resume {run.path} from {point.checkpoint.name}: {exc} (did the "
                                       "data or its tokenization change?)") from None
        host_params, host_state = ckpt.load_checkpoint(point.checkpoint)
        run.restart(point.step)
        log(f"resuming {run.path} from {point.checkpoint.name} (step {point.step})")
        start, skipped = point.step, int(point.sidecar.get("skipped_nonfinite", 0))
        scaler = point.sidecar.get("loss_scale", {})
    else:
        host_params, host_state, start, skipped = task.initial_params(), None, 0, 0
        run.start({"model": task.config.to_dict(), "training": loop.record or {}, "backend": backend.name,
                   **task.run_config()}, task.run_files())
    params = {k: backend.asarray(v, dtype=loop.dtype) for k, v in host_params.items()}
    state = (init_state(params, backend) if host_state is None else
             {s: {k: backend.asarray(v, dtype=loop.dtype) for k, v in host_state[s].items()} for s in ("m", "v")})
    if loss_scaling:
        state["loss_scale"] = init_loss_scale(backend, **scaler)
    return params, state, start, skipped


def _save(run: RunDir, loop: LoopSettings, backend, step: int, params, state, extra: dict):
    """A checkpoint of `step`, never of non-finite parameters (a poisoned one would replace a good one)."""
    host_params = {k: backend.to_numpy(v) for k, v in params.items()}
    bad = [k for k, v in host_params.items() if not np.isfinite(v).all()]
    if bad:
        raise NonFiniteError(f"parameter {bad[0]} is non-finite after step {step}: not saved; the last good "
                             f"checkpoint is {run.last_checkpoint}. Start again with a lower --lr.")
    host_state = {s: {k: backend.to_numpy(v) for k, v in state[s].items()} for s in ("m", "v")}
    return run.save_checkpoint(step, host_params, host_state, extra, keep=loop.keep_checkpoints)


def _nonfinite_message(run: RunDir, step: int, loss: float, grad_norm: float) -> str:
    last = run.last_checkpoint
    kept = (f"the last good checkpoint, {last} (step {ckpt.checkpoint_step(last)}), is kept; continue from it "
            f"with: {run.resume_command} --skip-nonfinite" if last is not None else
            f"no checkpoint had been written yet in {run.path}")
    return (f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step} (loss={loss}, "
            f"grad_norm={grad_norm}): training stopped without saving this step; {kept}. Or start again with a "
            "lower --lr. (--skip-nonfinite skips such steps, counting them in metrics.jsonl as skipped_nonfinite.)")
