#!/usr/bin/env bash
# GPU check for Mini-BERT, for a machine with an NVIDIA GPU, CuPy and JAX (no network needed):
#   1. which pieces work here (nvidia-smi, CuPy, JAX on the GPU, torch with CUDA, pytest);
#   2. the test suite on the GPU backends: pytest -k "cupy or jax" (tests are parametrized over backends in
#      tests/conftest.py; JAX picks the GPU as its default device, CuPy always runs there);
#   3. scripts/benchmark.py --gpu: cupy and jax against PyTorch CUDA (BertForMaskedLM) on presets mini and small.
# Whatever is missing is skipped with a message saying what and why; the rest still runs.
# Total time stays under 6 minutes (GPU_CHECK_BUDGET seconds, default 340): each part runs under `timeout`.
# Logs and JSON go to $OUT when set (else a fresh /tmp folder, printed at the start).
#
#   bash scripts/gpu_check.sh                 # PYTHON=/path/to/python to choose the interpreter
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET:-340}
if [ -n "${OUT:-}" ]; then
    LOGDIR=$OUT
else
    LOGDIR=$(mktemp -d /tmp/minibert-gpu-check.XXXXXX)
fi
mkdir -p "$LOGDIR" || { echo "gpu_check: cannot create log folder $LOGDIR"; exit 2; }
exec > >(tee -a "$LOGDIR/gpu_check.log") 2>&1

note() { echo "[gpu_check $((SECONDS - START))s] $*"; }
left() { echo $((BUDGET - (SECONDS - START))); }

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -c "" 2>/dev/null; then
    PY="$ROOT/.venv/bin/python"
else
    PY=$(command -v python3 || command -v python || true)
fi
if [ -z "$PY" ]; then
    note "FATAL: no python found (set PYTHON=/path/to/python)"
    exit 2
fi
# JAX would otherwise reserve 75% of the GPU at start and starve CuPy and torch in the same or other processes.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
unset MINIBERT_BACKEND JAX_PLATFORMS
note "logs in $LOGDIR; python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1))"

# --- 1. what works here ---------------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu --format=csv \
        | tee "$LOGDIR/nvidia-smi.txt" || note "nvidia-smi failed (driver problem?)"
else
    note "nvidia-smi not found: no NVIDIA driver tools on PATH (continuing; the libraries below decide)"
fi

PROBE=$(timeout 90 "$PY" - <<'EOF' 2>"$LOGDIR/probe.err"
def line(name, fn):
    try:
        print(f"{name}=ok {fn()}")
    except Exception as exc:  # report, never fail the probe
        print(f"{name}=missing {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

def cupy_probe():
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    float(cupy.arange(4, dtype=cupy.float32).sum())
    return f"cupy {cupy.__version__}, {n} device(s), CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}"

def jax_probe():
    import jax
    devices = jax.devices()
    if devices[0].platform == "cpu":
        raise RuntimeError(f"jax {jax.__version__} sees only the CPU (install jax[cuda12] for the GPU)")
    float(jax.numpy.arange(4.0).sum())
    return f"jax {jax.__version__} on {devices[0].device_kind} ({len(devices)} device(s))"

def torch_probe():
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} has no CUDA here (CPU build or no visible GPU)")
    import transformers
    return (f"torch {torch.__version__} CUDA {torch.version.cuda} on {torch.cuda.get_device_name()}, "
            f"transformers {transformers.__version__}")

def pytest_probe():
    import pytest
    return f"pytest {pytest.__version__}"

def minibert_probe():
    import array_api_compat, minibert, backends  # noqa: F401
    return "importable"

for name, fn in (("minibert", minibert_probe), ("pytest", pytest_probe), ("cupy", cupy_probe),
                 ("jax", jax_probe), ("torch", torch_probe)):
    line(name, fn)
EOF
)
PROBE_RC=$?
echo "$PROBE" | tee "$LOGDIR/probe.txt"
[ $PROBE_RC -eq 0 ] || note "library probe exited with $PROBE_RC (timeout 90 s?); see $LOGDIR/probe.err"
has() { echo "$PROBE" | grep -q "^$1=ok"; }

if ! has minibert; then
    note "FATAL: the minibert package does not import with $PY (install: pip install -e . ; or set PYTHON)"
    exit 2
fi
GPU_BACKENDS=()
if has cupy; then GPU_BACKENDS+=(cupy)
else note "CuPy unusable here, its tests and benchmark skipped: $(echo "$PROBE" | grep '^cupy=')"; fi
if has jax; then GPU_BACKENDS+=(jax)
else note "JAX on the GPU unusable here, its tests and benchmark skipped: $(echo "$PROBE" | grep '^jax=')"; fi

STATUS=0
# --- 2. tests on the GPU backends -----------------------------------------------------------------------------
if [ ${#GPU_BACKENDS[@]} -eq 0 ]; then
    note "no GPU backend works here: tests skipped"
    STATUS=1
elif ! has pytest; then
    note "pytest is not installed for $PY: tests skipped (pip install pytest)"
    STATUS=1
else
    K=""
    for b in "${GPU_BACKENDS[@]}"; do K="${K:+$K or }$b"; done
    # leave at least 170 s for the benchmark
    T=$(( $(left) - 170 )); [ $T -gt 200 ] && T=200
    if [ $T -lt 30 ]; then
        note "no time left for the tests"
        STATUS=1
    else
        note "tests: pytest -k \"$K\" (limit ${T}s)"
        timeout -s INT -k 10 "$T" "$PY" -m pytest tests -q -p no:cacheprovider -k "$K" -rs --durations=15 \
            --junitxml="$LOGDIR/pytest.xml" > "$LOGDIR/pytest.log" 2>&1
        RC=$?
        tail -n 40 "$LOGDIR/pytest.log"
        case $RC in
            0) note "tests passed" ;;
            5) note "no test selected by -k \"$K\"" ;;
            124|130|137) note "tests stopped by the ${T}s limit (partial log: $LOGDIR/pytest.log)"; STATUS=1 ;;
            *) note "tests FAILED (exit $RC); full log: $LOGDIR/pytest.log"; STATUS=1 ;;
        esac
    fi
fi

# --- 3. benchmark against PyTorch CUDA ----------------------------------------------------------------------
if [ ${#GPU_BACKENDS[@]} -eq 0 ]; then
    note "benchmark skipped: no GPU backend"
else
    BACKENDS=$(IFS=,; echo "${GPU_BACKENDS[*]}")
    if has torch; then
        REFS="eager,sdpa"
    else
        REFS=""
        note "PyTorch CUDA reference unavailable ($(echo "$PROBE" | grep '^torch=')): benchmarking without ratios"
    fi
    T=$(( $(left) - 5 ))
    if [ $T -lt 40 ]; then
        note "no time left for the benchmark"
        STATUS=1
    else
        note "benchmark: --gpu --backends $BACKENDS --presets mini small (limit ${T}s)"
        timeout -s INT -k 15 "$T" "$PY" scripts/benchmark.py --gpu --backends "$BACKENDS" --presets mini small \
            --reference-variants "$REFS" --repeats 20 --burst 5 --infer-repeats 10 --warmup 3 --timeout 150 \
            --json "$LOGDIR/benchmark.json" > "$LOGDIR/benchmark.txt" 2> >(tee "$LOGDIR/benchmark.err" >&2)
        RC=$?
        cat "$LOGDIR/benchmark.txt"
        case $RC in
            0) note "benchmark done: $LOGDIR/benchmark.json" ;;
            130|124|137) note "benchmark stopped by the ${T}s limit; finished presets are in $LOGDIR/benchmark.json"
                         tail -n 20 "$LOGDIR/benchmark.err"; STATUS=1 ;;
            *) note "benchmark exit $RC (a library failed?); stderr tail:"; tail -n 30 "$LOGDIR/benchmark.err"
               STATUS=1 ;;
        esac
    fi
fi

note "done in $((SECONDS - START)) s, status $STATUS; logs: $LOGDIR"
exit $STATUS
