"""Pretraining run settings: the command-line flags of `scripts/train.py` as one frozen dataclass, checked once.

`validate` checks what only the command line knows (types, counts, paths, flag combinations) and lets the classes
that own a value check its range: `AdamWConfig` (lr, warm-up, weight decay, clipping) and `BertConfig` (preset,
dropout), their messages given with the flag's name.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from dataclasses import dataclass
from typing import Callable, ClassVar
from pathlib import Path

import backends
from minibert.storage import checkpoint as ckpt
from minibert.config import BertConfig
from minibert.nn.optim import AdamWConfig
from minibert.nn.precision import PRECISIONS, precision_policy
from minibert.data.tokenizer import MINIBERT_SPECIAL_TOKENS as SPECIAL_TOKENS

DTYPES = ("float32", "float64")
LR_SCHEDULES = ("linear", "one-cycle")

# field names of AdamWConfig / BertConfig in their error messages -> the flag that sets them
_FLAG_OF_FIELD = {"warmup_steps": "--warmup", "total_steps": "--steps", "lr": "--lr", "weight_decay": "--weight-decay",
                  "clip_norm": "--clip-norm", "BertConfig.hidden_dropout": "--dropout"}
_FIELD_RE = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(k) for k in _FLAG_OF_FIELD) + r")\b")


def check_dtype_and_precision(dtype, precision) -> None:
    """--dtype and --precision, as train.py and finetune.py take them: ValueError naming the flag."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and dtype != "float32":
        raise ValueError(f"--precision {precision} keeps float32 master weights: it needs --dtype float32, got "
                         f"--dtype {dtype}")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def plural(n: int, noun: str) -> str:
    """"1 example", "3 examples": a count for a message."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class RunSettings:
    """What the settings of a pretraining run (`TrainSettings`) and a fine-tuning run
    (`minibert.training.finetune_settings.FinetuneSettings`) share: the flags both have with the same default
    (below), checked the same way with the ones whose defaults differ (lr, weight_decay, clip_norm, dropout,
    config: `validate_shared`, `check_ranges`), and a run's saved settings read back for `--resume DIR`
    (`resumed`)."""

    backend: str | None = None
    seed: int = 0
    keep_checkpoints: int = 3
    dtype: str = "float32"
    precision: str = "fp32"        # fp32 | bf16 | fp16: the matmuls' dtype (minibert.nn.precision)
    out: str | None = None
    resume: str | None = None
    resume_fallback: bool = False
    progress: bool = True

    SCRIPT: ClassVar[str] = ""                  # the script that writes such runs (for messages)
    RESUME_FIXED: ClassVar[tuple] = ()          # settings a resumed run keeps (others, e.g. eval_every, may change)
    KIND: ClassVar[str] = ""                    # "pretraining", "fine-tuning"
    MARKER: ClassVar[str | None] = None         # a key every saved run of this kind has
    SAVED_BEFORE: ClassVar[dict] = {}           # flags added after runs were first saved: the value those ran with

    def validate_shared(self) -> None:
        """The shared flags' types and values; ValueError/TypeError naming the flag, before any work."""
        if self.backend is not None and not (isinstance(self.backend, str) and self.backend):
            raise TypeError(f"--backend must be a backend name, got {self.backend!r}")
        if not _is_int(self.keep_checkpoints) or self.keep_checkpoints < 1:
            raise ValueError(f"--keep-checkpoints must be a positive int, got {self.keep_checkpoints!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"--seed must be a non-negative int, got {self.seed!r}")
        for name in ("lr", "weight_decay", "clip_norm", "dropout"):
            if not _is_real(getattr(self, name)):
                raise ValueError(f"{flag(name)} must be a finite number, got {getattr(self, name)!r}")
        check_dtype_and_precision(self.dtype, self.precision)
        if self.resume_fallback and not self.resume:
            raise ValueError("--resume-fallback only applies with --resume DIR")

    def check_ranges(self, optimizer: Callable[[], AdamWConfig]) -> None:
        """The ranges, as the classes that use them define them: `optimizer()` (AdamW with the schedule) and the
        preset with the dropout; their messages given with the flag's name."""
        try:
            optimizer()
            BertConfig.preset(self.config, hidden_dropout=self.dropout, attention_dropout=self.dropout)
        except ValueError as exc:
            message = _FIELD_RE.sub(lambda m: _FLAG_OF_FIELD[m.group(1)], str(exc))
            raise ValueError(("--config: " if message.startswith("unknown preset") else "") + message) from None

    @classmethod
    def resumed(cls, run_dir, **overrides):
        """The saved settings of the run in `run_dir`, with `overrides` (for `--resume DIR` given alone)."""
        if not Path(run_dir).is_dir():
            raise FileNotFoundError(f"--resume {run_dir}: no such directory")
        saved = ckpt.read_run_config(run_dir).get("training")
        if not isinstance(saved, dict) or (cls.MARKER is not None and cls.MARKER not in saved):
            raise ckpt.CheckpointError(f"{Path(run_dir) / ckpt.RUN_CONFIG} has no {cls.KIND} settings (its "
                                       f"\"training\" section): --resume {run_dir} needs a run written by "
                                       f"{cls.SCRIPT}")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {**cls.SAVED_BEFORE,
                  **{k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items() if k in fields}}
        values.update(overrides, resume=str(run_dir))
        return cls(**values)


@dataclass(frozen=True)
class TrainSettings(RunSettings):
    """Everything a run depends on. Field names are the command-line flags (with - for _)."""

    SCRIPT: ClassVar[str] = "scripts/train.py"
    KIND: ClassVar[str] = "pretraining"
    RESUME_FIXED: ClassVar[tuple] = ("config", "corpus", "data", "vocab_size", "batch_size", "seq_len", "accum_steps",
                                     "mask_rate", "lr", "lr_schedule", "warmup", "weight_decay", "clip_norm", "dropout",
                                     "seed", "dtype", "precision", "steps", "init_from")
    SAVED_BEFORE: ClassVar[dict] = {"mask_rate": 0.15, "lr_schedule": "linear"}

    config: str = "tiny"
    corpus: tuple[str, ...] = ()
    data: str | None = None         # a prepared corpus (scripts/prepare_data.py): memory-mapped, streamed
    vocab_size: int = 4096
    steps: int = 5600
    batch_size: int = 32
    seq_len: int = 64
    accum_steps: int = 1
    mask_rate: float = 0.3          # share of each sequence's non-special tokens to predict (80/10/10 kept)
    lr: float = 2e-3
    lr_schedule: str = "one-cycle"  # linear: warm-up then linear decay; one-cycle: the peak at half the steps
    warmup: int | None = None       # None = 10% of steps (linear); not with one-cycle
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    dropout: float = 0.0
    eval_every: int = 200
    eval_batches: int = 0          # 0 = the whole held-out split
    save_every: int = 500
    init_from: str | None = None
    skip_nonfinite: bool = False
    # how the run is launched (not stored in config.json: a resumed run may use other devices and hosts)
    devices: int | str | None = None    # None = 1, or "all" with several processes
    distributed: bool = False           # join a cluster JAX detects (Slurm, Open MPI, ...)
    coordinator: str | None = None      # HOST:PORT of process 0
    num_processes: int | None = None
    process_id: int | None = None
    init_timeout: int = 300             # seconds to wait for the coordinator and the other processes

    @property
    def multi_process(self) -> bool:
        return self.distributed or self.coordinator is not None

    def validate(self) -> None:
        """Raise on a bad value, naming the flag and showing the value, before any work starts."""
        self.validate_shared()
        for name in ("steps", "batch_size", "accum_steps", "eval_every", "save_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{flag(name)} must be a positive int, got {value!r}")
        if not _is_int(self.vocab_size) or self.vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"--vocab-size must be an int > {len(SPECIAL_TOKENS)} (the special tokens "
                             f"{', '.join(SPECIAL_TOKENS)} come first), got {self.vocab_size!r}")
        if not _is_int(self.seq_len) or self.seq_len < 5:
            raise ValueError(f"--seq-len must be an int >= 5 ([CLS] a [SEP] b [SEP]), got {self.seq_len!r}")
        if not _is_int(self.eval_batches) or self.eval_batches < 0:
            raise ValueError(f"--eval-batches must be an int >= 0 (0 = all), got {self.eval_batches!r}")
        if not _is_real(self.mask_rate) or not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"--mask-rate must be a number in (0, 1), the share of tokens to predict, "
                             f"got {self.mask_rate!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lr_schedule == "one-cycle" and self.warmup is not None:
            raise ValueError(f"--warmup {self.warmup!r} cannot be used with --lr-schedule one-cycle, whose peak is "
                             "at half the steps; use --lr-schedule linear --warmup N for another warm-up")
        if not isinstance(self.corpus, (tuple, list)) or not all(isinstance(c, str) and c for c in self.corpus):
            raise TypeError(f"--corpus must be a list of file paths or globs, got {self.corpus!r}")
        if self.data is not None and self.corpus:
            raise ValueError("--data and --corpus cannot be used together: --data is the corpus, prepared")
        for name in ("out", "resume", "init_from", "data"):
            if getattr(self, name) is not None and not (isinstance(getattr(self, name), str) and getattr(self, name)):
                raise TypeError(f"{flag(name)} must be a directory path, got {getattr(self, name)!r}")
        if self.resume and self.init_from:
            raise ValueError("--resume and --init-from cannot be used together: a resumed run already has weights")
        self._validate_launch()
        self.check_ranges(self.optimizer)

    def _validate_launch(self) -> None:
        if self.devices is not None and self.devices != "all" and (not _is_int(self.devices) or self.devices < 1):
            raise ValueError(f"--devices must be a positive int or 'all', got {self.devices!r}")
        if _is_int(self.devices) and self.batch_size % self.devices:
            raise ValueError(f"--batch-size {self.batch_size} cannot be split evenly over --devices {self.devices}: "
                             f"use a multiple of {self.devices} (each device gets --batch-size / --devices rows)")
        if not _is_int(self.init_timeout) or self.init_timeout < 1:
            raise ValueError(f"--init-timeout must be a positive int (seconds), got {self.init_timeout!r}")
        explicit = {flag(k): getattr(self, k) for k in ("coordinator", "num_processes", "process_id")}
        given = [k for k, v in explicit.items() if v is not None]
        if self.distributed and given:
            raise ValueError(f"--distributed (detect the cluster) and {', '.join(given)} (name it) exclude each "
                             "other; give one or the other")
        if given and len(given) < 3:
            missing = [k for k in explicit if k not in given]
            raise ValueError(f"{', '.join(given)} needs {' and '.join(missing)} too: a multi-process run is "
                             "--coordinator HOST:PORT --num-processes P --process-id I (I in 0..P-1)")
        if not given:
            return
        host, _, port = self.coordinator.rpartition(":") if isinstance(self.coordinator, str) else ("", "", "")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--coordinator must be HOST:PORT (port 1..65535), got {self.coordinator!r}")
        if not _is_int(self.num_processes) or self.num_processes < 1:
            raise ValueError(f"--num-processes must be a positive int, got {self.num_processes!r}")
        if not _is_int(self.process_id) or not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"--process-id {self.process_id!r} is out of range for --num-processes "
                             f"{self.num_processes}; allowed: 0..{self.num_processes - 1}")

    def optimizer(self) -> AdamWConfig:
        """AdamW with the schedule: "linear" warms up for --warmup steps (default 10%) then decays linearly to 0
        (BERT); "one-cycle" rises linearly to the peak at half the steps and falls linearly to 0 (Cramming)."""
        if self.lr_schedule == "one-cycle":
            warmup = self.steps // 2
        else:
            warmup = self.steps // 10 if self.warmup is None else self.warmup
        return AdamWConfig(lr=self.lr, warmup_steps=warmup, total_steps=self.steps,
                           weight_decay=self.weight_decay, clip_norm=self.clip_norm)

    def record(self) -> dict:
        """The settings as JSON values (config.json's "training"), without how the run is launched (LAUNCH)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
                if k not in LAUNCH}


# how a run is started: may differ between a run and its resumption, so kept out of config.json
LAUNCH = ("devices", "distributed", "coordinator", "num_processes", "process_id", "init_timeout")

def get_backend(name: str | None, dtype: str, precision: str = "fp32"):
    """The backend, with `dtype` and `precision` checked; errors say where the backend name came from."""
    try:
        backend = backends.get_backend(name)
    except (ValueError, backends.BackendUnavailableError) as exc:
        source = (f"--backend {name}" if name else
                  f"${backends.ENV_VAR}={os.environ[backends.ENV_VAR]}" if os.environ.get(backends.ENV_VAR)
                  else f"default backend {backends.DEFAULT_BACKEND}")
        raise type(exc)(f"{source}: {exc}") from None
    try:
        backend.dtype(dtype)
    except ValueError as exc:
        raise ValueError(f"--dtype {dtype}: {exc}") from None
    try:
        precision_policy(precision, backend, dtype)
    except ValueError as exc:
        raise ValueError(f"--precision {precision}: {exc}") from None
    return backend
