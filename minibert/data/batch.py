"""Host-side checking and preparation of model inputs (NumPy, once per batch, before any device work).

Every bad input raises here with the argument's name, what was seen and what is allowed, so nothing
reaches the device that could be silently clamped (JAX clamps out-of-range gathers) or turn into NaN.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minibert.config import IGNORE_LABEL, BertConfig

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
BATCH_KEYS = INPUT_KEYS + ("labels",)


def host_ints(name: str, value, backend=None) -> np.ndarray:
    """`value` as a host NumPy integer array; floats and bools are refused, not cast."""
    if backend is not None and hasattr(value, "shape") and not isinstance(value, np.ndarray):
        value = backend.to_numpy(value)       # a device array: copied to the host, once
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:   # e.g. ragged nested lists
        raise TypeError(f"{name} must be a rectangular integer array [batch, sequence], got "
                        f"{type(value).__name__} that NumPy cannot read as one ({exc})") from None
    if array.size == 0 and isinstance(value, (list, tuple)):
        array = array.astype(np.int64)       # [] or [[]] is an empty batch (refused below), not a float array
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array (int32, int64, ...), got dtype {array.dtype}; "
                        "floats and bools are refused, not cast")
    return array


def _check_range(name: str, array: np.ndarray, low: int, high: int, what: str) -> None:
    if array.size and (array.min() < low or array.max() >= high):
        where = np.argwhere((array < low) | (array >= high))[0]
        raise ValueError(f"{name} must be in [{low}, {high}) ({what}); got value {int(array[tuple(where)])} "
                         f"at position {tuple(int(i) for i in where)}")


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
        raise ValueError(f"attention_mask row {int(empty_rows[0])} is all 0 (attends to no token, which would "
                         "make its softmax NaN); every sequence needs at least one position with mask 1")
    return (input_ids.astype(np.int32), attention_mask.astype(np.int32), token_type_ids.astype(np.int32))


def check_batch_inputs(batch: dict, config: BertConfig, backend=None):
    """The keys of a training batch checked (a dict with input_ids and labels, nothing unknown), and its
    inputs validated by `check_inputs`: (input_ids, attention_mask, token_type_ids). The labels are the
    caller's to check (masked-LM and classification labels differ)."""
    if not isinstance(batch, dict):
        raise TypeError(f"batch must be a dict with keys {BATCH_KEYS}, got {type(batch).__name__}")
    missing = [key for key in ("input_ids", "labels") if key not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; required: input_ids, labels "
                         "(attention_mask, token_type_ids optional)")
    unknown = sorted(set(batch) - set(BATCH_KEYS))
    if unknown:
        raise ValueError(f"batch has unknown keys {unknown}; allowed: {BATCH_KEYS}")
    return check_inputs(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"), config, backend)


def check_batch(batch: dict, config: BertConfig, backend=None) -> dict:
    """A validated training batch: host int32 arrays for every key in BATCH_KEYS."""
    input_ids, attention_mask, token_type_ids = check_batch_inputs(batch, config, backend)
    labels = host_ints("labels", batch["labels"], backend)
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels has shape {labels.shape}, but input_ids has shape {input_ids.shape}; "
                         "they must match")
    bad = (labels != IGNORE_LABEL) & ((labels < 0) | (labels >= config.vocab_size))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"labels must be in [0, {config.vocab_size}) (vocab_size={config.vocab_size}) or "
                         f"{IGNORE_LABEL} (ignored); got value {int(labels[where])} at position {where}")
    if not (labels != IGNORE_LABEL).any():
        raise ValueError(f"labels has no labelled position (all {labels.size} values are {IGNORE_LABEL}); the loss "
                         "needs at least one label in [0, vocab_size)")
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            "labels": labels.astype(np.int32)}


def check_params(params, config: BertConfig, dtype=None, where: str = "params") -> None:
    """Raise ValueError unless `params` has exactly the names and shapes of `param_shapes(config)` (and, where
    given, every array has `dtype`, a NumPy dtype or its name). Reads only `.shape`/`.dtype`: no device work."""
    from minibert.nn.layout import param_shapes

    if not hasattr(params, "keys"):
        raise TypeError(f"{where} must be a dict of arrays named as in minibert.nn.layout.param_shapes, "
                        f"got {type(params).__name__}")
    expected = param_shapes(config)
    missing = [k for k in expected if k not in params]
    unknown = sorted(set(params) - set(expected))
    if missing or unknown:
        raise ValueError(f"{where} does not fit the model config: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unknown[:5]}"
                         f"{' ...' if len(unknown) > 5 else ''} (config: {config.num_layers} layers, "
                         f"hidden_size={config.hidden_size}, vocab_size={config.vocab_size})")
    for name, shape in expected.items():
        got = tuple(params[name].shape)
        if got != shape:
            raise ValueError(f"{where}: {name} has shape {got}, the model config needs {shape} (config: "
                             f"hidden_size={config.hidden_size}, intermediate_size={config.intermediate_size}, "
                             f"vocab_size={config.vocab_size}, max_position={config.max_position})")
        if dtype is not None and str(params[name].dtype).split(".")[-1] != str(np.dtype(dtype)):
            raise ValueError(f"{where}: {name} has dtype {params[name].dtype}, expected {np.dtype(dtype)}")


def padded_count(count: int) -> int:
    """`count` labelled rows rounded up to a bucket: a power of two from 8 to 128, then a multiple of 128."""
    bucket = 8
    while bucket < min(count, 128):
        bucket *= 2
    return bucket if count <= 128 else -(-count // 128) * 128


def labelled_rows(labels: np.ndarray, rows: int | None = None):
    """Where the loss is computed: (positions, targets, weights), each [rows].

    positions are flat indices into the B*T tokens, targets their labels, weights 1.0; padding rows
    (up to `rows`, default none) point at token 0 with target 0 and weight 0.
    """
    flat = labels.reshape(-1)
    positions = np.flatnonzero(flat != IGNORE_LABEL).astype(np.int32)
    rows = positions.size if rows is None else rows
    if rows < positions.size:
        raise ValueError(f"rows={rows} is fewer than the {positions.size} labelled positions")
    pad = rows - positions.size
    return (np.concatenate([positions, np.zeros(pad, np.int32)]),
            np.concatenate([flat[positions], np.zeros(pad, np.int32)]).astype(np.int32),
            np.concatenate([np.ones(positions.size), np.zeros(pad)]))


class DeviceBatch(NamedTuple):
    """One masked-LM batch on the device, as `minibert.nn.model.forward_backward` reads it; N labelled rows.
    A NamedTuple, so JAX treats it as a pytree; fields are read by name."""
    input_ids: Any          # [B, T] int
    attention_mask: Any     # [B, T] int, 1 = attend, 0 = padding
    token_type_ids: Any     # [B, T] int
    positions: Any          # [N] int, flat indices into the B*T tokens
    targets: Any            # [N] int, the labels at `positions`
    weights: Any            # [N] float, 1 for a real label, 0 for a padding row

    def split_rows(self, parts: int) -> list["DeviceBatch"]:
        """This batch as up to `parts` batches of consecutive rows (block s: rows [s*B//parts, (s+1)*B//parts),
        empty blocks left out), each with the labelled rows that fall in it and `positions` relative to its first
        token; their weights sum to this batch's. For a backend's row threads (minibert/nn/step.py)."""
        batch, seq = self.input_ids.shape
        blocks = []
        for lo, hi in row_blocks(batch, parts):
            inside = (self.positions >= lo * seq) & (self.positions < hi * seq)     # [N] bool
            blocks.append(DeviceBatch(**input_rows(self, lo, hi), positions=self.positions[inside] - lo * seq,
                                      targets=self.targets[inside], weights=self.weights[inside]))
        return blocks


def row_blocks(rows: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) of up to `parts` blocks of consecutive rows covering range(rows), sizes differing by at most one,
    empty blocks left out: how a backend's row threads split a batch (minibert/nn/step.py, `api.compiled_logits`)."""
    bounds = [rows * s // parts for s in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def input_rows(arrays, lo: int, hi: int) -> dict:
    """Rows [lo, hi) of a device batch's three [B, T] model inputs, by field name."""
    return {name: getattr(arrays, name)[lo:hi, :] for name in ("input_ids", "attention_mask", "token_type_ids")}


def device_batches(batches: list, backend, dtype) -> list[DeviceBatch]:
    """Checked host batches that one (compiled) step takes together -> device batches of one shape.

    The row-padding policy, decided here only: on a backend with `static_shapes` (JAX, which compiles once per
    input shape) every batch of the group gets the largest `padded_count` of its labelled rows, so the step sees
    one shape per step and few shapes in all; eager backends keep each batch's exact count (no wasted rows).

    On a backend split over n = `backend.data_shards` devices, a batch of B rows (B divisible by n) goes to the
    devices by rows, device d holding rows [d*B/n, (d+1)*B/n) of every array, the labelled rows too: each
    device's block of `positions`/`targets`/`weights` holds the labels of its own B/n rows, padded to the largest
    `padded_count` over every device and batch of the group, so all blocks have one shape. `positions` stay
    global flat indices into the B*T tokens (the program is written for the whole batch), block d's padding
    rows pointing at its first token d*(B/n)*T with weight 0. A batch whose rows do not divide by n (a last
    held-out batch) is replicated on every device instead.
    """
    shards = backend.data_shards
    split = [len(b["labels"]) % shards == 0 for b in batches]
    pieces = [np.split(b["labels"], shards if s else 1) for b, s in zip(batches, split)]   # [B, T] -> n x [B/n, T]
    rows = (max(padded_count(int(np.sum(block != IGNORE_LABEL))) for blocks in pieces for block in blocks)
            if backend.static_shapes else None)
    arrays = []
    for batch, blocks, by_rows in zip(batches, pieces, split):
        tokens = blocks[0].size
        rows_of = [labelled_rows(block, rows) for block in blocks]
        positions = np.concatenate([p + d * tokens for d, (p, _, _) in enumerate(rows_of)]).astype(np.int32)
        targets = np.concatenate([t for _, t, _ in rows_of])
        weights = np.concatenate([w for _, _, w in rows_of])
        put = backend.shard_rows if by_rows else backend.asarray
        arrays.append(DeviceBatch(input_ids=put(batch["input_ids"]), attention_mask=put(batch["attention_mask"]),
                                  token_type_ids=put(batch["token_type_ids"]), positions=put(positions),
                                  targets=put(targets), weights=put(weights, dtype=dtype)))
    return arrays


def device_batch(batch: dict, backend, dtype) -> DeviceBatch:
    """Move one checked batch to the backend, with the labels turned into `labelled_rows` (see `device_batches`)."""
    return device_batches([batch], backend, dtype)[0]
