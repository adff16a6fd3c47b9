"""Sentence and token classification on the encoder: transformers' BertForSequenceClassification and
BertForTokenClassification, forward and backward by hand (the heads and losses are in `minibert.nn.heads`).

    hidden = encoder(ids)                                               [B*T, H]
    sequence:  logits = dropout(tanh(hidden[:, 0] Wp + bp)) Wc + bc      [B, C]
    token:     logits = dropout(hidden) Wc + bc                          [B*T, C] (returned as [B, T, C])
    loss: cross-entropy over the labelled rows (label -100 ignored), or MSE when num_labels == 1 (regression)

Which head runs is decided by `config.task` ("sequence" or "token") and `config.num_labels`. Everything here
takes backend arrays (a `minibert.data.classify_batch.ClassifyBatch`) and imports no array library; the host-side
checks and the device batch are in `minibert.data.classify_batch`, the public API in `minibert.api`.
"""
from __future__ import annotations

from array_api_compat import array_namespace

from minibert.config import BertConfig
from minibert.nn.heads import (cls_rows, cls_rows_gradient, mse_backward, mse_forward, sequence_head_backward,
                               sequence_head_forward, token_head_backward, token_head_forward)
from minibert.nn.loss import cross_entropy_backward, cross_entropy_forward
from minibert.nn.model import encoder_backward, encoder_forward


def head_dropout_site(config: BertConfig) -> int:
    """The head's dropout draws from fold_in(key, 3 * num_layers + 1): after the encoder's sites 0..3L."""
    return 3 * config.num_layers + 1


# --- device side -----------------------------------------------------------------------------------------------

def _head_forward(params, hidden, seq, config: BertConfig, backend, key):
    """hidden [B*T, H] -> (logits [B, C] (from the [CLS] rows) or [B*T, C], head cache)."""
    head_key = None if key is None else backend.fold_in(key, head_dropout_site(config))
    rate = config.classifier_dropout_rate
    if config.task == "sequence":
        return sequence_head_forward(params, cls_rows(hidden, seq), rate, head_key, backend)
    return token_head_forward(params, hidden, rate, head_key, backend)


def _loss_forward(logits, arrays, config: BertConfig, normaliser=None):
    loss_forward = mse_forward if config.problem_type == "regression" else cross_entropy_forward
    return loss_forward(logits, arrays.targets, arrays.weights, normaliser)


def classify_forward_backward(params, arrays, key=None, normaliser=None, *, config: BertConfig, backend,
                              train_encoder: bool = True):
    """Loss (0-d array) and every gradient (named like `params`) for one device batch
    (`classify_device_batch`); `key` a backend random key for dropout, or None for none. The loss is the sum
    over labelled rows divided by `normaliser` (the labelled rows of the whole training step, counted by
    `minibert.nn.model.label_count`), or by this batch's own count when None: the batch mean.

    Backward: dLoss/dlogits from the loss, back through the head to d hidden [B*T, H] (the sequence head
    feeds only the [CLS] rows, so the other rows get 0), then through the encoder. With `train_encoder=False`
    (a linear probe on a frozen encoder) the encoder's backward is not run and only the head's gradients are
    returned, so an optimizer given them updates the head alone.
    """
    seq = arrays.input_ids.shape[1]
    hidden, encoder_cache = encoder_forward(params, arrays.input_ids, arrays.token_type_ids, arrays.attention_mask,
                                            config, backend, key)
    logits, head_cache = _head_forward(params, hidden, seq, config, backend, key)
    loss, loss_cache = _loss_forward(logits, arrays, config, normaliser)
    if config.problem_type == "regression":
        d_logits, _ = mse_backward(1.0, loss_cache)
    else:
        d_logits, _ = cross_entropy_backward(1.0, loss_cache, backend)
    if config.task == "sequence":
        d_cls, grads = sequence_head_backward(d_logits, head_cache)
        d_hidden = cls_rows_gradient(d_cls, seq)
    else:
        d_hidden, grads = token_head_backward(d_logits, head_cache)
    if train_encoder:
        _, encoder_grads = encoder_backward(d_hidden, encoder_cache, config, backend)
        grads.update(encoder_grads)
    return loss, grads


def _logits(params, input_ids, attention_mask, token_type_ids, config: BertConfig, backend):
    xp = array_namespace(params["embeddings.word"])
    batch, seq = input_ids.shape
    hidden, _ = encoder_forward(params, input_ids, token_type_ids, attention_mask, config, backend)
    logits, _ = _head_forward(params, hidden, seq, config, backend, None)
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
    mean_loss, _ = _loss_forward(flat, arrays, config)
    return mean_loss * xp.sum(arrays.weights), logits
