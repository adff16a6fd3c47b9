"""Fine-tuning: sentence and token classification as a `minibert.training.loop.Task`, and `finetune(settings)` behind
`scripts/finetune.py`.

    finetune: settings.validate -> backend -> the task's examples (files or the built-in task, read and checked)
              -> the initial weights' source (a pretrained run, a transformers folder, or none) -> open_run (lock,
              plan, checks) -> model config with the label map -> WordPiece encoding -> FinetuneTask -> run_loop

The loop is the one pretraining uses (`minibert.training.loop.run_loop`): checkpoints, resume, signals, NaN handling and
metrics.jsonl work the same. The task supplies the data (`FinetuneBatcher`, padded to one shape), the loss
(`classify_forward_backward`) and the metrics (`minibert.evaluation.evaluate_classifier`). The settings are
`minibert.training.finetune_settings`; loading a fine-tuned run and predicting with it are in `minibert.inference`.
"""
from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

from minibert.storage import checkpoint as ckpt
from minibert.nn.classify import classify_forward_backward
from minibert.data.classify_batch import check_classify_batch, classify_device_batch
from minibert.config import BertConfig
from minibert.data.finetune_data import (TaskData, check_example_labels, load_sequence_task, load_token_task,
                                        read_sequence_file)
from minibert.data.finetune_encode import EncodedExamples, FinetuneBatcher, encode_sequence_examples, encode_token_examples
from minibert.training.finetune_settings import FinetuneSettings
from minibert.evaluation import evaluate_classifier, summarize
from minibert.training.loop import LoopSettings, run_loop
from minibert.nn.model import label_count
from minibert.params import init_classifier_from, init_host_params
from minibert.training.rundir import open_run
from minibert.training.settings import get_backend, plural
from minibert.data.tokenizer import WordPieceTokenizer, check_tokenizer_fits, load_tokenizer, train_wordpiece

BUILTIN = "docstring package (built-in)"     # the task's name in messages when no --train file is given
RUNS_ROOT = "runs"                            # where the default pretrained run is looked for


# --- the examples ------------------------------------------------------------------------------------------------

def load_task(settings: FinetuneSettings, eval_path: str | None = None) -> TaskData:
    """The examples and label map: from --train/--eval files, or the built-in docstring-package task.
    `eval_path` replaces the evaluation file (scripts/evaluate.py --eval)."""
    if settings.train is None:
        from minibert.data.tasks_builtin import docstring_package_task
        data = docstring_package_task()
        if eval_path is not None:
            data.eval = read_sequence_file(eval_path, text_column=settings.text_column,
                                           label_column=settings.label_column)
            check_example_labels(data.eval, data.label2id, path=eval_path,
                                 column=f"label column {settings.label_column!r}")
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


def encoder_source(init_from: str, dtype: str) -> tuple[BertConfig, dict, WordPieceTokenizer]:
    """(the source's encoder config, its encoder params (with a pooler and classifier where it has them), its
    tokenizer) from a Mini-BERT run directory or a transformers BERT folder; ValueError if it is neither."""
    source = Path(init_from)
    if not source.is_dir():
        raise FileNotFoundError(f"--init-from {init_from}: no such directory")
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
            from minibert.interop.hf import encoder_from_transformers
            config, params = encoder_from_transformers(source, dtype)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ValueError(f"--init-from {init_from} is not a BERT this can start from: {exc}") from None
    tokenizer = load_tokenizer(source)
    check_tokenizer_fits(config, tokenizer, f"--init-from {init_from}: its tokenizer")
    encoder_config = BertConfig.from_dict({k: v for k, v in config.to_dict().items()
                                           if k not in ("task", "num_labels", "id2label", "label2id",
                                                        "problem_type", "classifier_dropout")})
    return encoder_config, params, tokenizer


def classifier_config(encoder: BertConfig, data: TaskData, dropout: float) -> BertConfig:
    """The encoder's config as a classifier for `data` (label map; regression as num_labels 1)."""
    labels = ({0: "score"} if data.regression else data.id2label)
    return dataclasses.replace(encoder, task=data.task, num_labels=data.num_labels, id2label=labels, label2id=None,
                               problem_type=None, classifier_dropout=None, hidden_dropout=dropout,
                               attention_dropout=dropout)


# --- the task -----------------------------------------------------------------------------------------------------

class FinetuneTask:
    """Sentence or token classification (or regression) as a `minibert.training.loop.Task`."""

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
        return self.tokenizer.files()

    def summary(self, metrics: dict) -> str:
        return summarize(metrics)


def _model_plan(settings: FinetuneSettings, run, data: TaskData, log) -> tuple:
    """(classifier config, tokenizer, initial host params or None when resuming, run_config entries),
    checked before any tokenization."""
    if run.resume is not None:
        def same_labels(config):
            wanted = classifier_config(config, data, settings.dropout)
            if (config.num_labels, config.id2label) != (wanted.num_labels, wanted.id2label):
                raise ckpt.CheckpointError(
                    f"cannot resume {run.path}: the run has num_labels={config.num_labels} "
                    f"({list(config.id2label.values())}), but {settings.train or BUILTIN} now gives "
                    f"num_labels={wanted.num_labels} ({list(wanted.id2label.values())}); the training labels changed")
        config, tokenizer = run.resumed_model(settings.dtype, same_labels)
        return config, tokenizer, None, {}
    if settings.from_scratch:
        tokenizer = train_wordpiece(task_texts(data), settings.vocab_size)
        encoder = BertConfig.preset(settings.config, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id)
        config = classifier_config(encoder, data, settings.dropout)
        return config, tokenizer, init_host_params(config, settings.seed, settings.dtype), {"init": "random"}
    encoder, weights, tokenizer = encoder_source(settings.init_from, settings.dtype)
    config = classifier_config(encoder, data, settings.dropout)
    params, fresh = init_classifier_from(weights, config, settings.seed, settings.dtype)
    why = ""
    if "classifier.weight" in weights and "classifier.weight" in fresh:
        why = (f" (the checkpoint's classifier has {weights['classifier.weight'].shape[-1]} labels, this task "
               f"{config.num_labels})")
    kept_head = [name for name in params if name not in fresh and name.startswith(("pooler.", "classifier."))]
    log(f"initialised from {settings.init_from}; kept: the encoder{''.join(', ' + name for name in kept_head)}; "
        f"new: {', '.join(fresh) or 'nothing'}{why}")
    return config, tokenizer, params, {"init": str(settings.init_from), "fresh_params": fresh}


def finetune(settings: FinetuneSettings, log=print) -> dict:
    """Run (or resume) fine-tuning; returns the final metrics. Writes config.json (with the label map), vocab.txt,
    checkpoints, metrics.jsonl and loss.png into the run directory, which it holds locked until it returns."""
    settings.validate()
    backend = get_backend(settings.backend, settings.dtype, settings.precision)
    if not settings.resume and not settings.from_scratch and settings.init_from is None:
        settings = dataclasses.replace(settings, init_from=str(default_pretrained_run()))
        log(f"fine-tuning the default pretrained run {settings.init_from} (the newest complete one under "
            f"{RUNS_ROOT}/)")
    data = load_task(settings)
    with open_run(out=settings.out, resume=settings.resume, settings=settings.record(),
                  fixed=settings.RESUME_FIXED, fallback=settings.resume_fallback, script=settings.SCRIPT) as run:
        config, tokenizer, init_params, run_info = _model_plan(settings, run, data, log)
        limit = min(128, config.max_position) if settings.max_len is None else settings.max_len
        if limit > config.max_position:
            raise ValueError(f"--max-len={limit} is longer than the model's max_position={config.max_position}; "
                             f"allowed: 3..{config.max_position}")
        train, heldout = (encode(data, examples, tokenizer, limit) for examples in (data.train, data.eval))
        for name, encoded in (("training", train), ("evaluation", heldout)):
            if encoded.num_truncated:
                log(f"truncated {plural(encoded.num_truncated, name + ' example')} of {len(encoded)} to "
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
        log(f"{settings.train or BUILTIN}: {plural(len(train), 'training example')}, {len(heldout)} held out, "
            f"{config.num_labels if not data.regression else 'regression'} labels; {settings.epochs} epochs of "
            f"{per_epoch} batches = {steps} steps" + ("; encoder frozen (linear probe)" if settings.freeze_encoder
                                                       else ""))
        loop = LoopSettings(steps=steps, optimizer=settings.optimizer(steps), seed=settings.seed,
                            dtype=settings.dtype, eval_every=settings.eval_every or per_epoch,
                            save_every=settings.save_every or per_epoch, keep_checkpoints=settings.keep_checkpoints,
                            precision=settings.precision, progress=settings.progress, record=settings.record())
        return run_loop(task, run, loop, backend, log)
