"""Fine-tuning: sentence and token classification as a `minibert.loop.Task`, and `finetune(settings)` behind
`scripts/finetune.py`.

    finetune: settings.validate -> backend -> the task's examples (files or the built-in task, read and checked)
              -> the initial weights' source (a pretrained run, a transformers folder, or none) -> open_run (lock,
              plan, checks) -> model config with the label map -> WordPiece encoding -> FinetuneTask -> run_loop

The loop is the one pretraining uses (`minibert.loop.run_loop`): checkpoints, resume, signals, NaN handling and
metrics.jsonl work the same. The task supplies the data (`FinetuneBatcher`, padded to one shape), the loss
(`classify_forward_backward`) and the metrics (`evaluate_classifier`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from minibert import checkpoint as ckpt
from minibert.api import compiled
from minibert.classify import check_classify_batch, classify_device_batch, classify_forward_backward, classify_metrics
from minibert.config import IGNORE_LABEL, BertConfig
from minibert.finetune_data import TaskData, check_labels, load_sequence_task, load_token_task, read_sequence_file
from minibert.finetune_encode import EncodedExamples, FinetuneBatcher, encode_sequence_examples, encode_token_examples
from minibert.loop import LoopSettings, run_loop
from minibert.metrics import accuracy, is_bio_tagset, macro_f1, pearson, span_f1, spearman, token_accuracy
from minibert.model import label_count
from minibert.optim import AdamWConfig
from minibert.params import init_classifier_from, init_host_params
from minibert.rundir import open_run
from minibert.settings import DTYPES, _FIELD_RE, _FLAG_OF_FIELD, _is_int, _is_real, flag, get_backend
from minibert.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer, train_wordpiece

SCRIPT = "scripts/finetune.py"
TASKS = ("sequence", "token")
BUILTIN = "docstring package (built-in)"     # the task's name in messages when no --train file is given
RUNS_ROOT = "runs"                            # where the default pretrained run is looked for


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything a fine-tuning run depends on. Field names are the command-line flags (with - for _)."""

    backend: str | None = None
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
    seed: int = 0
    freeze_encoder: bool = False
    eval_every: int | None = None     # None = once per epoch
    save_every: int | None = None     # None = once per epoch
    keep_checkpoints: int = 3
    dtype: str = "float32"
    out: str | None = None
    resume: str | None = None
    resume_fallback: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Raise on a bad value, naming the flag and showing the value, before any work starts."""
        if self.backend is not None and not (isinstance(self.backend, str) and self.backend):
            raise TypeError(f"--backend must be a backend name, got {self.backend!r}")
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        for name in ("epochs", "batch_size", "keep_checkpoints"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be a positive int, got {getattr(self, name)!r}")
        for name in ("eval_every", "save_every", "max_len", "warmup"):
            value = getattr(self, name)
            low = 0 if name == "warmup" else 3 if name == "max_len" else 1
            if value is not None and (not _is_int(value) or value < low):
                raise ValueError(f"{flag(name)} must be an int >= {low}, got {value!r}")
        if not _is_int(self.vocab_size) or self.vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"--vocab-size must be an int > {len(SPECIAL_TOKENS)}, got {self.vocab_size!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"--seed must be a non-negative int, got {self.seed!r}")
        if not _is_int(self.tag_column) or self.tag_column == 0:
            raise ValueError(f"--tag-column must be a non-zero int (column 0 holds the words; negative counts "
                             f"from the end), got {self.tag_column!r}")
        for name in ("lr", "weight_decay", "clip_norm", "dropout"):
            if not _is_real(getattr(self, name)):
                raise ValueError(f"{flag(name)} must be a finite number, got {getattr(self, name)!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("out", "resume", "init_from", "train", "eval", "text_column", "text_pair_column",
                     "label_column"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise TypeError(f"{flag(name)} must be a non-empty string, got {value!r}")
        if self.from_scratch and self.init_from:
            raise ValueError("--from-scratch and --init-from cannot be used together: pick random weights or a "
                             "pretrained source")
        if self.resume_fallback and not self.resume:
            raise ValueError("--resume-fallback only applies with --resume DIR")
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
        try:                      # the ranges, as the classes that use them define them
            AdamWConfig(lr=self.lr, weight_decay=self.weight_decay, clip_norm=self.clip_norm)
            BertConfig.preset(self.config, hidden_dropout=self.dropout, attention_dropout=self.dropout)
        except ValueError as exc:
            message = _FIELD_RE.sub(lambda m: _FLAG_OF_FIELD[m.group(1)], str(exc))
            raise ValueError(("--config: " if message.startswith("unknown preset") else "") + message) from None

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


# settings that must not change when a run is resumed (anything else, e.g. eval_every, may)
RESUME_FIXED = ("init_from", "from_scratch", "config", "vocab_size", "task", "train", "eval", "text_column",
                "text_pair_column", "label_column", "tag_column", "regression", "epochs", "batch_size", "lr",
                "warmup", "weight_decay", "clip_norm", "max_len", "dropout", "seed", "freeze_encoder", "dtype")


def resume_settings(run_dir, **overrides) -> FinetuneSettings:
    """The saved settings of a fine-tuning run, with `overrides` (for `--resume DIR` given alone)."""
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"--resume {run_dir}: no such directory")
    saved = ckpt.read_run_config(run_dir).get("training")
    if not isinstance(saved, dict) or "task" not in saved:
        raise ckpt.CheckpointError(f"{Path(run_dir) / ckpt.RUN_CONFIG} has no fine-tuning settings: --resume "
                                   f"{run_dir} needs a run written by {SCRIPT}")
    fields = {f.name for f in dataclasses.fields(FinetuneSettings)}
    values = {k: v for k, v in saved.items() if k in fields}
    values.update(overrides, resume=str(run_dir))
    return FinetuneSettings(**values)


# --- the examples ------------------------------------------------------------------------------------------------

def load_task(settings: FinetuneSettings, eval_path: str | None = None) -> TaskData:
    """The examples and label map: from --train/--eval files, or the built-in docstring-package task.
    `eval_path` replaces the evaluation file (scripts/evaluate.py --eval)."""
    if settings.train is None:
        from minibert.tasks_builtin import docstring_package_task
        data = docstring_package_task()
        if eval_path is not None:
            data.eval = read_sequence_file(eval_path, text_column=settings.text_column,
                                           label_column=settings.label_column)
            check_labels(data.eval, data.label2id, path=eval_path, column=f"label column {settings.label_column!r}")
        return data
    evaluation = eval_path or settings.eval
    if settings.task == "token":
        return load_token_task(settings.train, evaluation, tag_column=settings.tag_column)
    return load_sequence_task(settings.train, evaluation, text_column=settings.text_column,
                              text_pair_column=settings.text_pair_column, label_column=settings.label_column,
                              regression=settings.regression)


def encode(data: TaskData, examples: list, tokenizer: WordPieceTokenizer, max_len: int) -> EncodedExamples:
    """`examples` of `data`'s task as model rows of at most `max_len` tokens, labels mapped by its label map."""
    if data.task == "token":
        return encode_token_examples(examples, tokenizer, max_len, label2id=data.label2id)
    return encode_sequence_examples(examples, tokenizer, max_len, label2id=None if data.regression else data.label2id)


def task_texts(data: TaskData) -> list[str]:
    """The training texts (pair texts and words included), for a WordPiece vocabulary trained from scratch."""
    if data.task == "token":
        return [" ".join(example.words) for example in data.train]
    return [text for example in data.train for text in (example.text, example.text_pair) if text is not None]


# --- the initial weights ------------------------------------------------------------------------------------------

def default_pretrained_run(root: str = RUNS_ROOT) -> Path:
    """The newest complete masked-LM run under `root` (its latest checkpoint at its --steps), by the time its
    latest checkpoint was written. FileNotFoundError, saying which command makes one, if there is none."""
    found = []
    for config_path in sorted(Path(root).glob("*/" + ckpt.RUN_CONFIG)):
        run_dir = config_path.parent
        try:
            saved = ckpt.read_run_config(run_dir)
            if saved["model"].get("task", "mlm") != "mlm" or "steps" not in saved.get("training", {}):
                continue
            path, sidecar = ckpt.latest_checkpoint(run_dir)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if sidecar["step"] >= saved["training"]["steps"] and (run_dir / "vocab.txt").exists():
            found.append((path.stat().st_mtime, run_dir))
    if not found:
        raise FileNotFoundError(f"no complete pretrained run under {root}/ to fine-tune: pretrain one first with\n"
                                f"    python scripts/train.py\n(about 4-6 minutes on 2 cores), or pass --init-from "
                                "RUN_DIR|HF_DIR, or --from-scratch --config PRESET")
    return max(found)[1]


def encoder_source(init_from: str, dtype: str) -> tuple[BertConfig, dict, Path]:
    """(the source's encoder config, its encoder params (with a pooler and classifier where it has them), its
    vocab.txt) from a Mini-BERT run directory or a transformers BERT folder; ValueError if it is neither."""
    source = Path(init_from)
    if not source.is_dir():
        raise FileNotFoundError(f"--init-from {init_from}: no such directory")
    vocab = source / "vocab.txt"
    try:
        fields = json.loads((source / ckpt.RUN_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"--init-from {init_from} is not a BERT: no readable config.json ({exc}); pass a "
                         "Mini-BERT run directory or a transformers BERT folder") from None
    if not isinstance(fields, dict):
        raise ValueError(f"--init-from {init_from} is not a BERT: its config.json holds a "
                         f"{type(fields).__name__}, not a model config")
    if "model" not in fields and fields.get("model_type", "bert") != "bert":
        raise ValueError(f"--init-from {init_from} is not a BERT: its config.json says model_type "
                         f"{fields['model_type']!r} (architectures {fields.get('architectures')}); pass a "
                         "Mini-BERT run directory or a transformers BERT folder")
    try:
        if isinstance(fields.get("model"), dict):     # a Mini-BERT run
            config, params = ckpt.load_latest_params(source)
        else:
            from minibert.hf import encoder_from_transformers
            config, params = encoder_from_transformers(source, dtype)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ValueError(f"--init-from {init_from} is not a BERT this can start from: {exc}") from None
    if not vocab.exists():
        raise FileNotFoundError(f"--init-from {init_from} has no vocab.txt; the encoder needs its own vocabulary")
    encoder_config = BertConfig.from_dict({k: v for k, v in config.to_dict().items()
                                           if k not in ("task", "num_labels", "id2label", "label2id",
                                                        "problem_type", "classifier_dropout")})
    return encoder_config, params, vocab


def classifier_config(encoder: BertConfig, data: TaskData, dropout: float) -> BertConfig:
    """The encoder's config as a classifier for `data` (label map; regression as num_labels 1)."""
    labels = ({0: "score"} if data.regression else data.id2label)
    return dataclasses.replace(encoder, task=data.task, num_labels=data.num_labels, id2label=labels, label2id=None,
                               problem_type=None, classifier_dropout=None, hidden_dropout=dropout,
                               attention_dropout=dropout)


# --- evaluation ---------------------------------------------------------------------------------------------------

def evaluate_classifier(params, encoded: EncodedExamples, config: BertConfig, backend, batch_size: int,
                        baseline: float | None) -> dict:
    """Held-out metrics of a classifier on `encoded` (labelled examples, encoded): eval_loss (mean over labelled rows),
    and accuracy + macro_f1 (classes), token_accuracy (+ span_f1/precision/recall for BIO tags) or
    pearson + spearman (regression); `baseline` (majority-class accuracy) is added as baseline_accuracy."""
    metrics_fn = compiled(classify_metrics, config, backend)
    dtype = params["embeddings.word"].dtype
    batcher = FinetuneBatcher(encoded, min(batch_size, len(encoded)), 0, shuffle=False,
                              pad_to=max(len(ids) for ids in encoded.input_ids))
    total_loss, count, outputs, labels = 0.0, 0.0, [], []
    for i in range(batcher.batches_per_epoch):
        batch = check_classify_batch(batcher.batch(0, i), config)
        arrays = classify_device_batch(batch, backend, dtype)
        loss_sum, logits = metrics_fn(params, arrays)
        total_loss += float(backend.to_numpy(loss_sum))
        count += float(np.sum(batch["labels"] != IGNORE_LABEL))      # regression targets are never -100
        outputs.append(backend.to_numpy(logits).astype(np.float64))
        labels.append(batch["labels"])
    metrics = {"eval_loss": total_loss / count, "eval_examples": len(encoded)}
    if config.problem_type == "regression":
        predictions, targets = np.concatenate(outputs)[:, 0], np.concatenate(labels)
        for name, fn in (("pearson", pearson), ("spearman", spearman)):
            try:
                metrics[name] = fn(predictions, targets)
            except ValueError:            # a constant prediction (or target) has no correlation
                metrics[name] = None
        return metrics
    if config.task == "sequence":
        predictions, targets = np.concatenate(outputs).argmax(-1), np.concatenate(labels)
        metrics.update(accuracy=accuracy(predictions, targets), macro_f1=macro_f1(predictions, targets))
    else:
        rows = [(p.argmax(-1), t) for out, lab in zip(outputs, labels) for p, t in zip(out, lab)]
        metrics["token_accuracy"] = token_accuracy(np.concatenate([p for p, _ in rows]),
                                                   np.concatenate([t for _, t in rows]))
        if is_bio_tagset(list(config.id2label.values())):
            true_tags = [[config.id2label[int(i)] for i in t[t != IGNORE_LABEL]] for _, t in rows]
            predicted = [[config.id2label[int(i)] for i in p[t != IGNORE_LABEL]] for p, t in rows]
            spans = span_f1(true_tags, predicted)
            metrics.update(span_f1=spans["f1"], span_precision=spans["precision"], span_recall=spans["recall"])
    if baseline is not None:
        metrics["baseline_accuracy"] = baseline
    return metrics


def summarize(metrics: dict) -> str:
    """One line of the headline metrics."""
    if "pearson" in metrics:
        show = lambda v: "n/a (constant)" if v is None else f"{v:.3f}"     # noqa: E731
        return (f"held-out loss {metrics['eval_loss']:.4f}  pearson {show(metrics['pearson'])}  spearman "
                f"{show(metrics['spearman'])}")
    if "accuracy" in metrics:
        line = (f"held-out accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}  loss "
                f"{metrics['eval_loss']:.3f}")
    else:
        line = f"held-out token accuracy {metrics['token_accuracy']:.3f}  loss {metrics['eval_loss']:.3f}"
        if "span_f1" in metrics:
            line += f"  span F1 {metrics['span_f1']:.3f}"
    return line + f"  (majority-class baseline {metrics['baseline_accuracy']:.3f})"


# --- the task -----------------------------------------------------------------------------------------------------

class FinetuneTask:
    """Sentence or token classification (or regression) as a `minibert.loop.Task`."""

    def __init__(self, settings: FinetuneSettings, config: BertConfig, data: TaskData, tokenizer: WordPieceTokenizer,
                 train: EncodedExamples, heldout: EncodedExamples, backend, init_params: dict | None,
                 run_info: dict):
        self.settings, self.config, self.data, self.tokenizer, self.backend = settings, config, data, tokenizer, backend
        self.heldout = heldout
        # one length for every batch, so JAX compiles the step for at most two shapes (full batches and the
        # smaller last batch of an epoch)
        pad_to = max(len(ids) for ids in train.input_ids)
        self.train = FinetuneBatcher(train, settings.batch_size, settings.seed, pad_to=pad_to,
                                     pad_id=tokenizer.pad_id)
        self.tokens_per_batch = settings.batch_size * pad_to
        self.baseline = None if data.regression else data.majority_baseline()
        self._init_params, self._run_info = init_params, run_info
        self.forward_backward = partial(classify_forward_backward, config=config, backend=backend,
                                        train_encoder=not settings.freeze_encoder)
        self.label_count = label_count           # the labels that count (weight 1) in a batch: the loss normaliser

    def initial_params(self) -> dict:
        return self._init_params

    def train_batches(self, count: int) -> list:
        return [classify_device_batch(check_classify_batch(next(self.train), self.config), self.backend,
                                      self.settings.dtype) for _ in range(count)]

    def data_state(self) -> dict:
        return self.train.state_dict()

    def load_data_state(self, state: dict) -> None:
        self.train.load_state_dict(state)

    def evaluate(self, params) -> dict:
        return evaluate_classifier(params, self.heldout, self.config, self.backend, self.settings.batch_size,
                                   self.baseline)

    def run_config(self) -> dict:
        return dict(self._run_info)

    def run_files(self) -> dict[str, bytes]:
        return {"vocab.txt": self.tokenizer.vocab_bytes()}

    def summary(self, metrics: dict) -> str:
        return summarize(metrics)


def _model_plan(settings: FinetuneSettings, run, data: TaskData, log) -> tuple:
    """(classifier config, tokenizer, initial host params or None when resuming, run_config entries),
    checked before any tokenization."""
    if run.resume is not None:
        config = ckpt.run_model_config(run.path)
        wanted = classifier_config(config, data, settings.dropout)
        if (config.num_labels, config.id2label) != (wanted.num_labels, wanted.id2label):
            raise ckpt.CheckpointError(
                f"cannot resume {run.path}: the run has num_labels={config.num_labels} "
                f"({list(config.id2label.values())}), but {settings.train or BUILTIN} now gives "
                f"num_labels={wanted.num_labels} ({list(wanted.id2label.values())}); the training labels changed")
        ckpt.check_checkpoint_tensors(run.resume.checkpoint, config, settings.dtype)
        vocab = run.path / "vocab.txt"
        if not vocab.exists():
            raise FileNotFoundError(f"{vocab} not found: --resume {run.path} needs the run's own vocabulary")
        return config, WordPieceTokenizer.from_vocab(str(vocab)), None, {}
    if settings.from_scratch:
        tokenizer = train_wordpiece(task_texts(data), settings.vocab_size)
        encoder = BertConfig.preset(settings.config, vocab_size=tokenizer.vocab_size)
        config = classifier_config(encoder, data, settings.dropout)
        return config, tokenizer, init_host_params(config, settings.seed, settings.dtype), {"init": "random"}
    encoder, weights, vocab = encoder_source(settings.init_from, settings.dtype)
    tokenizer = WordPieceTokenizer.from_vocab(str(vocab))
    if tokenizer.vocab_size != encoder.vocab_size:
        raise ValueError(f"--init-from {settings.init_from}: vocab.txt has {tokenizer.vocab_size} tokens but the "
                         f"model has vocab_size={encoder.vocab_size}")
    config = classifier_config(encoder, data, settings.dropout)
    params, fresh = init_classifier_from(weights, config, settings.seed, settings.dtype)
    log(f"initialised from {settings.init_from}; new: {', '.join(fresh) or 'nothing'}")
    return config, tokenizer, params, {"init": str(settings.init_from), "fresh_params": fresh}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def finetune(settings: FinetuneSettings, log=print) -> dict:
    """Run (or resume) fine-tuning; returns the final metrics. Writes config.json (with the label map), vocab.txt,
    checkpoints, metrics.jsonl and loss.png into the run directory, which it holds locked until it returns."""
    settings.validate()
    backend = get_backend(settings.backend, settings.dtype)
    if not settings.resume and not settings.from_scratch and settings.init_from is None:
        settings = dataclasses.replace(settings, init_from=str(default_pretrained_run()))
        log(f"fine-tuning the default pretrained run {settings.init_from} (the newest complete one under "
            f"{RUNS_ROOT}/)")
    data = load_task(settings)
    with open_run(out=settings.out, resume=settings.resume, settings=settings.record(), fixed=RESUME_FIXED,
                  fallback=settings.resume_fallback, script=SCRIPT) as run:
        config, tokenizer, init_params, run_info = _model_plan(settings, run, data, log)
        limit = min(128, config.max_position) if settings.max_len is None else settings.max_len
        if limit > config.max_position:
            raise ValueError(f"--max-len={limit} is longer than the model's max_position={config.max_position}; "
                             f"allowed: 3..{config.max_position}")
        train, heldout = (encode(data, examples, tokenizer, limit) for examples in (data.train, data.eval))
        for name, encoded in (("training", train), ("evaluation", heldout)):
            if encoded.num_truncated:
                log(f"truncated {_count(encoded.num_truncated, name + ' example')} of {len(encoded)} to "
                    f"--max-len={limit} tokens")
        task = FinetuneTask(settings, config, data, tokenizer, train, heldout, backend, init_params,
                            {**run_info, "max_len": limit, "train_examples": len(train),
                             "eval_examples": len(heldout)})
        per_epoch = task.train.batches_per_epoch
        steps = settings.epochs * per_epoch
        if run.resume is not None and run.resume.step >= steps:
            log(f"{run.path} is already complete: {run.resume.checkpoint.name} is step {run.resume.step} of "
                f"{steps}; nothing to do")
            return {"step": run.resume.step, "run_dir": str(run.path), "complete": True}
        log(f"{settings.train or BUILTIN}: {_count(len(train), 'training example')}, {len(heldout)} held out, "
            f"{config.num_labels if not data.regression else 'regression'} labels; {settings.epochs} epochs of "
            f"{per_epoch} batches = {steps} steps" + ("; encoder frozen (linear probe)" if settings.freeze_encoder
                                                       else ""))
        loop = LoopSettings(steps=steps, optimizer=settings.optimizer(steps), seed=settings.seed,
                            dtype=settings.dtype, eval_every=settings.eval_every or per_epoch,
                            save_every=settings.save_every or per_epoch, keep_checkpoints=settings.keep_checkpoints,
                            progress=settings.progress, record=settings.record())
        return run_loop(task, run, loop, backend, log)


def load_classifier_run(run_dir, backend_name: str | None = None):
    """(settings, config, params on the backend, tokenizer, backend, max_len) of a fine-tuned run's newest
    checkpoint."""
    from minibert.inference import load_run

    config, params, tokenizer, backend = load_run(run_dir, backend_name)
    if config.task not in TASKS:
        raise ValueError(f"{run_dir} is a masked-LM run (task {config.task!r}), not a fine-tuned classifier")
    max_len = ckpt.read_run_config(run_dir).get("max_len", config.max_position)
    return resume_settings(run_dir), config, params, tokenizer, backend, max_len


def predict_text(text: str, config: BertConfig, params, tokenizer: WordPieceTokenizer, backend, max_len: int,
                 text_pair: str | None = None) -> list[tuple[str, dict[str, float]]]:
    """The prediction of a fine-tuned classifier for one text: [(label, {label: probability})] for a sequence
    task (one entry; regression: [(str(value), {})]), or one (tag, probabilities) per whitespace-separated word
    for a token task (a word truncated away by `max_len` gets tag "" and no probabilities)."""
    from minibert.classify import classify_logits
    from minibert.finetune_encode import encode_texts, encode_words, pad_batch

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if config.task == "token":
        encoded = encode_words([text.split()], tokenizer, max_len)
    else:
        encoded = encode_texts([text], tokenizer, max_len, None if text_pair is None else [text_pair])
    batch = pad_batch(encoded, [0], pad_id=tokenizer.pad_id)
    logits = backend.to_numpy(classify_logits(params, batch["input_ids"], batch["attention_mask"],
                                              batch["token_type_ids"], config=config, backend=backend))
    logits = logits.astype(np.float64)[0]                                  # [C] or [T, C]
    if config.problem_type == "regression":
        return [(f"{logits[0]:.4f}", {})]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    rows = [probs] if config.task == "sequence" else [probs[i] if i >= 0 else None for i in encoded.word_starts[0]]
    return [("", {}) if row is None else
            (config.id2label[int(row.argmax())], {config.id2label[i]: float(p) for i, p in enumerate(row)})
            for row in rows]
