"""Host-side checking and preparation of model inputs (NumPy, once per batch, before any device work).

Every bad input raises here with the argument's name, what was seen and what is allowed, so nothing
reaches the device that could be silently clamped (JAX clamps out-of-range gathers) or turn into NaN.
"""
from __future__ import annotations

import numpy as np

from minibert.config import BertConfig

IGNORE_INDEX = -100
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
BATCH_KEYS = INPUT_KEYS + ("labels",)


def host_ints(name: str, value, backend=None) -> np.ndarray:
    """`value` as a host NumPy integer array; floats and bools are refused, not cast."""
    if backend is not None and not isinstance(value, (np.ndarray, list, tuple)):
        value = backend.to_numpy(value)
    array = np.asarray(value)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {array.dtype}")
    return array


def _check_range(name: str, array: np.ndarray, low: int, high: int, what: str) -> None:
    if array.size and (array.min() < low or array.max() >= high):
        bad = array[(array < low) | (array >= high)]
        raise ValueError(f"{name} must be in [{low}, {high}) ({what}); got value {int(bad[0])}")


def check_inputs(input_ids, attention_mask, token_type_ids, config: BertConfig, backend=None):
    """Validated host int32 arrays (input_ids, attention_mask, token_type_ids), each [B, T].

    attention_mask defaults to all ones, token_type_ids to all zeros.
    """
    input_ids = host_ints("input_ids", input_ids, backend)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be 2-D [batch, sequence], got shape {input_ids.shape}")
    batch, seq = input_ids.shape
    if batch == 0 or seq == 0:
        raise ValueError(f"input_ids is empty (shape {input_ids.shape}); a batch needs at least one token")
    if seq > config.max_position:
        raise ValueError(f"input_ids has sequence length {seq}, longer than max_position="
                         f"{config.max_position}; allowed: 1..{config.max_position}")
    _check_range("input_ids", input_ids, 0, config.vocab_size, f"vocab_size={config.vocab_size}")
    attention_mask = (np.ones_like(input_ids) if attention_mask is None
                      else host_ints("attention_mask", attention_mask, backend))
    token_type_ids = (np.zeros_like(input_ids) if token_type_ids is None
                      else host_ints("token_type_ids", token_type_ids, backend))
    for name, array in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if array.shape != input_ids.shape:
            raise ValueError(f"{name} has shape {array.shape}, but input_ids has shape {input_ids.shape}; "
                             "they must match")
    _check_range("attention_mask", attention_mask, 0, 2, "1 = attend, 0 = padding")
    _check_range("token_type_ids", token_type_ids, 0, config.type_vocab_size,
                 f"type_vocab_size={config.type_vocab_size}")
    empty_rows = np.flatnonzero(attention_mask.sum(axis=1) == 0)
    if empty_rows.size:
        raise ValueError(f"attention_mask row {int(empty_rows[0])} attends to no token; every sequence "
                         "needs at least one position with mask 1")
    return (input_ids.astype(np.int32), attention_mask.astype(np.int32), token_type_ids.astype(np.int32))


def check_batch(batch: dict, config: BertConfig, backend=None) -> dict:
    """A validated training batch: host int32 arrays for every key in BATCH_KEYS."""
    if not isinstance(batch, dict):
        raise TypeError(f"batch must be a dict with keys {BATCH_KEYS}, got {type(batch).__name__}")
    missing = [key for key in ("input_ids", "labels") if key not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; required: input_ids, labels "
                         "(attention_mask, token_type_ids optional)")
    unknown = sorted(set(batch) - set(BATCH_KEYS))
    if unknown:
        raise ValueError(f"batch has unknown keys {unknown}; allowed: {BATCH_KEYS}")
    input_ids, attention_mask, token_type_ids = check_inputs(
        batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"), config, backend)
    labels = host_ints("labels", batch["labels"], backend)
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels has shape {labels.shape}, but input_ids has shape {input_ids.shape}; "
                         "they must match")
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= config.vocab_size))
    if bad.any():
        raise ValueError(f"labels must be in [0, {config.vocab_size}) or {IGNORE_INDEX} (ignored); "
                         f"got value {int(labels[bad][0])}")
    if not (labels != IGNORE_INDEX).any():
        raise ValueError(f"labels has no labelled position (all are {IGNORE_INDEX}); the loss needs at least one")
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            "labels": labels.astype(np.int32)}


def padded_count(count: int) -> int:
    """Rows kept for the MLM head: `count` rounded up to a power of two up to 128, then to a multiple of 128,
    so that a compiled step (JAX) sees few distinct shapes."""
    bucket = 8
    while bucket < min(count, 128):
        bucket *= 2
    return bucket if count <= 128 else -(-count // 128) * 128


def labelled_rows(labels: np.ndarray, rows: int | None = None):
    """Where the loss is computed: (positions, targets, weights), each [rows].

    positions are flat indices into the B*T tokens, targets their labels, weights 1.0; padding rows
    (up to `rows`, default `padded_count`) point at token 0 with target 0 and weight 0.
    """
    flat = labels.reshape(-1)
    positions = np.flatnonzero(flat != IGNORE_INDEX).astype(np.int32)
    rows = padded_count(positions.size) if rows is None else rows
    if rows < positions.size:
        raise ValueError(f"rows={rows} is fewer than the {positions.size} labelled positions")
    pad = rows - positions.size
    return (np.concatenate([positions, np.zeros(pad, np.int32)]),
            np.concatenate([flat[positions], np.zeros(pad, np.int32)]).astype(np.int32),
            np.concatenate([np.ones(positions.size), np.zeros(pad)]))


def device_batch(batch: dict, backend, dtype, rows: int | None = None) -> dict:
    """Move a checked batch to the backend, with the labels turned into `labelled_rows`."""
    positions, targets, weights = labelled_rows(batch["labels"], rows)
    arrays = {key: backend.asarray(batch[key]) for key in INPUT_KEYS}
    arrays.update(positions=backend.asarray(positions), targets=backend.asarray(targets),
                  weights=backend.asarray(weights, dtype=dtype))
    return arrays
