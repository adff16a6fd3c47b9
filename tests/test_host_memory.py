"""The CPU backends reuse freed host memory (backends/_host_memory.py): after warm-up a training step makes
(almost) no page faults. Without the allocator setting, XLA's per-step temporary buffer (about 160 MB here) and
NumPy's larger temporaries were mapped afresh and faulted in every step, 4 KB at a time (tens of thousands of
faults per step). Counted in a child process, so that the setting is made at backend creation as in a run."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import ROOT, backend_or_skip, child_env

CHILD = r"""
import json, resource, sys
from bench.runners import MinibertRunner
runner = MinibertRunner(dict(backend=sys.argv[1], gpu=False, preset="mini", vocab=8192, dropout=0.1, task="mlm",
                             batch=8, seq=128, tf32=False))
for _ in range(3):
    runner.train_step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    runner.train_step()
print(json.dumps({"faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3}))
"""

MAX_FAULTS_PER_STEP = 2000     # 8 MB of 4 KB pages; the step's temporaries are ~20x that


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings: Linux only")
@pytest.mark.parametrize("name", ["numpy", "jax"])
def test_training_step_reuses_freed_host_memory(name):
    backend_or_skip(name)
    out = subprocess.run([sys.executable, "-c", CHILD, name], cwd=ROOT, env=child_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    faults = json.loads(out.stdout.strip().splitlines()[-1])["faults_per_step"]
    assert faults < MAX_FAULTS_PER_STEP, (
        f"{name}: {faults:.0f} page faults per training step after warm-up (at most {MAX_FAULTS_PER_STEP} "
        "expected): freed temporaries are being returned to the kernel and faulted in again")
