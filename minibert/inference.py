"""Using a trained run, or a transformers BERT folder as downloaded: load it onto a backend, evaluate it, fill in [MASK] tokens (host side); for a fine-tuned
classifier, `load_classifier_run`, `evaluate_classifier` (also the held-out metrics during fine-tuning) and
`predict_text`.

Readers take no lock: they read the newest complete checkpoint, also while a run is training.
"""
from __future__ import annotations

import numpy as np

import backends
from minibert.storage import checkpoint as ckpt
from minibert.api import classify_logits, mlm_logits
from minibert.config import BertConfig
from minibert.data.finetune_encode import encode_texts, encode_words, pad_batch
from minibert.training.finetune_settings import CLASSIFIER_TASKS, FinetuneSettings
from minibert.data.tokenizer import WordPieceTokenizer, check_tokenizer_fits, load_tokenizer
from minibert.metrics import softmax


def is_run_dir(path) -> bool:
    """Whether `path` is a Mini-BERT run directory (its config.json has a "model" section), not a transformers
    folder (whose config.json is the model's config itself)."""
    try:
        return isinstance(ckpt.read_run_config(path).get("model"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def model_config(path) -> BertConfig:
    """The model config of a run directory or of a transformers BERT folder (its task from its head)."""
    if is_run_dir(path):
        return ckpt.run_model_config(path)
    from minibert.interop.hf import checkpoint_config
    return checkpoint_config(path)


def load_run(run_dir, backend_name: str | None = None, dtype: str = "float32"):
    """(config, params on the backend, tokenizer, backend) from a run's newest verified checkpoint, or from a
    transformers BERT folder (`minibert.interop.hf.from_transformers`: its own head, its own tokenizer).

    Everything is checked before the weights are moved: the backend and dtype, the checkpoint (size, sha256,
    tensors against the run's model config) and the tokenizer (its size and pad id against the model's)."""
    backend = backends.get_backend(backend_name)
    backend.dtype(dtype)
    if is_run_dir(run_dir):
        config, host_params = ckpt.load_latest_params(run_dir)
    else:
        from minibert.interop.hf import from_transformers
        config, host_params = from_transformers(run_dir, dtype)
    try:
        tokenizer = load_tokenizer(run_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}: the model's tokenizer is missing") from None
    check_tokenizer_fits(config, tokenizer, f"{run_dir}: its tokenizer")
    params = {k: backend.asarray(v, dtype=dtype) for k, v in host_params.items()}
    return config, params, tokenizer, backend


def fill_mask(text: str, config, params, tokenizer: WordPieceTokenizer, backend, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each [MASK] in `text` (in order): the `top_k` (token, probability) fills, most likely first."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    encoded = masked_ids(tokenizer.encode(text), config, tokenizer)
    if isinstance(encoded, str):
        raise ValueError(f"text {text!r}: {encoded}")
    ids, positions = encoded
    logits = backend.to_numpy(mlm_logits(params, np.asarray([ids], np.int32), config=config, backend=backend))[0]
    return [top_fills(logits[position], tokenizer, top_k) for position in positions]


def masked_ids(pieces: list[int], config: BertConfig, tokenizer: WordPieceTokenizer
               ) -> tuple[list[int], list[int]] | str:
    """A masked-LM input from a text's word-piece ids: ([CLS] pieces [SEP], the positions of its [MASK] tokens),
    or why it cannot be filled (no [MASK]; longer than the model's max_position) as a message."""
    ids = [tokenizer.cls_id, *pieces, tokenizer.sep_id]
    positions = [i for i, token in enumerate(ids) if token == tokenizer.mask_id]
    if not positions:
        return f"no {tokenizer.special_tokens['mask_token']} token to fill"
    if len(ids) > config.max_position:
        return (f"{len(ids)} tokens with [CLS]/[SEP], more than the model's max_position={config.max_position}; "
                "shorten it")
    return ids, positions


def top_fills(logits_row, tokenizer: WordPieceTokenizer, top_k: int) -> list[tuple[str, float]]:
    """The `top_k` (token, probability) of one position's MLM logits [V], most likely first (ties: lower id)."""
    probs = softmax(logits_row)
    return [(tokenizer.id_to_token(int(i)), float(probs[i])) for i in np.argsort(-probs, kind="stable")[:top_k]]


def label_probabilities(probs_row, config: BertConfig) -> tuple[str, dict[str, float]]:
    """(the most likely label, {label: probability}) from one row of class probabilities [C]."""
    return (config.id2label[int(probs_row.argmax())],
            {config.id2label[i]: float(p) for i, p in enumerate(probs_row)})


def load_classifier_run(run_dir, backend_name: str | None = None):
    """(settings, config, params on the backend, tokenizer, backend, max_len) of a fine-tuned run's newest
    checkpoint, or of a transformers classifier folder (settings None; max_len the smaller of max_position and
    the tokenizer's model_max_length)."""
    config, params, tokenizer, backend = load_run(run_dir, backend_name)
    if config.task not in CLASSIFIER_TASKS:
        raise ValueError(f"{run_dir} is a masked-LM run (task {config.task!r}), not a fine-tuned classifier")
    if not is_run_dir(run_dir):
        return None, config, params, tokenizer, backend, min(config.max_position,
                                                             tokenizer.model_max_length or config.max_position)
    max_len = ckpt.read_run_config(run_dir).get("max_len", config.max_position)
    return FinetuneSettings.resumed(run_dir), config, params, tokenizer, backend, max_len


def predict_text(text: str, config: BertConfig, params, tokenizer: WordPieceTokenizer, backend, max_len: int,
                 text_pair: str | None = None) -> list[tuple[str, dict[str, float]]]:
    """The prediction of a fine-tuned classifier for one text: [(label, {label: probability})] for a sequence
    task (one entry; regression: [(str(value), {})]), or one (tag, probabilities) per whitespace-separated word
    for a token task (a word truncated away by `max_len` gets tag "" and no probabilities)."""
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
    probs = softmax(logits)
    rows = [probs] if config.task == "sequence" else [probs[i] if i >= 0 else None for i in encoded.word_starts[0]]
    return [("", {}) if row is None else label_probabilities(row, config) for row in rows]
