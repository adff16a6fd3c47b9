"""The CPU backends reuse freed host memory (`keep_freed_memory` in backends/_host_memory.py): after warm-up a
training step, its rows on every core, makes (almost) no page faults. Without the allocator setting NumPy's
temporaries of a few MB were mapped afresh and faulted in every step, 4 KB at a time (tens of thousands of faults
per step). Counted in a child process with both cores' row threads, as in a run."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import ROOT, backend_or_skip, child_env

CHILD = r"""
import json, resource, sys
from bench.runners import MinibertRunner
runner = MinibertRunner(dict(backend=sys.argv[1], gpu=False, preset="mini", vocab=8192, dropout=0.1, task="mlm", precision="fp32",
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
@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_cpu_training_step_reuses_freed_host_memory(name):
    """numpy's temporaries and torch's (JAX's one per-step buffer is larger than the threshold: see
    backends/_host_memory.py for why it is left to the kernel)."""
    backend_or_skip(name)
    threads = {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}      # row threads where there are 2 cores
    out = subprocess.run([sys.executable, "-c", CHILD, name], cwd=ROOT, env=child_env(**threads),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    faults = json.loads(out.stdout.strip().splitlines()[-1])["faults_per_step"]
    assert faults < MAX_FAULTS_PER_STEP, (
        f"{name}: {faults:.0f} page faults per training step after warm-up (at most {MAX_FAULTS_PER_STEP} "
        "expected): freed temporaries are being returned to the kernel and faulted in again")
