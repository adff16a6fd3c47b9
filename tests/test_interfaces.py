"""The model's interfaces: named caches read by name, one backward shape, the compile cache, the generic step."""
from __future__ import annotations

import ast
import collections
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import backends
import minibert.api
from backends import numpy_backend
from support import ROOT, random_batch
from minibert import BertConfig, init_params
from minibert.nn import heads, model, ops
from minibert.nn.attention import attention_backward, attention_forward, mask_bias
from minibert.data.batch import check_batch, device_batch
from minibert.nn.loss import cross_entropy_backward, cross_entropy_forward
from minibert.nn.optim import AdamWConfig, adamw_update, init_state
from minibert.nn.step import make_train_step

SMALL = BertConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_position=12)
MATH = ("ops", "attention", "loss", "model", "heads", "classify")


def _cases(be):
    """name -> (backward, d_out, cache, passed) for every backward of the model, from a real forward on float64
    arrays; `passed` are the arguments after the cache (the backend, and the config, for the backwards that
    need them: never stored in a cache)."""
    rng = np.random.default_rng(0)

    def arr(*shape):
        return be.asarray(rng.standard_normal(shape), dtype="float64")
    x, w, b = arr(6, 4), arr(4, 3), arr(3)
    ids = be.asarray(np.array([1, 3, 1, 0, 3, 3], np.int32))
    mask = np.ones((2, 3), np.int32)
    mask[1, 2] = 0
    params = init_params(SMALL, seed=0, backend=be, dtype="float64")
    arrays = device_batch(check_batch(random_batch(rng, SMALL), SMALL), be, "float64")
    hidden, encoder_cache = model.encoder_forward(params, arrays.input_ids, arrays.token_type_ids,
                                                  arrays.attention_mask, SMALL, be, be.key(1))
    logits, head_cache = model.mlm_head_forward(params, hidden, SMALL, be)
    labels = be.asarray(np.array([2, 0, 1, 2, 1, 0], np.int32))
    classifier_params = {"pooler.dense.weight": arr(4, 4), "pooler.dense.bias": arr(4),
                         "classifier.weight": arr(4, 3), "classifier.bias": arr(3)}
    forwards = {
        "linear": (ops.linear_backward, ops.linear_forward(x, w, b)),
        "layernorm": (ops.layernorm_backward, ops.layernorm_forward(x, arr(4), arr(4), 1e-12)),
        "gelu": (ops.gelu_backward, ops.gelu_forward(x, be)),
        "gelu_tanh": (ops.gelu_backward, ops.gelu_forward(x, be, approximate=True)),
        "softmax": (ops.softmax_backward, ops.softmax_forward(x)),
        "dropout": (ops.dropout_backward, ops.dropout_forward(x, 0.3, be.key(2), be)),
        "no_dropout": (ops.dropout_backward, ops.dropout_forward(x, 0.3, None, be)),
        "embedding": (ops.embedding_backward, ops.embedding_forward(ids, arr(5, 4))),
        "attention": (attention_backward, attention_forward(arr(6, 4), arr(4, 12), arr(12), arr(4, 4), arr(4),
                                                            mask_bias(be.asarray(mask), x.dtype), 2, 0.2,
                                                            be.key(3), be)),
        "cross_entropy": (cross_entropy_backward, cross_entropy_forward(
            x[:, :3], labels, be.asarray(np.array([1.0, 1, 0, 1, 1, 1]), dtype="float64"))),
        "encoder": (model.encoder_backward, (hidden, encoder_cache)),
        "mlm_head": (model.mlm_head_backward, (logits, head_cache)),
        "sequence_head": (heads.sequence_head_backward, heads.sequence_head_forward(
            classifier_params, heads.cls_rows(x, 3), 0.1, be.key(4), be)),
        "token_head": (heads.token_head_backward, heads.token_head_forward(classifier_params, x, 0.1, be.key(5), be)),
        "mse": (heads.mse_backward, heads.mse_forward(x[:, :1], x[:, 1], x[:, 2])),
    }
    passed = {"embedding": (be,), "cross_entropy": (be,), "encoder": (SMALL, be)}
    cases = {}
    for name, (backward, (out, cache)) in forwards.items():
        d_out = 1.0 if name in ("cross_entropy", "mse") else be.asarray(rng.standard_normal(tuple(out.shape)),
                                                               dtype="float64")
        cases[name] = (backward, d_out, cache, passed.get(name, ()))
    return cases


def _same(a, b, be):
    if a is None or b is None:
        assert a is None and b is None
    else:
        np.testing.assert_array_equal(be.to_numpy(a), be.to_numpy(b))


def test_every_backward_reads_its_named_cache_by_name_and_refuses_a_bare_tuple():
    """Every cache is a NamedTuple. The same fields in another order give the same gradients (read by name),
    while the fields as a bare positional tuple fail loudly (AttributeError) instead of being unpacked."""
    be = backends.get_backend("numpy")
    for name, (backward, d_out, cache, passed) in _cases(be).items():
        assert isinstance(cache, tuple) and hasattr(type(cache), "_fields"), f"{name}: {type(cache)} not a NamedTuple"
        d_in, grads = backward(d_out, cache, *passed)
        assert isinstance(grads, dict), name
        fields = cache._fields
        reordered = collections.namedtuple("Reordered", fields[::-1])(**cache._asdict())
        d_in_again, grads_again = backward(d_out, reordered, *passed)
        _same(d_in, d_in_again, be)
        assert list(grads) == list(grads_again), name
        for key in grads:
            _same(grads[key], grads_again[key], be)
        with pytest.raises(AttributeError):
            backward(d_out, tuple(cache), *passed)


def test_backward_gradient_names():
    """(d_in, grads): local names for the ops, full parameter names for the encoder and the head."""
    be = backends.get_backend("numpy")
    cases = _cases(be)
    expected = {"linear": {"weight", "bias"}, "layernorm": {"weight", "bias"}, "gelu": set(), "gelu_tanh": set(),
                "softmax": set(), "dropout": set(), "no_dropout": set(), "embedding": {"weight"},
                "cross_entropy": set(),
                "attention": {"qkv.weight", "qkv.bias", "out.weight", "out.bias"},
                "sequence_head": {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"},
                "token_head": {"classifier.weight", "classifier.bias"}, "mse": set(),
                "mlm_head": {"embeddings.word", "head.decoder_bias", "head.ln.weight", "head.ln.bias",
                             "head.dense.weight", "head.dense.bias"}}
    expected["encoder"] = {k for k in init_params(SMALL, 0, be) if not k.startswith("head.")}
    for name, (backward, d_out, cache, passed) in cases.items():
        d_in, grads = backward(d_out, cache, *passed)
        assert set(grads) == expected[name], name
        assert (d_in is None) == (name in ("embedding", "encoder")), name


def _non_array_leaves(value, where):
    """The paths in a cache to anything that is neither an array nor None (an op that saved nothing)."""
    if isinstance(value, tuple):
        fields = getattr(type(value), "_fields", range(len(value)))
        return [bad for field, item in zip(fields, value) for bad in _non_array_leaves(item, f"{where}.{field}")]
    if value is None or (hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type)):
        return []
    return [f"{where} = {type(value).__name__}"]


def test_caches_hold_arrays_only():
    """Every cache of the model, nested ones included, holds arrays (or None where an op saved nothing): no
    backend, config, flag or Python int, which a JAX pytree would carry as a leaf. Shapes come from the arrays;
    the backend and config are passed to the backward."""
    for case, (_, _, cache, _) in _cases(backends.get_backend("numpy")).items():
        assert _non_array_leaves(cache, case) == []


def test_caches_are_built_by_keyword_and_never_unpacked():
    """In the model math, a cache is constructed with keyword arguments only and never tuple-unpacked, so a
    reordered field cannot silently swap two arrays."""
    for module in MATH:
        tree = ast.parse(Path(ROOT, "minibert", "nn", f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "").endswith("Cache"):
                assert not node.args, f"minibert/nn/{module}.py:{node.lineno} builds {node.func.id} positionally"
            if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple)
                    and isinstance(node.value, (ast.Name, ast.Attribute, ast.Subscript))):
                source = ast.unparse(node.value)
                assert "cache" not in source.lower(), f"minibert/nn/{module}.py:{node.lineno} unpacks {source} by position"


def test_reregistered_backend_does_not_reuse_a_stale_compiled_function(monkeypatch):
    """The compile cache is keyed by the backend object: a backend registered anew under an old name gets
    functions compiled by and bound to the new instance, and the replaced instance's entries are dropped."""
    monkeypatch.setattr(backends, "_factories", dict(backends._factories))
    monkeypatch.setattr(backends, "_instances", dict(backends._instances))
    jitted_by = []

    def factory():
        be = numpy_backend.create()
        real_jit = be.jit

        def jit(fn, **kwargs):
            jitted_by.append(be)
            return real_jit(fn, **kwargs)
        be.jit = jit
        return be

    backends.register("twin", factory)
    first = backends.get_backend("twin")
    fn = minibert.api.compiled(model.logits_all, SMALL, first)
    assert minibert.api.compiled(model.logits_all, SMALL, first) is fn and jitted_by == [first]
    backends.register("twin", factory)
    assert first not in minibert.api._compiled
    second = backends.get_backend("twin")
    assert second is not first
    fresh = minibert.api.compiled(model.logits_all, SMALL, second)
    assert fresh is not fn and jitted_by == [first, second]
    params = init_params(SMALL, seed=0, backend=second)
    ids = np.array([[2, 5, 7]], np.int32)
    logits = fresh(params, ids, np.ones_like(ids), np.zeros_like(ids))
    np.testing.assert_allclose(logits, minibert.api.mlm_logits(params, ids, config=SMALL, backend=second))


def test_make_train_step_takes_any_loss_and_gradient_function():
    """The step calls the given function once per micro-batch with fold_in(key, i), averages the gradients
    and applies AdamW: here a least-squares loss on a single parameter, against `adamw_update` directly."""
    be = backends.get_backend("numpy")
    seen = []

    def squared_error(params, arrays, key):
        seen.append(key)
        residual = params["w"] - arrays
        return be.xp.sum(residual * residual), {"w": 2.0 * residual}

    opt = AdamWConfig(lr=0.1, warmup_steps=0, total_steps=10)
    targets = [be.asarray(np.array([1.0, 2.0])), be.asarray(np.array([3.0, -2.0]))]
    start = {"w": be.asarray(np.array([0.5, 0.5]))}
    step = make_train_step(squared_error, opt, be)
    params, _, loss, norm = step({"w": be.xp.asarray(start["w"], copy=True)}, init_state(start, be), targets,
                                 be.key(4), 0)
    assert len(seen) == 2 and all(key is not None for key in seen)
    mean_grad = {"w": (2.0 * (start["w"] - targets[0]) + 2.0 * (start["w"] - targets[1])) / 2}
    expected, _, expected_norm = adamw_update({"w": be.xp.asarray(start["w"], copy=True)}, mean_grad,
                                              init_state(start, be), 0, opt)
    np.testing.assert_allclose(params["w"], expected["w"], rtol=1e-12)
    np.testing.assert_allclose(float(norm), float(expected_norm), rtol=1e-12)
    np.testing.assert_allclose(float(loss), (0.25 + 2.25 + 6.25 + 6.25) / 2, rtol=1e-12)


def test_make_train_step_refuses_a_config_in_place_of_the_function():
    with pytest.raises(TypeError, match=r"forward_backward_fn must be a function \(params, arrays, key\)"):
        make_train_step(SMALL, AdamWConfig(), backends.get_backend("numpy"))


def test_mlm_step_through_partial_matches_loss_and_grads():
    """The masked-LM task plugs into the generic step as partial(forward_backward, config=, backend=)."""
    be = backends.get_backend("numpy")
    batch = random_batch(np.random.default_rng(5), SMALL)
    params = init_params(SMALL, seed=0, backend=be)
    loss, grads = minibert.api.loss_and_grads(params, batch, config=SMALL, backend=be)
    opt = AdamWConfig(lr=1e-3, warmup_steps=0, total_steps=10, clip_norm=None)
    step = make_train_step(partial(model.forward_backward, config=SMALL, backend=be), opt, be)
    arrays = device_batch(check_batch(batch, SMALL), be, "float32")
    stepped, _, step_loss, _ = step(init_params(SMALL, seed=0, backend=be), init_state(params, be), [arrays],
                                    None, 0)
    expected, _, _ = adamw_update(init_params(SMALL, seed=0, backend=be), grads, init_state(params, be), 0, opt)
    assert float(step_loss) == loss
    for name in params:
        np.testing.assert_array_equal(stepped[name], expected[name], err_msg=name)
