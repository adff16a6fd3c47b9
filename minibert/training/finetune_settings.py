"""The settings of a fine-tuning run (`scripts/finetune.py`): `FinetuneSettings`, checked by `validate()` before
any work; `FinetuneSettings.resumed(DIR)` reads a run's saved settings back (both shared with pretraining's
`RunSettings`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from minibert.storage import checkpoint as ckpt
from minibert.config import BertConfig
from minibert.nn.optim import AdamWConfig
from minibert.training.settings import RunSettings, _is_int, flag
from minibert.data.tokenizer import MINIBERT_SPECIAL_TOKENS as SPECIAL_TOKENS

CLASSIFIER_TASKS = ("sequence", "token")


@dataclass(frozen=True)
class FinetuneSettings(RunSettings):
    """Everything a fine-tuning run depends on. Field names are the command-line flags (with - for _)."""

    SCRIPT: ClassVar[str] = "scripts/finetune.py"
    KIND: ClassVar[str] = "fine-tuning"
    RESUME_FIXED: ClassVar[tuple] = ("init_from", "from_scratch", "config", "vocab_size", "task", "train", "eval",
                                     "text_column", "text_pair_column", "label_column", "tag_column", "regression",
                                     "epochs", "batch_size", "lr", "warmup", "weight_decay", "clip_norm", "max_len",
                                     "dropout", "seed", "freeze_encoder", "dtype", "precision")
    MARKER: ClassVar[str | None] = "task"

    init_from: str | None = None      # a Mini-BERT run or a transformers BERT folder; None: the default run
    from_scratch: bool = False        # random weights of the --config preset instead
    config: str = "seed"              # the preset for --from-scratch
    vocab_size: int = 8192            # WordPiece trained on the training texts for --from-scratch
    task: str = "sequence"
    train: str | None = None          # None: the built-in task (docstring package classification)
    eval: str | None = None
    text_column: str | None = None    # None: "sentence" or "text", whichever the file has
    text_pair_column: str | None = None
    label_column: str = "label"
    tag_column: int = -1              # CoNLL column of the tags (token task)
    regression: bool = False
    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3                  # measured best of 1e-4 and 1e-3 for the small presets; BERT-base: 2e-5..5e-5
    warmup: int | None = None         # None = 10% of the steps
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    max_len: int | None = None        # None = min(128, the model's max_position)
    dropout: float = 0.1
    freeze_encoder: bool = False
    eval_every: int | None = None     # None = once per epoch
    save_every: int | None = None     # None = once per epoch

    def validate(self) -> None:
        """Raise on a bad value, naming the flag and showing the value, before any work starts."""
        self.validate_shared()
        if self.task not in CLASSIFIER_TASKS:
            raise ValueError(f"--task must be one of {', '.join(CLASSIFIER_TASKS)}, got {self.task!r}")
        for name in ("epochs", "batch_size"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be a positive int, got {getattr(self, name)!r}")
        for name in ("eval_every", "save_every", "max_len", "warmup"):
            value = getattr(self, name)
            low = 0 if name == "warmup" else 3 if name == "max_len" else 1
            if value is not None and (not _is_int(value) or value < low):
                raise ValueError(f"{flag(name)} must be an int >= {low}, got {value!r}")
        if not _is_int(self.vocab_size) or self.vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"--vocab-size must be an int > {len(SPECIAL_TOKENS)}, got {self.vocab_size!r}")
        if not _is_int(self.tag_column) or self.tag_column == 0:
            raise ValueError(f"--tag-column must be a non-zero int (column 0 holds the words; negative counts "
                             f"from the end), got {self.tag_column!r}")
        for name in ("out", "resume", "init_from", "train", "eval", "text_column", "text_pair_column",
                     "label_column"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise TypeError(f"{flag(name)} must be a non-empty string, got {value!r}")
        if self.from_scratch and self.init_from:
            raise ValueError("--from-scratch and --init-from cannot be used together: pick random weights or a "
                             "pretrained source")
        if self.train is None and self.eval is not None:
            raise ValueError("--eval needs --train FILE too (without --train the built-in task is used, with its "
                             "own held-out split)")
        if self.train is not None and self.eval is None:
            raise ValueError("--train needs --eval FILE: held-out examples to measure the fine-tuned model on")
        if self.train is None and (self.task != "sequence" or self.regression):
            raise ValueError("the built-in task is sequence classification: --task token and --regression need "
                             "--train FILE and --eval FILE")
        if self.regression and self.task != "sequence":
            raise ValueError("--regression applies to --task sequence only (one number per text)")
        if self.task == "token" and self.text_pair_column is not None:
            raise ValueError("--text-pair-column applies to --task sequence only")
        self.check_ranges(lambda: AdamWConfig(lr=self.lr, weight_decay=self.weight_decay, clip_norm=self.clip_norm))

    def optimizer(self, steps: int) -> AdamWConfig:
        warmup = steps // 10 if self.warmup is None else self.warmup
        if warmup > steps:
            raise ValueError(f"--warmup={warmup} is more than the run's {steps} steps "
                             f"({self.epochs} epochs of {steps // self.epochs} batches)")
        return AdamWConfig(lr=self.lr, warmup_steps=warmup, total_steps=steps, weight_decay=self.weight_decay,
                           clip_norm=self.clip_norm)

    def record(self) -> dict:
        """The settings as JSON values (config.json's "training")."""
        return dataclasses.asdict(self)

