"""Classification batches on the host (NumPy): labels checked against the config before any device work, and the
device batch (`ClassifyBatch`) that `minibert.nn.classify.classify_forward_backward` reads."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minibert.data.batch import check_batch_inputs, host_ints, input_rows, row_blocks
from minibert.config import IGNORE_LABEL, BertConfig


class ClassifyBatch(NamedTuple):
    """One classification batch on the device, as `classify_forward_backward` reads it; N = B (task "sequence")
    or B*T (task "token"). A NamedTuple, so JAX treats it as a pytree; fields are read by name."""
    input_ids: Any          # [B, T] int
    attention_mask: Any     # [B, T] int, 1 = attend, 0 = padding
    token_type_ids: Any     # [B, T] int
    targets: Any            # [N] int class ids (0 where the label was -100), or float targets (regression)
    weights: Any            # [N] float, 1 for a label that counts, 0 for -100

    def split_rows(self, parts: int) -> list["ClassifyBatch"]:
        """This batch as up to `parts` batches of consecutive rows (block s: rows [s*B//parts, (s+1)*B//parts),
        empty blocks left out) with their labels (N/B per row: 1 for "sequence", T for "token"). For a backend's
        row threads (minibert/nn/step.py)."""
        batch = self.input_ids.shape[0]
        per_row = self.targets.shape[0] // batch
        return [ClassifyBatch(**input_rows(self, lo, hi), targets=self.targets[lo * per_row:hi * per_row],
                              weights=self.weights[lo * per_row:hi * per_row]) for lo, hi in row_blocks(batch, parts)]


def require_classifier(config: BertConfig) -> None:
    if not isinstance(config, BertConfig):
        raise TypeError(f"config must be a minibert BertConfig, got {type(config).__name__}")
    if config.task not in ("sequence", "token"):
        raise ValueError(f"config.task is {config.task!r}; classification needs task 'sequence' or 'token' "
                         "(a masked-LM config goes to mlm_logits / loss_and_grads)")


def _label_map(config: BertConfig) -> str:
    shown = ", ".join(f"{i}={label!r}" for i, label in list(config.id2label.items())[:10])
    return shown + (" ..." if config.num_labels > 10 else "")


def check_labels(labels, input_ids: np.ndarray, config: BertConfig, backend=None) -> np.ndarray:
    """Host labels checked against the config and the inputs [B, T]:
    task "sequence": [B] int in [0, num_labels) or -100 (ignored); regression (num_labels == 1): [B] finite
    numbers (int or float), returned as float64; task "token": [B, T] int in [0, num_labels) or -100.
    At least one label must count. As in transformers, a token label at a padding position counts unless it is
    -100 (data pipelines put -100 there). Integer labels are returned as int32."""
    batch, seq = input_ids.shape
    shape, what = ((batch,), "[batch]") if config.task == "sequence" else ((batch, seq), "[batch, sequence]")
    if config.problem_type == "regression":
        if backend is not None and hasattr(labels, "shape") and not isinstance(labels, np.ndarray):
            labels = backend.to_numpy(labels)
        try:
            values = np.asarray(labels)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"labels must be a {what} array of numbers, got {type(labels).__name__} ({exc})") from None
        if values.dtype == np.bool_ or not (np.issubdtype(values.dtype, np.integer)
                                            or np.issubdtype(values.dtype, np.floating)):
            raise TypeError(f"labels must be numbers (regression, num_labels=1), got dtype {values.dtype}")
        if values.shape != shape:
            raise ValueError(f"labels has shape {values.shape}; regression needs one target per sequence, {shape}")
        if not np.isfinite(values).all():
            where = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"labels must be finite (regression targets); got {values[where]} at position {where}")
        return values.astype(np.float64)
    labels = host_ints("labels", labels, backend)
    if labels.shape != shape:
        raise ValueError(f"labels has shape {labels.shape}; task {config.task!r} needs {what} = {shape} "
                         f"(input_ids has shape {input_ids.shape})")
    bad = (labels != IGNORE_LABEL) & ((labels < 0) | (labels >= config.num_labels))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"labels must be in [0, {config.num_labels}) (num_labels={config.num_labels}: "
                         f"{_label_map(config)}) or {IGNORE_LABEL} (ignored); got label {int(labels[where])} at "
                         f"position {where}")
    if not (labels != IGNORE_LABEL).any():
        raise ValueError(f"labels has no labelled position (all {labels.size} values are {IGNORE_LABEL}); the loss "
                         f"needs at least one label in [0, {config.num_labels})")
    return labels.astype(np.int32)


def check_classify_batch(batch: dict, config: BertConfig, backend=None) -> dict:
    """A validated classification batch: host int32 input_ids, attention_mask, token_type_ids [B, T] and
    labels as `check_labels`."""
    require_classifier(config)
    input_ids, attention_mask, token_type_ids = check_batch_inputs(batch, config, backend)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            "labels": check_labels(batch["labels"], input_ids, config, backend)}


def classify_device_batch(batch: dict, backend, dtype) -> ClassifyBatch:
    """A checked batch moved to the backend, labels flattened to (targets [N], weights [N]), N = B (sequence)
    or B*T (token): targets are the labels with -100 replaced by 0 (int32; `dtype` floats for regression),
    weights 1.0 where labelled and 0.0 where -100."""
    labels = batch["labels"].reshape(-1)                                        # [B] or [B, T] -> [N]
    if np.issubdtype(labels.dtype, np.floating):
        targets = backend.asarray(labels, dtype=dtype)
        weights = backend.asarray(np.ones(labels.shape), dtype=dtype)
    else:
        labelled = labels != IGNORE_LABEL
        targets = backend.asarray(np.where(labelled, labels, 0).astype(np.int32))
        weights = backend.asarray(labelled.astype(np.float64), dtype=dtype)
    return ClassifyBatch(input_ids=backend.asarray(batch["input_ids"]),
                         attention_mask=backend.asarray(batch["attention_mask"]),
                         token_type_ids=backend.asarray(batch["token_type_ids"]), targets=targets, weights=weights)
