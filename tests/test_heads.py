"""Classification heads: float64 finite differences for every new op and for the whole classifier (every
parameter), the config's classification fields, the head's parameters, backends agreeing, and bad labels refused.

Finite differences reuse tests/test_gradcheck.py's 4-point central difference (relative error <= 1e-6).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from support import backend_or_skip, random_batch
from minibert import (BertConfig, classify_forward_backward, classify_logits, classify_loss_and_grads,
                      classify_metrics, init_params, param_shapes)
from minibert.nn import heads
from minibert.nn.loss import cross_entropy_backward, cross_entropy_forward
from minibert.data.classify_batch import check_classify_batch, classify_device_batch
from minibert.params import init_classifier_from, init_host_params
from test_gradcheck import assert_gradients_match, weighted_sum_check

ENCODER = dict(vocab_size=23, hidden_size=12, num_layers=2, num_heads=3, intermediate_size=20, max_position=9)
# id: (task, num_labels)
TASKS = {"sequence": ("sequence", 3), "regression": ("sequence", 1), "token": ("token", 4)}


def task_config(case, **overrides):
    task, num_labels = TASKS[case]
    return BertConfig(**{**ENCODER, "task": task, "num_labels": num_labels, **overrides})


def task_labels(rng, config, batch):
    """Labels for `batch`: [B] classes, [B] floats (regression) or [B, T] classes with -100 at padding and at
    some real positions."""
    rows, seq = batch["input_ids"].shape
    if config.task == "token":
        labels = rng.integers(0, config.num_labels, (rows, seq))
        labels[(batch["attention_mask"] == 0) | (rng.random((rows, seq)) < 0.3)] = -100
        labels[0, 0] = 1
        return labels
    if config.problem_type == "regression":
        return rng.normal(0.0, 1.5, rows)
    return rng.integers(0, config.num_labels, rows)


def classify_batch(rng, config, rows=3, seq=7):
    batch = random_batch(rng, config, batch=rows, seq=seq)
    batch["labels"] = task_labels(rng, config, batch)
    return batch


# --- float64 finite differences of each new op ------------------------------------------------------------------

def _pooler(backend, rng):
    inputs = {"x": rng.standard_normal((4, 6)), "w": rng.standard_normal((6, 6)) * 0.5,
              "b": rng.standard_normal(6) * 0.3}

    def run(a):
        return heads.pooler_forward(a["x"], a["w"], a["b"])

    def backward(a, dy):
        dx, g = heads.pooler_backward(dy, run(a)[1])
        return {"x": dx, "w": g["dense.weight"], "b": g["dense.bias"]}
    return inputs, lambda a: run(a)[0], backward, (4, 6)


def _classifier(rate):
    def build(backend, rng):
        inputs = {"x": rng.standard_normal((5, 6)), "w": rng.standard_normal((6, 3)), "b": rng.standard_normal(3)}
        key = backend.key(11) if rate else None

        def run(a):
            return heads.classifier_forward(a["x"], a["w"], a["b"], rate, key, backend)

        def backward(a, dy):
            dx, g = heads.classifier_backward(dy, run(a)[1])
            return {"x": dx, "w": g["weight"], "b": g["bias"]}
        return inputs, lambda a: run(a)[0], backward, (5, 3)
    return build


def _head_params(rng, hidden, num_labels, pooler):
    params = {"classifier.weight": rng.standard_normal((hidden, num_labels)) * 0.5,
              "classifier.bias": rng.standard_normal(num_labels) * 0.3}
    if pooler:
        params.update({"pooler.dense.weight": rng.standard_normal((hidden, hidden)) * 0.5,
                       "pooler.dense.bias": rng.standard_normal(hidden) * 0.3})
    return params


def _sequence_head(backend, rng):
    batch, seq, hidden, labels = 3, 4, 6, 5
    inputs = {"hidden": rng.standard_normal((batch * seq, hidden)), **_head_params(rng, hidden, labels, True)}
    key = backend.key(2)

    def run(a):
        return heads.sequence_head_forward(a, heads.cls_rows(a["hidden"], seq), 0.25, key, backend)

    def backward(a, dy):
        d_cls, grads = heads.sequence_head_backward(dy, run(a)[1])
        return {"hidden": heads.cls_rows_gradient(d_cls, seq), **grads}
    return inputs, lambda a: run(a)[0], backward, (batch, labels)


def _token_head(backend, rng):
    rows, hidden, labels = 10, 6, 4
    inputs = {"hidden": rng.standard_normal((rows, hidden)), **_head_params(rng, hidden, labels, False)}
    key = backend.key(4)

    def run(a):
        return heads.token_head_forward(a, a["hidden"], 0.25, key, backend)

    def backward(a, dy):
        d_hidden, grads = heads.token_head_backward(dy, run(a)[1])
        return {"hidden": d_hidden, **grads}
    return inputs, lambda a: run(a)[0], backward, (rows, labels)


def _class_cross_entropy(backend, rng):
    targets = np.array([2, 0, 0, 4, 1], np.int32)           # row 2 is ignored (weight 0, target 0 as the host puts it)
    weights = np.array([1.0, 1.0, 0.0, 1.0, 1.0])
    inputs = {"z": rng.standard_normal((5, 5)) * 2}

    def run(a):
        return cross_entropy_forward(a["z"], backend.asarray(targets), backend.asarray(weights, dtype="float64"))

    def backward(a, dy):
        return {"z": cross_entropy_backward(dy, run(a)[1], backend)[0]}
    return inputs, lambda a: run(a)[0], backward, ()


def _mse(backend, rng):
    weights = np.array([1.0, 0.0, 1.0, 1.0])
    targets = rng.standard_normal(4)

    def run(a):
        return heads.mse_forward(a["z"], backend.asarray(targets, dtype="float64"),
                                 backend.asarray(weights, dtype="float64"))

    def backward(a, dy):
        return {"z": heads.mse_backward(dy, run(a)[1])[0]}
    return {"z": rng.standard_normal((4, 1))}, lambda a: run(a)[0], backward, ()


OPS = {"pooler_tanh": _pooler, "classifier": _classifier(0.0), "classifier_dropout": _classifier(0.3),
       "sequence_head": _sequence_head, "token_head": _token_head, "class_cross_entropy": _class_cross_entropy,
       "mse": _mse}


@pytest.mark.parametrize("op", OPS)
def test_head_op_gradient_float64(float64_backend, op):
    inputs, forward, backward, out_shape = OPS[op](float64_backend, np.random.default_rng(0))
    weighted_sum_check(float64_backend, forward, backward, inputs, out_shape)


def test_class_cross_entropy_ignores_weight_zero_rows_and_means_over_the_rest():
    backend = backend_or_skip("numpy")
    z = np.random.default_rng(1).standard_normal((4, 3))
    loss, _ = cross_entropy_forward(backend.asarray(z), backend.asarray(np.array([2, 0, 1, 0])),
                                    backend.asarray(np.array([1.0, 0.0, 1.0, 1.0])))
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(float(loss), -(log_p[0, 2] + log_p[2, 1] + log_p[3, 0]) / 3, rtol=1e-12)
    loss, _ = heads.mse_forward(backend.asarray(z[:, :1]), backend.asarray(np.array([0.5, 9.0, -1.0, 2.0])),
                                backend.asarray(np.array([1.0, 0.0, 1.0, 1.0])))
    expected = ((z[0, 0] - 0.5) ** 2 + (z[2, 0] + 1.0) ** 2 + (z[3, 0] - 2.0) ** 2) / 3
    np.testing.assert_allclose(float(loss), expected, rtol=1e-12)


# --- the whole classifier: every parameter, float64 ---------------------------------------------------------------

@pytest.mark.parametrize("dropout_seed", [None, 5])
@pytest.mark.parametrize("case", TASKS)
def test_classifier_gradient_float64_every_parameter(float64_backend, case, dropout_seed):
    be = float64_backend
    config = task_config(case, hidden_dropout=0.1, attention_dropout=0.1, classifier_dropout=0.2)
    rng = np.random.default_rng(1)
    host = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in init_host_params(config, 0, "float64").items()}
    batch = classify_batch(rng, config)

    def run(host_params):
        return classify_loss_and_grads({k: be.asarray(v, dtype="float64") for k, v in host_params.items()}, batch,
                                       config=config, backend=be, dropout_seed=dropout_seed)

    _, grads = run(host)
    assert list(grads) and set(grads) == set(param_shapes(config))
    analytic = {k: be.to_numpy(g) for k, g in grads.items()}
    for name, g in analytic.items():
        assert g.shape == param_shapes(config)[name] and g.dtype == np.float64, name
    assert_gradients_match(lambda h: run(h)[0], host, analytic)


# --- backends agree; the device-side functions the training loop uses ------------------------------------------------

@pytest.mark.parametrize("case", TASKS)
def test_backends_agree_with_numpy(backend, case):
    config = task_config(case)
    rng = np.random.default_rng(3)
    host = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32) for k, v in init_host_params(config).items()}
    batch = classify_batch(rng, config)
    numpy_be = backend_or_skip("numpy")
    results = []
    for be in (numpy_be, backend):
        params = {k: be.asarray(v) for k, v in host.items()}
        loss, grads = classify_loss_and_grads(params, batch, config=config, backend=be)
        logits = classify_logits(params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                 config=config, backend=be)
        results.append((loss, {k: be.to_numpy(v) for k, v in grads.items()}, be.to_numpy(logits)))
    (loss0, grads0, logits0), (loss1, grads1, logits1) = results
    expected_shape = (3, config.num_labels) if config.task == "sequence" else (3, 7, config.num_labels)
    assert logits1.shape == expected_shape and logits1.dtype == np.float32
    np.testing.assert_allclose(logits1, logits0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss1, loss0, rtol=1e-5, atol=1e-6)
    for name, g in grads0.items():
        scale = np.max(np.abs(g))
        assert scale > 0, name
        assert np.max(np.abs(grads1[name] - g)) <= 1e-4 * scale, name


@pytest.mark.parametrize("case", TASKS)
def test_device_functions_match_the_public_api(backend, case):
    """classify_forward_backward (what the training step calls) and classify_metrics on a device batch equal
    classify_loss_and_grads and classify_logits; metrics' summed loss is the mean times the labelled count."""
    config = task_config(case)
    rng = np.random.default_rng(4)
    params = init_params(config, seed=2, backend=backend)
    batch = classify_batch(rng, config)
    arrays = classify_device_batch(check_classify_batch(batch, config), backend, "float32")
    loss, grads = classify_forward_backward(params, arrays, None, config=config, backend=backend)
    ref_loss, ref_grads = classify_loss_and_grads(params, batch, config=config, backend=backend)
    np.testing.assert_allclose(float(backend.to_numpy(loss)), ref_loss, rtol=1e-6)
    for name, g in ref_grads.items():
        np.testing.assert_allclose(backend.to_numpy(grads[name]), backend.to_numpy(g), rtol=1e-5, atol=1e-7)
    summed, logits = classify_metrics(params, arrays, config=config, backend=backend)
    labelled = np.sum(np.asarray(batch["labels"]) != -100) if config.problem_type != "regression" else 3
    np.testing.assert_allclose(float(backend.to_numpy(summed)), ref_loss * labelled, rtol=1e-5)
    np.testing.assert_allclose(backend.to_numpy(logits), backend.to_numpy(classify_logits(
        params, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], config=config,
        backend=backend)), rtol=1e-6, atol=1e-6)


def test_dropout_changes_the_loss_and_is_seeded():
    backend = backend_or_skip("numpy")
    config = task_config("sequence", classifier_dropout=0.5)
    params = init_params(config, seed=0, backend=backend)
    batch = classify_batch(np.random.default_rng(0), config)
    plain = classify_loss_and_grads(params, batch, config=config, backend=backend)[0]
    first = classify_loss_and_grads(params, batch, config=config, backend=backend, dropout_seed=1)[0]
    again = classify_loss_and_grads(params, batch, config=config, backend=backend, dropout_seed=1)[0]
    assert first == again and first != plain


# --- config fields ------------------------------------------------------------------------------------------------

def test_classification_config_defaults_as_transformers_and_json_round_trip():
    config = BertConfig(**ENCODER, task="sequence")
    assert config.num_labels == 2 and config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    assert config.label2id == {"LABEL_0": 0, "LABEL_1": 1}
    assert config.problem_type == "single_label_classification"
    assert config.classifier_dropout is None and config.classifier_dropout_rate == config.hidden_dropout
    regression = BertConfig(**ENCODER, task="sequence", num_labels=1)
    assert regression.problem_type == "regression"
    labelled = BertConfig(**ENCODER, task="token", id2label={"0": "O", "1": "B-PER", "2": "I-PER"},
                          classifier_dropout=0.3)
    assert labelled.num_labels == 3 and labelled.id2label[1] == "B-PER" and labelled.label2id["I-PER"] == 2
    assert labelled.classifier_dropout_rate == 0.3
    for cfg in (config, regression, labelled):
        text = cfg.to_json()
        assert json.loads(text)["id2label"] == {str(i): v for i, v in cfg.id2label.items()}
        assert BertConfig.from_dict(json.loads(text)) == cfg
        assert hash(BertConfig.from_dict(json.loads(text))) == hash(cfg)
    assert BertConfig.preset("tiny", task="token", num_labels=5).num_labels == 5
    # an MLM config's dict is what it was before the classification fields existed
    mlm = BertConfig(**ENCODER)
    assert set(mlm.to_dict()) == {f.name for f in dataclasses.fields(BertConfig)} - {
        "task", "num_labels", "id2label", "label2id", "problem_type", "classifier_dropout"}
    assert BertConfig.from_dict(json.loads(mlm.to_json())) == mlm
    assert dataclasses.replace(mlm, task="sequence", num_labels=4).num_labels == 4


@pytest.mark.parametrize("fields, match", [
    (dict(task="sentence"), r"task must be one of \('mlm', 'sequence', 'token'\)"),
    (dict(num_labels=3), r"\['num_labels'\] apply only to a classification config"),
    (dict(task="sequence", num_labels=0), r"num_labels must be a positive int"),
    (dict(task="sequence", num_labels=True), r"num_labels must be a positive int"),
    (dict(task="sequence", num_labels=3, id2label={0: "a", 1: "b"}), r"num_labels=3 but id2label has 2"),
    (dict(task="sequence", id2label={0: "a", 2: "b"}), r"id2label ids must be 0\.\.1"),
    (dict(task="sequence", id2label={0: "a", 1: "a"}), r"id2label repeats a label"),
    (dict(task="sequence", id2label={0: "a", 1: 5}), r"labels must be non-empty strings"),
    (dict(task="sequence", id2label={0.5: "a"}), r"label ids must be ints"),
    (dict(task="sequence", id2label={0: "a", 1: "b"}, label2id={"a": 1, "b": 0}), r"label2id must be the inverse"),
    (dict(task="sequence", num_labels=3, problem_type="regression"), r"regression needs num_labels == 1"),
    (dict(task="sequence", num_labels=1, problem_type="single_label_classification"), r"regression needs"),
    (dict(task="sequence", problem_type="multi_label_classification"), r"problem_type must be one of"),
    (dict(task="token", num_labels=1), r"task='token' supports only"),
    (dict(task="token", classifier_dropout=1.0), r"classifier_dropout must be None or in \[0, 1\)"),
])
def test_bad_classification_config_is_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        BertConfig(**ENCODER, **fields)


# --- parameters ------------------------------------------------------------------------------------------------------

def test_head_params_replace_the_mlm_head_and_start_as_transformers():
    mlm_shapes = param_shapes(BertConfig(**ENCODER))
    encoder = {k: v for k, v in mlm_shapes.items() if not k.startswith("head.")}
    seq = task_config("sequence")
    assert param_shapes(seq) == {**encoder, "pooler.dense.weight": (12, 12), "pooler.dense.bias": (12,),
                                 "classifier.weight": (12, 3), "classifier.bias": (3,)}
    assert param_shapes(task_config("token")) == {**encoder, "classifier.weight": (12, 4), "classifier.bias": (4,)}
    host = init_host_params(seq, seed=0)
    assert not host["classifier.bias"].any() and not host["pooler.dense.bias"].any()
    std = np.std(init_host_params(task_config("sequence", hidden_size=96, num_heads=3), 0)["classifier.weight"])
    assert 0.015 < std < 0.025                                              # N(0, initializer_range = 0.02)
    # the encoder draws first, so a classifier and a masked LM of one seed share their encoder weights
    mlm = init_host_params(BertConfig(**ENCODER), seed=0)
    for name in encoder:
        np.testing.assert_array_equal(host[name], mlm[name], err_msg=name)


def test_init_classifier_from_a_pretrained_mlm_keeps_the_encoder_and_draws_the_head():
    mlm_config = BertConfig(**ENCODER)
    pretrained = {k: v + 1.0 for k, v in init_host_params(mlm_config, seed=9).items()}
    config = dataclasses.replace(mlm_config, task="sequence", num_labels=3)
    params, fresh = init_classifier_from(pretrained, config, seed=4)
    assert list(params) == list(param_shapes(config))
    assert fresh == ["pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"]
    drawn = init_host_params(config, seed=4)
    for name in params:
        np.testing.assert_array_equal(params[name], drawn[name] if name in fresh else pretrained[name], err_msg=name)
    # a pooler in the source is kept (as transformers keeps BertModel's pooler); the classifier is still fresh
    with_pooler = dict(pretrained, **{"pooler.dense.weight": np.full((12, 12), 0.5, np.float32),
                                      "pooler.dense.bias": np.full(12, 0.25, np.float32)})
    params, fresh = init_classifier_from(with_pooler, config, seed=4)
    assert fresh == ["classifier.weight", "classifier.bias"]
    np.testing.assert_array_equal(params["pooler.dense.weight"], with_pooler["pooler.dense.weight"])
    with pytest.raises(ValueError, match=r"encoder_params lacks layers\.1\.ffn\.in\.bias"):
        init_classifier_from({k: v for k, v in pretrained.items() if k != "layers.1.ffn.in.bias"}, config)
    # a classifier of the same label count is kept; another label count is drawn fresh (ignore_mismatched_sizes)
    same = dict(with_pooler, **{"classifier.weight": np.full((12, 3), 0.125, np.float32),
                                "classifier.bias": np.full(3, 0.5, np.float32)})
    params, fresh = init_classifier_from(same, config, seed=4)
    assert fresh == []
    np.testing.assert_array_equal(params["classifier.weight"], same["classifier.weight"])
    other = dict(with_pooler, **{"classifier.weight": np.zeros((12, 5), np.float32),
                                 "classifier.bias": np.zeros(5, np.float32)})
    params, fresh = init_classifier_from(other, config, seed=4)
    assert fresh == ["classifier.weight", "classifier.bias"]
    np.testing.assert_array_equal(params["classifier.weight"], drawn["classifier.weight"])
    with pytest.raises(ValueError, match=r"layers\.0\.ffn\.in\.weight has shape \(12, 5\), this config needs"):
        init_classifier_from(dict(pretrained, **{"layers.0.ffn.in.weight": np.zeros((12, 5), np.float32)}), config)
    with pytest.raises(ValueError, match="needs a classification config"):
        init_classifier_from(pretrained, mlm_config)


# --- bad input is refused on the host, by name ----------------------------------------------------------------------

@pytest.mark.parametrize("case, labels, error, match", [
    ("sequence", [0, 3, 1], ValueError, r"labels must be in \[0, 3\).*LABEL_2.*got label 3 at position \(1,\)"),
    ("sequence", [0, -1, 1], ValueError, r"got label -1 at position \(1,\)"),
    ("sequence", [0.0, 1.0, 2.0], TypeError, r"labels must be an integer array"),
    ("sequence", [[0, 1, 2]], ValueError, r"labels has shape \(1, 3\); task 'sequence' needs \[batch\] = \(3,\)"),
    ("sequence", [-100, -100, -100], ValueError, r"no labelled position"),
    ("regression", [0.5, float("nan"), 1.0], ValueError, r"labels must be finite.*position 1"),
    ("regression", [True, False, True], TypeError, r"labels must be numbers"),
    ("regression", [0.5, 1.0], ValueError, r"regression needs one target per sequence, \(3,\)"),
    ("token", [0, 1, 2], ValueError, r"labels has shape \(3,\); task 'token' needs \[batch, sequence\]"),
    ("token", "token_out_of_range", ValueError, r"labels must be in \[0, 4\).*got label 4 at position \(2, 5\)"),
])
def test_bad_labels_are_refused_before_any_work(case, labels, error, match):
    backend = backend_or_skip("numpy")
    config = task_config(case)
    params = init_params(config, backend=backend)
    batch = classify_batch(np.random.default_rng(0), config)
    if labels == "token_out_of_range":
        labels = np.zeros((3, 7), np.int64)
        labels[2, 5] = 4
    batch["labels"] = labels
    with pytest.raises(error, match=match):
        classify_loss_and_grads(params, batch, config=config, backend=backend)


def test_mlm_config_params_and_inputs_are_refused_by_the_classifier():
    backend = backend_or_skip("numpy")
    mlm = BertConfig(**ENCODER)
    config = task_config("sequence")
    with pytest.raises(ValueError, match="config.task is 'mlm'; classification needs task 'sequence' or 'token'"):
        classify_logits(init_params(mlm, backend=backend), [[1, 2]], config=mlm, backend=backend)
    with pytest.raises(ValueError, match=r"params does not fit the model config: missing \['pooler\.dense\.weight'"):
        classify_logits(init_params(mlm, backend=backend), [[1, 2]], config=config, backend=backend)
    params = init_params(config, backend=backend)
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 23\)"):
        classify_logits(params, [[1, 23]], config=config, backend=backend)
    with pytest.raises(ValueError, match=r"batch is missing \['labels'\]"):
        classify_loss_and_grads(params, {"input_ids": [[1, 2]]}, config=config, backend=backend)
