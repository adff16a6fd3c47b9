"""Using a trained run: load it onto a backend, evaluate it, fill in [MASK] tokens (host side)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import backends
from minibert import checkpoint as ckpt
from minibert.api import mlm_logits
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
