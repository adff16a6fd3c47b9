"""The `backend` and `float64_backend` fixtures (each backend, skipping with the reason those that cannot run here),
and `--backend NAME` to run them for chosen backends only. Shared helpers live in support.py."""
from __future__ import annotations

import os

import pytest

from support import ALL_BACKENDS, X64_CHILD_ENV, backend_or_skip, child_env, write_corpus

BACKENDS_ENV = "MINIBERT_TEST_BACKENDS"   # the same choice as --backend, for scripts that run pytest


def pytest_addoption(parser):
    parser.addoption("--backend", action="append", default=[], metavar="NAME",
                     help=f"run the backend-parametrized tests for these backends only (repeatable or "
                          f"comma-separated; one of {', '.join(ALL_BACKENDS)}); default: ${BACKENDS_ENV}, else all")


def selected_backends(config) -> tuple[str, ...]:
    """The backends chosen by --backend, else by $MINIBERT_TEST_BACKENDS, else all of them."""
    given = ",".join(config.getoption("backend")) or os.environ.get(BACKENDS_ENV, "")
    names = [name.strip() for name in given.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_BACKENDS]
    if unknown:
        source = "--backend" if config.getoption("backend") else f"${BACKENDS_ENV}"
        raise pytest.UsageError(f"{source}: unknown backend {', '.join(map(repr, unknown))}; allowed: "
                                f"{', '.join(ALL_BACKENDS)}")
    return tuple(names) or ALL_BACKENDS


def pytest_configure(config):
    selected_backends(config)         # a bad name stops the session before collection


def pytest_report_header(config):
    if selected_backends(config) != ALL_BACKENDS:
        return f"backends: {', '.join(selected_backends(config))} (others deselected)"


def pytest_collection_modifyitems(config, items):
    """Deselect the `backend` / `float64_backend` cases of backends that were not chosen."""
    chosen = selected_backends(config)
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        names = [params.params[f] for f in ("backend", "float64_backend") if f in params.params] if params else []
        (drop if any(name not in chosen for name in names) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    """Each registered backend that is usable here (CuPy skips without a CUDA GPU)."""
    return backend_or_skip(request.param)


FLOAT64_BACKENDS = ("numpy", "strict", "torch", "cupy") + (("jax",) if os.environ.get(X64_CHILD_ENV) else ())


@pytest.fixture(params=FLOAT64_BACKENDS)
def float64_backend(request):
    """Backends for float64 checks. JAX needs its sticky global x64 flag, so its float64 checks run in a
    child pytest process with JAX_ENABLE_X64=1 (tests/test_jax_x64.py); this process's flag is never set."""
    return backend_or_skip(request.param)


@pytest.fixture
def chosen_backends(request) -> tuple[str, ...]:
    """The backends this session runs for (see --backend), for tests that pick a backend themselves."""
    return selected_backends(request.config)


@pytest.fixture(scope="session")
def tokenizer_cache(tmp_path_factory):
    """One tokenizer cache directory ($MINIBERT_CACHE) for the session: each corpus is tokenized once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def script_env(tokenizer_cache):
    """The environment for child processes (support.child_env), with the session's tokenizer cache."""
    return child_env(tokenizer_cache)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small corpus file (support.write_corpus) for tiny training runs."""
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")
