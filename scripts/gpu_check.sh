#!/usr/bin/env bash
# The GPU check: one prepared run on a machine with an NVIDIA GPU and no network (the lent H200: Python 3.12 at
# python3 with numpy, jax (CUDA 13), cupy-cuda13x, torch (cu130), transformers, tokenizers, safetensors, tqdm,
# matplotlib, pytest; no array-api-compat, no array-api-strict).
#
#   bash scripts/prepare_wheels.sh               # once, where pip reaches an index: the missing wheels into .whl/
#   bash scripts/gpu_check.sh OUTDIR             # on the GPU machine (OUTDIR defaults to $OUT when that is set)
#   bash scripts/gpu_check.sh --cpu OUTDIR       # the rehearsal, on a machine without a GPU
#
# Steps, each under `timeout`, the whole under GPU_CHECK_BUDGET seconds (default 340, under 6 minutes):
#   1. install: array-api-compat from the wheels only (pip --no-index --find-links .whl), the carried setuptools
#      where the machine's cannot build an editable install (< 70.1 without wheel; into a folder of the run), then the project
#      (pip install --no-deps --no-build-isolation -e .): the machine's CUDA builds of jax, cupy and torch are
#      checked unchanged afterwards; the whole suite must then collect with array-api-strict still missing (its
#      tests skip with the reason), and array-api-strict is installed from the wheels too;
#   2. probe: what works here (nvidia-smi, CuPy, JAX on the GPU, torch with CUDA);
#   3. tests: pytest -k "cupy or jax" with MINIBERT_TEST_BACKENDS=cupy,jax (tests/conftest.py);
#   4. benchmark: scripts/benchmark.py --gpu, cupy and jax against PyTorch CUDA on presets mini, small and base;
#      then --precision bf16 on mini: cupy, jax and torch (CUDA) in bf16 beside their fp32 steps and PyTorch's autocast;
#   5. training: scripts/train.py with MINIBERT_BACKEND=cupy and =jax, 300 steps of the default run, side by side.
# A step that cannot run (CuPy missing, JAX without a GPU) is reported as skipped with the reason; the rest runs.
# OUTDIR receives at most 7 files (the device tool brings back 8): gpu_check.log (everything printed),
# pytest.log, benchmark.txt, benchmark.json, benchmark-bf16.json, train-<backend>.jsonl (each run's metrics.jsonl).
#
# --cpu rehearses the same script where there is no GPU: a fresh virtual environment holding the packages of the
# Python given by $PYTHON (default python3) except array-api-compat, array-api-strict and this project, which is
# checked before anything is installed; then the same steps with JAX on the CPU, CuPy reported as skipped, a few
# test files, a tiny benchmark and a few training steps (about 2 minutes on 2 cores). Where $PYTHON lacks the
# image's libraries (a bare system python3: no jax, torch, tokenizers), GPU_CHECK_LIBRARY_SITE names site-packages
# folders to take the missing ones from (default: this project's .venv when it has them all), never their build tools:
# $PYTHON's own setuptools is what gets rehearsed.
# Exit status: 0 when every step that could run passed, 1 when one failed or was cut short, 2 when set-up failed.
set -u -o pipefail

usage() { sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
MODE=gpu
OUTDIR=${OUT:-}
while [ $# -gt 0 ]; do
    case $1 in
        --cpu) MODE=cpu ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_check: unknown option $1 (allowed: --cpu, --help)" >&2; exit 2 ;;
        *) OUTDIR=$1 ;;
    esac
    shift
done
if [ -z "$OUTDIR" ]; then
    echo "gpu_check: give the output folder: bash scripts/gpu_check.sh [--cpu] OUTDIR" >&2
    exit 2
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd) || { echo "gpu_check: cannot create $OUTDIR" >&2; exit 2; }
WHEELS=${MINIBERT_WHEELS:-$ROOT/.whl}
HOST_PY=${PYTHON:-python3}
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET:-340}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/minibert-gpu-check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
: > "$OUTDIR/gpu_check.log"
exec > >(tee -a "$OUTDIR/gpu_check.log") 2>&1

note() { echo "[gpu_check $((SECONDS - START))s] $*"; }
left() { echo $((BUDGET - (SECONDS - START))); }
fatal() { note "FATAL: $*"; exit 2; }

# Nothing from the caller's environment may decide what is imported or where JAX runs.
unset PYTHONPATH MINIBERT_BACKEND MINIBERT_TEST_BACKENDS JAX_PLATFORMS JAX_ENABLE_X64
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PIP_DISABLE_PIP_VERSION_CHECK=1
# JAX would otherwise reserve 75% of the GPU at start and starve CuPy and torch in the same or other processes.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ "$MODE" = cpu ]; then
    export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
fi
note "mode $MODE; output in $OUTDIR; wheels from $WHEELS; budget ${BUDGET}s"

# --- 0. the Python to check with -------------------------------------------------------------------------------
if [ "$MODE" = cpu ]; then
    # A fresh venv that sees the host Python's packages through a folder of links to them, minus the packages the
    # GPU image lacks (array-api-compat, array-api-strict) and this project (an editable install, say).
    IMAGE_LIBS="numpy jax torch transformers tokenizers safetensors tqdm pytest"
    missing_libs() { "$1" -c "import importlib.util as u, sys
print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))" $IMAGE_LIBS 2>/dev/null || echo "$IMAGE_LIBS"; }
    MISSING=$(missing_libs "$HOST_PY")
    if [ -n "$MISSING" ] && [ -z "${GPU_CHECK_LIBRARY_SITE:-}" ]; then
        # a bare system Python: the image's libraries from the project's own venv, when it has them all
        if [ -x "$ROOT/.venv/bin/python" ] && [ -z "$(missing_libs "$ROOT/.venv/bin/python")" ]; then
            GPU_CHECK_LIBRARY_SITE=$("$ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
            export GPU_CHECK_LIBRARY_SITE
            note "$HOST_PY lacks $MISSING: taking them (not its build tools) from $GPU_CHECK_LIBRARY_SITE"
        else
            fatal "$HOST_PY lacks $MISSING, which the GPU image has: set GPU_CHECK_LIBRARY_SITE to a site-packages folder that holds them (e.g. a venv's), or PYTHON to a Python that has them"
        fi
    fi
    "$HOST_PY" -m venv --without-pip "$WORK/venv" || fatal "python -m venv failed for $HOST_PY"
    PY=$WORK/venv/bin/python
    "$HOST_PY" - "$WORK/host-site" "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" <<'EOF' \
        || fatal "could not build the rehearsal environment"
import os, re, sys, sysconfig
dest, venv_site = sys.argv[1], sys.argv[2]
hidden = re.compile(r"^(array_api_compat|array_api_strict|minibert|backends|bench|__editable__\w*minibert)([-_.].*)?$",
                    re.IGNORECASE)
build_tools = re.compile(r"^(setuptools|wheel|pip|pkg_resources|_distutils_hack|distutils-precedence)([-_.].*)?$",
                         re.IGNORECASE)
os.makedirs(dest)
left_out, linked = [], {}
host_sites = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
library_sites = [site for site in os.environ.get("GPU_CHECK_LIBRARY_SITE", "").split(os.pathsep) if site]
for site in host_sites + library_sites:
    for entry in sorted(os.listdir(site)):
        if hidden.match(entry) or entry.endswith(".pth") or entry == "__pycache__":
            left_out.append(entry)
        elif site in library_sites and build_tools.match(entry):
            continue                      # the build tools stay the host Python's: they are what is rehearsed
        elif not os.path.lexists(os.path.join(dest, entry)):
            os.symlink(os.path.join(site, entry), os.path.join(dest, entry))
            linked[site] = linked.get(site, 0) + 1
with open(os.path.join(venv_site, "rehearsal-host-site.pth"), "w") as f:
    f.write(dest + "\n")
print(f"rehearsal venv: {linked.get(host_sites[0], 0)} entries of {sys.executable}'s site-packages linked"
      + "".join(f", {linked.get(site, 0)} more from {site}" for site in library_sites)
      + f"; left out: {', '.join(sorted(set(left_out)))}")
EOF
    for module in array_api_compat array_api_strict minibert; do
        if (cd / && "$PY" -c "import $module" >/dev/null 2>&1); then
            fatal "$module is importable in the rehearsal venv before anything is installed: it would not prove the install"
        fi
    done
    note "proved absent before the install, as on the GPU image: array_api_compat, array_api_strict, minibert"
else
    PY=$HOST_PY
fi
note "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])' 2>&1))"

# --- 1. install ------------------------------------------------------------------------------------------------
ls "$WHEELS"/array_api_compat-*.whl "$WHEELS"/array_api_strict-*.whl >/dev/null 2>&1 \
    || fatal "no array-api-compat/array-api-strict wheels in $WHEELS: run 'bash scripts/prepare_wheels.sh' where pip reaches an index, and carry .whl"
pip_install() { timeout 120 "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --no-cache-dir "$@"; }
cuda_builds() { "$PY" -m pip list --format=freeze 2>/dev/null | grep -iE '^(numpy|jax|jaxlib|jax-cuda[0-9a-z-]*|cupy[0-9a-z-]*|torch)==' | sort; }
BEFORE=$(cuda_builds)
pip_install array-api-compat || fatal "pip could not install array-api-compat from $WHEELS"
# An editable install without build isolation builds with the machine's own setuptools, which can do that from
# 70.1 on, or from 64 with the `wheel` package (older ones stop at "invalid command 'bdist_wheel'"). Where the
# machine's cannot, the carried setuptools goes into a folder of this run (pip --target) that only the install
# command sees (PYTHONPATH): the machine's site-packages stay as they were.
BUILD_TOOLS=$("$PY" - <<'EOF'
import importlib.util
try:
    import setuptools
except ImportError:
    print("missing: no setuptools")
    raise SystemExit
version = tuple(int(part) for part in setuptools.__version__.split(".")[:2] if part.isdigit())
has_wheel = importlib.util.find_spec("wheel") is not None
if version >= (70, 1) or (version >= (64, 0) and has_wheel):
    print(f"ok: setuptools {setuptools.__version__}" + (" with wheel" if has_wheel else ""))
else:
    print(f"too old: setuptools {setuptools.__version__} {'with' if has_wheel else 'without'} wheel (an editable "
          "install needs setuptools >= 70.1, or >= 64 with wheel)")
EOF
)
BUILD_PATH=""
case $BUILD_TOOLS in
    ok:*) note "build tools: ${BUILD_TOOLS#ok: }, used as they are" ;;
    *)  note "build tools: ${BUILD_TOOLS#*: }: installing the carried setuptools into this run's build folder"
        pip_install --target "$WORK/build-tools" setuptools || fatal "pip could not install setuptools from $WHEELS"
        BUILD_PATH=$WORK/build-tools ;;
esac
PYTHONPATH=$BUILD_PATH pip_install --no-deps --no-build-isolation -e "$ROOT" || fatal "pip install --no-deps -e . failed"
AFTER=$(cuda_builds)
if [ "$BEFORE" != "$AFTER" ]; then
    fatal "the install changed the machine's array libraries: before [$BEFORE] after [$AFTER]"
fi
note "installed array-api-compat and the project; unchanged: $(echo "$AFTER" | tr '\n' ' ')"
COLLECT=$(cd "$ROOT" && timeout 120 "$PY" -m pytest tests --collect-only -q -p no:cacheprovider 2>&1)
RC=$?
echo "$COLLECT" | tail -n 3
[ $RC -eq 0 ] || { echo "$COLLECT" | tail -n 30; fatal "the suite does not collect without array-api-strict (exit $RC)"; }
STRICT=$(cd "$ROOT" && MINIBERT_TEST_BACKENDS=strict timeout 120 "$PY" -m pytest tests/test_backends.py -q -rs \
         -p no:cacheprovider -k strict 2>&1)
echo "$STRICT" | grep -m 2 "SKIPPED" || { echo "$STRICT" | tail -n 20; fatal "strict tests did not skip with a reason"; }
pip_install array-api-strict || fatal "pip could not install array-api-strict from $WHEELS"
note "without array-api-strict the suite collected and its tests skipped with the reason; now installed from the wheels"

# --- 2. probe --------------------------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv \
        || note "nvidia-smi failed (driver problem?)"
else
    note "nvidia-smi not found: no NVIDIA driver tools on PATH"
fi
PROBE=$(cd "$ROOT" && timeout 120 "$PY" - <<'EOF'
def line(name, fn):
    try:
        print(f"{name}=ok {fn()}")
    except Exception as exc:  # report, never fail the probe
        print(f"{name}=missing {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

def backend(name):
    import backends
    be = backends.get_backend(name)
    if not be.on_gpu:
        import os
        if os.environ.get("JAX_PLATFORMS") != "cpu":
            from backends.jax_backend import INSTALL_HINT
            raise RuntimeError(f"{name} runs on {be.device}, no GPU (for JAX on NVIDIA GPUs: {INSTALL_HINT})")
    return ", ".join(f"{k} {v}" for k, v in be.describe().items())

def torch_probe():
    import torch, transformers
    cuda = f"CUDA {torch.version.cuda} on {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "CPU only"
    return f"torch {torch.__version__} {cuda}, transformers {transformers.__version__}"

line("cupy", lambda: backend("cupy"))
line("jax", lambda: backend("jax"))
line("torch", torch_probe)
EOF
)
echo "$PROBE"
has() { echo "$PROBE" | grep -q "^$1=ok"; }
BACKENDS=()
for b in cupy jax; do
    if has "$b"; then BACKENDS+=("$b")
    else note "SKIPPED $b: $(echo "$PROBE" | grep "^$b=" | cut -d' ' -f2-)"; fi
done
STATUS=0
[ ${#BACKENDS[@]} -gt 0 ] || { note "no GPU backend works here: nothing to check"; exit 1; }
LIST=$(IFS=,; echo "${BACKENDS[*]}")
if [ "$MODE" = gpu ] && ! echo "$PROBE" | grep -q "^torch=ok .*CUDA"; then
    note "PyTorch has no CUDA here: the benchmark runs without the PyTorch reference"
    REFS=""
else
    # the all-positions head only (BertForMaskedLM), to stay in the time budget; add sdpa:labelled for the
    # same-work reference
    REFS=$([ "$MODE" = gpu ] && echo "eager:all,sdpa:all" || echo "eager:all")
fi

# --- 3. tests --------------------------------------------------------------------------------------------------
if [ "$MODE" = gpu ]; then
    TESTS=(tests)
    "$PY" -c "import xdist" 2>/dev/null && TESTS+=(-n 4)
else
    TESTS=(tests/test_backends.py tests/test_gpu_path.py)
fi
T=$(( $(left) - 200 )); [ $T -gt 110 ] && T=110
if [ $T -lt 20 ]; then
    note "no time left for the tests"; STATUS=1
else
    note "tests: MINIBERT_TEST_BACKENDS=cupy,jax pytest ${TESTS[*]} -k \"cupy or jax\" (limit ${T}s)"
    (cd "$ROOT" && MINIBERT_TEST_BACKENDS=cupy,jax timeout -s INT -k 10 "$T" "$PY" -m pytest "${TESTS[@]}" \
        -k "cupy or jax" -v -rs -p no:cacheprovider --durations=10) > "$OUTDIR/pytest.log" 2>&1
    RC=$?
    for b in cupy jax; do
        echo "  $b: $(grep -cE "\[([^]]*-)?$b(-[^]]*)?\]( |$).*PASSED" "$OUTDIR/pytest.log") passed," \
             "$(grep -cE "\[([^]]*-)?$b(-[^]]*)?\]( |$).*SKIPPED" "$OUTDIR/pytest.log") skipped," \
             "$(grep -cE "\[([^]]*-)?$b(-[^]]*)?\]( |$).*(FAILED|ERROR)" "$OUTDIR/pytest.log") failed"
    done
    grep -E "^(FAILED|ERROR) " "$OUTDIR/pytest.log" | head -n 20
    tail -n 1 "$OUTDIR/pytest.log"
    case $RC in
        0) note "tests passed" ;;
        124|130|137) note "tests stopped by the ${T}s limit (see pytest.log)"; STATUS=1 ;;
        *) note "tests FAILED (exit $RC); see pytest.log"; STATUS=1 ;;
    esac
fi

# --- 4. benchmark ----------------------------------------------------------------------------------------------
if [ "$MODE" = gpu ]; then
    BENCH=(--gpu --presets mini small base --repeats 10 --burst 5 --infer-repeats 5 --warmup 2 --max-warmup 4
           --gemm-repeats 3 --scatter-repeats 3 --pause 0.05 --timeout 120)
else
    BENCH=(--presets tiny --batch-size 4 --seq-len 32 --repeats 2 --infer-repeats 1 --warmup 1 --max-warmup 1
           --gemm-size 128 --gemm-repeats 1 --scatter-repeats 2 --pause 0 --burst-warmup 0 --timeout 120)
fi
# run_benchmark LABEL JSON RESERVE ARGS...: scripts/benchmark.py ARGS against the PyTorch references of $REFS, its
# report in OUTDIR/JSON and its text appended to benchmark.txt, limited to the time left minus RESERVE seconds
: > "$OUTDIR/benchmark.txt"
run_benchmark() {
    local label=$1 json=$2 limit=$(( $(left) - $3 ))
    shift 3
    if [ $limit -lt 30 ]; then
        note "no time left for the $label"; STATUS=1; return
    fi
    note "$label: $* --reference-variants '$REFS' (limit ${limit}s)"
    (cd "$ROOT" && timeout -s INT -k 15 "$limit" "$PY" scripts/benchmark.py "$@" --reference-variants "$REFS" \
        --json "$OUTDIR/$json") > "$WORK/${json%.json}.txt"
    local rc=$?
    tee -a "$OUTDIR/benchmark.txt" < "$WORK/${json%.json}.txt"
    case $rc in
        0) note "$label done: $json" ;;
        124|130|137) note "$label stopped by the ${limit}s limit; finished presets are in $json"; STATUS=1 ;;
        *) note "$label exit $rc (a library failed, or has no bf16? see benchmark.txt)"; STATUS=1 ;;
    esac
}
run_benchmark benchmark benchmark.json 135 "${BENCH[@]}" --backends "$LIST"   # 75 s kept for bf16, 60 for training
# bf16 mixed precision: each GPU backend's bf16 step beside its fp32 step, and torch's own (the Mini-BERT torch
# backend on CUDA, and PyTorch under torch.autocast), on one preset; the text goes after the fp32 tables
if [ "$MODE" = gpu ]; then
    BF16=(--gpu --presets mini --repeats 6 --burst 3 --infer-repeats 0 --warmup 2 --max-warmup 4 --gemm-repeats 2
          --scatter-repeats 1 --pause 0.05 --timeout 90)
    BF16_BACKENDS=$LIST$(echo "$PROBE" | grep -q "^torch=ok .*CUDA" && echo ",torch")
else
    BF16=("${BENCH[@]}")
    BF16_BACKENDS=$LIST$(echo "$PROBE" | grep -q "^torch=ok" && echo ",torch")
fi
run_benchmark "bf16 benchmark" benchmark-bf16.json 60 "${BF16[@]}" --precision bf16 --backends "$BF16_BACKENDS"

# --- 5. training -----------------------------------------------------------------------------------------------
if [ "$MODE" = gpu ]; then
    TRAIN=(--steps 300 --eval-every 100 --save-every 300)     # the default run's settings, 300 steps
else
    TRAIN=(--config tiny --vocab-size 1000 --seq-len 32 --batch-size 8 --steps 6 --eval-every 3 --save-every 6)
fi
T=$(( $(left) - 5 ))
if [ $T -lt 20 ]; then
    note "no time left for the training runs"; STATUS=1
else
    note "training: scripts/train.py ${TRAIN[*]} on ${BACKENDS[*]}, side by side (limit ${T}s)"
    PIDS=()
    for b in "${BACKENDS[@]}"; do
        (cd "$ROOT" && MINIBERT_BACKEND=$b timeout -s INT -k 10 "$T" "$PY" scripts/train.py "${TRAIN[@]}" \
            --no-progress --out "$WORK/train-$b" > "$WORK/train-$b.log" 2>&1; echo $? > "$WORK/train-$b.rc") &
        PIDS+=($!)
    done
    wait "${PIDS[@]}"       # not a bare `wait`: that would also wait for the `tee` of the log, forever
    for b in "${BACKENDS[@]}"; do
        RC=$(cat "$WORK/train-$b.rc")
        echo "--- train $b (exit $RC) ---"
        tail -n 15 "$WORK/train-$b.log"
        cp "$WORK/train-$b/metrics.jsonl" "$OUTDIR/train-$b.jsonl" 2>/dev/null
        if [ "$RC" = 0 ] && [ -s "$OUTDIR/train-$b.jsonl" ]; then
            note "training on $b done: train-$b.jsonl"
        else
            note "training on $b FAILED or was cut short (exit $RC)"; STATUS=1
        fi
    done
fi

note "done in $((SECONDS - START)) s, status $STATUS; files: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
exit $STATUS
