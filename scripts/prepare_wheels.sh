#!/usr/bin/env bash
# Fetch, here (where pip can reach an index), the wheels the GPU machine lacks, into .whl/ (ignored by git; the
# device tool carries it with `carry: [".whl"]`). scripts/gpu_check.sh installs them there with
# `pip install --no-index --find-links .whl`, never touching the network.
#
#   bash scripts/prepare_wheels.sh            # into .whl/ ; WHEEL_DIR=/some/dir to choose another folder
#
# The GPU image (see README, "GPU check") has numpy, jax (CUDA 13), cupy-cuda13x, torch (cu130), transformers,
# tokenizers, safetensors, tqdm, matplotlib, pytest and setuptools, but not array-api-compat (a dependency of the
# package) nor array-api-strict (the `strict` test backend). Both are pure Python, so the wheels fit its Python 3.12
# whatever machine downloads them; setuptools comes too, for installing the project (pip install -e . without
# build isolation) on a machine whose Python lacks it: gpu_check.sh installs it only there. Versions are pinned to
# the ones this project is tested with; every file must be a py3-none-any wheel, or the script fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST=${WHEEL_DIR:-.whl}
PY=${PYTHON:-python3}
PINS=("array-api-compat==1.16.0" "array-api-strict==2.6.1" "setuptools==80.9.0")
mkdir -p "$DEST"
# one version of each: an older wheel of the same project left in the folder would make two candidates
for pin in "${PINS[@]}"; do
    name=${pin%%==*}
    rm -f "$DEST/${name//-/_}"-*.whl
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation py --abi none \
    --platform any -d "$DEST" "${PINS[@]}"
status=0
for wheel in "$DEST"/*.whl; do
    case "$(basename "$wheel")" in
        *-py3-none-any.whl) echo "prepare_wheels: $wheel (pure Python)" ;;
        *) echo "prepare_wheels: $wheel is not a pure-Python (py3-none-any) wheel: it may not install there" >&2
           status=1 ;;
    esac
done
exit $status
