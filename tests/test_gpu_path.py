"""The GPU path, tested where a CPU can test it: CuPy's counter-based dropout draws (Philox4x32-10 against
Random123's known answers, and the CuPy kernel against the NumPy reference where a GPU is present), the loss's
flat target index that cannot wrap, JAX's synchronize waiting for queued work, and the peak-memory trackers."""
from __future__ import annotations

import numpy as np
import pytest

from backends import _philox
from support import backend_or_skip
from minibert.nn.loss import cross_entropy_forward, flat_index_dtype


@pytest.mark.parametrize("counter, key, expected", [
    # Random123 tests/kat_vectors, philox4x32 10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expected):
    out = _philox.philox4x32(np.array([counter], np.uint32), key)
    assert out.dtype == np.uint32 and tuple(int(x) for x in out[0]) == expected


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_philox_uniform_reference(dtype):
    key = _philox.key_from_seeds((7, 3))
    u = _philox.uniform_reference(key, 200_000, dtype)
    assert u.dtype == dtype and u.shape == (200_000,)
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    # element i depends only on (i, key): a shorter draw is a prefix, another key another stream
    np.testing.assert_array_equal(_philox.uniform_reference(key, 1000, dtype), u[:1000])
    other = _philox.uniform_reference(_philox.key_from_seeds((7, 4)), 1000, dtype)
    assert np.mean(other == u[:1000]) < 0.01
    # float32 keeps the top 24 bits of word 0: every value is a multiple of 2^-24
    if dtype == np.float32:
        assert np.all(u * 2.0 ** 24 == np.floor(u * 2.0 ** 24))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cupy_uniform_is_the_philox_reference(dtype):
    be = backend_or_skip("cupy")
    key = be.fold_in(be.fold_in(be.key(11), 4), 2)        # (seed, step, site), as dropout keys are made
    draw = be.to_numpy(be.uniform(key, (3, 5, 7), dtype))
    expected = _philox.uniform_reference(_philox.key_from_seeds(key), 3 * 5 * 7, dtype).reshape(3, 5, 7)
    np.testing.assert_array_equal(draw, expected)
    again = be.to_numpy(be.uniform(key, (3, 5, 7), dtype))
    np.testing.assert_array_equal(draw, again)           # reproducible: masks are a function of the key


def test_flat_target_index_is_64_bit(backend):
    """The loss's flat target index row * V + label: int64 wherever the backend has it (JAX without x64
    has only int32, and refuses sizes that would wrap: next test)."""
    rng = np.random.default_rng(0)
    logits = backend.asarray(rng.standard_normal((6, 11)).astype(np.float32))
    labels = backend.asarray(np.array([0, 10, 3, 3, 7, 1], np.int32))
    weights = backend.asarray(np.ones(6, np.float32))
    _, cache = cross_entropy_forward(logits, labels, weights)
    flat_target = cache.flat_target
    wide = not (backend.name == "jax" and not backend.supports_float64)
    assert flat_target.dtype == backend.dtype("int64" if wide else "int32")
    np.testing.assert_array_equal(backend.to_numpy(flat_target), np.arange(6) * 11 + [0, 10, 3, 3, 7, 1])


def test_flat_index_dtype_refuses_to_wrap():
    import array_api_compat.numpy as xp_numpy
    assert flat_index_dtype(xp_numpy, 2 ** 40) == xp_numpy.int64      # no array is made: the count is enough
    jax_backend = backend_or_skip("jax")
    if jax_backend.supports_float64:
        pytest.skip("JAX runs with x64 here: int64 indices, nothing to refuse")
    xp = jax_backend.xp
    assert flat_index_dtype(xp, 2 ** 31) == xp.int32                  # the largest index, 2^31 - 1, fits
    with pytest.raises(ValueError, match="64-bit flat indices"):
        flat_index_dtype(xp, 2 ** 31 + 1)


def test_jax_synchronize_without_array_waits_for_queued_work():
    be = backend_or_skip("jax")
    xp = be.xp
    a = be.asarray(np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32))
    repeat = be.jit(lambda m: xp.sum(m @ m @ m @ m @ m @ m @ m @ m))
    repeat(a).block_until_ready()                                    # compiled before anything is timed
    outs = [repeat(a + float(i)) for i in range(8)]                  # queued asynchronously
    be.synchronize()
    assert all(out.is_ready() for out in outs)


def test_peak_memory_tracker(backend):
    with backend.track_peak_memory() as peak:
        x = backend.asarray(np.zeros(1 << 20, np.float32))          # 4 MiB
        backend.synchronize(x)
        del x
    assert isinstance(peak.method, str) and peak.method
    if backend.on_gpu:
        assert peak.peak_bytes >= 4 << 20
    else:
        assert peak.peak_bytes is None                              # host memory: the benchmark reads RSS
