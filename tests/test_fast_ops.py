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
        assert "gelu_forward" in numpy_.fast_ops and "gelu_backward" in numpy_.fast_ops
    for name in backends.available():
        if name != "numpy":
            assert not backends.get_backend(name).fast_ops, name


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fast_gelu_equals_the_reference(shape, dtype):
    """Forward output, saved Phi(x) and backward dx equal the reference's on every backend with the fast op, for
    inputs covering erf's clamp (|x / sqrt 2| > 5), zero and both signs."""
    candidates = _with_fast_ops()
    if not candidates:
        pytest.skip("no backend has fast ops here (MINIBERT_REFERENCE_OPS=1?)")
    rng = np.random.default_rng(sum(shape))
    x_host = rng.standard_normal(shape) * 4.0
    x_host.flat[:3] = [0.0, -9.0, 9.0]
    dy_host = rng.standard_normal(shape)
    for be in candidates:
        plain = _reference(be)
        x, dy = be.asarray(x_host, dtype=dtype), be.asarray(dy_host, dtype=dtype)
        y, cache = ops.gelu_forward(x, be)
        y_ref, cache_ref = ops.gelu_forward(x, plain)
        # same arithmetic in the same order: equal to the last bit on NumPy; a tolerance of a few ulp otherwise
        tol = 4 * float(np.finfo(dtype).eps)
        assert_close(y, y_ref, rtol=tol, atol=tol, name=f"{be.name} gelu y")
        assert_close(cache.saved, cache_ref.saved, rtol=tol, atol=tol, name=f"{be.name} gelu Phi(x)")
        dx, grads = ops.gelu_backward(dy, cache)
        dx_ref, _ = ops.gelu_backward(dy, cache_ref)
        assert grads == {}
        assert_close(dx, dx_ref, rtol=tol, atol=tol, name=f"{be.name} gelu dx")
        if be.name == "numpy":
            np.testing.assert_array_equal(y, y_ref)
            np.testing.assert_array_equal(dx, dx_ref)


def test_fast_gelu_is_deterministic_and_thread_count_free():
    """The pieces are fixed, so 1, 2 or 3 threads give the same bits (resume stays bit-exact)."""
    x = np.random.default_rng(0).standard_normal((5, 70_001)).astype(np.float32)
    dy = np.ones_like(x)
    results = []
    for threads in (1, 2, 3):
        fast = _numpy_fast.FastOps(threads)
        y, cdf = fast.gelu_forward(x)
        results.append((y, cdf, fast.gelu_backward(dy, x, cdf)))
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
    for value, expected in (("1", "[]"), ("0", "['gelu_backward', 'gelu_forward']")):
        out = subprocess.run([sys.executable, "-c", code], env=child_env(MINIBERT_REFERENCE_OPS=value),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == expected
