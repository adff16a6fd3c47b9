"""Fine-tuning metrics against hand-computed values (sklearn's and seqeval's definitions)."""
import numpy as np
import pytest

from minibert.metrics import (accuracy, get_entities, is_bio_tagset, macro_f1, majority_baseline, majority_class,
                              pearson, span_f1, spearman, token_accuracy)


def test_accuracy_and_macro_f1():
    assert accuracy([0, 1, 2, 2], [0, 2, 2, 2]) == 0.75
    # class 0: TP 1 FP 1 FN 1 -> 2/4; class 1: TP 2 FP 1 FN 0 -> 4/5; class 2: TP 1 FP 0 FN 1 -> 2/3
    assert macro_f1([0, 1, 1, 1, 0, 2], [0, 0, 1, 1, 2, 2]) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # a class only predicted counts with F1 0, as in sklearn
    assert macro_f1([0, 1], [0, 0]) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1([3, 3], [3, 3]) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        accuracy([0, 1], [0])


def test_majority_baseline_and_token_accuracy():
    assert majority_class([1, 1, 0, 2]) == 1
    assert majority_class([2, 0]) == 0  # ties go to the smallest label
    assert majority_baseline([1, 1, 0, 2], [1, 0, 0, 0]) == 0.25
    assert majority_baseline([[5, 5, -100], [3, -100, -100]], [[5, 3, -100]]) == 0.5
    labels = np.array([[-100, 1, 2, -100], [-100, 0, -100, -100]])
    predictions = np.array([[7, 1, 0, 7], [7, 0, 7, 7]])
    assert token_accuracy(predictions, labels) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="nothing to score"):
        token_accuracy([1], [-100])


def test_entities_as_seqeval_extracts_them():
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]  # seqeval's docs
    assert get_entities(["I-PER", "I-PER", "O"]) == [("PER", 0, 1)]  # I- without B- starts a chunk
    assert get_entities(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 2)]  # a type change splits
    assert get_entities(["O", "I-PER", "B-PER", "I-PER"]) == [("PER", 1, 1), ("PER", 2, 3)]
    assert get_entities(["S-PER", "B-LOC", "E-LOC", "O"]) == [("PER", 0, 0), ("LOC", 1, 2)]  # IOBES
    assert get_entities(["B-CODE", "B-CODE", "I-CODE"]) == [("CODE", 0, 0), ("CODE", 1, 2)]
    assert get_entities(["O", "O"]) == []


def test_span_f1_of_seqeval_docs_example():
    y_true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    y_pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    assert span_f1(y_true, y_pred) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}  # seqeval's f1_score docs


def test_span_f1_counts_chunks_per_sentence():
    y_true = [["B-X", "I-X", "O", "B-Y"], ["B-X"]]
    y_pred = [["B-X", "I-X", "O", "B-X"], ["O"]]  # 1 of 2 predicted right, 1 of 3 true found
    scores = span_f1(y_true, y_pred)
    assert scores["precision"] == 0.5 and scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    # the same chunk in two sentences is two chunks; a sentence boundary ends a chunk
    assert span_f1([["B-X"], ["I-X"]], [["B-X"], ["O"]])["recall"] == 0.5
    assert span_f1([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError, match="sentence 0"):
        span_f1([["O", "O"]], [["O"]])


def test_bio_tagset():
    assert is_bio_tagset(["O", "B-PER", "I-PER", "S-LOC", "E-LOC"])
    assert not is_bio_tagset(["NN", "VB"]) and not is_bio_tagset(["B-"])


def test_pearson_and_spearman_on_known_data():
    x, y = [1, 2, 3, 4, 5], [2, 4, 5, 4, 5]
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    # ranks of y with ties averaged: [1, 2.5, 4.5, 2.5, 4.5]; sum(dx dy) = 7, sum dx^2 = 10, sum dy^2 = 9
    assert spearman(x, y) == pytest.approx(7 / np.sqrt(90), rel=1e-12)
    assert spearman(x, y) == pytest.approx(np.corrcoef(x, [1, 2.5, 4.5, 2.5, 4.5])[0, 1], rel=1e-12)
    cubes = np.array(x, dtype=float) ** 3
    assert spearman(x, cubes) == pytest.approx(1.0) and pearson(x, cubes) < 0.99  # monotone, not linear
    assert spearman(x, -cubes) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.integers(0, 5, size=50)  # many ties in b
    ranks_b = np.array([np.mean(np.flatnonzero(np.sort(b) == value) + 1) for value in b])
    ranks_a = np.argsort(np.argsort(a)) + 1
    assert spearman(a, b) == pytest.approx(np.corrcoef(ranks_a, ranks_b)[0, 1], rel=1e-12)
    with pytest.raises(ValueError, match="constant"):
        pearson([1, 1, 1], [1, 2, 3])
