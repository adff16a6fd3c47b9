"""An evaluation report for a fine-tuned classifier (`scripts/evaluate.py RUN --report DIR`), from its outputs on
labelled examples (`minibert.evaluation.classifier_outputs`):

    report.json    the metrics, per-class precision / recall / F1 / support, the confusion matrix and, for BIO tags,
                   per-type span precision / recall / F1 (as seqeval's classification_report)
    confusion.png  the confusion matrix, true class by row, predicted by column, each row coloured by its share
    errors.csv     every wrong prediction: sequence task one row per example (line, text, gold, predicted, the
                   predicted label's probability, the gold one's); token task one row per wrongly tagged word;
                   regression every example, largest absolute error first

`table_lines` formats the per-class rows for the terminal.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from minibert.config import BertConfig
from minibert.storage.fileio import atomic_write_bytes, atomic_write_json
from minibert.evaluation import scored_tags
from minibert.metrics import confusion_matrix, is_bio_tagset, per_class, softmax, span_f1_by_type

REPORT, CONFUSION, ERRORS = "report.json", "confusion.png", "errors.csv"


def write_report(folder, examples: list, encoded, logits, targets, config: BertConfig, metrics: dict) -> dict:
    """Write report.json, confusion.png (not for regression) and errors.csv into `folder` (created); return the
    report. `examples` are the labelled examples (`SequenceExample` or `TokenExample`) behind `encoded`, in order;
    `logits` and `targets` come from `classifier_outputs` on `encoded`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report = {"metrics": metrics, "examples": len(examples)}
    if config.problem_type == "regression":
        errors = _regression_errors(examples, logits[:, 0])
    else:
        names = [config.id2label[i] for i in range(config.num_labels)]
        predictions, probs = logits.argmax(-1), softmax(logits)
        report["classes"] = per_class(predictions.ravel(), targets.ravel(), names)
        counts = confusion_matrix(predictions.ravel(), targets.ravel(), len(names))
        report["confusion"] = {"labels": names, "counts": counts.tolist(), "rows": "true", "columns": "predicted"}
        if config.task == "token":
            if is_bio_tagset(names):
                report["spans"] = span_f1_by_type(*scored_tags(predictions, targets, config))
            errors = _token_errors(examples, encoded, predictions, probs, names)
        else:
            errors = _sequence_errors(examples, predictions, probs, targets, names)
        plot_confusion(counts, names, folder / CONFUSION,
                       f"{metrics.get('eval_examples', len(examples))} examples, "
                       + ("accuracy" if config.task == "sequence" else "token accuracy")
                       + f" {metrics.get('accuracy', metrics.get('token_accuracy', float('nan'))):.3f}")
    report["errors"] = len(errors) - 1
    text = io.StringIO(newline="")
    csv.writer(text).writerows(errors)
    atomic_write_bytes(folder / ERRORS, text.getvalue().encode("utf-8"))
    atomic_write_json(folder / REPORT, report)
    return report


def _sequence_errors(examples, predictions, probs, targets, names) -> list[list]:
    rows = [["line", "text", "text_pair", "gold", "predicted", "p(predicted)", "p(gold)"]]
    for i, example in enumerate(examples):
        gold, guess = int(targets[i]), int(predictions[i])
        if gold != guess:
            rows.append([example.line or "", example.text, example.text_pair or "", names[gold], names[guess],
                         f"{probs[i, guess]:.4f}", f"{probs[i, gold]:.4f}"])
    return rows


def _token_errors(examples, encoded, predictions, probs, names) -> list[list]:
    rows = [["line", "sentence", "word", "position", "gold", "predicted", "p(predicted)"]]
    for i, example in enumerate(examples):
        for j, (word, gold) in enumerate(zip(example.words, example.tags)):
            start = int(encoded.word_starts[i][j])
            guess = names[int(predictions[i, start])] if start >= 0 else ""      # "" : truncated away
            if guess != gold:
                rows.append([example.line or "", " ".join(example.words), word, j, gold, guess or "(truncated)",
                             f"{probs[i, start].max():.4f}" if start >= 0 else ""])
    return rows


def _regression_errors(examples, predictions) -> list[list]:
    order = np.argsort(-np.abs(predictions - np.array([e.label for e in examples])), kind="stable")
    rows = [["line", "text", "text_pair", "gold", "predicted", "abs_error"]]
    for i in order:
        example = examples[int(i)]
        rows.append([example.line or "", example.text, example.text_pair or "", f"{example.label:.6g}",
                     f"{predictions[i]:.6g}", f"{abs(predictions[i] - example.label):.6g}"])
    return rows


def table_lines(report: dict) -> list[str]:
    """The per-class (and per-span-type) rows for the terminal, with macro and support-weighted averages."""
    lines = []
    for key, title in (("classes", "class"), ("spans", "span type")):
        rows = report.get(key)
        if not rows:
            continue
        width = max(len(title), len("weighted avg"), *(len(str(r.get("class", r.get("type")))) for r in rows))
        lines.append(f"{title:<{width}}  precision  recall      f1  support")
        for r in rows:
            lines.append(f"{str(r.get('class', r.get('type'))):<{width}}  {r['precision']:9.3f} {r['recall']:7.3f} "
                         f"{r['f1']:7.3f} {r['support']:8d}")
        total = sum(r["support"] for r in rows)
        for name, weights in (("macro avg", [1.0] * len(rows)), ("weighted avg", [r["support"] for r in rows])):
            norm = sum(weights) or 1.0
            lines.append(f"{name:<{width}}  " + " ".join(
                f"{sum(w * r[m] for w, r in zip(weights, rows)) / norm:{9 if m == 'precision' else 7}.3f}"
                for m in ("precision", "recall", "f1")) + f" {total:8d}")
        lines.append("")
    return lines


def plot_confusion(counts: np.ndarray, names: list[str], path, title: str) -> None:
    """The confusion matrix as a picture: counts written in the cells, each row coloured by its share of the
    row (so a rare class's mistakes show as clearly as a common one's)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(4.0, 0.55 * len(names) + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (r, c), value in np.ndenumerate(counts):
        ax.text(c, r, str(value), ha="center", va="center", fontsize=8,
                color="white" if share[r, c] > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="share of the true class")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

