"""Fine-tuning metrics on the host (NumPy): classification, token tagging (BIO spans) and regression.

Labels and predictions are integer class ids (any array-like); in token metrics a label of -100 marks a position
that is not scored. Span F1 works on tag strings, one list per sentence, as seqeval does.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minibert.config import IGNORE_LABEL


def softmax(logits) -> np.ndarray:
    """Probabilities over the last axis, in float64: exp(z - max z) / sum exp(z - max z) (the max subtracted so
    nothing overflows)."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to their label: mean(pred == label)."""
    predictions, labels = _paired(predictions, labels)
    return float(np.mean(predictions == labels))


def macro_f1(predictions, labels) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN), as sklearn's `f1_score(average="macro")`:
    the classes are those that occur in the labels or the predictions; a class with 2 TP + FP + FN = 0 cannot
    occur, and F1 is 0 for a class never predicted correctly."""
    predictions, labels = _paired(predictions, labels)
    classes = np.union1d(predictions, labels)
    scores = []
    for cls in classes:
        tp = np.sum((predictions == cls) & (labels == cls))
        fp = np.sum((predictions == cls) & (labels != cls))
        fn = np.sum((predictions != cls) & (labels == cls))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def majority_class(train_labels) -> int:
    """The most frequent training label (the smallest one on a tie), ignoring -100."""
    train_labels = np.asarray(train_labels).ravel()
    train_labels = train_labels[train_labels != IGNORE_LABEL]
    if train_labels.size == 0:
        raise ValueError("majority_class: no training labels")
    values, counts = np.unique(train_labels, return_counts=True)
    return int(values[np.argmax(counts)])


def majority_baseline(train_labels, eval_labels) -> float:
    """Accuracy on `eval_labels` of always predicting the training set's most frequent label (positions with
    label -100 are not scored, so this is the token accuracy of the baseline for tags)."""
    eval_labels = np.asarray(eval_labels).ravel()
    scored = eval_labels[eval_labels != IGNORE_LABEL]
    if scored.size == 0:
        raise ValueError("majority_baseline: no evaluation labels")
    return float(np.mean(scored == majority_class(train_labels)))


def token_accuracy(predictions, labels) -> float:
    """Fraction of scored positions (label != -100) whose prediction equals the label."""
    predictions, labels = _paired(predictions, labels)
    scored = labels != IGNORE_LABEL
    if not scored.any():
        raise ValueError("token_accuracy: every label is -100, nothing to score")
    return float(np.mean(predictions[scored] == labels[scored]))


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks (type, first, last) of one tag sequence, by seqeval's default (conlleval) rules.

    A tag is "O" or "<prefix>-<type>" with prefix B, I, E or S (IOB1/IOB2/IOE/IOBES); a chunk ends before a B,
    an S, an O or a change of type, and after an E or an S; it starts at a B or an S, at an I or E after O, E
    or S, and at any tag whose type differs from the previous one -- so "I-PER" without "B-PER" still starts a
    PER chunk, as in conlleval.
    """
    chunks = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def span_f1(true_tags: Sequence[Sequence[str]], predicted_tags: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 of chunks over sentences, as seqeval's `precision/recall/f1_score`
    (default mode): a predicted chunk counts only if its type and both ends equal a true chunk's.
    precision = |T & P| / |P|, recall = |T & P| / |T|, F1 = 2 p r / (p + r) (each 0 when undefined)."""
    if len(true_tags) != len(predicted_tags):
        raise ValueError(f"span_f1: {len(true_tags)} true sentences but {len(predicted_tags)} predicted")
    true_chunks, predicted_chunks = set(), set()
    for i, (truth, predicted) in enumerate(zip(true_tags, predicted_tags)):
        if len(truth) != len(predicted):
            raise ValueError(f"span_f1: sentence {i} has {len(truth)} true tags but {len(predicted)} predicted")
        true_chunks.update((i, *chunk) for chunk in get_entities(truth))
        predicted_chunks.update((i, *chunk) for chunk in get_entities(predicted))
    correct = len(true_chunks & predicted_chunks)
    precision = correct / len(predicted_chunks) if predicted_chunks else 0.0
    recall = correct / len(true_chunks) if true_chunks else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def per_class(predictions, labels, names: Sequence[str]) -> list[dict]:
    """One row per class id 0..len(names)-1, scored positions only (label != -100): precision = TP / (TP + FP),
    recall = TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN) (each 0 when undefined, as sklearn with
    zero_division=0) and support = TP + FN (the class's true count)."""
    predictions, labels = _paired(predictions, labels)
    scored = labels != IGNORE_LABEL
    predictions, labels = predictions[scored], labels[scored]
    rows = []
    for cls, name in enumerate(names):
        tp = int(np.sum((predictions == cls) & (labels == cls)))
        fp = int(np.sum((predictions == cls) & (labels != cls)))
        fn = int(np.sum((predictions != cls) & (labels == cls)))
        rows.append({"class": name, "precision": tp / (tp + fp) if tp + fp else 0.0,
                     "recall": tp / (tp + fn) if tp + fn else 0.0,
                     "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0, "support": tp + fn})
    return rows


def confusion_matrix(predictions, labels, num_classes: int) -> np.ndarray:
    """counts[true, predicted] over the scored positions (label != -100), int64 [C, C]."""
    predictions, labels = _paired(predictions, labels)
    scored = labels != IGNORE_LABEL
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels[scored].astype(np.int64), predictions[scored].astype(np.int64)), 1)
    return counts


def span_f1_by_type(true_tags: Sequence[Sequence[str]], predicted_tags: Sequence[Sequence[str]]) -> list[dict]:
    """`span_f1` for each chunk type alone (seqeval's classification_report): one row per type that occurs in
    the truth or the predictions, with support = its true chunks."""
    true_chunks = {(i, *chunk) for i, tags in enumerate(true_tags) for chunk in get_entities(tags)}
    predicted_chunks = {(i, *chunk) for i, tags in enumerate(predicted_tags) for chunk in get_entities(tags)}
    rows = []
    for type_ in sorted({chunk[1] for chunk in true_chunks | predicted_chunks}):
        truth = {c for c in true_chunks if c[1] == type_}
        predicted = {c for c in predicted_chunks if c[1] == type_}
        correct = len(truth & predicted)
        precision = correct / len(predicted) if predicted else 0.0
        recall = correct / len(truth) if truth else 0.0
        rows.append({"type": type_, "precision": precision, "recall": recall,
                     "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                     "support": len(truth)})
    return rows


def is_bio_tagset(tags: Sequence[str]) -> bool:
    """Whether every tag is "O" or "B-x"/"I-x"/"E-x"/"S-x" (so that span F1 means something)."""
    return all(tag == "O" or (len(tag) > 2 and tag[0] in "BIES" and tag[1] == "-") for tag in tags)


def pearson(predictions, targets) -> float:
    """Pearson correlation r = sum(dx dy) / sqrt(sum(dx^2) sum(dy^2)), d = deviation from the mean."""
    x, y = _paired(predictions, targets, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    if denominator == 0:
        raise ValueError("pearson: a constant input has no correlation")
    return float(np.sum(dx * dy) / denominator)


def spearman(predictions, targets) -> float:
    """Spearman correlation: the Pearson correlation of the ranks (tied values get their average rank)."""
    x, y = _paired(predictions, targets, dtype=np.float64)
    return pearson(_average_ranks(x), _average_ranks(y))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span (scipy's rankdata(method="average"))."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[True, sorted_values[1:] != sorted_values[:-1]]  # first position of each run of equal values
    run = np.cumsum(starts) - 1  # run number of each sorted position
    run_start = np.flatnonzero(starts)
    run_end = np.r_[run_start[1:], len(values)]  # one past the last position of each run
    ranks = np.empty(len(values))
    ranks[order] = (run_start[run] + run_end[run] + 1) / 2  # mean of 1-based ranks start+1 .. end
    return ranks


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (prev_tag in "ES"
            or (prev_tag in "BI" and tag in "BSO")
            or (prev_tag not in "O." and prev_type != type_))


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (tag in "BS"
            or (prev_tag in "OES" and tag in "IE")
            or (tag not in "O." and prev_type != type_))


def _paired(predictions, labels, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions, dtype=dtype), np.asarray(labels, dtype=dtype)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must have the same shape")
    if predictions.size == 0:
        raise ValueError("no predictions to score")
    return predictions.ravel(), labels.ravel()
