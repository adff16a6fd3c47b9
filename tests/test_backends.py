"""The backend registry: selection, errors, and what each backend must supply."""
from __future__ import annotations

import numpy as np
import pytest

import backends
from backends.base import Backend, BackendUnavailableError
from support import child_env, finish, start


def test_default_is_numpy(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert backends.get_backend().name == "numpy"


@pytest.mark.parametrize("name", ["numpy", "strict", "jax"])
def test_environment_variable_picks_the_backend(monkeypatch, name):
    monkeypatch.setenv(backends.ENV_VAR, name)
    try:
        assert backends.get_backend().name == name
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))


def test_argument_overrides_environment(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "strict")
    assert backends.get_backend("numpy").name == "numpy"


def test_unknown_backend_lists_the_registered_names(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown backend 'nope'.*numpy.*MINIBERT_BACKEND"):
        backends.get_backend("nope")
    monkeypatch.setenv(backends.ENV_VAR, "also-nope")
    with pytest.raises(ValueError, match=r"unknown backend 'also-nope'; registered backends: .*jax.*numpy"):
        backends.get_backend()


def test_unavailable_backend_says_what_to_install():
    def broken():
        raise BackendUnavailableError("backend 'ghost' needs ghostlib; install it with: pip install ghostlib")
    backends.register("ghost", broken)
    try:
        with pytest.raises(BackendUnavailableError, match="pip install ghostlib"):
            backends.get_backend("ghost")
        assert "ghost" in backends.registered() and "ghost" not in backends.available()
    finally:
        backends._factories.pop("ghost")


def test_missing_library_error_names_the_pip_command():
    """CuPy without a GPU (or not installed) and JAX when hidden: the error says what is missing and the fix."""
    code = ("import sys; sys.modules['jax'] = None\n"
            "import backends\n"
            "try:\n    backends.get_backend('jax')\nexcept backends.BackendUnavailableError as e:\n    print(e)\n")
    _, out, _ = finish(start(child_env(), "-c", code))
    assert "not installed" in out and "pip install" in out and "jax" in out
    try:
        backends.get_backend("cupy")
    except BackendUnavailableError as exc:
        assert "cupy" in str(exc).lower() and ("pip install" in str(exc) or "CUDA" in str(exc))


def test_register_opens_the_registry():
    class Custom(Backend):
        name = "custom"
    backends.register("custom", Custom)
    try:
        assert backends.get_backend("custom").name == "custom"
        assert "custom" in backends.registered()
    finally:
        backends._factories.pop("custom")
        backends._instances.pop("custom", None)


def test_importing_backends_imports_no_array_library():
    code = ("import sys, backends\n"
            "print(sorted(m for m in ('numpy', 'jax', 'cupy', 'torch', 'array_api_strict', 'array_api_compat')"
            " if m in sys.modules))")
    returncode, out, err = finish(start(child_env(), "-c", code))
    assert returncode == 0, err
    assert out.strip() == "[]"


def test_scatter_add_accumulates_duplicate_indices(backend):
    rng = np.random.default_rng(0)
    indices = np.array([3, 1, 3, 3, 0, 1, 7], np.int32)
    updates = rng.standard_normal((indices.size, 5)).astype(np.float32)
    table = rng.standard_normal((8, 5)).astype(np.float32)
    expected = table.copy()
    np.add.at(expected, indices, updates)
    result = backend.scatter_add(backend.asarray(table), backend.asarray(indices), backend.asarray(updates))
    np.testing.assert_allclose(backend.to_numpy(result), expected, rtol=1e-6, atol=1e-6)


def test_erf_matches_the_reference(backend):
    import math
    x = np.linspace(-5, 5, 101).astype(np.float32)
    got = backend.to_numpy(backend.erf(backend.asarray(x)))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [math.erf(v) for v in x], atol=5e-7)


def test_random_is_seeded_and_keys_are_independent(backend):
    key = backend.key(11)
    a = backend.to_numpy(backend.uniform(backend.fold_in(key, 1), (1000,), "float32"))
    b = backend.to_numpy(backend.uniform(backend.fold_in(key, 1), (1000,), "float32"))
    c = backend.to_numpy(backend.uniform(backend.fold_in(key, 2), (1000,), "float32"))
    assert a.dtype == np.float32 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.0 <= a.min() and a.max() < 1.0 and abs(a.mean() - 0.5) < 0.05


def test_round_trip_and_dtypes(backend):
    host = np.arange(6, dtype=np.int32).reshape(2, 3)
    assert np.array_equal(backend.to_numpy(backend.asarray(host)), host)
    assert backend.to_numpy(backend.asarray(host, dtype="float32")).dtype == np.float32
    with pytest.raises(ValueError, match="unknown dtype 'float8'.*allowed"):
        backend.asarray(host, dtype="float8")


def test_float64_where_unsupported_is_a_clear_error():
    jax_backend = pytest.importorskip("backends.jax_backend")
    be = backends.get_backend("jax")
    if be.supports_float64:
        pytest.skip("this process has JAX x64 enabled")
    with pytest.raises(ValueError, match="float64.*jax.*JAX_ENABLE_X64"):
        be.dtype("float64")
    assert jax_backend is not None


def test_jit_compiles_on_jax_and_is_identity_elsewhere(backend):
    def f(x):
        return x * 2
    compiled = backend.jit(f)
    if backend.name == "jax":
        assert compiled is not f
    else:
        assert compiled is f
    assert np.array_equal(backend.to_numpy(compiled(backend.asarray(np.ones(3, np.float32)))), np.full(3, 2.0))
    backend.synchronize()


# --- the copy contract of asarray and to_numpy, as backends/base.py states it ----------------------------------------

def test_asarray_aliases_or_copies_as_stated(backend):
    """numpy and strict share memory with a host array of the asked dtype; every other case is a copy. The host
    buffer is 64-byte aligned: the case where a library may take it over without copying (JAX on the CPU)."""
    buffer = np.zeros(6 * 4 + 64, np.uint8)
    start = -buffer.ctypes.data % 64
    host = buffer[start:start + 6 * 4].view(np.int32).reshape(2, 3)     # [24 bytes] -> int32 [2, 3]
    host[...] = np.arange(6).reshape(2, 3)
    same_dtype, converted = backend.asarray(host), backend.asarray(host, dtype="float32")
    host[0, 0] = 100
    aliases = backend.name in ("numpy", "strict")
    assert backend.to_numpy(same_dtype)[0, 0] == (100 if aliases else 0), "asarray broke its copy contract"
    assert backend.to_numpy(converted)[0, 0] == 0, "a dtype conversion must copy"


def test_to_numpy_views_or_copies_as_stated(backend):
    """numpy, strict and torch on the CPU give a writeable view; jax a read-only array; cupy and torch on a GPU
    a copy."""
    device = backend.asarray(np.arange(6, dtype=np.float32))
    out = backend.to_numpy(device)
    if backend.name == "jax":
        assert not out.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            out[0] = 100
    else:
        assert out.flags.writeable
        out[0] = 100
        view = backend.name in ("numpy", "strict") or (backend.name == "torch" and backend.device.type == "cpu")
        assert backend.to_numpy(device)[0] == (100 if view else 0), "to_numpy broke its copy contract"
