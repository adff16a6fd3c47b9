"""Using a trained run: load it onto a backend, evaluate it, fill in [MASK] tokens (host side).

Readers take no lock: they read the newest complete checkpoint, also while a run is training.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import backends
from minibert import checkpoint as ckpt
from minibert.api import compiled, mlm_logits
from minibert.batch import check_batch, device_batch
from minibert.config import IGNORE_LABEL
from minibert.model import masked_lm_metrics
from minibert.tokenizer import WordPieceTokenizer


def load_run(run_dir, backend_name: str | None = None, dtype: str = "float32"):
    """(config, params on the backend, tokenizer, backend) from a run's newest verified checkpoint.

    Everything is checked before the weights are moved: the backend and dtype, the checkpoint (size, sha256,
    tensors against the run's model config) and the vocabulary (its size against the model's)."""
    backend = backends.get_backend(backend_name)
    backend.dtype(dtype)
    config, host_params = ckpt.load_latest_params(run_dir)
    vocab = Path(run_dir) / "vocab.txt"
    if not vocab.exists():
        raise FileNotFoundError(f"{vocab} not found: the run's vocabulary is missing")
    tokenizer = WordPieceTokenizer.from_vocab(str(vocab))
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"{vocab} has {tokenizer.vocab_size} tokens, but the run's model has "
                         f"vocab_size={config.vocab_size}: they must match")
    params = {k: backend.asarray(v, dtype=dtype) for k, v in host_params.items()}
    return config, params, tokenizer, backend


def evaluate_mlm(params, heldout, config, backend, max_batches: int = 0) -> dict:
    """Masked-LM loss (nats per masked token), perplexity and accuracy over the batches of `heldout` (a
    `minibert.data.MLMBatcher` with fixed masking: epoch 0), the first `max_batches` of them (0 = all)."""
    if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 0:
        raise ValueError(f"eval batches must be an int >= 0 (0 = all), got {max_batches!r}")
    metrics_fn = compiled(masked_lm_metrics, config, backend)
    dtype = params["embeddings.word"].dtype
    total_nll = total_correct = total_count = 0.0
    count = heldout.batches_per_epoch if max_batches == 0 else min(max_batches, heldout.batches_per_epoch)
    for i in range(count):
        batch = check_batch(heldout.batch(0, i), config)
        nll, correct = metrics_fn(params, device_batch(batch, backend, dtype))
        total_nll += float(backend.to_numpy(nll))
        total_correct += float(backend.to_numpy(correct))
        total_count += float(np.sum(batch["labels"] != IGNORE_LABEL))
    loss = total_nll / total_count
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0)),
            "eval_accuracy": total_correct / total_count, "eval_tokens": int(total_count)}


def fill_mask(text: str, config, params, tokenizer: WordPieceTokenizer, backend, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each [MASK] in `text` (in order): the `top_k` (token, probability) fills, most likely first."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    ids = [tokenizer.cls_id] + tokenizer.encode(text) + [tokenizer.sep_id]
    positions = [i for i, token in enumerate(ids) if token == tokenizer.mask_id]
    if not positions:
        raise ValueError(f"text has no [MASK] token to fill: {text!r}")
    if len(ids) > config.max_position:
        raise ValueError(f"text is {len(ids)} tokens with [CLS]/[SEP], more than max_position={config.max_position}; "
                         "shorten it")
    logits = backend.to_numpy(mlm_logits(params, np.asarray([ids], np.int32), config=config, backend=backend))[0]
    fills = []
    for position in positions:
        row = logits[position].astype(np.float64)
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        best = np.argsort(-probs)[:top_k]
        fills.append([(tokenizer.id_to_token(int(i)), float(probs[i])) for i in best])
    return fills
