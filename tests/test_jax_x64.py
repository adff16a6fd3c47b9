"""JAX's float64 checks, run in a child process so the global x64 flag never leaks into other tests."""
import re
import subprocess
import sys

import pytest

from support import ROOT, X64_CHILD_ENV, backend_or_skip, child_env

pytestmark = pytest.mark.slow


def test_float64_checks_pass_on_jax_with_x64(chosen_backends):
    if "jax" not in chosen_backends:
        pytest.skip("jax is not among the backends chosen by --backend / $MINIBERT_TEST_BACKENDS")
    backend_or_skip("jax")
    env = child_env(JAX_ENABLE_X64="1", **{X64_CHILD_ENV: "1"})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "float64 and jax",
         "tests/test_gradcheck.py", "tests/test_heads.py", "tests/test_accumulation.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 5, summary
    assert "failed" not in summary and "skipped" not in summary, summary
