"""One fixture that yields each backend, skipping (with the reason) those that cannot run here."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import backends

ROOT = Path(__file__).resolve().parents[1]
ALL_BACKENDS = ("numpy", "jax", "strict", "torch", "cupy")
X64_CHILD_ENV = "MINIBERT_TEST_X64_CHILD"
TEST_BACKENDS_ENV = "MINIBERT_TEST_BACKENDS"


def selected(names):
    """`names` narrowed to the comma-separated list in $MINIBERT_TEST_BACKENDS (e.g. "cupy,jax" on a GPU
    machine), when it is set; every backend otherwise."""
    wanted = [n.strip() for n in os.environ.get(TEST_BACKENDS_ENV, "").split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(ALL_BACKENDS))
    if unknown:
        raise pytest.UsageError(f"{TEST_BACKENDS_ENV}: unknown backend(s) {', '.join(unknown)}; "
                                f"allowed: {', '.join(ALL_BACKENDS)}")
    return tuple(n for n in names if n in wanted) if wanted else tuple(names)


def backend_or_skip(name: str):
    try:
        return backends.get_backend(name)
    except backends.BackendUnavailableError as exc:
        pytest.skip(f"backend {name!r} unavailable here: {exc}")


@pytest.fixture(params=selected(ALL_BACKENDS))
def backend(request):
    """Each registered backend that is usable here (CuPy skips without a CUDA GPU)."""
    return backend_or_skip(request.param)


FLOAT64_BACKENDS = ("numpy", "strict", "torch", "cupy") + (("jax",) if os.environ.get(X64_CHILD_ENV) else ())


@pytest.fixture(params=selected(FLOAT64_BACKENDS))
def float64_backend(request):
    """Backends for float64 checks. JAX needs its sticky global x64 flag, so its float64 checks run in a
    child pytest process with JAX_ENABLE_X64=1 (tests/test_jax_x64.py); this process's flag is never set."""
    return backend_or_skip(request.param)


def random_batch(rng, config, batch=2, seq=7, pad=2, label_rate=0.4):
    """A small host batch with padding at the end of the last row, both token types and some labels."""
    input_ids = rng.integers(1, config.vocab_size, (batch, seq), dtype=np.int32)  # from 1: no attended [PAD] (id 0)
    attention_mask = np.ones((batch, seq), np.int32)
    attention_mask[-1, seq - pad:] = 0
    input_ids[-1, seq - pad:] = config.pad_token_id
    token_type_ids = np.zeros((batch, seq), np.int32)
    token_type_ids[:, seq // 2:] = 1
    labels = np.where(rng.random((batch, seq)) < label_rate, rng.integers(0, config.vocab_size, (batch, seq)), -100)
    labels[0, 1] = int(input_ids[0, 1])
    labels = np.where(attention_mask == 1, labels, -100).astype(np.int32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            "labels": labels}
