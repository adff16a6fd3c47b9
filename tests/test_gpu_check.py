"""scripts/gpu_check.sh --cpu: the GPU check rehearsed end to end on this machine, in a fresh virtual environment
without array-api-compat, array-api-strict or the project, which it installs from wheels only (no network)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

import pytest

from support import ROOT

WHEEL_NAMES = ("array_api_compat", "array_api_strict", "setuptools")


def _wheel_dir(tmp_path):
    """The repository's .whl/ when it holds the wheels; else a fresh folder filled by scripts/prepare_wheels.sh
    (the one step that needs a package index, as it does where the GPU check is prepared)."""
    carried = ROOT / ".whl"
    if all(list(carried.glob(f"{name}-*-py3-none-any.whl")) for name in WHEEL_NAMES):
        return carried
    wheels = tmp_path / "whl"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "prepare_wheels.sh")], cwd=ROOT,
                            env=dict(os.environ, WHEEL_DIR=str(wheels), PYTHON=sys.executable),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, "prepare_wheels.sh failed:\n" + result.stdout[-2000:] + result.stderr[-2000:]
    return wheels


def _setuptools_of(python) -> str:
    """`python`'s setuptools as "VERSION WHEEL" (WHEEL: whether the `wheel` package is importable), or "none"."""
    probe = ("import importlib.util as u\ntry:\n    import setuptools\nexcept ImportError:\n    print('none')\n"
             "else:\n    print(setuptools.__version__, u.find_spec('wheel') is not None)")
    return subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60).stdout.strip()


def _cannot_build_editable(setuptools: str) -> bool:
    """Whether a setuptools reported by `_setuptools_of` stops at "invalid command 'bdist_wheel'" (< 70.1 without
    wheel, or < 64) when pip builds an editable install without build isolation."""
    if setuptools == "none":
        return False
    version, has_wheel = setuptools.split()
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    return major_minor < (64, 0) or (major_minor < (70, 1) and has_wheel == "False")


@pytest.mark.slow
@pytest.mark.parametrize("host", ["venv", "bare-old-setuptools"])
def test_cpu_rehearsal_of_the_gpu_check(tmp_path, host):
    """The rehearsal from this venv's Python, and from the bare Python it was made from (the machine's python3),
    whose setuptools is too old to build an editable install: the script must install the carried one into a
    folder of its own, and take the libraries the bare Python lacks from this venv's site-packages."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, MINIBERT_WHEELS=str(_wheel_dir(tmp_path)),
               TMPDIR=str(tmp_path))
    if host == "bare-old-setuptools":
        bare = getattr(sys, "_base_executable", sys.executable)
        setuptools = _setuptools_of(bare)
        if bare == sys.executable or not _cannot_build_editable(setuptools):
            pytest.skip(f"the base Python {bare} has setuptools {setuptools!r}, which can build an editable "
                        "install: no old-setuptools machine to rehearse here")
        env.update(PYTHON=bare, GPU_CHECK_LIBRARY_SITE=sysconfig.get_paths()["purelib"])
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", str(out)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    if host == "bare-old-setuptools":
        assert "wheel (an editable install needs setuptools >= 70.1, or >= 64 with wheel): installing the " \
               "carried setuptools into this run's build folder" in log
        assert _setuptools_of(bare) == setuptools, "the machine's own setuptools was changed"
    else:
        assert "build tools: " in log
    # set-up: nothing the GPU image lacks was visible before the wheels went in, and the install left the
    # array libraries alone; without array-api-strict the whole suite collected and its tests skipped
    assert "proved absent before the install, as on the GPU image: array_api_compat, array_api_strict, minibert" in log
    assert "installed array-api-compat and the project; unchanged: " in log and "jax==" in log
    assert "without array-api-strict the suite collected and its tests skipped with the reason" in log
    # CuPy has no GPU here: reported, not run; JAX ran its tests on the CPU
    assert "SKIPPED cupy: " in log
    jax_line = next(line for line in log.splitlines() if line.strip().startswith("jax: ") and "passed" in line)
    assert int(jax_line.split()[1]) > 0 and " 0 failed" in jax_line
    assert "tests passed" in log and "benchmark done" in log and "training on jax done" in log
    assert "bf16 benchmark done" in log and "bf16 against fp32, torch (its own fp32 step" in log
    assert sorted(p.name for p in out.iterdir()) == ["benchmark-bf16.json", "benchmark.json", "benchmark.txt",
                                                     "gpu_check.log", "pytest.log", "train-jax.jsonl"]
    bf16 = json.loads((out / "benchmark-bf16.json").read_text())
    assert bf16["settings"]["precision"] == "bf16" and not bf16["results"]["tiny"]["errors"]
    assert {"jax", "jax-fp32", "torch", "torch-fp32"} <= set(bf16["results"]["tiny"]["libraries"])
    report = json.loads((out / "benchmark.json").read_text())
    tiny = report["results"]["tiny"]
    assert not tiny["errors"] and set(tiny["libraries"]) == {"jax", "pytorch-eager"}
    assert tiny["libraries"]["jax"]["train"]["median_ms"] > 0
    assert tiny["libraries"]["jax"]["info"]["device"].startswith("cpu")
    metrics = [json.loads(line) for line in (out / "train-jax.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert (out / "gpu_check.log").read_text().strip().endswith("train-jax.jsonl")
    assert not list(tmp_path.glob("minibert-gpu-check.*")), "the rehearsal's venv was left behind"
