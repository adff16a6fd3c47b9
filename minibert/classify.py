"""Sentence and token classification on the encoder: transformers' BertForSequenceClassification and
BertForTokenClassification, forward and backward by hand (the heads and losses are in `minibert.heads`).

    hidden = encoder(ids)                                               [B*T, H]
    sequence:  logits = dropout(tanh(hidden[:, 0] Wp + bp)) Wc + bc      [B, C]
    token:     logits = dropout(hidden) Wc + bc                          [B*T, C] (returned as [B, T, C])
    loss: cross-entropy over the labelled rows (label -100 ignored), or MSE when num_labels == 1 (regression)

Which head runs is decided by `config.task` ("sequence" or "token") and `config.num_labels`. Host-side functions
(`check_classify_batch`, `classify_device_batch`) validate with NumPy before any device work; the device-side
ones (`classify_forward_backward`, `classify_metrics`, `classify_logits_all`) take backend arrays and import no
array library.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from array_api_compat import array_namespace

from minibert.api import logits_for_host_inputs, loss_and_grads_for_host_batch
from minibert.batch import check_batch_inputs, host_ints
from minibert.config import IGNORE_LABEL, BertConfig
from minibert.heads import (mse_backward, mse_forward, sequence_head_backward, sequence_head_forward,
                            token_head_backward, token_head_forward)
from minibert.loss import cross_entropy_backward, cross_entropy_forward
from minibert.model import encoder_backward, encoder_forward


class ClassifyBatch(NamedTuple):
    """One classification batch on the device, as `classify_forward_backward` reads it; N = B (task "sequence")
    or B*T (task "token"). A NamedTuple, so JAX treats it as a pytree; fields are read by name."""
    input_ids: Any          # [B, T] int
    attention_mask: Any     # [B, T] int, 1 = attend, 0 = padding
    token_type_ids: Any     # [B, T] int
    targets: Any            # [N] int class ids (0 where the label was -100), or float targets (regression)
    weights: Any            # [N] float, 1 for a label that counts, 0 for -100


def head_dropout_site(config: BertConfig) -> int:
    """The head's dropout draws from fold_in(key, 3 * num_layers + 1): after the encoder's sites 0..3L."""
    return 3 * config.num_layers + 1


# --- device side -----------------------------------------------------------------------------------------------

def _head_forward(params, hidden, batch, seq, config: BertConfig, backend, key):
    """hidden [B*T, H] -> (logits [B, C] or [B*T, C], head cache)."""
    head_key = None if key is None else backend.fold_in(key, head_dropout_site(config))
    rate = config.classifier_dropout_rate
    if config.task == "sequence":
        return sequence_head_forward(params, hidden, batch, seq, rate, head_key, backend)
    return token_head_forward(params, hidden, rate, head_key, backend)


def _loss_forward(logits, arrays, config: BertConfig, backend, normaliser=None):
    if config.problem_type == "regression":
        return mse_forward(logits, arrays.targets, arrays.weights, normaliser)
    return cross_entropy_forward(logits, arrays.targets, arrays.weights, backend, normaliser)


def classify_forward_backward(params, arrays, key=None, normaliser=None, *, config: BertConfig, backend):
    """Loss (0-d array) and every gradient (named like `params`) for one device batch
    (`classify_device_batch`); `key` a backend random key for dropout, or None for none. The loss is the sum
    over labelled rows divided by `normaliser` (the labelled rows of the whole training step, counted by
    `minibert.model.label_count`), or by this batch's own count when None: the batch mean.

    Backward: dLoss/dlogits from the loss, back through the head to d hidden [B*T, H] (the sequence head
    feeds only the [CLS] rows, so the other rows get 0), then through the encoder.
    """
    batch, seq = arrays.input_ids.shape
    hidden, encoder_cache = encoder_forward(params, arrays.input_ids, arrays.token_type_ids, arrays.attention_mask,
                                            config, backend, key)
    logits, head_cache = _head_forward(params, hidden, batch, seq, config, backend, key)
    loss, loss_cache = _loss_forward(logits, arrays, config, backend, normaliser)
    if config.problem_type == "regression":
        d_logits, _ = mse_backward(1.0, loss_cache)
    else:
        d_logits, _ = cross_entropy_backward(1.0, loss_cache)
    if config.task == "sequence":
        d_hidden, grads = sequence_head_backward(d_logits, head_cache)
    else:
        d_hidden, grads = token_head_backward(d_logits, head_cache)
    _, encoder_grads = encoder_backward(d_hidden, encoder_cache)
    grads.update(encoder_grads)
    return loss, grads


def _logits(params, input_ids, attention_mask, token_type_ids, config: BertConfig, backend):
    xp = array_namespace(params["embeddings.word"])
    batch, seq = input_ids.shape
    hidden, _ = encoder_forward(params, input_ids, token_type_ids, attention_mask, config, backend)
    logits, _ = _head_forward(params, hidden, batch, seq, config, backend, None)
    if config.task == "token":
        logits = xp.reshape(logits, (batch, seq, config.num_labels))          # [B*T, C] -> [B, T, C]
    return logits


def classify_logits_all(params, input_ids, attention_mask, token_type_ids, *, config: BertConfig, backend):
    """Logits (eval mode: no dropout): [B, num_labels] for task "sequence", [B, T, num_labels] for "token"."""
    return _logits(params, input_ids, attention_mask, token_type_ids, config, backend)


def classify_metrics(params, arrays, *, config: BertConfig, backend):
    """Evaluation of a device batch (no dropout): (summed loss over the labelled rows, a 0-d array; logits as
    `classify_logits_all`). Accuracy, F1 and correlations are computed from the logits on the host."""
    xp = array_namespace(params["embeddings.word"])
    logits = _logits(params, arrays.input_ids, arrays.attention_mask, arrays.token_type_ids, config, backend)
    flat = xp.reshape(logits, (-1, config.num_labels))                          # [B, (T,) C] -> [N, C]
    mean_loss, _ = _loss_forward(flat, arrays, config, backend)
    return mean_loss * xp.sum(arrays.weights), logits


# --- host side -------------------------------------------------------------------------------------------------

def _require_classifier(config: BertConfig) -> None:
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
    _require_classifier(config)
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


# --- public API: host inputs in, checked before any device work -------------------------------------------------

def classify_logits(params, input_ids, attention_mask=None, token_type_ids=None, *, config: BertConfig, backend):
    """Classification logits (eval mode: no dropout), a backend array: [B, num_labels] for config.task
    "sequence", [B, T, num_labels] for "token"."""
    _require_classifier(config)
    return logits_for_host_inputs(classify_logits_all, params, input_ids, attention_mask, token_type_ids,
                                  config=config, backend=backend)


def classify_loss_and_grads(params, batch, *, config: BertConfig, backend, dropout_seed: int | None = None):
    """(loss as a Python float, dict of gradients named like `params`) for a host classification batch.

    batch: dict of host arrays input_ids [B, T] (attention_mask, token_type_ids optional) and labels: [B] int
    (task "sequence"), [B] float (regression, num_labels == 1) or [B, T] int (task "token"); -100 = ignored.
    Dropout (encoder, and config.classifier_dropout_rate before the classifier) runs only when `dropout_seed`
    is given.
    """
    return loss_and_grads_for_host_batch(classify_forward_backward, params, check_classify_batch(batch, config, backend),
                                         classify_device_batch, config=config, backend=backend,
                                         dropout_seed=dropout_seed)
