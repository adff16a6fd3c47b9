"""Prepared corpora (scripts/prepare_data.py, minibert/data/prepared.py): the shards hold exactly the tokenizer's tokens
of the documents `load_corpus_files` gives, pack into exactly the in-memory sequences, train and resume from
`--data`, and every kind of bad input is refused by name with nothing half-written left behind."""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest

from minibert.data import prepared
from minibert.data.corpus import load_corpus_files
from minibert.data.mlm import PackedStream, pack_sequences
from minibert.data.prepared import prepare_corpus
from minibert.data.shards import PreparedDataError, open_prepared
from minibert.data.tokenizer import MINIBERT_SPECIAL_TOKENS, WordPieceTokenizer, train_wordpiece
from support import latest_tensors, load_script, write_corpus


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Python's help topics (120 kB) plus repeated paragraphs, CRLF line ends and a second file."""
    folder = tmp_path_factory.mktemp("corpus")
    first = write_corpus(folder / "a.txt", chars=120_000)
    (folder / "b.txt").write_bytes("Repeated paragraph.\r\n\r\nA second file's text, with café.\r\n\r\n"
                                   "Repeated paragraph.\n".encode("utf-8"))
    return [str(first), str(folder / "b.txt")]


@pytest.fixture(scope="module")
def data_dir(corpus, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setattr(prepared, "SHARD_TOKENS", 10_000)      # several shards, chunks across their ends
    monkeypatch_module.setattr(prepared, "ENCODE_BATCH_BYTES", 20_000)
    return prepare_corpus(corpus, tmp_path_factory.mktemp("data") / "prepared", vocab_size=600, progress=False,
                          log=quiet)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_shards_hold_the_tokenizers_tokens_of_the_in_memory_documents(corpus, data_dir, tmp_path):
    data = open_prepared(data_dir, verify=True)
    train_docs, heldout_docs = load_corpus_files(corpus)
    tokenizer = train_wordpiece(train_docs, 600)
    assert data.tokenizer.files() == tokenizer.files()            # the vocabulary train.py --corpus trains
    assert data.manifest["dtype"] == "uint16" and len(data.manifest["splits"]["train"]["shards"]) > 3
    for split, docs in (("train", train_docs), ("heldout", heldout_docs)):
        encoded = tokenizer.encode_batch(docs)
        stream = getattr(data, split)
        np.testing.assert_array_equal(stream[0:len(stream)], np.concatenate(encoded))
        offsets = np.fromfile(data_dir / f"{split}.idx", dtype="<i8")
        np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum([len(ids) for ids in encoded])]))
        assert data.manifest["splits"][split]["documents"] == len(docs)
    np.testing.assert_array_equal(data.train_counts(), np.bincount(np.concatenate(tokenizer.encode_batch(train_docs)),
                                                                   minlength=tokenizer.vocab_size))
    from minibert.data.corpus import corpus_fingerprint
    assert data.fingerprint == corpus_fingerprint(train_docs + heldout_docs)
    # sequences packed on demand from the shards are the in-memory packing, row for row
    ids = dict(cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id)
    for seq_len, seed in ((16, 0), (64, 3)):
        memory = pack_sequences(tokenizer.encode_batch(train_docs), seq_len, seed, **ids)
        stream = PackedStream(data.train, seq_len, seed, **ids)
        assert len(stream) == len(memory["input_ids"])
        rows = np.random.default_rng(seed).permutation(len(stream))[:200]
        for name, array in stream.rows(rows).items():
            np.testing.assert_array_equal(array, memory[name][rows], err_msg=name)


def test_a_vocabulary_over_65536_tokens_is_stored_as_uint32(tmp_path):
    words = [f"w{i}" for i in range(70_000)]
    tokenizer = WordPieceTokenizer(list(MINIBERT_SPECIAL_TOKENS) + words)
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"w{i} w{69_999 - i} w{i * 7 % 70_000}" for i in range(400)), encoding="utf-8")
    out = prepare_corpus([str(text)], tmp_path / "big-vocab", tokenizer=tokenizer, progress=False, log=quiet)
    data = open_prepared(out)
    train_docs, _ = load_corpus_files([str(text)])
    assert data.manifest["dtype"] == "uint32" and max(data.train[0:len(data.train)]) > 65_536
    np.testing.assert_array_equal(data.train[0:len(data.train)], np.concatenate(tokenizer.encode_batch(train_docs)))


def test_train_from_data_and_resume_exactly(data_dir, tmp_path, capsys):
    train = load_script("train")
    args = ["--data", str(data_dir), "--config", "tiny", "--seq-len", "32", "--batch-size", "8", "--steps", "4",
            "--eval-every", "2", "--save-every", "2", "--eval-batches", "2", "--no-progress"]
    assert train.main([*args, "--out", str(tmp_path / "straight")]) == 0
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["training"]["data"] == str(data_dir)
    # a run stopped after its step-2 checkpoint: the same directory without step 4, then --resume
    import shutil

    shutil.copytree(tmp_path / "straight", tmp_path / "stopped")
    for suffix in (".safetensors", ".json"):
        (tmp_path / "stopped" / f"ckpt-00000004{suffix}").unlink()
    (tmp_path / "stopped" / "latest").write_text("ckpt-00000002.safetensors")
    assert train.main(["--resume", str(tmp_path / "stopped"), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    straight, resumed = latest_tensors(tmp_path / "straight"), latest_tensors(tmp_path / "stopped")
    assert straight.keys() == resumed.keys()
    for name in straight:
        np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)
    assert (tmp_path / "straight" / "vocab.txt").read_bytes() == (data_dir / "vocab.txt").read_bytes()


def test_bad_prepared_data_is_named(data_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    shard = broken / "train-00001.bin"
    os.truncate(shard, shard.stat().st_size - 2)
    with pytest.raises(PreparedDataError, match=r"train-00001.bin holds \d+ bytes, but manifest.json says"):
        open_prepared(broken)
    shutil.rmtree(broken)
    shutil.copytree(data_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["splits"]["heldout"]["shards"][0]["sha256"] = "0" * 64
    (broken / "manifest.json").write_text(json.dumps(manifest))
    open_prepared(broken)                                   # sizes fit: opens; the content check finds it
    with pytest.raises(PreparedDataError, match="heldout-00000.bin: sha256 differs"):
        open_prepared(broken, verify=True)
    with pytest.raises(PreparedDataError, match=r"no manifest.json there.*prepare_data.py"):
        open_prepared(tmp_path)


def test_prepare_refuses_bad_input_and_leaves_nothing_behind(corpus, data_dir, tmp_path, capsys, monkeypatch):
    prepare = load_script("prepare_data")
    before = {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()}
    assert prepare.main(["--corpus", *corpus, "--out", str(data_dir), "--vocab-size", "600", "--no-progress"]) == 2
    assert "exists; prepared data is never overwritten" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in data_dir.iterdir()} == before      # untouched
    latin1, empty = tmp_path / "latin1.txt", tmp_path / "empty.txt"
    latin1.write_bytes("fine line\ncaf\xe9 cr\xe8me\n".encode("latin-1"))
    empty.write_text(" \n\n---\n")
    for bad, message in ((latin1, r"latin1.txt' is not UTF-8 text \(line 2"), (empty, r"empty.txt' is empty")):
        out = tmp_path / f"out-{bad.stem}"
        assert prepare.main(["--corpus", corpus[0], str(bad), "--out", str(out), "--vocab-size", "600",
                             "--no-progress"]) == 2
        assert __import__("re").search(message, capsys.readouterr().err)
        assert not out.exists() and not list(tmp_path.glob(f"out-{bad.stem}.partial-*"))
    # a disk that fills mid-write: exit 1, no partial directory, no DATA_DIR
    real_add = prepared._SplitWriter.add

    def full_disk(self, docs):
        if self.tokens:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.folder / "train-00000.bin"))
        real_add(self, docs)

    monkeypatch.setattr(prepared._SplitWriter, "add", full_disk)
    monkeypatch.setattr(prepared, "ENCODE_BATCH_BYTES", 5_000)
    out = tmp_path / "full"
    assert prepare.main(["--corpus", *corpus, "--out", str(out), "--vocab-size", "600", "--no-progress"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("full.partial-*"))


def test_an_interrupted_prepare_is_cleaned_up_and_started_again(corpus, tmp_path):
    dead = tmp_path / "again.partial-999999999"            # what a killed prepare leaves (its pid is gone)
    dead.mkdir()
    (dead / "train-00000.bin").write_bytes(b"\0" * 10)
    out = prepare_corpus(corpus, tmp_path / "again", vocab_size=600, progress=False, log=quiet)
    assert not dead.exists() and open_prepared(out, verify=True).manifest["splits"]["train"]["tokens"] > 0


def test_data_from_another_tokenizer_than_init_from_is_refused(data_dir, tmp_path, capsys):
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[interop]')")
    from hub_folders import google_vocab, write_model, write_tokenizer

    folder = tmp_path / "bert"
    tokens = google_vocab(cased=False, size=400)
    write_tokenizer(folder, tokens, cased=False)
    write_model(folder, "BertForMaskedLM", len(tokens))
    code = load_script("train").main(["--init-from", str(folder), "--data", str(data_dir), "--steps", "1",
                                      "--seq-len", "32", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "was tokenized with another tokenizer" in err and "--tokenizer" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("block_bytes", [1, 2, 7, 64, 1 << 22])
def test_streamed_documents_are_the_in_memory_documents_at_any_block_size(tmp_path, block_bytes):
    from minibert.data.corpus import _clean_documents, _read_utf8, stream_documents

    texts = ["a\n \n \nb\r\nc\r\n\r\nd\n=====\nTitle\n\n\n  \n  x  y \t z\n", "\ufefffirst\nsecond\n\nthird\r\r\n\n",
             "no newline at end", "   \n\n\n", "p1 l1\np1 l2\n\np2\n\n\np3 long " * 50, "x\n  \n\ny\n \t \nz\n\n\n\nw"]
    for i, text in enumerate(texts):
        path = tmp_path / f"{i}.txt"
        path.write_bytes(text.encode("utf-8"))
        streamed = [doc for docs in stream_documents(str(path), block_bytes) for doc in docs]
        assert list(dict.fromkeys(streamed)) == _clean_documents([_read_utf8(str(path))]), text
