"""Tests for backends._erf.erf against math.erf, on NumPy and array_api_strict."""

import math

import numpy as np
import pytest

from backends import _erf
from backends._erf import erf

F64_TOL = 2e-15   # absolute and relative, float64
F32_TOL = 3e-7    # absolute, float32

SPECIAL = [0.0, -0.0, 1e-300, -1e-300, 1e-30, 1e-8, -1e-8, 0.5, -0.5,
           0.84375, 1.25, 1 / 0.35, 6.0, -6.0, 10.0, -10.0, 1e10, -1e10,
           1e300, -1e300, math.inf, -math.inf, math.nan]


def _grid_f64():
    rng = np.random.default_rng(0)
    tiny = np.geomspace(1e-300, 8.0, 20_000)
    edges = np.array([0.84375, 1.25, 1 / 0.35, 6.0])
    edges = np.concatenate([np.nextafter(edges, 0), edges, np.nextafter(edges, 10)])
    pos = np.concatenate([np.linspace(0.0, 8.0, 200_001), rng.uniform(0, 8, 50_000),
                          tiny, edges])
    return np.concatenate([pos, -pos, np.array(SPECIAL)])


def _grid_f32():
    rng = np.random.default_rng(1)
    pos = np.concatenate([np.linspace(0.0, 8.0, 400_001), rng.uniform(0, 5, 100_000),
                          np.geomspace(1e-38, 8.0, 10_000)])
    x = np.concatenate([pos, -pos, np.array(SPECIAL)])
    with np.errstate(over="ignore"):  # 1e300 -> inf in float32, on purpose
        return x.astype(np.float32)


def _reference(x):
    return np.array([math.erf(float(v)) for v in x], dtype=np.float64)


def _check_f64(x, got):
    ref = _reference(x)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    err = np.abs(got[ok] - ref[ok])
    assert err.max() <= F64_TOL
    assert np.all(err <= F64_TOL * np.abs(ref[ok]))          # relative
    # signed zeros keep their sign
    zero = ok & (x == 0)
    assert np.array_equal(np.signbit(got[zero]), np.signbit(x[zero]))
    # exact saturation
    big = np.abs(x) >= 6.0
    assert np.array_equal(got[big], np.sign(x[big]))


def _check_f32(x, got):
    ref = _reference(x)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    err = np.abs(got[ok].astype(np.float64) - ref[ok])
    assert err.max() <= F32_TOL
    zero = ok & (x == 0)
    assert np.array_equal(np.signbit(got[zero]), np.signbit(x[zero]))
    big = np.abs(x) >= 5.0
    assert np.array_equal(got[big], np.sign(x[big]))
    assert np.all(np.abs(got[ok]) <= 1.0)


# -- NumPy (plain ndarrays) ---------------------------------------------------

GRIDS = {"float64": (_grid_f64, _check_f64), "float32": (_grid_f32, _check_f32)}   # dtype: (inputs, their check)


@pytest.mark.parametrize("dtype", GRIDS)
def test_numpy(dtype):
    grid, check = GRIDS[dtype]
    x = grid()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = erf(x)
    assert isinstance(got, np.ndarray) and got.dtype == dtype
    assert got.shape == x.shape
    check(x, got)


def test_numpy_float64_subnormals():
    # No relative bound is possible for subnormal results; ask for one
    # subnormal ulp.
    x = np.array([5e-324, -5e-324, 1e-320, 1e-310, -2.2e-308])
    got = erf(x)
    assert np.all(np.abs(got - _reference(x)) <= 5e-324)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_shapes_strides_and_input_untouched(dtype):
    # larger than one chunk, 3-d, non-contiguous; also 0-d and empty
    rng = np.random.default_rng(2)
    base = (rng.standard_normal((2, 700, 90)) * 3).astype(dtype)
    x = base[:, ::3, 1:]
    keep = x.copy()
    got = erf(x)
    assert got.shape == x.shape and got.dtype == dtype
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_array_equal(got, erf(np.ascontiguousarray(x)).reshape(x.shape))
    flat = np.ascontiguousarray(x).reshape(-1)
    ref = _reference(flat).reshape(x.shape)
    tol = F32_TOL if dtype == np.float32 else F64_TOL
    assert np.abs(got.astype(np.float64) - ref).max() <= tol

    s = erf(np.asarray(0.5, dtype=dtype))
    assert isinstance(s, np.ndarray) and s.shape == () and s.dtype == dtype
    assert abs(float(s) - math.erf(0.5)) <= tol
    e = erf(np.zeros((0, 3), dtype=dtype))
    assert e.shape == (0, 3) and e.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_fast_path_matches_generic_path(dtype):
    import array_api_compat
    x = (np.random.default_rng(3).standard_normal(200_000) * 4).astype(dtype)
    xp = array_api_compat.array_namespace(x)
    generic = _erf._erf_f32 if dtype == np.float32 else _erf._erf_f64
    np.testing.assert_array_equal(erf(x), generic(x, xp))


def test_rejects_integer_input():
    with pytest.raises(TypeError):
        erf(np.arange(3))


# -- array_api_strict ---------------------------------------------------------

def _strict():
    try:
        import array_api_strict
    except ImportError:  # pragma: no cover - depends on the environment
        pytest.skip("array_api_strict is not installed")
    return array_api_strict


@pytest.mark.parametrize("dtype", GRIDS)
def test_strict(dtype):
    xs = _strict()
    grid, check = GRIDS[dtype]
    x = grid()
    got = erf(xs.asarray(x, dtype=getattr(xs, dtype)))
    assert got.dtype == getattr(xs, dtype)
    out = np.from_dlpack(got)
    assert out.dtype == dtype
    check(x, out)
    if dtype == "float32":          # identical to the in-place NumPy path
        np.testing.assert_array_equal(out, erf(x))


def test_strict_2d():
    xs = _strict()
    x = np.linspace(-4, 4, 60).reshape(3, 4, 5)
    for dt, npdt, tol in [(xs.float32, np.float32, F32_TOL), (xs.float64, np.float64, F64_TOL)]:
        got = erf(xs.asarray(x, dtype=dt))
        assert got.dtype == dt and got.shape == (3, 4, 5)
        ref = _reference(x.astype(npdt).reshape(-1)).reshape(x.shape)
        assert np.abs(np.from_dlpack(got).astype(np.float64) - ref).max() <= tol
