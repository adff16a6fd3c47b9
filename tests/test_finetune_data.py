"""Fine-tuning data: file readers and their errors, label maps, encoding with truncation and label alignment,
and the resumable batcher."""
import json

import numpy as np
import pytest

from minibert.data.mlm import IGNORE_LABEL
from minibert.data.finetune_data import (DataFileError, SequenceExample, TokenExample, build_label_map,
                                    load_sequence_task, load_token_task, read_sequence_file, read_token_file)
from minibert.data.finetune_encode import (FinetuneBatcher, encode_sequence_examples, encode_texts,
                                      encode_token_examples, encode_words, pad_batch)
from minibert.data.tokenizer import MINIBERT_SPECIAL_TOKENS as SPECIAL_TOKENS, WordPieceTokenizer

WORDS = ["the", "cat", "sat", "on", "mat", "un", "##believ", "##able", "dog", ".", ",", "a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def tok():
    return WordPieceTokenizer(list(SPECIAL_TOKENS) + WORDS)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def ids(tok, text):
    return [tok.token_to_id(token) for token in text.split()]


# --- readers ------------------------------------------------------------------------------------------------

def test_tsv_is_glue_style_unquoted(tmp_path):
    path = write(tmp_path, "train.tsv", 'sentence\tlabel\nit is "good\t1\n\nbad one\t0\n')
    examples = read_sequence_file(path)
    assert examples == [SequenceExample('it is "good', "1", None, 2), SequenceExample("bad one", "0", None, 4)]


def test_csv_quoting_pairs_and_columns(tmp_path):
    path = write(tmp_path, "pairs.csv", 'premise,hypothesis,gold\n"a, b",c,yes\n"multi\nline",d,no\n')
    examples = read_sequence_file(path, text_column="premise", text_pair_column="hypothesis", label_column="gold")
    assert [(e.text, e.text_pair, e.label, e.line) for e in examples] == [
        ("a, b", "c", "yes", 2), ("multi\nline", "d", "no", 3)]


def test_jsonl_labels_int_or_str_and_regression(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"text": "x", "label": 3}\n\n{"text": "y", "label": 10}\n')
    assert [(e.label, e.line) for e in read_sequence_file(path)] == [("3", 1), ("10", 3)]
    assert [e.label for e in read_sequence_file(path, regression=True)] == [3.0, 10.0]
    task = load_sequence_task(path, path, regression=True)
    assert task.regression and task.num_labels == 1 and task.label2id == {}


def test_conll_tab_and_whitespace_columns(tmp_path):
    path = write(tmp_path, "a.conll", "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
                                      "Peter NNP B-NP B-PER\n")
    assert read_token_file(path) == [TokenExample(("EU", "rejects"), ("B-ORG", "O"), 3),
                                     TokenExample(("Peter",), ("B-PER",), 7)]
    assert read_token_file(path, tag_column=1)[0].tags == ("NNP", "VBZ")
    tabs = write(tmp_path, "b.tsv", "New York\tB-LOC\nis\tO\n")  # a tab-separated word may hold a space
    assert read_token_file(tabs) == [TokenExample(("New York", "is"), ("B-LOC", "O"), 1)]


def test_token_jsonl_with_integer_tags(tmp_path):
    path = write(tmp_path, "t.jsonl", json.dumps({"tokens": ["a", "b"], "ner_tags": [0, 2]}) + "\n")
    assert read_token_file(path, tags_column="ner_tags") == [TokenExample(("a", "b"), ("0", "2"), 1)]


@pytest.mark.parametrize("name, content, kwargs, expected", [
    ("empty.tsv", "  \n", {}, ["empty.tsv", "empty"]),
    ("a.tsv", "sentence\tlabel\n", {}, ["a.tsv", "no examples"]),
    ("a.tsv", "sentence\tlabel\nx\t1\n", {"label_column": "gold"},
     ["a.tsv", "line 2", "'gold'", "['sentence', 'label']"]),
    ("a.tsv", "body\tlabel\nx\t1\n", {}, ["a.tsv", "line 2", "['sentence', 'text']", "['body', 'label']"]),
    ("a.tsv", "sentence\tlabel\nx\t1\ny\t0\textra\n", {}, ["a.tsv", "line 3", "ragged", "['sentence', 'label']"]),
    ("a.csv", "text,label\nx,1\n  ,0\n", {}, ["a.csv", "line 3", "empty text", "'text'"]),
    ("a.jsonl", '{"text": "x", "label": 1}\n{"text": "y", "label": 1\n', {}, ["a.jsonl", "line 2", "bad JSON"]),
    ("a.jsonl", '{"text": "x", "label": 1}\n{"txt": "y", "label": 1}\n', {},
     ["a.jsonl", "line 2", "'text'", "['txt', 'label']"]),
    ("a.jsonl", '[1, 2]\n', {}, ["a.jsonl", "line 1", "JSON object"]),
    ("a.jsonl", '{"text": "x", "label": true}\n', {}, ["a.jsonl", "line 1", "label True", "string or an integer"]),
    ("a.jsonl", '{"text": "x", "label": "high"}\n', {"regression": True}, ["a.jsonl", "line 1", "'high'"]),
    ("a.txt", "sentence\tlabel\nx\t1\n", {}, ["a.txt", ".tsv, .csv, .jsonl"]),
])
def test_sequence_file_errors(tmp_path, name, content, kwargs, expected):
    assert_file_error(read_sequence_file, write(tmp_path, name, content), kwargs, expected)


@pytest.mark.parametrize("name, content, kwargs, expected", [
    ("a.conll", "a\tO\nb\tB-X\tz\n", {}, ["a.conll", "line 2", "ragged", "['b', 'B-X', 'z']"]),
    ("a.conll", "a\nb\n", {}, ["a.conll", "line 1", "1 column found"]),
    ("a.conll", "a O\n", {"tag_column": 2}, ["a.conll", "line 1", "tag_column=2", "['a', 'O']"]),
    ("a.conll", "a O\n", {"tag_column": 0}, ["tag_column=0", "column 0 is the word"]),
    ("a.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', {}, ["a.jsonl", "line 1", "2 tokens but 1 tags"]),
    ("a.jsonl", '{"tokens": [], "tags": []}\n', {}, ["a.jsonl", "line 1", "empty text"]),
    ("a.jsonl", '{"words": ["a"], "tags": ["O"]}\n', {}, ["a.jsonl", "line 1", "'tokens'", "['words', 'tags']"]),
    ("a.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a"],\n', {}, ["a.jsonl", "line 2", "bad JSON"]),
])
def test_token_file_errors(tmp_path, name, content, kwargs, expected):
    assert_file_error(read_token_file, write(tmp_path, name, content), kwargs, expected)


def assert_file_error(reader, path, kwargs, expected):
    """`reader(path, **kwargs)` raises DataFileError and its message holds every part of `expected`."""
    with pytest.raises(DataFileError) as info:
        reader(path, **kwargs)
    for part in expected:
        assert part in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataFileError, match="nope.tsv: no such file"):
        read_sequence_file(str(tmp_path / "nope.tsv"))
    with pytest.raises(DataFileError, match="not a file"):
        read_token_file(str(tmp_path))


# --- label maps ---------------------------------------------------------------------------------------------

def test_label_map_is_sorted_and_numeric_for_integers():
    labels = ["10", "9", "2", "10", "9"]
    label2id, id2label = build_label_map([SequenceExample("t", label) for label in labels])
    assert label2id == {"2": 0, "9": 1, "10": 2} and id2label == {0: "2", 1: "9", 2: "10"}
    shuffled = build_label_map([SequenceExample("t", label) for label in ["neg", "pos", "neutral"][::-1]])
    assert shuffled == build_label_map([SequenceExample("t", label) for label in ["pos", "neg", "neutral"]])
    assert list(shuffled[0]) == ["neg", "neutral", "pos"]


def test_one_class_and_unseen_label_errors(tmp_path):
    train = write(tmp_path, "train.tsv", "sentence\tlabel\nx\tpos\ny\tpos\n")
    with pytest.raises(DataFileError) as info:
        load_sequence_task(train)
    assert "train.tsv" in str(info.value) and "label column 'label' has only one class ('pos')" in str(info.value)
    train = write(tmp_path, "train.tsv", "sentence\tlabel\nx\tpos\ny\tneg\n")
    evaluation = write(tmp_path, "dev.tsv", "sentence\tlabel\nx\tpos\nz\tneutral\n")
    with pytest.raises(DataFileError) as info:
        load_sequence_task(train, evaluation)
    assert all(part in str(info.value) for part in ("dev.tsv", "line 3", "'neutral'", "['neg', 'pos']"))
    conll = write(tmp_path, "t.conll", "a\tO\nb\tO\n")
    with pytest.raises(DataFileError, match="t.conll: the tag column -1 has only one class"):
        load_token_task(conll)
    good = write(tmp_path, "g.conll", "a\tO\nb\tB-X\n")
    unseen = r"e.conll, line 1 \(word 2, 'b'\): label 'B-Y' \(tag column -1\) never occurs"
    with pytest.raises(DataFileError, match=unseen):
        load_token_task(good, write(tmp_path, "e.conll", "a\tO\nb\tB-Y\n"))


def test_majority_baseline_of_a_task(tmp_path):
    train = write(tmp_path, "train.csv", "text,label\na,x\nb,y\nc,y\n")
    evaluation = write(tmp_path, "dev.csv", "text,label\na,x\nb,y\nc,x\nd,x\n")
    assert load_sequence_task(train, evaluation).majority_baseline() == 0.25  # always "y": 1 of 4


# --- encoding -----------------------------------------------------------------------------------------------

def test_single_and_pair_encoding_with_token_types(tok):
    encoded = encode_texts(["the cat", "dog"], tok, 16, text_pairs=["sat on", "the mat ."])
    assert encoded.input_ids[0].tolist() == ids(tok, "[CLS] the cat [SEP] sat on [SEP]")
    assert encoded.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert encoded.token_type_ids[1].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert encoded.num_truncated == 0 and encoded.labels is None
    single = encode_texts(["the cat sat"], tok, 4)
    assert single.input_ids[0].tolist() == ids(tok, "[CLS] the cat [SEP]") and single.num_truncated == 1


def test_pair_truncation_matches_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = str(tmp_path / "vocab.txt")
    tok.save_vocab(vocab)
    reference = transformers.BertTokenizerFast(vocab=vocab)
    texts, pairs, max_lens = [], [], []
    rng = np.random.default_rng(0)
    for _ in range(60):
        texts.append(" ".join(rng.choice(["a", "b", "cat", "unbelievable"], rng.integers(1, 7))))
        pairs.append(" ".join(rng.choice(["d", "e", "mat", "unbelievable"], rng.integers(1, 7))))
        max_lens.append(int(rng.integers(5, 14)))
    truncated = 0
    for text, pair, max_len in zip(texts, pairs, max_lens):
        ours = encode_texts([text], tok, max_len, text_pairs=[pair])
        theirs = reference(text, pair, truncation="longest_first", max_length=max_len)
        assert ours.input_ids[0].tolist() == theirs["input_ids"], (text, pair, max_len)
        assert ours.token_type_ids[0].tolist() == theirs["token_type_ids"]
        truncated += ours.num_truncated
    assert truncated == sum(len(reference(t, p)["input_ids"]) > m for t, p, m in zip(texts, pairs, max_lens))
    assert 10 < truncated < 60  # both cases occur


def test_sequence_examples_labels(tok):
    examples = [SequenceExample("the cat", "pos"), SequenceExample("dog", "neg")]
    encoded = encode_sequence_examples(examples, tok, 8, label2id={"neg": 0, "pos": 1})
    assert encoded.labels.dtype == np.int32 and encoded.labels.tolist() == [1, 0]
    regression = encode_sequence_examples([SequenceExample("a", 0.5)], tok, 8, label2id=None)
    assert regression.labels.dtype == np.float32 and regression.labels.tolist() == [0.5]
    with pytest.raises(DataFileError, match=r"'pos' \(label column\) never occurs"):
        encode_sequence_examples(examples, tok, 8, label2id={"neg": 0})


def test_word_piece_label_alignment(tok):
    examples = [TokenExample(("the", "unbelievable", "cat"), ("O", "B-X", "I-X"))]
    encoded = encode_token_examples(examples, tok, 16, label2id={"B-X": 0, "I-X": 1, "O": 2})
    assert encoded.input_ids[0].tolist() == ids(tok, "[CLS] the un ##believ ##able cat [SEP]")
    assert encoded.labels[0].tolist() == [IGNORE_LABEL, 2, 0, IGNORE_LABEL, IGNORE_LABEL, 1, IGNORE_LABEL]
    assert encoded.word_starts[0].tolist() == [1, 2, 5]
    assert encoded.num_truncated == 0


def test_token_truncation_keeps_whole_words(tok):
    sentences = [["the", "unbelievable", "cat"], ["unbelievable", "cat"], ["the", "cat"]]
    encoded = encode_words(sentences, tok, 5, tags=[[0, 1, 2], [1, 2], [0, 1]])
    assert encoded.input_ids[0].tolist() == ids(tok, "[CLS] the [SEP]")  # "unbelievable" (3 pieces) does not fit
    assert encoded.word_starts[0].tolist() == [1, -1, -1]
    assert encoded.input_ids[1].tolist() == ids(tok, "[CLS] un ##believ ##able [SEP]")  # then "cat" is cut
    assert encoded.labels[1].tolist() == [IGNORE_LABEL, 1, IGNORE_LABEL, IGNORE_LABEL, IGNORE_LABEL]
    assert encoded.num_truncated == 2
    first_word_cut = encode_words([["unbelievable"]], tok, 4, tags=[[3]])
    assert first_word_cut.input_ids[0].tolist() == ids(tok, "[CLS] un ##believ [SEP]")
    assert first_word_cut.labels[0].tolist() == [IGNORE_LABEL, 3, IGNORE_LABEL, IGNORE_LABEL]


def test_padding_to_longest_or_max_len(tok):
    encoded = encode_words([["the", "unbelievable"], ["cat"]], tok, 16, tags=[[0, 1], [2]])
    batch = pad_batch(encoded, [1, 0])
    assert batch["input_ids"].shape == (2, 6) and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert batch["labels"][0].tolist() == [IGNORE_LABEL, 2] + [IGNORE_LABEL] * 4
    assert (batch["input_ids"][0, 3:] == tok.pad_id).all()
    assert pad_batch(encoded, [0, 1], pad_to=16)["labels"].shape == (2, 16)
    with pytest.raises(ValueError, match="pad_to=3"):
        pad_batch(encoded, [0], pad_to=3)


# --- batcher ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoded(tok):
    examples = [SequenceExample(" ".join(["cat"] * (1 + i % 5)), str(i % 3)) for i in range(23)]
    return encode_sequence_examples(examples, tok, 16, label2id={"0": 0, "1": 1, "2": 2})


def test_batcher_covers_each_epoch_reproducibly(encoded):
    batcher = FinetuneBatcher(encoded, 5, seed=3)
    assert batcher.batches_per_epoch == 5  # 4 full batches and the remainder of 3
    epoch = [next(batcher) for _ in range(5)]
    assert [len(batch["labels"]) for batch in epoch] == [5, 5, 5, 5, 3]
    lengths = np.concatenate([batch["attention_mask"].sum(axis=1) for batch in epoch])
    assert sorted(lengths.tolist()) == sorted(len(row) for row in encoded.input_ids)
    again = FinetuneBatcher(encoded, 5, seed=3)
    for batch in epoch:
        for name, array in next(again).items():
            np.testing.assert_array_equal(array, batch[name])

    def visits(batcher):  # (label, length) of each example of the next epoch, in visiting order
        return [(int(label), int(length)) for batch in (next(batcher) for _ in range(5))
                for label, length in zip(batch["labels"], batch["attention_mask"].sum(axis=1))]

    seed3 = FinetuneBatcher(encoded, 5, seed=3)
    first, second = visits(seed3), visits(seed3)
    assert first != second and sorted(first) == sorted(second)  # a new order each epoch
    assert visits(FinetuneBatcher(encoded, 5, seed=4)) != first
    stored = [(i % 3, 3 + i % 5) for i in range(23)]  # "[CLS] cat*(1 + i % 5) [SEP]" with label i % 3
    assert visits(FinetuneBatcher(encoded, 5, seed=3, shuffle=False)) == stored


def test_batcher_resume_is_exact(encoded):
    batcher = FinetuneBatcher(encoded, 4, seed=1, drop_last=True, pad_to=16)
    for _ in range(7):  # into the second epoch (5 batches each)
        next(batcher)
    state = json.loads(json.dumps(batcher.state_dict()))
    assert state == {"epoch": 1, "position": 2, "seed": 1, "num_sequences": 23, "batch_size": 4}
    resumed = FinetuneBatcher(encoded, 4, seed=1, drop_last=True, pad_to=16)
    resumed.load_state_dict(state)
    for _ in range(6):
        expected, got = next(batcher), next(resumed)
        assert got["input_ids"].shape == (4, 16)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
    with pytest.raises(ValueError, match="batch_size=4"):
        FinetuneBatcher(encoded, 5, seed=1).load_state_dict(state)


def test_batcher_rejects_bad_arguments(encoded, tok):
    with pytest.raises(ValueError, match="batch_size"):
        FinetuneBatcher(encoded, 0, seed=0)
    with pytest.raises(ValueError, match="no labels"):
        FinetuneBatcher(encode_texts(["cat"], tok, 8), 1, seed=0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        FinetuneBatcher(encoded, 24, seed=0, drop_last=True)
    with pytest.raises(ValueError, match="max_len"):
        encode_texts(["cat"], tok, 4, text_pairs=["dog"])
