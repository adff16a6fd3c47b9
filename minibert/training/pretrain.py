"""Masked-LM pretraining: the first `minibert.training.loop.Task`, and `train(settings)` behind `scripts/train.py`.

    train: settings.validate -> backend -> open_run (lock, plan, checks) -> MLMTask (corpus, tokenizer,
           batches) -> run_loop
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import numpy as np

import backends
from minibert.storage import checkpoint as ckpt
from minibert.data.batch import check_batch, device_batches
from minibert.config import IGNORE_LABEL, PRESETS, BertConfig
from minibert.data.corpus import corpus_fingerprint, load_corpus_files, load_default_corpus
from minibert.data.mlm import MLMBatcher, PackedStream, build_datasets
from minibert.evaluation import evaluate_mlm
from minibert.training.loop import LoopSettings, run_loop
from minibert.nn.model import forward_backward, label_count
from minibert.params import init_host_params
from minibert.data.prepared import prepared_for_corpus
from minibert.data.shards import PreparedDataError, open_prepared
from minibert.training.rundir import open_run
from minibert.training.settings import TrainSettings, get_backend, plural
from minibert.data.tokenizer import WordPieceTokenizer, check_tokenizer_fits, load_tokenizer, train_wordpiece

# The held-out set is one fixed draw, the same in every evaluation and for every training recipe: its packing seed
# (where each sequence splits into A and B), masking seed, masking rate and batch size (masks are drawn per batch)
# are constants, not the run's --seed/--mask-rate/--batch-size. Packing uses seed 0, the default --seed, so
# default runs see the held-out sequences they always did.
EVAL_PACK_SEED = 0
EVAL_SEED = 1234
EVAL_MASK_RATE = 0.15
EVAL_BATCH_SIZE = 32


@dataclass
class Data:
    tokenizer: WordPieceTokenizer
    train: MLMBatcher
    heldout: MLMBatcher
    baseline_token: int
    baseline_accuracy: float
    fingerprint: str = ""       # of the corpus (train and held-out documents): a resumed run must see the same


def load_data(settings: TrainSettings, tokenizer: WordPieceTokenizer | None, log=print) -> Data:
    """Corpus -> tokenizer (the given one: a run's or a checkpoint's own; None: trained and cached, or the prepared
    corpus's) -> packed, masked batches (special ids and the never-masked set from the tokenizer).

    --data DIR streams a prepared corpus from its memory-mapped shards; --corpus FILES prepares them once into the
    cache (`minibert.data.prepared.prepared_for_corpus`) and streams that, with the same documents, vocabulary and
    sequences it always had; the embedded corpus (and a --corpus too small to prepare) is packed in memory."""
    data_dir = settings.data
    if settings.corpus:
        try:
            data_dir = prepared_for_corpus(list(settings.corpus), settings.vocab_size if tokenizer is None else None,
                                           tokenizer, progress=settings.progress, log=log)
        except (OSError, ValueError) as exc:
            raise type(exc)(f"--corpus: {exc}") from None
    if data_dir is not None:
        return _streamed_data(settings, tokenizer, data_dir)
    if settings.corpus:
        try:
            train_docs, heldout_docs = load_corpus_files(list(settings.corpus))
        except (OSError, ValueError) as exc:
            raise type(exc)(f"--corpus: {exc}") from None
    else:
        train_docs, heldout_docs = load_default_corpus()
    if tokenizer is None:
        tokenizer = train_wordpiece(train_docs, settings.vocab_size)
    train_seqs, heldout_seqs = build_datasets(train_docs, heldout_docs, tokenizer, settings.seq_len, settings.seed,
                                              heldout_seed=EVAL_PACK_SEED)
    counts = np.bincount(train_seqs["input_ids"].reshape(-1), minlength=tokenizer.vocab_size)
    return _batched(settings, tokenizer, train_seqs, heldout_seqs, counts, len(train_docs), len(heldout_docs),
                    corpus_fingerprint(train_docs + heldout_docs))


def _streamed_data(settings: TrainSettings, tokenizer: WordPieceTokenizer | None, data_dir) -> Data:
    """`Data` over a prepared corpus: its tokenizer (or the given one, which must be the same), sequences packed
    on demand from the memory-mapped shards."""
    prepared = open_prepared(data_dir)
    if tokenizer is not None and tokenizer.files() != prepared.tokenizer.files():
        raise PreparedDataError(f"--data {data_dir} was tokenized with another tokenizer ({prepared.tokenizer.vocab_size} "
                                f"tokens, {prepared.path / 'vocab.txt'}) than this run's ({tokenizer.vocab_size} "
                                "tokens): prepare the corpus with --tokenizer set to the run or checkpoint")
    tokenizer = prepared.tokenizer
    ids = dict(cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id)
    train = PackedStream(prepared.train, settings.seq_len, settings.seed, **ids)
    heldout = PackedStream(prepared.heldout, settings.seq_len, EVAL_PACK_SEED, **ids)
    splits = prepared.manifest["splits"]
    return _batched(settings, tokenizer, train, heldout, prepared.train_counts(), splits["train"]["documents"],
                    splits["heldout"]["documents"], prepared.fingerprint)


def _batched(settings: TrainSettings, tokenizer: WordPieceTokenizer, train_seqs, heldout_seqs, counts,
             num_train_docs: int, num_heldout_docs: int, fingerprint: str) -> Data:
    """Training and held-out batchers over packed sequences (arrays or a `PackedStream`), with the
    most-frequent-token baseline from the training token `counts`."""
    corpus = (f"--data {settings.data}" if settings.data else
              f"--corpus {' '.join(settings.corpus)}" if settings.corpus else "the embedded corpus")
    num_train, num_heldout = len(_rows(train_seqs)), len(_rows(heldout_seqs))
    if num_train < settings.batch_size:
        raise ValueError(f"{corpus} is too small for one batch: its training part "
                         f"({plural(num_train_docs, 'paragraph')}) packs into {plural(num_train, 'sequence')} "
                         f"of --seq-len={settings.seq_len}, fewer than --batch-size={settings.batch_size}; "
                         "add text, or lower --seq-len or --batch-size")
    if num_heldout == 0:
        raise ValueError(f"{corpus} is too small: its held-out part ({num_heldout_docs} of "
                         f"{plural(num_train_docs + num_heldout_docs, 'paragraph')}) gives no sequence of "
                         f"--seq-len={settings.seq_len}; add text (at least a few paragraphs separated by blank "
                         "lines) or use a shorter --seq-len")
    masking = dict(special_ids=tokenizer.special_ids, mask_id=tokenizer.mask_id)
    train = MLMBatcher(train_seqs, settings.batch_size, tokenizer.vocab_size, settings.seed,
                       mask_prob=settings.mask_rate, **masking)
    eval_batch = min(EVAL_BATCH_SIZE, num_heldout)
    heldout = MLMBatcher(heldout_seqs, eval_batch, tokenizer.vocab_size, EVAL_SEED, shuffle=False, drop_last=False,
                         mask_prob=EVAL_MASK_RATE, **masking)
    counts = np.array(counts, dtype=np.int64)
    counts[list(tokenizer.special_ids)] = 0
    baseline_token = int(np.argmax(counts))
    labels = np.concatenate([heldout.batch(0, i)["labels"].reshape(-1) for i in range(heldout.batches_per_epoch)])
    labels = labels[labels != IGNORE_LABEL]
    return Data(tokenizer, train, heldout, baseline_token, float(np.mean(labels == baseline_token)), fingerprint)


def _rows(sequences):
    """Something with len() = the number of packed sequences (a dict of arrays or a PackedStream)."""
    return sequences["input_ids"] if isinstance(sequences, dict) else sequences


def evaluate(params, data: Data, config: BertConfig, backend, max_batches: int = 0) -> dict:
    """Held-out masked-LM loss, perplexity and accuracy (fixed masking), beside the most-frequent-token baseline."""
    return {**evaluate_mlm(params, data.heldout, config, backend, max_batches),
            "baseline_accuracy": data.baseline_accuracy}


class MLMTask:
    """Masked-LM pretraining as a `minibert.training.loop.Task`: BERT's 80/10/10 masking over packed sentence pairs."""

    def __init__(self, settings: TrainSettings, config: BertConfig, data: Data, backend,
                 init_weights: dict | None = None):
        self.settings, self.config, self.data, self.backend = settings, config, data, backend
        self.tokens_per_batch = settings.batch_size * settings.seq_len
        self._init_weights = init_weights
        self.forward_backward = partial(forward_backward, config=config, backend=backend)
        self.label_count = label_count

    def initial_params(self) -> dict:
        if self._init_weights is not None:
            return self._init_weights
        return init_host_params(self.config, self.settings.seed, self.settings.dtype)

    def train_batches(self, count: int) -> list:
        batches = [check_batch(next(self.data.train), self.config) for _ in range(count)]
        return device_batches(batches, self.backend, self.settings.dtype)

    def data_state(self) -> dict:
        return self.data.train.state_dict()

    def load_data_state(self, state: dict) -> None:
        self.data.train.load_state_dict(state)

    def evaluate(self, params) -> dict:
        return evaluate(params, self.data, self.config, self.backend, self.settings.eval_batches)

    def run_config(self) -> dict:
        return {"baseline_token": self.data.tokenizer.id_to_token(self.data.baseline_token),
                "corpus_fingerprint": self.data.fingerprint}

    def run_files(self) -> dict[str, bytes]:
        return self.data.tokenizer.files()

    def summary(self, metrics: dict) -> str:
        return (f"held-out loss {metrics['eval_loss']:.3f}  perplexity {metrics['eval_perplexity']:.1f}  accuracy "
                f"{metrics['eval_accuracy']:.3f} (most-frequent-token baseline {metrics['baseline_accuracy']:.3f})")


def _model_plan(settings: TrainSettings, run, log) -> tuple:
    """(model config or None for the preset, tokenizer to use or None to train one, initial weights or None),
    checked before any data is read."""
    if run.resume is not None:
        return (*run.resumed_model(settings.dtype), None)
    if settings.init_from:
        from minibert.interop.hf import masked_lm_from_transformers
        tokenizer = load_tokenizer(settings.init_from)
        config, weights, notes = masked_lm_from_transformers(settings.init_from, settings.dtype, settings.seed)
        for note in notes:
            log(f"--init-from {settings.init_from}: {note}")
        # the run's dropout is --dropout, as for a fresh model, not the checkpoint's training setting
        config = dataclasses.replace(config, hidden_dropout=settings.dropout, attention_dropout=settings.dropout)
        return config, tokenizer, weights
    return None, None, None


def _quiet(*args, **kwargs) -> None:
    pass


def launch(settings: TrainSettings) -> tuple:
    """(backend, this process's index): joins the multi-process run first where asked (JAX only), then spreads
    the backend over --devices (JAX only; other backends raise, naming JAX). Checked before any data is read."""
    process, processes = 0, 1
    if settings.multi_process:
        process, processes = backends.initialize_distributed(
            settings.backend, coordinator=settings.coordinator, num_processes=settings.num_processes,
            process_id=settings.process_id, timeout_s=settings.init_timeout)
    backend = get_backend(settings.backend, settings.dtype, settings.precision)
    devices = settings.devices if settings.devices is not None else "all" if processes > 1 else 1
    if devices != 1:
        backend = backend.data_parallel(devices)
        if settings.batch_size % backend.data_shards:
            raise ValueError(f"--batch-size {settings.batch_size} cannot be split evenly over the "
                             f"{backend.data_shards} devices of --devices {devices}: use a multiple of "
                             f"{backend.data_shards}")
    return backend, process


def train(settings: TrainSettings, log=print) -> dict:
    """Run (or resume) pretraining; returns the final metrics. Writes config.json, vocab.txt, checkpoints,
    metrics.jsonl and loss.png into the run directory, which it holds locked until it returns."""
    settings.validate()
    backend, process = launch(settings)
    if process != 0:            # process 0 reports and writes; the others compute their rows in silence
        settings, log = dataclasses.replace(settings, progress=False), _quiet
    with open_run(out=settings.out, resume=settings.resume, settings=settings.record(),
                  fixed=settings.RESUME_FIXED, fallback=settings.resume_fallback, script=settings.SCRIPT,
                  writer=process == 0) as run:
        config, tokenizer, init_weights = _model_plan(settings, run, log)
        if run.resume is not None and run.resume.step >= settings.steps:
            log(f"{run.path} is already complete: {run.resume.checkpoint.name} is step {run.resume.step} of "
                f"--steps={settings.steps}; nothing to do")
            return {"step": run.resume.step, "run_dir": str(run.path), "complete": True}
        max_position = config.max_position if config is not None else PRESETS[settings.config].max_position
        if settings.seq_len > max_position:
            raise ValueError(f"--seq-len={settings.seq_len} is longer than the model's max_position="
                             f"{max_position}; allowed: 5..{max_position}")
        data = load_data(settings, tokenizer, log)
        if config is None:
            config = BertConfig.preset(settings.config, vocab_size=data.tokenizer.vocab_size,
                                       pad_token_id=data.tokenizer.pad_id, hidden_dropout=settings.dropout,
                                       attention_dropout=settings.dropout)
        check_tokenizer_fits(config, data.tokenizer)
        if run.resume is not None and run.resume.saved.get("corpus_fingerprint") not in (None, data.fingerprint):
            raise ckpt.CheckpointError(f"cannot resume {run.path}: the corpus changed since the run started "
                                       "(its text differs), so the data order cannot be replayed")
        loop = LoopSettings(steps=settings.steps, optimizer=settings.optimizer(), seed=settings.seed,
                            dtype=settings.dtype, eval_every=settings.eval_every, save_every=settings.save_every,
                            keep_checkpoints=settings.keep_checkpoints, accum_steps=settings.accum_steps,
                            skip_nonfinite=settings.skip_nonfinite, precision=settings.precision,
                            progress=settings.progress,
                            record=settings.record())
        return run_loop(MLMTask(settings, config, data, backend, init_weights), run, loop, backend, log)
