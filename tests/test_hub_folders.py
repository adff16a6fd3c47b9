"""BERT folders as users download them (built here with random weights: this machine has no network): Google's
vocabulary layout, cased and uncased tokenizers, tokenizer.json only, BertForPreTraining with legacy gamma/beta
names, a bare BertModel, sharded safetensors, pytorch_model.bin only. Mini-BERT must tokenize, compute logits,
fine-tune, export and predict exactly as transformers does from the same folder."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[interop]')")
transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install -e '.[interop]')")

from hub_folders import VARIED_TEXTS, google_vocab, random_batch, write_model, write_tokenizer  # noqa: E402
from minibert import classify_logits, mlm_logits  # noqa: E402
from minibert.data.mlm import MLMBatcher, build_datasets  # noqa: E402
from minibert.data.finetune_encode import encode_texts  # noqa: E402
from minibert.interop.hf import (encoder_from_transformers, from_transformers, masked_lm_from_transformers,  # noqa: E402
                         to_transformers)
from minibert.nn.model import encoder_forward  # noqa: E402
from minibert.params import init_classifier_from  # noqa: E402
from minibert.data.tokenizer import load_tokenizer  # noqa: E402
from support import backend_or_skip, load_script  # noqa: E402

LOGITS_TOL = 1e-5
# folder name -> (cased, tokenizer form, transformers class, weight layout)
FOLDERS = {
    "uncased-pretraining-gamma-beta": (False, "vocab", "BertForPreTraining", dict(legacy_names=True)),
    "cased-bertmodel": (True, "vocab", "BertModel", {}),
    "sharded-mlm-tokenizer-json": (False, "json", "BertForMaskedLM", dict(shard_size="20KB")),
    "bin-only": (False, "vocab", "BertForMaskedLM", dict(bin_only=True)),
}
MLM_FOLDERS = ("uncased-pretraining-gamma-beta", "sharded-mlm-tokenizer-json")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """name -> (folder path, the transformers model saved there)."""
    root = tmp_path_factory.mktemp("hub")
    vocabs = {cased: google_vocab(cased) for cased in (False, True)}
    folders = {}
    for seed, (name, (cased, form, class_name, layout)) in enumerate(FOLDERS.items()):
        folder = root / name
        write_tokenizer(folder, vocabs[cased], cased=cased, form=form)
        folders[name] = (folder, write_model(folder, class_name, len(vocabs[cased]), seed=seed, **layout))
    return folders


# --- tokenizer -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FOLDERS))
def test_tokens_equal_bert_tokenizer_fast(hub, name):
    folder, _ = hub[name]
    ours, hf = load_tokenizer(folder), transformers.BertTokenizerFast.from_pretrained(folder)
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (0, 100, 101, 102, 103)
    assert (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id) == (0, 100, 101, 102,
                                                                                                        103)
    assert ours.special_ids == tuple(range(104))            # the five special tokens and [unused0..98]
    assert ours.do_lower_case == (name != "cased-bertmodel") and ours.vocab_size == len(hf)
    for text in VARIED_TEXTS:
        assert [ours.cls_id, *ours.encode(text), ours.sep_id] == hf(text)["input_ids"], text
    assert ours.encode_batch(VARIED_TEXTS) == hf(VARIED_TEXTS, add_special_tokens=False)["input_ids"]
    # single texts and pairs, truncated longest-first to max_length as transformers does
    pairs = list(zip(VARIED_TEXTS, VARIED_TEXTS[3:] + VARIED_TEXTS[:3]))
    for max_len in (8, 13, 40):
        encoded = encode_texts([a for a, _ in pairs], ours, max_len, [b for _, b in pairs])
        expected = hf([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=max_len)
        assert [ids.tolist() for ids in encoded.input_ids] == expected["input_ids"]
        assert [types.tolist() for types in encoded.token_type_ids] == expected["token_type_ids"]
        single = encode_texts([a for a, _ in pairs], ours, max_len)
        assert [ids.tolist() for ids in single.input_ids] == hf([a for a, _ in pairs], truncation=True,
                                                                max_length=max_len)["input_ids"]


def test_cased_and_uncased_differ_where_they_should(hub):
    cased = load_tokenizer(hub["cased-bertmodel"][0])
    uncased = load_tokenizer(hub["uncased-pretraining-gamma-beta"][0])
    assert cased.encode("Hello") != cased.encode("hello")
    assert uncased.encode("Hello") == uncased.encode("hello")
    assert cased.decode(cased.encode("Hello World")) == "Hello World"


def test_masking_never_picks_or_draws_a_special_or_unused_token(hub):
    tokenizer = load_tokenizer(hub["uncased-pretraining-gamma-beta"][0])
    docs = [text for text in VARIED_TEXTS if text.strip()] * 20
    packed, _ = build_datasets(docs, docs[:4], tokenizer, 32, seed=0)
    assert (packed["input_ids"][:, 0] == tokenizer.cls_id).all() and (packed["input_ids"] == tokenizer.sep_id).any()
    batcher = MLMBatcher(packed, 8, tokenizer.vocab_size, seed=0, mask_prob=0.5,
                         special_ids=tokenizer.special_ids, mask_id=tokenizer.mask_id)
    special = np.asarray(tokenizer.special_ids)
    replaced = 0
    for index in range(batcher.batches_per_epoch):
        original = packed["input_ids"][batcher.rows(0, index)]
        batch = batcher.batch(0, index)
        picked = batch["labels"] != -100
        assert not np.isin(original[picked], special).any()          # never masks [CLS], [SEP], [PAD], [unused*]
        changed = picked & (batch["input_ids"] != original) & (batch["input_ids"] != tokenizer.mask_id)
        assert not np.isin(batch["input_ids"][changed], special).any()     # random replacements are words
        assert (batch["input_ids"][picked & (batch["input_ids"] == tokenizer.mask_id)] == 103).all()
        replaced += int(changed.sum())
    assert replaced > 0


# --- weights ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend_name", ["numpy", "jax"])
@pytest.mark.parametrize("name", MLM_FOLDERS)
def test_mlm_logits_equal_transformers_from_the_same_folder(hub, name, backend_name):
    backend = backend_or_skip(backend_name)
    folder, model = hub[name]
    config, host = from_transformers(folder)
    ids, mask, types = random_batch(config.vocab_size)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    token_type_ids=torch.from_numpy(types))
    ref = (out.prediction_logits if hasattr(out, "prediction_logits") else out.logits).numpy()
    params = {k: backend.asarray(v, dtype="float32") for k, v in host.items()}
    ours = backend.to_numpy(mlm_logits(params, ids, mask, types, config=config, backend=backend))
    np.testing.assert_allclose(ours, ref, rtol=LOGITS_TOL, atol=LOGITS_TOL)


@pytest.mark.parametrize("backend_name", ["numpy", "jax"])
def test_bert_model_encoder_equals_transformers_and_gets_a_fresh_mlm_head(hub, backend_name):
    backend = backend_or_skip(backend_name)
    folder, model = hub["cased-bertmodel"]
    config, host = encoder_from_transformers(folder)
    assert "pooler.dense.weight" in host
    ids, mask, types = random_batch(config.vocab_size, seed=1)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    token_type_ids=torch.from_numpy(types)).last_hidden_state.numpy()
    params = {k: backend.asarray(v, dtype="float32") for k, v in host.items()}
    hidden, _ = encoder_forward(params, backend.asarray(ids.astype(np.int32)), backend.asarray(types.astype(np.int32)),
                                backend.asarray(mask.astype(np.int32)), config, backend)
    np.testing.assert_allclose(backend.to_numpy(hidden).reshape(ref.shape), ref, rtol=LOGITS_TOL, atol=LOGITS_TOL)
    mlm_config, mlm, notes = masked_lm_from_transformers(folder, seed=3)
    assert any("no masked-LM head" in note and "head.dense.weight" in note for note in notes)
    assert any("pooler" in note for note in notes)
    for name in host:
        if name in mlm:
            np.testing.assert_array_equal(mlm[name], host[name], err_msg=name)
    with pytest.raises(ValueError, match="has no masked-LM head .*BertModel"):
        from_transformers(folder)


def test_pretraining_checkpoint_drops_the_next_sentence_head_and_says_so(hub):
    folder, model = hub["uncased-pretraining-gamma-beta"]
    with open(folder / "model.safetensors", "rb") as file:
        assert b"LayerNorm.gamma" in file.read(200_000)         # the legacy names really are in the file
    config, params, notes = masked_lm_from_transformers(folder)
    assert notes == ["left out the next-sentence head (cls.seq_relationship) and the pooler: a masked LM does not "
                     "use it"]
    np.testing.assert_array_equal(params["embeddings.ln.weight"],
                                  model.bert.embeddings.LayerNorm.weight.detach().numpy())


def test_a_bin_only_folder_is_refused_before_any_work_with_the_command_that_converts_it(hub, tmp_path, capsys):
    import shutil

    folder = tmp_path / "bin-only"
    shutil.copytree(hub["bin-only"][0], folder)
    predict = load_script("predict")
    assert predict.main([str(folder), "the [MASK] returns"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pytorch_model.bin, a pickle" in err
    assert f"python scripts/convert_bin.py {folder}" in err
    assert sorted(os.listdir(folder)) == ["config.json", "pytorch_model.bin", "tokenizer_config.json", "vocab.txt"]
    assert load_script("convert_bin").main([str(folder)]) == 0
    config, params = from_transformers(folder)
    _, model = hub["bin-only"]
    np.testing.assert_array_equal(params["embeddings.word"], model.bert.embeddings.word_embeddings.weight.detach().numpy())
    assert predict.main([str(folder), "the [MASK] returns"]) == 0


def test_unknown_folders_are_named_with_what_was_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*no config.json there \(found: nothing\)"):
        from_transformers(tmp_path / "empty")
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (tmp_path / "tf" / "tf_model.h5").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"tf has no model.safetensors.*found: config.json, tf_model.h5"):
        from_transformers(tmp_path / "tf")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer.json or vocab.txt.*found: config.json, tf_model.h5"):
        load_tokenizer(tmp_path / "tf")


# --- scripts on a downloaded folder ---------------------------------------------------------------------------------

def test_predict_fills_masks_as_the_fill_mask_pipeline(hub, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, _ = hub["uncased-pretraining-gamma-beta"]
    text = "The [MASK] function returns a list."
    assert load_script("predict").main([str(folder), text, "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:4]
    ours = [(line.split()[1], float(line.split()[0].rstrip("%")) / 100) for line in lines]
    fill = transformers.pipeline("fill-mask", model=str(folder), top_k=3)
    theirs = [(row["token_str"].replace(" ", ""), row["score"]) for row in fill(text)]
    assert [token for token, _ in ours] == [token for token, _ in theirs]
    np.testing.assert_allclose([p for _, p in ours], [p for _, p in theirs], atol=6e-5)   # printed to 0.01%


def _write_task(folder, texts_labels):
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", texts_labels), ("dev", texts_labels[::3])):
        (folder / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows),
                                             encoding="utf-8")
    return folder / "train.tsv", folder / "dev.tsv"


@pytest.mark.parametrize("backend_name", ["numpy", "jax"])
def test_finetune_a_cased_bert_model_export_and_predict_as_the_text_classification_pipeline(
        hub, tmp_path, capsys, monkeypatch, backend_name):
    backend_or_skip(backend_name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source, _ = hub["cased-bertmodel"]
    rows = [(f"Hello World number {i} café", "pos") if i % 2 else (f"the quick brown fox {i} naïve", "neg")
            for i in range(24)]
    train, dev = _write_task(tmp_path / "data", rows)
    run, out = tmp_path / "run", tmp_path / "export"
    assert load_script("finetune").main(["--init-from", str(source), "--train", str(train), "--eval", str(dev),
                                         "--epochs", "1", "--batch-size", "8", "--max-len", "16", "--out", str(run),
                                         "--no-progress", "--backend", backend_name]) == 0
    said = capsys.readouterr().out
    assert "kept: the encoder, pooler.dense.weight, pooler.dense.bias" in said
    assert "new: classifier.weight, classifier.bias" in said
    assert json.loads((run / "tokenizer_config.json").read_text())["do_lower_case"] is False
    assert load_script("export_hf").main([str(run), str(out), "--verify"]) == 0
    capsys.readouterr()
    exported = transformers.BertTokenizerFast.from_pretrained(out)
    source_tokenizer = transformers.BertTokenizerFast.from_pretrained(source)
    assert exported(VARIED_TEXTS)["input_ids"] == source_tokenizer(VARIED_TEXTS)["input_ids"]
    text = "Hello World, a naïve Café"
    assert load_script("predict").main([str(run), text, "--backend", backend_name]) == 0
    lines = capsys.readouterr().out.splitlines()
    ours = {line.split()[1]: float(line.split()[0].rstrip("%")) / 100 for line in lines[1:]}
    classify = transformers.pipeline("text-classification", model=str(out), top_k=None)
    theirs = {row["label"]: row["score"] for row in classify([text])[0]}
    assert ours.keys() == theirs.keys() == {"neg", "pos"}
    np.testing.assert_allclose([ours[k] for k in sorted(ours)], [theirs[k] for k in sorted(ours)], atol=6e-5)
    # predict.py on the exported transformers folder gives the same label and probabilities
    assert load_script("predict").main([str(out), text]) == 0
    assert capsys.readouterr().out.splitlines() == lines


def test_a_classifier_folder_keeps_its_head_when_the_labels_fit(hub, tmp_path):
    folder, _ = hub["cased-bertmodel"]
    encoder_config, encoder = encoder_from_transformers(folder)
    import dataclasses

    config = dataclasses.replace(encoder_config, task="sequence", num_labels=2)
    params, fresh = init_classifier_from(encoder, config, seed=5)
    to_transformers(params, config, tmp_path / "clf", vocab=load_tokenizer(folder))
    _, with_head = encoder_from_transformers(tmp_path / "clf")
    kept, fresh = init_classifier_from(with_head, config, seed=9)
    assert fresh == [] and np.array_equal(kept["classifier.weight"], params["classifier.weight"])
    three = dataclasses.replace(config, num_labels=3, id2label=None, label2id=None)
    _, fresh = init_classifier_from(with_head, three, seed=9)
    assert fresh == ["classifier.weight", "classifier.bias"]
    backend = backend_or_skip("numpy")
    ids, mask, types = random_batch(config.vocab_size, seed=2)
    model = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "clf").eval()
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    token_type_ids=torch.from_numpy(types)).logits.numpy()
    ours = classify_logits({k: backend.asarray(v) for k, v in kept.items()}, ids, mask, types, config=config,
                           backend=backend)
    np.testing.assert_allclose(backend.to_numpy(ours), ref, rtol=LOGITS_TOL, atol=LOGITS_TOL)


def test_continue_pretraining_a_downloaded_folder_keeps_its_vocabulary(hub, tmp_path, capsys):
    folder, _ = hub["uncased-pretraining-gamma-beta"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(text for text in VARIED_TEXTS * 6 if text.strip()), encoding="utf-8")
    run, out = tmp_path / "run", tmp_path / "export"
    assert load_script("train").main(["--init-from", str(folder), "--corpus", str(corpus), "--steps", "2",
                                      "--batch-size", "4", "--seq-len", "32", "--eval-every", "2", "--out", str(run),
                                      "--no-progress"]) == 0
    assert "left out the next-sentence head" in capsys.readouterr().out
    assert (run / "vocab.txt").read_bytes() == (folder / "vocab.txt").read_bytes()
    assert load_script("evaluate").main([str(run)]) == 0
    assert load_script("evaluate").main([str(folder), "--corpus", str(corpus), "--seq-len", "32"]) == 0
    assert "masked-token accuracy" in capsys.readouterr().out
    assert load_script("export_hf").main([str(run), str(out), "--verify"]) == 0
    assert (transformers.BertTokenizerFast.from_pretrained(out)(VARIED_TEXTS)["input_ids"]
            == transformers.BertTokenizerFast.from_pretrained(folder)(VARIED_TEXTS)["input_ids"])
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == 0
