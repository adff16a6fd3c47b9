"""Held-out evaluation (host side), what training runs at every --eval-every and `scripts/evaluate.py` prints:
masked-LM loss, perplexity and accuracy (`evaluate_mlm`); a classifier's outputs on labelled examples
(`classifier_outputs`) and its metrics (`evaluate_classifier`, `classifier_metrics`: accuracy and macro-F1, token
accuracy and span F1, or correlations), one summary line (`summarize`). Prediction on new texts is
`minibert.inference`; training imports this module only."""
from __future__ import annotations

import math

import numpy as np

from minibert.api import compiled
from minibert.config import IGNORE_LABEL, BertConfig
from minibert.data.batch import check_batch, device_batch
from minibert.data.classify_batch import check_classify_batch, classify_device_batch
from minibert.data.finetune_encode import EncodedExamples, FinetuneBatcher
from minibert.metrics import accuracy, is_bio_tagset, macro_f1, pearson, span_f1, spearman, token_accuracy
from minibert.nn.classify import classify_metrics
from minibert.nn.model import masked_lm_metrics


def evaluate_mlm(params, heldout, config, backend, max_batches: int = 0) -> dict:
    """Masked-LM loss (nats per masked token), perplexity and accuracy over the batches of `heldout` (a
    `minibert.data.mlm.MLMBatcher` with fixed masking: epoch 0), the first `max_batches` of them (0 = all)."""
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


def classifier_outputs(params, encoded: EncodedExamples, config: BertConfig, backend, batch_size: int
                       ) -> tuple[float, np.ndarray, np.ndarray]:
    """A classifier on `encoded` (labelled examples, encoded), in their order: (mean loss over the labelled rows,
    logits as float64 [N, C] (token task: [N, T, C], every example padded to the longest), labels [N] (or [N, T],
    -100 where not scored))."""
    metrics_fn = compiled(classify_metrics, config, backend)
    dtype = params["embeddings.word"].dtype
    batcher = FinetuneBatcher(encoded, min(batch_size, len(encoded)), 0, shuffle=False,
                              pad_to=max(len(ids) for ids in encoded.input_ids))
    total_loss, count, outputs, labels = 0.0, 0.0, [], []
    for i in range(batcher.batches_per_epoch):
        batch = check_classify_batch(batcher.batch(0, i), config)
        arrays = classify_device_batch(batch, backend, dtype)
        loss_sum, logits = metrics_fn(params, arrays)
        total_loss += float(backend.to_numpy(loss_sum))
        count += float(np.sum(batch["labels"] != IGNORE_LABEL))      # regression targets are never -100
        outputs.append(backend.to_numpy(logits).astype(np.float64))
        labels.append(batch["labels"])
    return total_loss / count, np.concatenate(outputs), np.concatenate(labels)


def evaluate_classifier(params, encoded: EncodedExamples, config: BertConfig, backend, batch_size: int,
                        baseline: float | None) -> dict:
    """Held-out metrics of a classifier on `encoded` (labelled examples, encoded): eval_loss (mean over labelled rows),
    and accuracy + macro_f1 (classes), token_accuracy (+ span_f1/precision/recall for BIO tags) or
    pearson + spearman (regression); `baseline` (majority-class accuracy) is added as baseline_accuracy."""
    loss, logits, targets = classifier_outputs(params, encoded, config, backend, batch_size)
    return classifier_metrics(loss, logits, targets, config, len(encoded), baseline)


def classifier_metrics(loss: float, logits, targets, config: BertConfig, examples: int, baseline: float | None
                       ) -> dict:
    """The metrics of `evaluate_classifier` from `classifier_outputs`."""
    metrics = {"eval_loss": loss, "eval_examples": examples}
    if config.problem_type == "regression":
        predictions = logits[:, 0]
        for name, fn in (("pearson", pearson), ("spearman", spearman)):
            try:
                metrics[name] = fn(predictions, targets)
            except ValueError:            # a constant prediction (or target) has no correlation
                metrics[name] = None
        return metrics
    predictions = logits.argmax(-1)
    if config.task == "sequence":
        metrics.update(accuracy=accuracy(predictions, targets), macro_f1=macro_f1(predictions, targets))
    else:
        metrics["token_accuracy"] = token_accuracy(predictions.ravel(), targets.ravel())
        if is_bio_tagset(list(config.id2label.values())):
            true_tags, predicted = scored_tags(predictions, targets, config)
            spans = span_f1(true_tags, predicted)
            metrics.update(span_f1=spans["f1"], span_precision=spans["precision"], span_recall=spans["recall"])
    if baseline is not None:
        metrics["baseline_accuracy"] = baseline
    return metrics


def scored_tags(predictions, targets, config: BertConfig) -> tuple[list[list[str]], list[list[str]]]:
    """Per example, the true and the predicted tag names at its scored positions (each word's first piece)."""
    true_tags = [[config.id2label[int(i)] for i in t[t != IGNORE_LABEL]] for t in targets]
    predicted = [[config.id2label[int(i)] for i in p[t != IGNORE_LABEL]] for p, t in zip(predictions, targets)]
    return true_tags, predicted


def summarize(metrics: dict) -> str:
    """One line of the headline metrics."""
    if "pearson" in metrics:
        show = lambda v: "n/a (constant)" if v is None else f"{v:.3f}"     # noqa: E731
        return (f"held-out loss {metrics['eval_loss']:.4f}  pearson {show(metrics['pearson'])}  spearman "
                f"{show(metrics['spearman'])}")
    if "accuracy" in metrics:
        line = (f"held-out accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}  loss "
                f"{metrics['eval_loss']:.3f}")
    else:
        line = f"held-out token accuracy {metrics['token_accuracy']:.3f}  loss {metrics['eval_loss']:.3f}"
        if "span_f1" in metrics:
            line += f"  span F1 {metrics['span_f1']:.3f}"
    return line + f"  (majority-class baseline {metrics['baseline_accuracy']:.3f})"
