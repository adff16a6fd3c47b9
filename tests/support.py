"""What the tests share: array comparison (as SciPy's `xp_assert_close`), small batches, and child processes.

    from support import assert_close, assert_tree_close, random_batch, child_env, run_script

`assert_close` / `assert_tree_close` take any backend's arrays (NumPy, JAX, array-api-strict, PyTorch, CuPy) and
check names, shapes, dtypes and values, failing with the first mismatching entry and its largest errors.
Child processes (the scripts, the walkthroughs, `python -c` snippets) get `child_env()`: the package importable
from the repository root, unbuffered output, one BLAS thread, and no backend chosen by the caller's environment.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backends

ROOT = Path(__file__).resolve().parents[1]
ALL_BACKENDS = ("numpy", "jax", "strict", "torch", "cupy")
X64_CHILD_ENV = "MINIBERT_TEST_X64_CHILD"   # set in the child pytest that runs JAX's float64 checks


def backend_or_skip(name: str):
    try:
        return backends.get_backend(name)
    except backends.BackendUnavailableError as exc:
        pytest.skip(f"backend {name!r} unavailable here: {exc}")


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


# --- comparing arrays and dicts of arrays ----------------------------------------------------------------------

def to_host(x) -> np.ndarray:
    """Any backend's array (or a Python/NumPy scalar or list) as a NumPy array, without going through a backend."""
    import array_api_compat

    if isinstance(x, (np.ndarray, np.generic)) or not array_api_compat.is_array_api_obj(x):
        return np.asarray(x)
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_jax_array(x):
        return np.asarray(x)
    return np.from_dlpack(x)          # array-api-strict and other DLPack producers on the CPU


def _mismatch(name, actual, desired, rtol, atol, scaled_atol, check_dtype, equal_nan) -> str | None:
    """Why `actual` is not close to `desired` (None if it is): |actual - desired| <= atol + scaled_atol *
    max|desired| + rtol * |desired| elementwise, with equal shapes (and dtypes, if `check_dtype`)."""
    actual, desired = to_host(actual), to_host(desired)
    if actual.shape != desired.shape:
        return f"{name}: shape {actual.shape}, desired {desired.shape}"
    if check_dtype and actual.dtype != desired.dtype:
        return f"{name}: dtype {actual.dtype}, desired {desired.dtype}"
    a, d = actual.astype(np.float64), desired.astype(np.float64)
    tol = atol + scaled_atol * float(np.max(np.abs(d), initial=0.0, where=np.isfinite(d)))
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(a - d)
        close = (a == d) | (diff <= tol + rtol * np.abs(d))
        if equal_nan:
            close |= np.isnan(a) & np.isnan(d)
        if close.all():
            return None
        rel = np.where(d != 0, diff / np.abs(d), np.inf)
    bad = ~close
    worst = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(diff, nan=np.inf), -1.0)), a.shape)
    where = tuple(int(i) for i in worst)
    max_abs, max_rel = float(np.max(np.where(bad, diff, 0.0))), float(np.max(np.where(bad, rel, 0.0)))
    seen = f"actual {actual[worst].item()!r}, desired {desired[worst].item()!r}"
    return (f"{name}: {int(bad.sum())} of {a.size} values differ beyond atol={tol:.3g}, rtol={rtol:.3g}; among "
            f"them max abs error {max_abs:.3g} at {where} ({seen}); max rel error {max_rel:.3g}")


def assert_close(actual, desired, *, rtol, atol, scaled_atol=0.0, check_dtype=True, equal_nan=False, name="array"):
    """`actual` equals `desired` in shape and dtype, and in value within |actual - desired| <= atol +
    scaled_atol * max|desired| + rtol * |desired| (elementwise, computed in float64). `scaled_atol` is an absolute
    tolerance in units of the array's largest finite |entry|, for gradients whose entries span orders of magnitude.
    NaN equals NaN only with `equal_nan`."""
    message = _mismatch(name, actual, desired, rtol, atol, scaled_atol, check_dtype, equal_nan)
    assert message is None, message


def assert_tree_close(actual: dict, desired: dict, *, rtol, atol, scaled_atol=0.0, check_dtype=True,
                      equal_nan=False):
    """Two dicts of arrays (gradients, parameters, checkpoints) have the same names and every entry passes
    `assert_close` with these tolerances; the message names the first entry that does not, with its errors."""
    missing = [k for k in desired if k not in actual]
    unexpected = [k for k in actual if k not in desired]
    assert not missing and not unexpected, f"names differ: missing {missing}, unexpected {unexpected}"
    failures = [m for m in (_mismatch(k, actual[k], desired[k], rtol, atol, scaled_atol, check_dtype, equal_nan)
                            for k in desired) if m is not None]
    assert not failures, failures[0] + (f" (and {len(failures) - 1} more entries differ: "
                                        f"{[m.split(':')[0] for m in failures[1:]]})" if len(failures) > 1 else "")


# --- runs of the scripts in child processes -------------------------------------------------------------------------

TINY_RUN = ["--config", "tiny", "--vocab-size", "1000", "--seq-len", "32", "--batch-size", "8", "--no-progress",
            "--eval-batches", "2"]       # train.py flags for a run of a few seconds


def write_corpus(path, chars=60_000):
    """A small corpus (the first `chars` characters of Python's help topics): quick to tokenize, enough for tiny
    runs."""
    from pydoc_data.topics import topics

    path.write_text("\n\n".join(topics[name] for name in sorted(topics))[:chars], encoding="utf-8")
    return path


def child_env(cache=None, **extra) -> dict:
    """The environment for a child process: this repository first on PYTHONPATH (so the package imports whether or
    not it is installed), unbuffered output, a non-interactive Matplotlib, one BLAS thread unless set (the models
    are tiny, the test machine may have 2 busy cores), none of the caller's backend, x64 or walkthrough settings;
    then `MINIBERT_CACHE=cache` (the tokenizer cache) where given, and `extra`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    for name in ("MINIBERT_BACKEND", "JAX_ENABLE_X64", X64_CHILD_ENV, "MINIBERT_RUN_DIR", "MINIBERT_WALKTHROUGH_OUT"):
        env.pop(name, None)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    if cache is not None:
        env["MINIBERT_CACHE"] = str(cache)
    env.update(extra)
    return env


def python_command(path, *args) -> list[str]:
    """This interpreter running `path` (a script; or "-c" and code) with `args`."""
    return [sys.executable, str(path), *map(str, args)]


def run_script(env, script, *args, timeout=600) -> subprocess.CompletedProcess:
    """scripts/`script` with `args`, run to the end (cwd = the repository root); stdout and stderr as text."""
    return subprocess.run(python_command(ROOT / "scripts" / script, *args), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def start_script(env, script, *args) -> subprocess.Popen:
    """scripts/`script` with `args`, started in the background (see `start`)."""
    return start(env, ROOT / "scripts" / script, *args)


def start(env, *command) -> subprocess.Popen:
    """`python_command(*command)` started in the background, with stdout and stderr piped as text."""
    return subprocess.Popen(python_command(*command), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=300):
    """(returncode, stdout, stderr) of a started process, once it has ended."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def records(run_dir, kind="loss"):
    """The records of a run's metrics.jsonl that have `kind` ("loss": training steps, "eval_loss": evaluations);
    a line still being written is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    found = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in found if kind in r]


def latest_tensors(run_dir) -> dict:
    """Every tensor (params/, adam_m/, adam_v/) of the run's latest checkpoint, verified."""
    from safetensors.numpy import load_file

    from minibert.storage import checkpoint

    return load_file(str(checkpoint.latest_checkpoint(run_dir)[0]))


def load_script(name: str):
    """scripts/`name`.py imported as a module (to call its main() in this process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_picture(path, min_width: int = 200, min_height: int = 200) -> "np.ndarray":
    """`path` is a PNG at least `min_width` x `min_height` pixels that is not blank (its pixels vary: more than 1%
    of them differ from the most common colour); returns its pixels [H, W, channels]."""
    import matplotlib.image

    path = Path(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pixels = matplotlib.image.imread(str(path))
    height, width = pixels.shape[:2]
    assert width >= min_width and height >= min_height, f"{path} is {width}x{height}, smaller than expected"
    flat = pixels.reshape(height * width, -1)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    assert counts.max() < 0.99 * len(flat), f"{path} is blank: {counts.max() / len(flat):.1%} of it one colour"
    return pixels
