"""scripts/gpu_check.sh --cpu: the GPU check rehearsed end to end on this machine, in a fresh virtual environment
without array-api-compat, array-api-strict or the project, which it installs from wheels only (no network)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

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


@pytest.mark.slow
def test_cpu_rehearsal_of_the_gpu_check(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, MINIBERT_WHEELS=str(_wheel_dir(tmp_path)),
               TMPDIR=str(tmp_path))
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", str(out)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
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
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.json", "benchmark.txt", "gpu_check.log",
                                                     "pytest.log", "train-jax.jsonl"]
    report = json.loads((out / "benchmark.json").read_text())
    tiny = report["results"]["tiny"]
    assert not tiny["errors"] and set(tiny["libraries"]) == {"jax", "pytorch-eager"}
    assert tiny["libraries"]["jax"]["train"]["median_ms"] > 0
    assert tiny["libraries"]["jax"]["info"]["device"].startswith("cpu")
    metrics = [json.loads(line) for line in (out / "train-jax.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert (out / "gpu_check.log").read_text().strip().endswith("train-jax.jsonl")
    assert not list(tmp_path.glob("minibert-gpu-check.*")), "the rehearsal's venv was left behind"
