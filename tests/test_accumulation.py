"""Token-weighted accumulation (minibert.nn.step): k micro-batches equal one batch of all their rows, on every backend,
also when the micro-batches hold different numbers of labelled tokens."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from support import random_batch
from minibert import BertConfig, init_params
from minibert.data.batch import check_batch, device_batch, device_batches
from minibert.nn.model import forward_backward, label_count
from minibert.nn.step import accumulate_gradients

SMALL = BertConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_position=12)
LABEL_RATES = (0.1, 0.3, 0.6, 0.9)      # one per micro-batch of 8 rows: different label counts


def uneven_batch(rows_per_micro=8, seq=10):
    """32 rows whose four 8-row quarters are labelled at different rates."""
    rng = np.random.default_rng(7)
    parts = [random_batch(rng, SMALL, batch=rows_per_micro, seq=seq, label_rate=rate) for rate in LABEL_RATES]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def split(batch, pieces):
    rows = len(batch["input_ids"]) // pieces
    return [{k: v[i * rows:(i + 1) * rows] for k, v in batch.items()} for i in range(pieces)]


def whole_and_accumulated(backend, dtype, count_fn=label_count):
    """(loss, grads) of the 32-row batch in one piece, and accumulated over 4 micro-batches of 8 rows."""
    params = init_params(SMALL, seed=0, backend=backend, dtype=dtype)
    batch = check_batch(uneven_batch(), SMALL)
    fb = partial(forward_backward, config=SMALL, backend=backend)
    whole = backend.jit(fb)(params, device_batch(batch, backend, dtype), None)
    micro = device_batches([check_batch(b, SMALL) for b in split(batch, 4)], backend, dtype)
    counts = [int(np.sum(b["labels"] != -100)) for b in split(batch, 4)]
    assert len(set(counts)) == 4, counts          # the micro-batches really differ in label count
    accumulated = backend.jit(partial(accumulate_gradients, fb, backend=backend, count_fn=count_fn))(
        params, micro, None)
    return whole, accumulated


def assert_same(backend, got, want, rtol):
    (loss, grads), (ref_loss, ref_grads) = got, want
    np.testing.assert_allclose(float(backend.to_numpy(loss)), float(backend.to_numpy(ref_loss)), rtol=rtol)
    for name, ref in ref_grads.items():
        ref = backend.to_numpy(ref)
        np.testing.assert_allclose(backend.to_numpy(grads[name]), ref, rtol=rtol, atol=rtol * np.abs(ref).max(),
                                   err_msg=name)


def test_four_micro_batches_equal_one_batch_float32(backend):
    whole, accumulated = whole_and_accumulated(backend, "float32")
    assert_same(backend, accumulated, whole, rtol=1e-6)


def test_four_micro_batches_equal_one_batch_float64(float64_backend):
    whole, accumulated = whole_and_accumulated(float64_backend, "float64")
    assert_same(float64_backend, accumulated, whole, rtol=1e-12)


def test_averaging_micro_batch_means_would_not_equal_one_batch_float64(float64_backend):
    """The check above can fail: the old rule (every micro-batch weighs the same) misses by far more."""
    whole, averaged = whole_and_accumulated(float64_backend, "float64", count_fn=None)
    with pytest.raises(AssertionError):
        assert_same(float64_backend, averaged, whole, rtol=1e-3)
