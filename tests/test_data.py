"""Host data pipeline: default corpus, WordPiece tokenizer, sequence packing, MLM masking and batching."""
import os
import subprocess
import sys

import numpy as np
import pytest

from minibert.data import corpus, mlm as data, tokenizer
from minibert.data.corpus import load_corpus_files, load_default_corpus
from minibert.data.mlm import IGNORE_LABEL, MLMBatcher, build_datasets, mask_tokens, pack_sequences
from minibert.data.tokenizer import MINIBERT_SPECIAL_TOKENS as SPECIAL_TOKENS, WordPieceTokenizer, train_wordpiece

IDS = dict(cls_id=2, sep_id=3, pad_id=0)      # Mini-BERT's layout, for packing plain token lists


def masking(tok):
    """The masking ids of a tokenizer (mask_tokens and MLMBatcher take them from the vocabulary)."""
    return dict(special_ids=tok.special_ids, mask_id=tok.mask_id)

VOCAB_SIZE = 1000
SUBSET_DOCS = 3000  # of the default corpus, enough for a 1000-token vocabulary and the statistics below


@pytest.fixture(scope="session")
def default_corpus():
    return load_default_corpus()


@pytest.fixture(scope="session")
def subset(default_corpus):
    train_docs, heldout_docs = default_corpus
    return train_docs[:SUBSET_DOCS], heldout_docs


@pytest.fixture(scope="session")
def vocab_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("minibert-cache"))


@pytest.fixture(scope="session")
def tok(subset, vocab_cache):
    return train_wordpiece(subset[0], VOCAB_SIZE, vocab_cache)


@pytest.fixture(scope="session")
def packed(subset, tok):
    train, _ = build_datasets(subset[0], subset[1], tok, seq_len=64, seed=0)
    return train


def _vocab_path(cache_dir):
    (entry,) = os.listdir(cache_dir)
    return os.path.join(cache_dir, entry, "vocab.txt")


# --- corpus ---------------------------------------------------------------------------------------------

def test_default_corpus_is_clean_deduplicated_and_split(default_corpus):
    train_docs, heldout_docs = default_corpus
    docs = train_docs + heldout_docs
    megabytes = sum(len(doc.encode("utf-8")) for doc in docs) / 1e6
    assert 1.0 < megabytes < 3.0
    assert 0.01 < len(heldout_docs) / len(docs) < 0.06
    assert len(set(docs)) == len(docs)
    assert all(doc == " ".join(doc.split()) and doc for doc in docs)
    assert train_docs[0].startswith('The "assert" statement')  # topics come first, sorted by name


def test_corpus_files_glob_paragraphs_and_split(tmp_path):
    paragraphs = [f"Paragraph number {i} says\nsomething   new." for i in range(200)]
    (tmp_path / "a.txt").write_text("\n\n".join(paragraphs[:100]), encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n \n".join(paragraphs[100:] + paragraphs[:5]), encoding="utf-8")
    train_docs, heldout_docs = load_corpus_files([str(tmp_path / "*.txt")])
    expected = [" ".join(p.split()) for p in paragraphs]
    assert sorted(train_docs + heldout_docs) == sorted(expected)  # duplicates gone
    assert [doc for doc in expected if doc in set(train_docs)] == train_docs  # order kept
    assert 1 <= len(heldout_docs) < 20
    assert load_corpus_files([str(tmp_path / "*.txt")]) == (train_docs, heldout_docs)
    assert corpus.corpus_fingerprint(train_docs) != corpus.corpus_fingerprint(heldout_docs)
    assert corpus.corpus_fingerprint(["ab", "c"]) != corpus.corpus_fingerprint(["a", "bc"])


def test_corpus_file_errors(tmp_path):
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_corpus_files([missing])
    with pytest.raises(FileNotFoundError, match="nothing"):
        load_corpus_files([str(tmp_path / "nothing*.txt")])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt.*not UTF-8"):
        load_corpus_files([str(latin1)])
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n --- \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty corpus"):
        load_corpus_files([str(blank)])


# --- tokenizer ------------------------------------------------------------------------------------------

def test_special_tokens_and_round_trip(tok):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.special_ids == (0, 1, 2, 3, 4)
    assert tok.vocab_size == VOCAB_SIZE
    text = "Return the number of items in a sequence, or raise an error."
    ids = tok.encode(text)
    assert tok.unk_id not in ids and not set(ids) & set(tok.special_ids)
    assert tok.decode(ids) == text.lower()
    assert tok.encode_batch([text, "x"]) == [ids, tok.encode("x")]
    assert tok.decode([tok.cls_id, *ids[:2], tok.mask_id]).startswith("[CLS]")
    assert tok.id_to_token(tok.token_to_id("##s")) == "##s"
    with pytest.raises(KeyError):
        tok.token_to_id("not-a-token")


def test_save_vocab_and_reload(tok, tmp_path):
    path = str(tmp_path / "vocab.txt")
    tok.save_vocab(path)
    again = WordPieceTokenizer.from_vocab(path)
    assert [again.id_to_token(i) for i in range(again.vocab_size)] == \
           [tok.id_to_token(i) for i in range(tok.vocab_size)]


def test_vocab_txt_matches_transformers(tok, subset, vocab_cache):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    # from_pretrained reads vocab.txt in every version (transformers 5 ignores BertTokenizerFast(vocab_file=)).
    hf = transformers.BertTokenizerFast.from_pretrained(os.path.dirname(_vocab_path(vocab_cache)))
    assert len(hf) == tok.vocab_size
    assert hf.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]
    texts = subset[1][:300] + ["Ünïcödé naïve café, ÄÖÜ straße! 中文 tokens\tand\u00a0spaces."]
    assert hf(texts, add_special_tokens=False)["input_ids"] == tok.encode_batch(texts)


def test_cache_hit_does_not_retrain(tok, subset, vocab_cache, monkeypatch):
    path = _vocab_path(vocab_cache)
    mtime = os.stat(path).st_mtime_ns

    class NoTrainer:
        def __init__(self, *args, **kwargs):
            raise AssertionError("retrained despite a cached vocab.txt")

    monkeypatch.setattr(tokenizer.trainers, "WordPieceTrainer", NoTrainer)
    again = train_wordpiece(subset[0], VOCAB_SIZE, vocab_cache)
    assert again.vocab_size == tok.vocab_size and os.stat(path).st_mtime_ns == mtime


def test_training_is_repeatable(subset, tmp_path):
    docs = subset[0][:800]
    first = train_wordpiece(docs, 600, str(tmp_path / "a"))
    second = train_wordpiece(docs, 600, str(tmp_path / "b"))
    assert [first.id_to_token(i) for i in range(first.vocab_size)] == \
           [second.id_to_token(i) for i in range(second.vocab_size)]


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIBERT_CACHE", str(tmp_path))
    assert tokenizer.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("MINIBERT_CACHE")
    assert tokenizer.default_cache_dir().endswith(os.path.join(".cache", "minibert"))


# --- packing --------------------------------------------------------------------------------------------

def test_packing_layout(subset, tok, packed):
    ids, types, attention = packed["input_ids"], packed["token_type_ids"], packed["attention_mask"]
    assert ids.shape == types.shape == attention.shape and ids.shape[1] == 64
    assert ids.dtype == types.dtype == attention.dtype == np.int32
    assert (ids[:, 0] == tok.cls_id).all()
    assert ((ids == tok.sep_id).sum(axis=1) == 2).all()
    assert ((attention == 0) == (ids == tok.pad_id)).all()
    for row_ids, row_types in zip(ids, types):
        first_sep, second_sep = np.flatnonzero(row_ids == tok.sep_id)
        assert first_sep >= 2 and second_sep >= first_sep + 2  # A and B are not empty
        assert (row_types[:first_sep + 1] == 0).all() and (row_types[first_sep + 1:second_sep + 1] == 1).all()
        assert (row_types[second_sep + 1:] == 0).all() and (row_ids[second_sep + 1:] == tok.pad_id).all()
    assert (attention[:-1] == 1).all()  # only the last chunk of the stream can be short
    text = ids[~np.isin(ids, [tok.cls_id, tok.sep_id, tok.pad_id])]
    stream = np.concatenate([np.asarray(doc, np.int32) for doc in tok.encode_batch(subset[0])])
    assert np.array_equal(text, stream[:len(text)]) and len(stream) - len(text) < 2  # consecutive text


def test_packing_is_seeded():
    docs = [list(range(10, 60)), list(range(60, 200))]
    same = pack_sequences(docs, 16, seed=3, **IDS)
    assert all(np.array_equal(same[k], pack_sequences(docs, 16, seed=3, **IDS)[k]) for k in same)
    assert not np.array_equal(same["token_type_ids"], pack_sequences(docs, 16, seed=4, **IDS)["token_type_ids"])
    assert pack_sequences([[7]], 16, seed=0, **IDS)["input_ids"].shape == (0, 16)
    with pytest.raises(ValueError, match="seq_len"):
        pack_sequences(docs, 4, seed=0, **IDS)


# --- masking and batching -------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [None, 0.4])     # None: the default, BERT's 15%
def test_masking_statistics(packed, tok, rate):
    ids = packed["input_ids"]
    masked, labels = mask_tokens(ids, np.random.default_rng(0), tok.vocab_size, **masking(tok),
                                 **({} if rate is None else {"mask_prob": rate}))
    assert masked.dtype == labels.dtype == np.int32
    special = np.isin(ids, tok.special_ids)
    picked = labels != IGNORE_LABEL
    assert not (picked & special).any() and (masked[special] == ids[special]).all()
    assert (labels[picked] == ids[picked]).all() and (masked[~picked] == ids[~picked]).all()
    assert (picked.sum(axis=1) >= 1).all()
    assert abs(picked.sum() / (~special).sum() - (0.15 if rate is None else rate)) < 0.01
    to_mask = (masked[picked] == tok.mask_id).mean()
    unchanged = (masked[picked] == ids[picked]).mean()
    random = 1 - to_mask - unchanged
    assert abs(to_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.02 and abs(random - 0.1) < 0.02
    replaced = masked[picked & (masked != tok.mask_id)]
    assert not np.isin(replaced, tok.special_ids).any() and (replaced < tok.vocab_size).all()


def test_batches_shapes_dtypes_and_epochs(packed, tok):
    batcher = MLMBatcher(packed, batch_size=32, vocab_size=tok.vocab_size, **masking(tok), seed=1)
    assert batcher.num_sequences == len(packed["input_ids"])
    assert batcher.batches_per_epoch == batcher.num_sequences // 32
    batch = next(batcher)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert all(array.shape == (32, 64) and array.dtype == np.int32 for array in batch.values())
    assert not np.array_equal(batcher.batch(0, 0)["token_type_ids"], batcher.batch(1, 0)["token_type_ids"])
    in_order = MLMBatcher(packed, batch_size=32, vocab_size=tok.vocab_size, **masking(tok), seed=1, shuffle=False)
    assert np.array_equal(in_order.batch(0, 0)["token_type_ids"], packed["token_type_ids"][:32])
    assert not np.array_equal(in_order.batch(0, 0)["labels"], in_order.batch(1, 0)["labels"])  # remasked
    remainder = MLMBatcher(packed, batch_size=32, vocab_size=tok.vocab_size, **masking(tok), seed=1, drop_last=False)
    last = remainder.batch(0, remainder.batches_per_epoch - 1)
    assert len(last["input_ids"]) == (batcher.num_sequences - 1) % 32 + 1


def test_batcher_resume_is_exact(packed, tok):
    def make():
        return MLMBatcher(packed, batch_size=16, vocab_size=tok.vocab_size, **masking(tok), seed=7)

    original = make()
    for _ in range(original.batches_per_epoch + 3):  # into the second epoch
        next(original)
    state = original.state_dict()
    assert state["epoch"] == 1 and state["position"] == 3
    assert all(type(value) is int for value in state.values())
    resumed = make()
    resumed.load_state_dict(state)
    for _ in range(original.batches_per_epoch):  # through the next epoch boundary
        expected, got = next(original), next(resumed)
        assert all(np.array_equal(expected[k], got[k]) for k in expected)
    with pytest.raises(ValueError, match="seed"):
        MLMBatcher(packed, batch_size=16, vocab_size=tok.vocab_size, **masking(tok), seed=8).load_state_dict(state)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.2, float("nan")])
def test_mask_rate_outside_0_1_is_refused(packed, tok, rate):
    with pytest.raises(ValueError, match=r"mask_prob must be in \(0, 1\)"):
        mask_tokens(packed["input_ids"][:2], np.random.default_rng(0), tok.vocab_size, mask_prob=rate,
                    **masking(tok))
    with pytest.raises(ValueError, match=r"mask_prob must be in \(0, 1\), the share of tokens to predict"):
        MLMBatcher(packed, batch_size=8, vocab_size=tok.vocab_size, **masking(tok), seed=0, mask_prob=rate)


def test_too_few_sequences(packed, tok):
    few = {name: array[:5] for name, array in packed.items()}
    with pytest.raises(ValueError, match=r"only 5 sequences.*batch_size=8"):
        MLMBatcher(few, batch_size=8, vocab_size=tok.vocab_size, **masking(tok), seed=0)


def test_host_pipeline_imports_no_accelerator_library():
    code = "import sys, minibert.data.mlm; print(sorted({'jax', 'cupy', 'torch'} & set(sys.modules)))"
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(data.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo_root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "[]"
