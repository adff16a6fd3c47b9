"""The training loop (host side): data, steps on any backend, evaluation, checkpoints, metrics, resume.

`scripts/train.py` is a thin command line over `TrainSettings` and `train`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

import backends
from minibert import checkpoint as ckpt
from minibert.batch import check_batch, device_batch, padded_count
from minibert.config import PRESETS, BertConfig
from minibert.corpus import corpus_fingerprint, load_corpus_files, load_default_corpus
from minibert.data import IGNORE_LABEL, MLMBatcher, build_datasets
from minibert.api import compiled
from minibert.model import forward_backward, masked_lm_metrics
from minibert.optim import AdamWConfig, init_state, learning_rate
from minibert.params import init_host_params
from minibert.step import make_train_step
from minibert.tokenizer import SPECIAL_TOKENS, WordPieceTokenizer, train_wordpiece

DTYPES = ("float32", "float64")
EVAL_SEED = 1234            # held-out masking is drawn once from this seed, the same in every evaluation
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class TrainSettings:
    """Everything a run depends on. Field names are the command-line flags (with - for _)."""

    backend: str | None = None
    config: str = "seed"
    corpus: tuple[str, ...] = ()
    vocab_size: int = 8192
    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 64
    accum_steps: int = 1
    lr: float = 1e-3
    warmup: int | None = None      # None = 10% of steps
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    dropout: float = 0.1
    seed: int = 0
    eval_every: int = 200
    eval_batches: int = 0          # 0 = the whole held-out split
    save_every: int = 500
    keep_checkpoints: int = 3
    dtype: str = "float32"
    out: str | None = None
    resume: str | None = None
    resume_fallback: bool = False
    init_from: str | None = None
    skip_nonfinite: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Raise on a bad value, naming the flag and showing the value, before any work starts."""
        def flag(name):
            return "--" + name.replace("_", "-")

        def is_int(value):
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        def is_real(value):
            return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

        if self.backend is not None and not (isinstance(self.backend, str) and self.backend):
            raise TypeError(f"--backend must be a backend name, got {self.backend!r}")
        for name in ("steps", "batch_size", "accum_steps", "eval_every", "save_every", "keep_checkpoints"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{flag(name)} must be a positive int, got {value!r}")
        if not is_int(self.vocab_size) or self.vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"--vocab-size must be an int > {len(SPECIAL_TOKENS)} (the special tokens "
                             f"{', '.join(SPECIAL_TOKENS)} come first), got {self.vocab_size!r}")
        if not is_int(self.seq_len) or self.seq_len < 5:
            raise ValueError(f"--seq-len must be an int >= 5 ([CLS] a [SEP] b [SEP]), got {self.seq_len!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"--seed must be a non-negative int, got {self.seed!r}")
        if not is_int(self.eval_batches) or self.eval_batches < 0:
            raise ValueError(f"--eval-batches must be an int >= 0 (0 = all), got {self.eval_batches!r}")
        for name in ("lr", "weight_decay", "clip_norm", "dropout"):
            if not is_real(getattr(self, name)):
                raise ValueError(f"{flag(name)} must be a finite number, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay!r}")
        if not self.clip_norm > 0:
            raise ValueError(f"--clip-norm must be > 0, got {self.clip_norm!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.config not in PRESETS:
            raise ValueError(f"--config: unknown preset {self.config!r}; allowed: {', '.join(PRESETS)}")
        if self.warmup is not None and (not is_int(self.warmup) or not 0 <= self.warmup <= self.steps):
            raise ValueError(f"--warmup must be an int in [0, --steps={self.steps}], got {self.warmup!r}")
        if not isinstance(self.corpus, (tuple, list)) or not all(isinstance(c, str) and c for c in self.corpus):
            raise TypeError(f"--corpus must be a list of file paths or globs, got {self.corpus!r}")
        for name in ("out", "resume", "init_from"):
            if getattr(self, name) is not None and not (isinstance(getattr(self, name), str) and getattr(self, name)):
                raise TypeError(f"{flag(name)} must be a directory path, got {getattr(self, name)!r}")
        if self.resume and self.init_from:
            raise ValueError("--resume and --init-from cannot be used together: a resumed run already has weights")
        if self.resume_fallback and not self.resume:
            raise ValueError("--resume-fallback only applies with --resume DIR")
        self.optimizer()

    def optimizer(self) -> AdamWConfig:
        warmup = self.steps // 10 if self.warmup is None else self.warmup
        return AdamWConfig(lr=self.lr, warmup_steps=warmup, total_steps=self.steps,
                           weight_decay=self.weight_decay, clip_norm=self.clip_norm)


# settings that must not change when a run is resumed (anything else, e.g. eval_every, may)
RESUME_FIXED = ("config", "corpus", "vocab_size", "batch_size", "seq_len", "accum_steps", "lr", "warmup",
                "weight_decay", "clip_norm", "dropout", "seed", "dtype", "steps", "init_from")


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient."""


@dataclass
class Data:
    tokenizer: WordPieceTokenizer
    train: MLMBatcher
    heldout: MLMBatcher
    baseline_token: int
    baseline_accuracy: float
    fingerprint: str = ""       # of the corpus (train and held-out documents): a resumed run must see the same


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def load_data(settings: TrainSettings, vocab_path: Path | None) -> Data:
    """Corpus -> tokenizer (trained and cached, or the run's own vocab.txt) -> packed, masked batches."""
    if settings.corpus:
        try:
            train_docs, heldout_docs = load_corpus_files(list(settings.corpus))
        except (OSError, ValueError) as exc:
            raise type(exc)(f"--corpus: {exc}") from None
    else:
        train_docs, heldout_docs = load_default_corpus()
    tokenizer = (WordPieceTokenizer.from_vocab(str(vocab_path)) if vocab_path is not None
                 else train_wordpiece(train_docs, settings.vocab_size))
    train_seqs, heldout_seqs = build_datasets(train_docs, heldout_docs, tokenizer, settings.seq_len, settings.seed)
    corpus = (f"--corpus {' '.join(settings.corpus)}" if settings.corpus else "the embedded corpus")
    num_train = len(train_seqs["input_ids"])
    if num_train < settings.batch_size:
        raise ValueError(f"{corpus} is too small for one batch: its training part "
                         f"({_count(len(train_docs), 'paragraph')}) packs into {_count(num_train, 'sequence')} "
                         f"of --seq-len={settings.seq_len}, fewer than --batch-size={settings.batch_size}; "
                         "add text, or lower --seq-len or --batch-size")
    if len(heldout_seqs["input_ids"]) == 0:
        raise ValueError(f"{corpus} is too small: its held-out part ({len(heldout_docs)} of "
                         f"{_count(len(train_docs) + len(heldout_docs), 'paragraph')}) gives no sequence of "
                         f"--seq-len={settings.seq_len}; add text (at least a few paragraphs separated by blank "
                         "lines) or use a shorter --seq-len")
    train = MLMBatcher(train_seqs, settings.batch_size, tokenizer.vocab_size, settings.seed)
    eval_batch = min(settings.batch_size, len(heldout_seqs["input_ids"]))
    heldout = MLMBatcher(heldout_seqs, eval_batch, tokenizer.vocab_size, EVAL_SEED, shuffle=False, drop_last=False)
    counts = np.bincount(train_seqs["input_ids"].reshape(-1), minlength=tokenizer.vocab_size)
    counts[list(tokenizer.special_ids)] = 0
    baseline_token = int(np.argmax(counts))
    labels = np.concatenate([heldout.batch(0, i)["labels"].reshape(-1) for i in range(heldout.batches_per_epoch)])
    labels = labels[labels != IGNORE_LABEL]
    return Data(tokenizer, train, heldout, baseline_token, float(np.mean(labels == baseline_token)),
                corpus_fingerprint(train_docs + heldout_docs))


def evaluate(params, data: Data, config: BertConfig, backend, max_batches: int = 0) -> dict:
    """Held-out masked-LM loss, perplexity and accuracy (fixed masking), beside the most-frequent-token baseline."""
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 0:
        raise ValueError(f"eval batches must be an int >= 0 (0 = all), got {max_batches!r}")
    metrics_fn = compiled(masked_lm_metrics, config, backend)
    dtype = params["embeddings.word"].dtype
    total_nll = total_correct = total_count = 0.0
    count = data.heldout.batches_per_epoch if max_batches == 0 else min(max_batches, data.heldout.batches_per_epoch)
    for i in range(count):
        batch = check_batch(data.heldout.batch(0, i), config)
        nll, correct = metrics_fn(params, device_batch(batch, backend, dtype))
        total_nll += float(backend.to_numpy(nll))
        total_correct += float(backend.to_numpy(correct))
        total_count += float(np.sum(batch["labels"] != IGNORE_LABEL))
    loss = total_nll / total_count
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0)),
            "eval_accuracy": total_correct / total_count, "baseline_accuracy": data.baseline_accuracy,
            "eval_tokens": int(total_count)}


def plot_metrics(run_dir: Path) -> None:
    """loss.png: training loss (and its running mean) and held-out loss against step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        steps, losses = map(np.asarray, zip(*train))
        ax.plot(steps, losses, color="0.75", linewidth=0.8, label="train loss")
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="C0", label=f"train loss ({window}-step mean)")
    if evals:
        ax.plot(*zip(*evals), "o-", color="C1", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("masked-LM cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=100)
    plt.close(fig)


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


def _append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric records after `step` (written after the checkpoint being resumed), and any line a killed
    process left unfinished."""
    path = run_dir / METRICS
    if path.exists():
        kept = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
        ckpt.atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


@dataclass
class RunPlan:
    """Where a run goes and what it starts from, decided (and checked) before any work."""

    run_dir: Path
    config: BertConfig | None = None              # None: from the preset, once the tokenizer's vocab is known
    vocab_path: Path | None = None                # None: train (or reuse the cached) tokenizer
    resume_from: tuple | None = None              # (checkpoint path, sidecar) of a resumed run
    saved: dict | None = None                     # a resumed run's config.json
    init_weights: dict | None = None              # host params from --init-from


def _prepare_run(settings: TrainSettings) -> RunPlan:
    """The RunPlan, all checked before any work: a resumed run's checkpoint is verified (size, sha256) and its
    tensors are checked against the run's model config."""
    if settings.resume:
        run_dir = Path(settings.resume)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume {run_dir}: no such directory")
        saved = ckpt.read_run_config(run_dir)
        if not isinstance(saved.get("training"), dict):
            raise ckpt.CheckpointError(f"{run_dir / ckpt.RUN_CONFIG} has no \"training\" section: "
                                       f"--resume {run_dir} needs a run written by scripts/train.py")
        config = ckpt.run_model_config(run_dir)
        path, sidecar = ckpt.latest_checkpoint(run_dir, fallback=settings.resume_fallback)
        mismatched = {k: (saved["training"][k], getattr(settings, k)) for k in RESUME_FIXED
                      if k in saved["training"] and _jsonable(getattr(settings, k)) != saved["training"][k]}
        if mismatched:
            detail = ", ".join(f"--{k.replace('_', '-')}: run has {a!r}, asked {b!r}" for k, (a, b) in mismatched.items())
            raise ckpt.CheckpointError(f"cannot resume {run_dir}: settings differ from the run's ({detail}); "
                                       "pass the run's own settings or leave them out")
        ckpt.check_checkpoint_tensors(path, config, settings.dtype)
        if not isinstance(sidecar.get("batcher"), dict):
            raise ckpt.CheckpointError(f"checkpoint {path} has no data position (\"batcher\") in its sidecar "
                                       f"{path.with_suffix('.json').name}: it cannot be resumed exactly")
        vocab = run_dir / "vocab.txt"
        if not vocab.exists():
            raise FileNotFoundError(f"{vocab} not found: --resume {run_dir} needs the run's own vocabulary")
        return RunPlan(run_dir, config, vocab, (path, sidecar), saved)
    run_dir = Path(settings.out or time.strftime("runs/%Y%m%d-%H%M%S"))
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} exists and is not a directory")
    if (run_dir / ckpt.LATEST).exists() or ckpt.complete_checkpoints(run_dir):
        raise FileExistsError(f"--out {run_dir} already holds a run with checkpoints; use --resume {run_dir} "
                              "(add --resume-fallback if its latest checkpoint is damaged) or another --out")
    if settings.init_from:
        from minibert.hf import from_transformers
        vocab = Path(settings.init_from) / "vocab.txt"
        if not vocab.exists():
            raise FileNotFoundError(f"--init-from {settings.init_from} has no vocab.txt")
        config, weights = from_transformers(settings.init_from)
        # the run's dropout is --dropout, as for a fresh model, not the checkpoint's training setting
        config = dataclasses.replace(config, hidden_dropout=settings.dropout, attention_dropout=settings.dropout)
        return RunPlan(run_dir, config, vocab, init_weights=weights)
    return RunPlan(run_dir)


def _get_backend(settings: TrainSettings):
    """The backend, with the dtype checked; errors say where the backend name came from."""
    try:
        backend = backends.get_backend(settings.backend)
    except (ValueError, backends.BackendUnavailableError) as exc:
        source = (f"--backend {settings.backend}" if settings.backend else
                  f"${backends.ENV_VAR}={os.environ[backends.ENV_VAR]}" if os.environ.get(backends.ENV_VAR)
                  else f"default backend {backends.DEFAULT_BACKEND}")
        raise type(exc)(f"{source}: {exc}") from None
    try:
        backend.dtype(settings.dtype)
    except ValueError as exc:
        raise ValueError(f"--dtype {settings.dtype}: {exc}") from None
    return backend


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def resume_settings(run_dir, **overrides) -> TrainSettings:
    """The saved settings of a run, with `overrides` (for `--resume DIR` given alone)."""
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"--resume {run_dir}: no such directory")
    saved = ckpt.read_run_config(run_dir).get("training")
    if not isinstance(saved, dict):
        raise ckpt.CheckpointError(f"{Path(run_dir) / ckpt.RUN_CONFIG} has no \"training\" section: "
                                   f"--resume {run_dir} needs a run written by scripts/train.py")
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    values = {k: (tuple(v) if k == "corpus" else v) for k, v in saved.items() if k in fields}
    values.update(overrides, resume=str(run_dir))
    return TrainSettings(**values)


def train(settings: TrainSettings, log=print) -> dict:
    """Run (or resume) training; returns the final metrics. Writes config.json, vocab.txt, checkpoints,
    metrics.jsonl and loss.png into the run directory."""
    settings.validate()
    backend = _get_backend(settings)
    plan = _prepare_run(settings)
    run_dir, config, resume_from = plan.run_dir, plan.config, plan.resume_from
    if resume_from is not None and resume_from[1]["step"] >= settings.steps:
        log(f"{run_dir} is already complete: {resume_from[0].name} is step {resume_from[1]['step']} of "
            f"--steps={settings.steps}; nothing to do")
        return {"step": resume_from[1]["step"], "run_dir": str(run_dir), "complete": True}
    max_position = config.max_position if config is not None else PRESETS[settings.config][4]
    if settings.seq_len > max_position:
        raise ValueError(f"--seq-len={settings.seq_len} is longer than the model's max_position="
                         f"{max_position}; allowed: 5..{max_position}")
    data = load_data(settings, plan.vocab_path)
    if config is None:
        config = BertConfig.preset(settings.config, vocab_size=data.tokenizer.vocab_size,
                                   hidden_dropout=settings.dropout, attention_dropout=settings.dropout)
    if config.vocab_size != data.tokenizer.vocab_size:
        raise ValueError(f"the model's vocab_size={config.vocab_size} does not match the tokenizer's "
                         f"{data.tokenizer.vocab_size} tokens")

    if resume_from is not None:
        path, sidecar = resume_from
        if plan.saved.get("corpus_fingerprint") not in (None, data.fingerprint):
            raise ckpt.CheckpointError(f"cannot resume {run_dir}: the corpus changed since the run started "
                                       "(its text differs), so the data order cannot be replayed")
        try:
            data.train.load_state_dict(sidecar["batcher"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ckpt.CheckpointError(f"cannot resume {run_dir} from {path.name}: {exc} (did the corpus or "
                                       "its tokenization change?)") from None
        host_params, host_state = ckpt.load_checkpoint(path)
        start = sidecar["step"]
        skipped = int(sidecar.get("skipped_nonfinite", 0))
        ckpt.remove_stale_temporaries(run_dir)
        _truncate_metrics(run_dir, start)
        log(f"resuming {run_dir} from {path.name} (step {start})")
    else:
        if plan.init_weights is not None:
            host_params = {k: v.astype(settings.dtype) for k, v in plan.init_weights.items()}
        else:
            host_params = init_host_params(config, settings.seed, settings.dtype)
        host_state, start, skipped = None, 0, 0
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temporaries(run_dir)
        ckpt.atomic_write_json(run_dir / ckpt.RUN_CONFIG, {
            "model": config.to_dict(), "training": {k: _jsonable(v) for k, v in dataclasses.asdict(settings).items()},
            "backend": backend.name, "baseline_token": data.tokenizer.id_to_token(data.baseline_token),
            "corpus_fingerprint": data.fingerprint})
        data.tokenizer.save_vocab(str(run_dir / "vocab.txt"))
        (run_dir / METRICS).write_text("")

    params = {k: backend.asarray(v, dtype=settings.dtype) for k, v in host_params.items()}
    state = (init_state(params, backend) if host_state is None else
             {s: {k: backend.asarray(v, dtype=settings.dtype) for k, v in host_state[s].items()} for s in ("m", "v")})
    opt = settings.optimizer()
    step_fn = make_train_step(partial(forward_backward, config=config, backend=backend), opt, backend,
                              skip_nonfinite=settings.skip_nonfinite)
    base_key = backend.key(settings.seed)
    tokens_per_step = settings.batch_size * settings.seq_len * settings.accum_steps
    dtype = params["embeddings.word"].dtype

    last_saved = resume_from[0] if resume_from is not None else None

    def save(step):
        nonlocal last_saved
        if last_saved is not None and ckpt.checkpoint_step(last_saved) == step:
            return last_saved
        host_params = {k: backend.to_numpy(v) for k, v in params.items()}
        bad = [k for k, v in host_params.items() if not np.isfinite(v).all()]
        if bad:      # never replace a good checkpoint with a poisoned one
            raise NonFiniteError(f"parameter {bad[0]} is non-finite after step {step}: not saved; the last good "
                                 f"checkpoint is {last_saved}. Start again with a lower --lr.")
        last_saved = ckpt.save_checkpoint(
            run_dir, step, host_params, {s: {k: backend.to_numpy(v) for k, v in state[s].items()} for s in ("m", "v")},
            {"batcher": data.train.state_dict(), "skipped_nonfinite": skipped}, keep=settings.keep_checkpoints)
        return last_saved

    def run_eval(step):
        record = {"step": step, **evaluate(params, data, config, backend, settings.eval_batches)}
        _append_metrics(run_dir, record)
        return record

    from tqdm import tqdm
    progress = tqdm(total=settings.steps, initial=start, disable=not settings.progress, unit="step",
                    dynamic_ncols=True)
    last_eval, result = None, {}
    with StopRequested() as stop:
        try:
            for step in range(start, settings.steps):
                started = time.perf_counter()
                micro = [check_batch(next(data.train), config) for _ in range(settings.accum_steps)]
                # a compiled step needs one shape for every micro-batch; eager backends keep exact counts
                rows = (max(padded_count(int(np.sum(b["labels"] != IGNORE_LABEL))) for b in micro)
                        if backend.static_shapes else None)
                arrays = [device_batch(b, backend, dtype, rows) for b in micro]
                key = backend.fold_in(base_key, step) if settings.dropout > 0 else None
                params, state, loss, grad_norm = step_fn(params, state, arrays, key, step)
                loss, grad_norm = float(backend.to_numpy(loss)), float(backend.to_numpy(grad_norm))
                elapsed = time.perf_counter() - started
                finite = math.isfinite(loss) and math.isfinite(grad_norm)
                skipped += not finite
                record = {"step": step + 1, "loss": loss, "lr": float(learning_rate(step, opt)),
                          "grad_norm": grad_norm, "tokens_per_s": tokens_per_step / elapsed}
                if settings.skip_nonfinite:
                    record["skipped_nonfinite"] = skipped
                _append_metrics(run_dir, record)
                if not finite and not settings.skip_nonfinite:
                    kept = (f"the last good checkpoint, {last_saved} (step {ckpt.checkpoint_step(last_saved)}), is "
                            f"kept; continue from it with: python scripts/train.py --resume {run_dir} "
                            "--skip-nonfinite" if last_saved is not None else
                            f"no checkpoint had been written yet in {run_dir}")
                    raise NonFiniteError(
                        f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step + 1} "
                        f"(loss={loss}, grad_norm={grad_norm}): training stopped without saving this step; "
                        f"{kept}. Or start again with a lower --lr. (--skip-nonfinite skips such steps, "
                        "counting them in metrics.jsonl as skipped_nonfinite.)")
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}", lr=f"{record['lr']:.2e}")
                done = step + 1
                if done % settings.eval_every == 0 and done < settings.steps:
                    last_eval = run_eval(done)
                    progress.write(f"step {done}: held-out loss {last_eval['eval_loss']:.3f}, "
                                   f"accuracy {last_eval['eval_accuracy']:.3f}")
                if done % settings.save_every == 0 or done == settings.steps:
                    save(done)
                if stop.signal_name and done < settings.steps:
                    path = save(done)
                    progress.close()
                    log(f"{stop.signal_name} received: saved {path} at step {done}. "
                        f"Resume with: python scripts/train.py --resume {run_dir}")
                    return {"step": done, "interrupted": stop.signal_name, "run_dir": str(run_dir)}
        finally:
            progress.close()
            if (run_dir / METRICS).exists():
                plot_metrics(run_dir)
    last_eval = run_eval(settings.steps)
    plot_metrics(run_dir)
    result = {"step": settings.steps, "run_dir": str(run_dir), **last_eval}
    log(f"done: {run_dir}  held-out loss {last_eval['eval_loss']:.3f}  perplexity {last_eval['eval_perplexity']:.1f}"
        f"  accuracy {last_eval['eval_accuracy']:.3f} (most-frequent-token baseline "
        f"{last_eval['baseline_accuracy']:.3f})")
    return result
