"""Backends' fast implementations of whole ops (`backend.fast_ops`, e.g. backends/_numpy_fast.py) against the
array-API reference in minibert.ops: every fast op of every backend that has one gives the reference's result."""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest

import backends
from backends import _numpy_fast
from minibert import ops
from support import assert_close, assert_tree_close, child_env

# sizes: one piece, several pieces with a ragged end on the calling thread, and enough to be shared between threads
SHAPES = [(3, 5), (7, 10_001), (4 * 96, 1024)]


def _reference(backend):
    """The same backend with its fast ops switched off: minibert.ops then runs its array-API reference."""
    plain = copy.copy(backend)
    plain.fast_ops = {}
    return plain


def _with_fast_ops():
    """Backends that have fast ops here, with them on (numpy's are on unless MINIBERT_REFERENCE_OPS=1)."""
    found = []
    for name in backends.available():
        be = backends.get_backend(name)
        if be.fast_ops:
            found.append(be)
    return found


def test_numpy_has_fast_gelu_and_other_backends_run_the_reference():
    numpy_ = backends.get_backend("numpy")
    if os.environ.get("MINIBERT_REFERENCE_OPS", "") not in ("", "0"):
        assert not numpy_.fast_ops
    else:
        assert set(numpy_.fast_ops) == {"gelu_forward", "gelu_backward", "softmax_forward", "softmax_backward",
                                        "dropout_forward"}
    for name in backends.available():
        if name != "numpy":
            assert not backends.get_backend(name).fast_ops, name


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fast_gelu_equals_the_reference(shape, dtype):
    """Forward output, saved Phi(x) and backward dx equal the reference's on every backend with the fast op, for
    inputs covering erf's clamp (|x / sqrt 2| > 5), zero and both signs."""
    rng = np.random.default_rng(sum(shape))
    x_host = rng.standard_normal(shape) * 4.0
    x_host.flat[:3] = [0.0, -9.0, 9.0]

    def saved_phi(be, y, cache, cache_ref, tol):
        assert_close(cache.saved, cache_ref.saved, rtol=tol, atol=tol, name=f"{be.name} gelu Phi(x)")
    compare_with_reference("gelu", ops.gelu_forward, ops.gelu_backward, x_host, rng.standard_normal(shape), dtype,
                           saved_phi)


@pytest.mark.parametrize("shape", [(2, 3, 5), (3, 7, 300, 33), (32, 4, 16, 128)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fast_softmax_equals_the_reference(shape, dtype):
    """Attention-like scores, with large values and a fully masked row (every score at the dtype's most
    negative finite number, which must come out uniform): p and the backward ds equal the reference's."""
    rng = np.random.default_rng(sum(shape))
    s_host = rng.standard_normal(shape) * 30.0
    s_host[..., 1, :] = np.finfo(dtype).min

    def masked_row_uniform(be, p, cache, cache_ref, tol):
        assert_close(p[..., 1, :], np.full(p[..., 1, :].shape, 1.0 / shape[-1]), rtol=tol, atol=0, check_dtype=False,
                     name="fully masked row")
    compare_with_reference("softmax", ops.softmax_forward, ops.softmax_backward, s_host, rng.standard_normal(shape),
                           dtype, masked_row_uniform)


@pytest.mark.parametrize("shape", SHAPES + [(32, 4, 128, 128)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_fast_dropout_equals_the_reference(shape, dtype, rate):
    """y and the scaled mask equal the reference's (`backend.uniform(key) >= rate`, scaled by 1 / (1 - rate)) to
    the last bit, and about `rate` of the elements are dropped."""
    candidates = _with_fast_ops()
    if not candidates:
        pytest.skip("no backend has fast ops here (MINIBERT_REFERENCE_OPS=1?)")
    x_host = np.random.default_rng(sum(shape)).standard_normal(shape)
    for be in candidates:
        x, key = be.asarray(x_host, dtype=dtype), be.fold_in(be.key(5), 2)
        y, cache = ops.dropout_forward(x, rate, key, be)
        y_ref, cache_ref = ops.dropout_forward(x, rate, key, _reference(be))
        np.testing.assert_array_equal(be.to_numpy(cache.scaled_mask), be.to_numpy(cache_ref.scaled_mask))
        np.testing.assert_array_equal(be.to_numpy(y), be.to_numpy(y_ref))
        assert y.dtype == x.dtype and cache.scaled_mask.dtype == x.dtype
        dropped = float(np.mean(be.to_numpy(cache.scaled_mask) == 0))
        if x_host.size > 10_000:
            assert abs(dropped - rate) < 0.02, dropped


def test_numpy_uniform_pieces_are_independent_streams_and_thread_count_free():
    """numpy's `uniform` draws piece i from its own stream (SeedSequence(entropy=key, spawn_key=(i,))): the values
    depend on key and shape only, not on the threads; pieces differ from each other; keys give other draws."""
    key = (3, 1, 4)
    n = 3 * _numpy_fast.PIECE + 17                          # three whole pieces and a ragged end
    draws = [_numpy_fast.uniform(key, (n,), np.float32, _numpy_fast.PiecewisePool(threads)) for threads in (1, 2, 3)]
    for other in draws[1:]:
        np.testing.assert_array_equal(draws[0], other)
    u = draws[0]
    first = _numpy_fast.piece_generator(key, 0).random(_numpy_fast.PIECE, dtype=np.float32)
    np.testing.assert_array_equal(u[:_numpy_fast.PIECE], first)
    piece = _numpy_fast.PIECE
    assert not np.array_equal(u[:piece], u[piece:2 * piece])
    assert not np.array_equal(u, _numpy_fast.uniform((3, 1, 5), (n,), np.float32, _numpy_fast.SINGLE_THREAD))
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(float(u.mean()) - 0.5) < 0.01


def compare_with_reference(op, forward, backward, x_host, dy_host, dtype, check_forward):
    """On every backend with fast ops: `forward(x, backend)` and `backward(dy, cache)` with the fast op equal the
    array-API reference's within a few ulp (to the last bit on NumPy: the same arithmetic in the same order);
    `check_forward(backend, y, cache, reference_cache, tol)` adds the op's own forward checks."""
    candidates = _with_fast_ops()
    if not candidates:
        pytest.skip("no backend has fast ops here (MINIBERT_REFERENCE_OPS=1?)")
    tol = 4 * float(np.finfo(dtype).eps)
    for be in candidates:
        plain = _reference(be)
        x, dy = be.asarray(x_host, dtype=dtype), be.asarray(dy_host, dtype=dtype)
        y, cache = forward(x, be)
        y_ref, cache_ref = forward(x, plain)
        assert_close(y, y_ref, rtol=tol, atol=tol, name=f"{be.name} {op} forward")
        check_forward(be, y, cache, cache_ref, tol)
        dx, grads = backward(dy, cache)
        dx_ref, _ = backward(dy, cache_ref)
        assert grads == {}
        assert_close(dx, dx_ref, rtol=tol, atol=tol, name=f"{be.name} {op} backward")
        if be.name == "numpy":
            np.testing.assert_array_equal(y, y_ref)
            np.testing.assert_array_equal(dx, dx_ref)


def test_fast_ops_are_deterministic_and_thread_count_free():
    """The pieces are fixed, so 1, 2 or 3 threads give the same bits (resume stays bit-exact)."""
    x = np.random.default_rng(0).standard_normal((5, 70_001)).astype(np.float32)
    dy = np.ones_like(x) * 0.5
    scores = x[:, :70_000].reshape(50, 70, 100)                 # [5, 70000] -> [50, 70, 100] (a copy)
    results = []
    for threads in (1, 2, 3):
        fast = _numpy_fast.FastOps(threads)
        y, cdf = fast.gelu_forward(x)
        p = fast.softmax_forward(scores)
        results.append((y, cdf, fast.gelu_backward(dy, x, cdf), p, fast.softmax_backward(scores, p)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_training_step_with_fast_ops_equals_the_reference_step():
    """One NumPy forward + backward through the whole model (dropout on) with and without the fast ops: the
    same loss and gradients."""
    from minibert.batch import check_batch, device_batch
    from minibert.config import BertConfig
    from minibert.model import forward_backward
    from minibert.params import init_params
    from support import random_batch

    be = backends.get_backend("numpy")
    if not be.fast_ops:
        pytest.skip("MINIBERT_REFERENCE_OPS=1: no fast ops to compare")
    config = BertConfig.preset("tiny", vocab_size=64, max_position=16)
    params = init_params(config, seed=0, backend=be)
    arrays = device_batch(check_batch(random_batch(np.random.default_rng(1), config), config), be, "float32")
    loss, grads = forward_backward(params, arrays, be.key(3), config=config, backend=be)
    loss_ref, grads_ref = forward_backward(params, arrays, be.key(3), config=config, backend=_reference(be))
    assert float(loss) == float(loss_ref)
    assert_tree_close(grads, grads_ref, rtol=0, atol=0)


def test_reference_ops_environment_switch():
    """MINIBERT_REFERENCE_OPS=1 gives the numpy backend no fast ops (it then runs the reference, as every other
    backend); unset, it has them."""
    code = "import backends; print(sorted(backends.get_backend('numpy').fast_ops))"
    every = "['dropout_forward', 'gelu_backward', 'gelu_forward', 'softmax_backward', 'softmax_forward']"
    for value, expected in (("1", "[]"), ("0", every)):
        out = subprocess.run([sys.executable, "-c", code], env=child_env(MINIBERT_REFERENCE_OPS=value),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == expected


FORK_CHILD = """
import os, sys
import numpy as np
from backends import _numpy_fast
fast = _numpy_fast.FastOps(2)
x = np.linspace(-3, 3, 300_000, dtype=np.float32)
expected = fast.gelu_forward(x)[0]          # the helper thread is running now
pid = os.fork()
if pid == 0:
    os._exit(0 if np.array_equal(fast.gelu_forward(x)[0], expected) else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fast_ops_work_in_a_forked_child():
    """A child forked after the helper threads started (e.g. a data-loading worker) starts its own and gets the
    same result (in a fresh interpreter that has imported no threaded library but NumPy)."""
    out = subprocess.run([sys.executable, "-c", FORK_CHILD], env=child_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
