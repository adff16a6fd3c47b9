"""The numpy backend's row threads (`Backend.row_threads`, minibert/nn/step.py `forward_backward_by_rows`): a batch
split by rows into blocks that run at once gives the loss and gradients of the whole batch; the blocks hold
exactly the batch's rows and labels; the threaded step is deterministic; BLAS's thread count is restored."""
from __future__ import annotations

import copy
import threading
from functools import partial

import numpy as np
import pytest

from support import assert_tree_close, random_batch
from minibert import BertConfig, init_params
from minibert.data.batch import check_batch, device_batch
from minibert.data.classify_batch import ClassifyBatch
from minibert.nn.model import forward_backward, label_count
from minibert.nn.step import accumulate_gradients, forward_backward_by_rows

SMALL = BertConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_position=12,
                   hidden_dropout=0.1, attention_dropout=0.1)


def threaded_numpy(threads):
    """The numpy backend with `threads` row threads (skips where NumPy's BLAS threads cannot be controlled)."""
    import backends
    be = backends.get_backend("numpy")
    if be._blas is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS whose threads can be set: no row threads here")
    be = copy.copy(be)
    be.row_threads = threads
    be._executor, be._executor_pid = None, None
    return be


def mlm_batch(rows=5, seq=9, seed=3):
    return check_batch(random_batch(np.random.default_rng(seed), SMALL, batch=rows, seq=seq, label_rate=0.5), SMALL)


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_mlm_blocks_hold_exactly_the_rows_and_labels(parts):
    import backends
    be = backends.get_backend("numpy")
    arrays = device_batch(mlm_batch(), be, "float32")
    blocks = arrays.split_rows(parts)
    assert len(blocks) == min(parts, 5)                      # 7 parts of 5 rows: the empty blocks are left out
    np.testing.assert_array_equal(np.concatenate([b.input_ids for b in blocks]), arrays.input_ids)
    np.testing.assert_array_equal(np.concatenate([b.attention_mask for b in blocks]), arrays.attention_mask)
    seq, first_row, positions, targets = arrays.input_ids.shape[1], 0, [], []
    for b in blocks:
        assert np.all((b.positions >= 0) & (b.positions < b.input_ids.size))
        positions.append(b.positions + first_row * seq)
        targets.append(b.targets)
        first_row += b.input_ids.shape[0]
    np.testing.assert_array_equal(np.concatenate(positions), arrays.positions)
    np.testing.assert_array_equal(np.concatenate(targets), arrays.targets)
    assert sum(float(label_count(b)) for b in blocks) == float(label_count(arrays))


@pytest.mark.parametrize("per_row", [1, 6])          # task "sequence" (one label per row), "token" (T per row)
def test_classify_blocks_hold_exactly_the_rows_and_labels(per_row):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 9, (5, 6))
    batch = ClassifyBatch(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids),
                          targets=np.arange(5 * per_row), weights=np.ones(5 * per_row))
    blocks = batch.split_rows(2)
    assert [b.input_ids.shape[0] for b in blocks] == [2, 3]
    for b in blocks:
        assert b.targets.shape[0] == b.input_ids.shape[0] * per_row
    np.testing.assert_array_equal(np.concatenate([b.targets for b in blocks]), batch.targets)


@pytest.mark.parametrize("dtype,rtol", [("float32", 2e-6), ("float64", 1e-12)])
def test_rows_on_threads_equal_the_whole_batch(dtype, rtol):
    """Without dropout, 2 and 3 row threads give the one-thread loss and gradients (rounding apart)."""
    one = threaded_numpy(1)
    params = init_params(SMALL, seed=0, backend=one, dtype=dtype)
    arrays = device_batch(mlm_batch(rows=6), one, dtype)
    fb = partial(forward_backward, config=SMALL, backend=one)
    count = label_count(arrays)
    whole = forward_backward_by_rows(fb, params, arrays, None, count, one)
    for threads in (2, 3):
        be = threaded_numpy(threads)
        got = forward_backward_by_rows(partial(forward_backward, config=SMALL, backend=be), params, arrays, None,
                                       count, be)
        np.testing.assert_allclose(float(got[0]), float(whole[0]), rtol=rtol)
        assert_tree_close(got[1], whole[1], rtol=rtol, atol=rtol * 0.1)


def test_threaded_step_with_dropout_is_deterministic_and_restores_blas_threads():
    be = threaded_numpy(2)
    before = be._blas.get()
    params = init_params(SMALL, seed=0, backend=be)
    arrays = device_batch(mlm_batch(rows=8), be, "float32")
    fb = partial(forward_backward, config=SMALL, backend=be)
    seen = set()

    def recording(*args):
        seen.add(threading.get_ident())
        assert be._blas.get() == 1                   # each row thread runs single-threaded BLAS
        return fb(*args)

    runs = [accumulate_gradients(recording, params, [arrays], be.key(4), be, count_fn=label_count) for _ in range(2)]
    assert len(seen) == 2                              # the two blocks ran on two threads
    assert be._blas.get() == before
    assert float(runs[0][0]) == float(runs[1][0])
    assert_tree_close(runs[0][1], runs[1][1], rtol=0, atol=0)
    one_thread = accumulate_gradients(fb, params, [arrays], be.key(4), threaded_numpy(1), count_fn=label_count)
    assert float(one_thread[0]) != float(runs[0][0])   # dropout keys per block: another split, other masks


def test_thread_map_keeps_the_order_of_its_items():
    be = threaded_numpy(2)
    assert be.thread_map(lambda x: x * x, range(7)) == [x * x for x in range(7)]


@pytest.mark.parametrize("rows", [1, 3, 6])
def test_logits_on_row_threads_equal_one_thread(rows):
    """Inference (`minibert.api.compiled_logits`, used by mlm_logits and the benchmark) splits the rows over the
    threads and concatenates their logits: the one-thread logits, for row counts below, at and above the count."""
    from minibert.api import compiled_logits
    from minibert.nn.model import logits_all
    one, two = threaded_numpy(1), threaded_numpy(2)
    params = init_params(SMALL, seed=0, backend=one)
    host = mlm_batch(rows=rows)
    inputs = [host[k] for k in ("input_ids", "attention_mask", "token_type_ids")]
    want = compiled_logits(logits_all, SMALL, one)(params, *inputs)
    got = compiled_logits(logits_all, SMALL, two)(params, *inputs)
    assert got.shape == want.shape == (rows, 9, SMALL.vocab_size)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
