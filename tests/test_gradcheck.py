"""Finite differences in float64: every op's hand-written backward, and the whole model (every parameter).

Each check compares the analytic directional derivative <grad, d> with a 4-point central difference
(-f(x+2hd) + 8 f(x+hd) - 8 f(x-hd) + f(x-2hd)) / 12h along unit directions d: two random ones and the
gradient's own direction, per input. Relative error must be <= 1e-6.
"""
from __future__ import annotations

import numpy as np
import pytest

from minibert import BertConfig, init_params, loss_and_grads
from minibert.nn import ops
from minibert.nn.attention import attention_backward, attention_forward, mask_bias
from minibert.nn.loss import cross_entropy_backward, cross_entropy_forward
from support import random_batch

REL_TOL = 1e-6
STEP = 1e-4


def assert_gradients_match(loss_of, host_inputs, analytic, seed=0):
    """loss_of(dict of host arrays) -> float; analytic: dict name -> host gradient array."""
    rng = np.random.default_rng(seed)
    for name, grad in analytic.items():
        grad = np.asarray(grad, np.float64)
        directions = [rng.standard_normal(grad.shape) for _ in range(2)]
        if np.any(grad):
            directions.append(grad)
        for d in directions:
            d = d / np.linalg.norm(d)

            def at(t):
                moved = dict(host_inputs)
                moved[name] = host_inputs[name] + t * d
                return loss_of(moved)

            numeric = (-at(2 * STEP) + 8 * at(STEP) - 8 * at(-STEP) + at(-2 * STEP)) / (12 * STEP)
            exact = float(np.sum(grad * d))
            scale = max(abs(numeric), abs(exact))
            assert abs(numeric - exact) <= REL_TOL * scale + 1e-11, (
                f"{name}: analytic {exact!r} vs finite difference {numeric!r} "
                f"(relative error {abs(numeric - exact) / max(scale, 1e-300):.2e})")


def weighted_sum_check(backend, forward, backward, host_inputs, out_shape, seed=1):
    """Check an op through L = sum(forward(inputs) * R), R fixed random: dL/dout = R."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(out_shape)
    r = backend.asarray(weights, dtype="float64")

    def loss_of(host):
        out = forward({k: backend.asarray(v, dtype="float64") for k, v in host.items()})
        return float(np.sum(backend.to_numpy(out) * weights))

    device = {k: backend.asarray(v, dtype="float64") for k, v in host_inputs.items()}
    grads = {k: backend.to_numpy(v) for k, v in backward(device, r).items()}
    assert set(grads) == set(host_inputs)
    for name, g in grads.items():
        assert g.shape == host_inputs[name].shape, name
    assert_gradients_match(loss_of, host_inputs, grads)


def _linear(backend, rng):
    inputs = {"x": rng.standard_normal((5, 4)), "w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}

    def forward(a):
        return ops.linear_forward(a["x"], a["w"], a["b"])[0]

    def backward(a, dy):
        dx, g = ops.linear_backward(dy, ops.linear_forward(a["x"], a["w"], a["b"])[1])
        return {"x": dx, "w": g["weight"], "b": g["bias"]}
    return inputs, forward, backward, (5, 3)


def _layernorm(backend, rng):
    inputs = {"x": rng.standard_normal((4, 6)) * 3 + 1, "g": rng.standard_normal(6), "b": rng.standard_normal(6)}

    def forward(a):
        return ops.layernorm_forward(a["x"], a["g"], a["b"], 1e-12)[0]

    def backward(a, dy):
        dx, g = ops.layernorm_backward(dy, ops.layernorm_forward(a["x"], a["g"], a["b"], 1e-12)[1])
        return {"x": dx, "g": g["weight"], "b": g["bias"]}
    return inputs, forward, backward, (4, 6)


def _gelu(approximate):
    def build(backend, rng):
        inputs = {"x": rng.standard_normal((3, 7)) * 2}

        def forward(a):
            return ops.gelu_forward(a["x"], backend, approximate)[0]

        def backward(a, dy):
            return {"x": ops.gelu_backward(dy, ops.gelu_forward(a["x"], backend, approximate)[1])[0]}
        return inputs, forward, backward, (3, 7)
    return build


def _softmax(backend, rng):
    inputs = {"s": rng.standard_normal((2, 3, 5)) * 3}

    def forward(a):
        return ops.softmax_forward(a["s"])[0]

    def backward(a, dy):
        return {"s": ops.softmax_backward(dy, ops.softmax_forward(a["s"])[1])[0]}
    return inputs, forward, backward, (2, 3, 5)


def _dropout(backend, rng):
    inputs = {"x": rng.standard_normal((6, 5))}
    key = backend.key(3)

    def forward(a):
        return ops.dropout_forward(a["x"], 0.3, key, backend)[0]

    def backward(a, dy):
        return {"x": ops.dropout_backward(dy, ops.dropout_forward(a["x"], 0.3, key, backend)[1])[0]}
    return inputs, forward, backward, (6, 5)


def _embedding(backend, rng):
    ids_host = np.array([1, 3, 1, 0, 3, 3], np.int32)   # repeated ids must accumulate
    inputs = {"table": rng.standard_normal((5, 4))}

    def forward(a):
        return ops.embedding_forward(backend.asarray(ids_host), a["table"])[0]

    def backward(a, dy):
        cache = ops.embedding_forward(backend.asarray(ids_host), a["table"])[1]
        return {"table": ops.embedding_backward(dy, cache, backend)[1]["weight"]}
    return inputs, forward, backward, (6, 4)


def _attention(dropout_rate):
    def build(backend, rng):
        batch, seq, hidden, heads = 2, 5, 8, 2
        mask = np.ones((batch, seq), np.int32)
        mask[1, 3:] = 0
        inputs = {"x": rng.standard_normal((batch * seq, hidden)),
                  "wqkv": rng.standard_normal((hidden, 3 * hidden)) * 0.3, "bqkv": rng.standard_normal(3 * hidden),
                  "wo": rng.standard_normal((hidden, hidden)) * 0.3, "bo": rng.standard_normal(hidden)}
        key = backend.key(7) if dropout_rate else None

        def run(a):
            bias = mask_bias(backend.asarray(mask), a["x"].dtype)
            return attention_forward(a["x"], a["wqkv"], a["bqkv"], a["wo"], a["bo"], bias, heads,
                                     dropout_rate, key, backend)

        def backward(a, dy):
            dx, g = attention_backward(dy, run(a)[1])
            return {"x": dx, "wqkv": g["qkv.weight"], "bqkv": g["qkv.bias"], "wo": g["out.weight"], "bo": g["out.bias"]}
        return inputs, lambda a: run(a)[0], backward, (batch * seq, hidden)
    return build


def _cross_entropy(backend, rng):
    labels = np.array([2, 0, 4, 4, 1], np.int32)
    weights = np.array([1.0, 1.0, 0.0, 1.0, 1.0])
    inputs = {"z": rng.standard_normal((5, 6)) * 2}

    def forward(a):
        return cross_entropy_forward(a["z"], backend.asarray(labels), backend.asarray(weights, dtype="float64"))[0]

    def backward(a, dy):
        cache = cross_entropy_forward(a["z"], backend.asarray(labels), backend.asarray(weights, dtype="float64"))[1]
        return {"z": cross_entropy_backward(dy, cache, backend)[0]}
    return inputs, forward, backward, ()


OPS = {"linear": _linear, "layernorm": _layernorm, "gelu": _gelu(False), "gelu_tanh": _gelu(True),
       "softmax": _softmax, "dropout": _dropout, "embedding": _embedding, "attention": _attention(0.0),
       "attention_dropout": _attention(0.2), "cross_entropy": _cross_entropy}


@pytest.mark.parametrize("op", OPS)
def test_op_gradient_float64(float64_backend, op):
    inputs, forward, backward, out_shape = OPS[op](float64_backend, np.random.default_rng(0))
    weighted_sum_check(float64_backend, forward, backward, inputs, out_shape)


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("dropout_seed", [None, 5])
def test_model_gradient_float64_every_parameter(float64_backend, hidden_act, dropout_seed):
    be = float64_backend
    config = BertConfig(vocab_size=23, hidden_size=12, num_layers=2, num_heads=3, intermediate_size=20,
                        max_position=9, hidden_act=hidden_act, hidden_dropout=0.1, attention_dropout=0.1)
    params = init_params(config, seed=0, backend=be, dtype="float64")
    # perturb biases and LayerNorm weights away from 0 / 1 so their gradients are exercised generically
    rng = np.random.default_rng(1)
    host = {k: be.to_numpy(v) + 0.1 * rng.standard_normal(v.shape) for k, v in params.items()}
    batch = random_batch(rng, config, batch=2, seq=7)

    def loss_of(host_params):
        return loss_and_grads({k: be.asarray(v, dtype="float64") for k, v in host_params.items()}, batch,
                              config=config, backend=be, dropout_seed=dropout_seed)[0]

    _, grads = loss_and_grads({k: be.asarray(v, dtype="float64") for k, v in host.items()}, batch,
                              config=config, backend=be, dropout_seed=dropout_seed)
    assert set(grads) == set(params)
    analytic = {k: be.to_numpy(g) for k, g in grads.items()}
    for name, g in analytic.items():
        assert g.shape == tuple(params[name].shape) and g.dtype == np.float64, name
    assert_gradients_match(loss_of, host, analytic)
