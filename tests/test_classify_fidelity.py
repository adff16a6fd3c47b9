"""Fidelity of the classifiers: Mini-BERT against transformers' BertForSequenceClassification and
BertForTokenClassification (PyTorch, CPU, eval mode), on random small models with odd sizes and padding.

On every backend: logits, loss (cross-entropy, MSE regression, token cross-entropy with -100) and every gradient
equal transformers' with torch autograd; checkpoints go both ways losslessly, load with no missing or unexpected
keys, and transformers' pipelines predict what Mini-BERT predicts; a pretrained encoder starts a classifier as
transformers' from_pretrained does.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers fidelity tests need torch: pip install -e '.[interop]'")
transformers = pytest.importorskip(
    "transformers", reason="the transformers fidelity tests need transformers: pip install -e '.[interop]'")

from support import assert_tree_close, backend_or_skip, load_script  # noqa: E402
from minibert import BertConfig, classify_logits, classify_loss_and_grads, param_shapes  # noqa: E402
from minibert.interop.hf import (config_from_transformers, encoder_from_transformers, from_transformers,  # noqa: E402
                         params_from_state_dict, params_to_state_dict, to_transformers, transformers_shapes)
from minibert.params import init_classifier_from, init_host_params  # noqa: E402
from minibert.data.tokenizer import MINIBERT_SPECIAL_TOKENS as SPECIAL_TOKENS, WordPieceTokenizer  # noqa: E402
from test_hf_fidelity import (CASES, F64_TOL, GRAD_RTOL, LOGITS_TOL, assert_clean, export_perturbed,  # noqa: E402
                              hf_batch, hf_model, on)

# id: (transformers class, encoder case of test_hf_fidelity, extra config fields). Odd sizes: 3 classes on H=48,
# regression on 3 layers with 5 heads and pad id 3, 5 tags on a single-head model, 7 tags on 4 layers with I < H.
CLASSIFY_CASES = {
    "sequence-3": ("BertForSequenceClassification", "h48-a3-L1-gelu-fullpos",
                   dict(id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})),
    "regression": ("BertForSequenceClassification", "h40-a5-L3-pytorch_tanh", dict(num_labels=1)),
    "token-5": ("BertForTokenClassification", "h64-a1-L2-gelu_new", dict(num_labels=5)),
    "token-7": ("BertForTokenClassification", "h96-a2-L4-gelu", dict(num_labels=7, classifier_dropout=0.2)),
}
TASK = {"BertForSequenceClassification": "sequence", "BertForTokenClassification": "token"}


def classify_model(case, **overrides):
    model_class, encoder_case, extra = CLASSIFY_CASES[case]
    fields, (rows, seq) = CASES[encoder_case]
    return hf_model(model_class=model_class, **{**fields, **extra, **overrides}), rows, seq


def classify_batch(config: BertConfig, rows, seq, seed=0):
    """test_hf_fidelity's padded batch with classification labels: [B] classes, [B] floats, or [B, T] tags with
    -100 at padding and at about a third of the real positions."""
    batch = hf_batch(config, rows, seq, seed=seed)
    rng = np.random.default_rng(seed + 1)
    if config.task == "token":
        labels = rng.integers(0, config.num_labels, (rows, seq))
        labels[(batch["attention_mask"] == 0) | (rng.random((rows, seq)) < 0.3)] = -100
        labels[0, 0] = config.num_labels - 1
    elif config.problem_type == "regression":
        labels = rng.normal(0.0, 2.0, rows)
    else:
        labels = rng.integers(0, config.num_labels, rows)
        labels[0] = config.num_labels - 1
    batch["labels"] = labels
    return batch


def torch_reference(model, config, batch, dtype=torch.float32):
    """(logits, loss, grads in Mini-BERT's layout) from transformers with torch autograd."""
    model = model.to(dtype)
    model.zero_grad(set_to_none=True)
    inputs = {key: torch.from_numpy(batch[key]) for key in ("input_ids", "attention_mask", "token_type_ids")}
    labels = torch.from_numpy(batch["labels"])
    out = model(**inputs, labels=labels.to(dtype) if labels.is_floating_point() else labels)
    out.loss.backward()
    grads = {name: param.grad.detach().numpy() for name, param in model.named_parameters()}
    return out.logits.detach().numpy(), float(out.loss.detach()), params_from_state_dict(grads, config, dtype=None)


_CACHE = {}


def reference(case, dtype=torch.float32):
    """(config, host params, batch, logits, loss, grads) for a case, computed once per process."""
    key = (case, str(dtype))
    if key not in _CACHE:
        model, rows, seq = classify_model(case)
        config, params = from_transformers(model)
        batch = classify_batch(config, rows, seq)
        _CACHE[key] = (config, params, batch, *torch_reference(model, config, batch, dtype))
    return _CACHE[key]


def inputs_of(batch):
    return [batch[key] for key in ("input_ids", "attention_mask", "token_type_ids")]


# --- logits, loss and gradients on every backend --------------------------------------------------------------------

def test_configs_are_read_as_transformers_has_them():
    expected = {"sequence-3": ("sequence", 3, "single_label_classification"),
                "regression": ("sequence", 1, "regression"),
                "token-5": ("token", 5, "single_label_classification"),
                "token-7": ("token", 7, "single_label_classification")}
    for case, (task, num_labels, problem_type) in expected.items():
        config = reference(case)[0]
        assert (config.task, config.num_labels, config.problem_type) == (task, num_labels, problem_type), case
    assert reference("sequence-3")[0].id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert reference("token-7")[0].classifier_dropout == 0.2


@pytest.mark.parametrize("case", CLASSIFY_CASES)
def test_logits_match_transformers(backend, case):
    config, params, batch, ref_logits, _, _ = reference(case)
    logits = backend.to_numpy(classify_logits(on(backend, params), *inputs_of(batch), config=config, backend=backend))
    rows, seq = batch["input_ids"].shape
    expected = (rows, config.num_labels) if config.task == "sequence" else (rows, seq, config.num_labels)
    assert logits.dtype == np.float32 and logits.shape == ref_logits.shape == expected
    np.testing.assert_allclose(logits, ref_logits, rtol=LOGITS_TOL, atol=LOGITS_TOL)


@pytest.mark.parametrize("case", CLASSIFY_CASES)
def test_loss_and_every_gradient_match_torch_autograd(backend, case):
    config, params, batch, _, ref_loss, ref_grads = reference(case)
    loss, grads = classify_loss_and_grads(on(backend, params), batch, config=config, backend=backend)
    np.testing.assert_allclose(loss, ref_loss, rtol=LOGITS_TOL, atol=LOGITS_TOL)
    assert_tree_close(grads, ref_grads, rtol=0, atol=0, scaled_atol=GRAD_RTOL)


@pytest.mark.parametrize("case", CLASSIFY_CASES)
def test_float64_matches_torch_float64(float64_backend, case):
    config, params, batch, ref_logits, ref_loss, ref_grads = reference(case, torch.float64)
    device_params = on(float64_backend, params, "float64")
    logits = float64_backend.to_numpy(classify_logits(device_params, *inputs_of(batch), config=config,
                                                      backend=float64_backend))
    np.testing.assert_allclose(logits, ref_logits, rtol=F64_TOL, atol=F64_TOL)
    loss, grads = classify_loss_and_grads(device_params, batch, config=config, backend=float64_backend)
    np.testing.assert_allclose(loss, ref_loss, rtol=F64_TOL, atol=F64_TOL)
    assert_tree_close(grads, ref_grads, rtol=0, atol=0, scaled_atol=F64_TOL)


# --- checkpoints both ways ------------------------------------------------------------------------------------------

def load_hf(folder, model_class):
    model, info = getattr(transformers, model_class).from_pretrained(
        str(folder), local_files_only=True, output_loading_info=True, attn_implementation="eager")
    return model.eval(), info


@pytest.mark.parametrize("case", CLASSIFY_CASES)
def test_transformers_round_trip_is_lossless_and_loads_cleanly(tmp_path, case):
    model, rows, seq = classify_model(case)
    model_class = CLASSIFY_CASES[case][0]
    config, params = from_transformers(model)
    to_transformers(params, config, tmp_path)
    config_back, params_back = from_transformers(tmp_path)
    assert config_back == config
    assert list(params_back) == list(param_shapes(config))
    for name, value in params.items():
        np.testing.assert_array_equal(params_back[name], value, err_msg=name)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == [model_class]
    assert written["id2label"] == {str(i): label for i, label in config.id2label.items()}
    loaded, info = load_hf(tmp_path, model_class)
    assert_clean(info)
    assert loaded.config.num_labels == config.num_labels and loaded.config.problem_type == config.problem_type
    assert set(loaded.state_dict()) == set(model.state_dict())
    for name, tensor in model.state_dict().items():                 # every tensor transformers holds, bit for bit
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    auto = (transformers.AutoModelForSequenceClassification if config.task == "sequence"
            else transformers.AutoModelForTokenClassification)
    assert type(auto.from_pretrained(str(tmp_path), local_files_only=True)).__name__ == model_class
    state = params_to_state_dict(params, config)
    assert {k: v.shape for k, v in state.items()} == transformers_shapes(config)


@pytest.mark.parametrize("case", ["sequence-3", "token-5"])
def test_minibert_classifier_export_has_transformers_logits(backend, tmp_path, case):
    _, encoder_case, extra = CLASSIFY_CASES[case]
    config = BertConfig(vocab_size=45, hidden_size=24, num_layers=2, num_heads=3, intermediate_size=40,
                        max_position=11, task=TASK[CLASSIFY_CASES[case][0]],
                        **{k: v for k, v in extra.items() if k != "label2id"})
    params = on(backend, export_perturbed(backend, config, tmp_path))
    model, info = load_hf(tmp_path, CLASSIFY_CASES[case][0])
    assert_clean(info)
    batch = classify_batch(config, 3, 11)
    ours = backend.to_numpy(classify_logits(params, *inputs_of(batch), config=config, backend=backend))
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in batch.items() if k != "labels"}).logits.numpy()
    np.testing.assert_allclose(ours, ref, rtol=LOGITS_TOL, atol=LOGITS_TOL)


def test_reads_a_classifier_folder_converted_from_pytorch_model_bin_and_without_architectures(tmp_path):
    model, _, _ = classify_model("sequence-3")
    _, expected = from_transformers(model)
    (tmp_path / "bin").mkdir()
    fields = dict(json.loads(model.config.to_json_string()), architectures=["BertForSequenceClassification"])
    (tmp_path / "bin" / "config.json").write_text(json.dumps(fields))
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="convert_bin.py"):
        from_transformers(tmp_path / "bin")
    assert load_script("convert_bin").main([str(tmp_path / "bin")]) == 0
    config, params = from_transformers(tmp_path / "bin")
    assert config.task == "sequence" and config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    for name in expected:
        np.testing.assert_array_equal(params[name], expected[name], err_msg=name)
    # no architectures in config.json: a classifier without a pooler is a token classifier
    token, _, _ = classify_model("token-5")
    token.save_pretrained(tmp_path / "token")
    fields = json.loads((tmp_path / "token" / "config.json").read_text())
    del fields["architectures"]
    (tmp_path / "token" / "config.json").write_text(json.dumps(fields))
    config, _ = from_transformers(tmp_path / "token")
    assert config.task == "token" and config.num_labels == 5


# --- transformers' pipelines predict what Mini-BERT predicts --------------------------------------------------------

WORDS = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "rug", "and", "##s", ".", "big", "small", "alice",
         "bob", "paris"]
TOKENS = list(SPECIAL_TOKENS) + WORDS


def export_with_vocab(tmp_path, task, id2label, seed):
    config = BertConfig(vocab_size=len(TOKENS), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                        max_position=16, task=task, id2label=id2label)
    rng = np.random.default_rng(seed)
    host = {k: (v + rng.normal(0, 0.5, v.shape)).astype(np.float32)
            for k, v in init_host_params(config, seed=seed).items()}
    return config, host, to_transformers(host, config, tmp_path / "hf", vocab=TOKENS)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_text_classification_pipeline_predicts_minibert_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend = backend_or_skip("numpy")
    config, host, out = export_with_vocab(tmp_path, "sequence", {0: "negative", 1: "neutral", 2: "positive"}, 0)
    classify = transformers.pipeline("text-classification", model=str(out))
    texts = ["The cats sat on a big mat.", "Bob ran.", "a small dog and a big cat sat on the rug"]
    tokenizer = WordPieceTokenizer(TOKENS)
    for text in texts:
        ids = np.array([[TOKENS.index("[CLS]")] + tokenizer.encode(text) + [TOKENS.index("[SEP]")]])
        assert classify.tokenizer(text)["input_ids"] == ids[0].tolist()
        probs = softmax(backend.to_numpy(classify_logits(on(backend, host), ids, config=config, backend=backend))[0])
        results = {r["label"]: r["score"] for r in classify(text, top_k=None)}
        assert set(results) == {"negative", "neutral", "positive"}
        for i, label in config.id2label.items():
            np.testing.assert_allclose(results[label], probs[i], rtol=1e-4, atol=1e-6)
        assert classify(text)[0]["label"] == config.id2label[int(np.argmax(probs))]


def test_token_classification_pipeline_predicts_minibert_tags(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backend = backend_or_skip("numpy")
    config, host, out = export_with_vocab(tmp_path, "token", {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC"}, 1)
    tag = transformers.pipeline("token-classification", model=str(out), ignore_labels=[])
    text = "alice and bob sat on the mats. paris"
    ids = np.array([tag.tokenizer(text)["input_ids"]])
    assert ids[0, 1:-1].tolist() == WordPieceTokenizer(TOKENS).encode(text)
    probs = softmax(backend.to_numpy(classify_logits(on(backend, host), ids, config=config, backend=backend))[0])
    results = tag(text)
    assert [r["index"] for r in results] == list(range(1, ids.shape[1] - 1))   # every word-piece, no [CLS]/[SEP]
    for r in results:
        assert r["word"] == TOKENS[ids[0, r["index"]]]
        assert r["entity"] == config.id2label[int(np.argmax(probs[r["index"]]))]
        np.testing.assert_allclose(r["score"], probs[r["index"]].max(), rtol=1e-4, atol=1e-6)


# --- a pretrained encoder starts a classifier as transformers' from_pretrained does ---------------------------------

@pytest.mark.parametrize("source", ["BertForMaskedLM", "BertModel", "BertForPreTraining"])
def test_encoder_initialises_a_classifier_as_transformers_from_pretrained(tmp_path, source):
    fields, _ = CASES["h40-a5-L3-pytorch_tanh"]
    pretrained = hf_model(model_class=source, **fields)
    pretrained.save_pretrained(tmp_path / "src")
    mlm_config, encoder = encoder_from_transformers(tmp_path / "src")
    assert mlm_config.task == "mlm" and mlm_config.pad_token_id == 3
    has_pooler = source != "BertForMaskedLM"
    assert ("pooler.dense.weight" in encoder) == has_pooler
    config = config_from_transformers(pretrained.config, "sequence")
    params, fresh = init_classifier_from(encoder, config, seed=0)
    expected_fresh = ["classifier.weight", "classifier.bias"]
    assert fresh == ([] if has_pooler else ["pooler.dense.weight", "pooler.dense.bias"]) + expected_fresh
    theirs, info = transformers.BertForSequenceClassification.from_pretrained(
        str(tmp_path / "src"), local_files_only=True, output_loading_info=True, num_labels=2)
    # transformers initialises the same tensors fresh: the classifier, and the pooler where the source has none
    assert sorted(info["missing_keys"]) == sorted(
        ([] if has_pooler else ["bert.pooler.dense.weight", "bert.pooler.dense.bias"])
        + ["classifier.weight", "classifier.bias"])
    loaded = params_from_state_dict(_numpy_state(theirs), config)
    for name in params:
        if name not in fresh:
            np.testing.assert_array_equal(params[name], loaded[name], err_msg=name)
    # the model object reads the same as its folder (a BertModel's names carry no "bert." prefix)
    _, direct = encoder_from_transformers(pretrained)
    assert list(direct) == list(encoder)
    for name, value in encoder.items():
        np.testing.assert_array_equal(direct[name], value, err_msg=name)


def _numpy_state(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


# --- what cannot be converted is refused, by name -------------------------------------------------------------------

def test_classifier_checkpoints_that_do_not_fit_are_refused(tmp_path):
    model, _, _ = classify_model("sequence-3")
    config = config_from_transformers(model.config, "sequence")
    state = _numpy_state(model)
    with pytest.raises(ValueError, match=r"missing 2 tensor\(s\) a BertForSequenceClassification.*bert\.pooler"):
        params_from_state_dict({k: v for k, v in state.items() if not k.startswith("bert.pooler")}, config)
    with pytest.raises(ValueError, match=r"classifier\.weight has shape \(3, 48\), expected \(4, 48\)"):
        params_from_state_dict(state, config_from_transformers(dict(model.config.to_dict(), id2label={
            0: "a", 1: "b", 2: "c", 3: "d"}), "sequence"))
    with pytest.raises(ValueError, match=r"cls\.predictions\.bias"):
        params_from_state_dict(dict(state, **{"cls.predictions.bias": np.zeros(61, np.float32)}), config)
    fields = dict(model.config.to_dict(), problem_type="multi_label_classification")
    with pytest.raises(ValueError, match="multi_label_classification' is not supported"):
        config_from_transformers(fields, "sequence")
    model.save_pretrained(tmp_path / "short")                  # config.json then claims a layer the file lacks
    fields = json.loads((tmp_path / "short" / "config.json").read_text())
    (tmp_path / "short" / "config.json").write_text(json.dumps(dict(fields, num_hidden_layers=2)))
    with pytest.raises(ValueError, match=r"missing 16 encoder tensor\(s\).*bert\.encoder\.layer\.1\."):
        encoder_from_transformers(tmp_path / "short")
