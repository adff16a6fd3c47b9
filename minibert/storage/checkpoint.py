"""Checkpoints: safetensors + JSON only (loading never executes code), written atomically, verified on load.

A run directory holds `ckpt-00000100.safetensors` files (parameters, AdamW moments) each with a sidecar
`ckpt-00000100.json` (step, size, sha256, batcher state), and a `latest` file naming the newest complete one.
Each file is written by `minibert.storage.fileio.atomic_write` (a temporary name, fsync, rename), so a crash at any
moment leaves either the old file or the new one, never a partial file under a real name; `latest` is updated last.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from minibert.config import BertConfig
from minibert.storage.fileio import atomic_write, atomic_write_bytes, json_bytes, os_error_from, sha256_file

LATEST = "latest"
RUN_CONFIG = "config.json"
CHECKPOINT_RE = re.compile(r"ckpt-(\d{8,})\.safetensors")
GROUPS = ("params", "adam_m", "adam_v")
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupted or does not fit the run."""


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.safetensors"


def checkpoint_step(path) -> int:
    """The step in a checkpoint file name (`ckpt-00000100.safetensors` -> 100)."""
    match = CHECKPOINT_RE.fullmatch(Path(path).name)
    if not match:
        raise CheckpointError(f"{path} is not a checkpoint file name (expected ckpt-<8 digits>.safetensors)")
    return int(match.group(1))


def save_checkpoint(run_dir, step: int, params: dict, state: dict, extra: dict, keep: int = 3) -> Path:
    """Write parameters and AdamW moments (host NumPy arrays) for `step`; keep the newest `keep` checkpoints.

    Order: tensors (temporary file, fsync, rename), then the sidecar (same), then `latest` (same), then pruning.
    A crash between two of these leaves `latest` on the previous complete checkpoint; an OSError (a full disk)
    also removes this step's files before it is raised. Checkpoints of later
    steps than `step` (left by a run that was resumed from an earlier one) are removed as well.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a positive int (checkpoints kept), got {keep!r}")
    run_dir = Path(run_dir)
    tensors = {f"params/{k}": np.ascontiguousarray(v) for k, v in params.items()}
    tensors.update({f"adam_m/{k}": np.ascontiguousarray(v) for k, v in state["m"].items()})
    tensors.update({f"adam_v/{k}": np.ascontiguousarray(v) for k, v in state["v"].items()})
    path = run_dir / checkpoint_name(step)

    def write_tensors(tmp):
        try:
            save_file(tensors, tmp, metadata={"step": str(step)})
        except SafetensorError as exc:       # safetensors reports OS errors (a full disk) as text
            raise os_error_from(exc, tmp) from None

    atomic_write(path, write_tensors)
    try:
        sidecar = {"file": path.name, "step": step, "size": path.stat().st_size, "sha256": sha256_file(path), **extra}
        atomic_write_bytes(path.with_suffix(".json"), json_bytes(sidecar))
        atomic_write_bytes(run_dir / LATEST, (path.name + "\n").encode())
    except OSError:          # e.g. the disk filled up: `latest` still names the previous checkpoint; drop this one
        path.with_suffix(".json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise
    older = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) < step]
    newer = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) > step]
    for old in newer + older[keep - 1:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return path


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what} {path} is not valid JSON ({exc})") from None


def verify_checkpoint(path) -> dict:
    """The sidecar of `path` after checking the file's size and sha256 against it; CheckpointError if not."""
    path = Path(path)
    sidecar_path = path.with_suffix(".json")
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    if not sidecar_path.exists():
        raise CheckpointError(f"checkpoint {path} has no sidecar {sidecar_path.name}: it was never completed")
    sidecar = _read_json(sidecar_path, "checkpoint sidecar")
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("step"), int) or "sha256" not in sidecar:
        raise CheckpointError(f"checkpoint sidecar {sidecar_path} lacks its step, size or sha256: "
                              "it was not written by Mini-BERT")
    if CHECKPOINT_RE.fullmatch(path.name) and sidecar["step"] != checkpoint_step(path):
        raise CheckpointError(f"checkpoint sidecar {sidecar_path} says step {sidecar['step']}, but the file "
                              f"name says step {checkpoint_step(path)}")
    size = path.stat().st_size
    if size != sidecar.get("size"):
        raise CheckpointError(f"checkpoint {path} is {size} bytes but was written as {sidecar.get('size')} "
                              "bytes: it is truncated or was overwritten")
    if sha256_file(path) != sidecar.get("sha256"):
        raise CheckpointError(f"checkpoint {path} fails its sha256 check: the file is corrupted")
    return sidecar


def list_checkpoints(run_dir) -> list[Path]:
    """Checkpoint files in `run_dir`, newest first."""
    return sorted((p for p in Path(run_dir).glob("ckpt-*.safetensors") if CHECKPOINT_RE.fullmatch(p.name)),
                  key=checkpoint_step, reverse=True)


def complete_checkpoints(run_dir) -> list[Path]:
    """Checkpoint files that have their sidecar (a file without one was never announced: a crash came between
    its rename and its sidecar's), newest first. They are not verified here."""
    return [p for p in list_checkpoints(run_dir) if p.with_suffix(".json").exists()]


def latest_checkpoint(run_dir, fallback: bool = False) -> tuple[Path, dict]:
    """(path, sidecar) of the checkpoint that `latest` names (without a `latest` file: the newest checkpoint that
    has a sidecar), verified (size and sha256).

    With `fallback`, a newest checkpoint that is missing, truncated or corrupted is skipped for the newest other
    one that verifies. Without it, any of these is a CheckpointError that names the file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    latest_file = run_dir / LATEST
    found = complete_checkpoints(run_dir)
    hint = "" if fallback else " (pass --resume-fallback to resume from the newest older checkpoint that verifies)"
    if latest_file.exists():
        name = latest_file.read_text(errors="replace").strip()
        if not CHECKPOINT_RE.fullmatch(name):
            if not fallback:
                raise CheckpointError(f"{latest_file} names {name!r}, which is not a checkpoint file name" + hint)
            candidates = found
        else:
            newest = run_dir / name
            candidates = [newest] + [p for p in found if p != newest] if fallback else [newest]
    elif not found:
        raise CheckpointError(f"run directory {run_dir} has no checkpoint yet (no '{LATEST}' file and no complete "
                              "ckpt-*.safetensors): it stopped before its first save. Start it again with "
                              f"--out {run_dir} (and the same settings)")
    else:      # a crash between a first checkpoint's sidecar and `latest` (or `latest` deleted): newest complete
        candidates = found if fallback else found[:1]
    errors = []
    for path in candidates:
        try:
            return path, verify_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
    if not errors:
        raise CheckpointError(f"run directory {run_dir} has no checkpoint file ({latest_file} names none)")
    raise CheckpointError("; ".join(errors) + hint)


def check_checkpoint_tensors(path, config: BertConfig, dtype: str | None = None,
                             groups: tuple[str, ...] = GROUPS, shapes: dict | None = None) -> None:
    """CheckpointError (naming the file and the tensor) unless the checkpoint at `path` holds, for each of
    `groups` (params, adam_m, adam_v), exactly the tensors of `shapes` (default `param_shapes(config)`; a task
    with more parameters, e.g. a classifier head, passes its own), with `dtype` where given. Reads the header only."""
    from minibert.nn.layout import param_shapes

    expected = param_shapes(config) if shapes is None else shapes
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read as safetensors ({exc})") from None
    wanted = {f"{group}/{name}": shape for group in groups for name, shape in expected.items()}
    missing = [k for k in wanted if k not in header]
    unknown = sorted(k for k in header if k not in wanted and (k.split("/")[0] in groups
                                                               or k.split("/")[0] not in GROUPS))
    detail = (f"the run's model config has {config.num_layers} layers, hidden_size={config.hidden_size}, "
              f"intermediate_size={config.intermediate_size}, vocab_size={config.vocab_size}, "
              f"max_position={config.max_position}")
    if missing or unknown:
        raise CheckpointError(f"checkpoint {path} does not fit the run's model config: missing tensors "
                              f"{missing[:4]}{' ...' if len(missing) > 4 else ''}, unexpected tensors "
                              f"{unknown[:4]}{' ...' if len(unknown) > 4 else ''} ({detail})")
    for key, shape in wanted.items():
        got_shape, got_dtype = header[key]
        if got_shape != shape:
            raise CheckpointError(f"checkpoint {path}: tensor {key} has shape {got_shape}, but the run's model "
                                  f"config needs {shape} ({detail})")
        got_dtype = _SAFETENSORS_DTYPES.get(got_dtype, got_dtype)
        if dtype is not None and got_dtype != dtype:
            raise CheckpointError(f"checkpoint {path}: tensor {key} is {got_dtype}, but the run trains in {dtype}")


def load_checkpoint(path, config: BertConfig | None = None, dtype: str | None = None) -> tuple[dict, dict]:
    """(params, state) as host NumPy arrays from a verified checkpoint file; with `config` (and `dtype`), first
    checked to fit it (see `check_checkpoint_tensors`)."""
    if config is not None:
        check_checkpoint_tensors(path, config, dtype)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read as safetensors ({exc})") from None
    params = {k[len("params/"):]: v for k, v in tensors.items() if k.startswith("params/")}
    state = {"m": {k[len("adam_m/"):]: v for k, v in tensors.items() if k.startswith("adam_m/")},
             "v": {k[len("adam_v/"):]: v for k, v in tensors.items() if k.startswith("adam_v/")}}
    return params, state


def read_run_config(run_dir) -> dict:
    """The run's config.json: {"model": BertConfig fields, "training": TrainSettings fields, ...}."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    path = run_dir / RUN_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a Mini-BERT run directory")
    saved = _read_json(path, "run config")
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise CheckpointError(f"{path} has no \"model\" section: {run_dir} is not a Mini-BERT run directory")
    return saved


def run_model_config(run_dir) -> BertConfig:
    """The BertConfig saved in a run's config.json (a CheckpointError naming the file if it is not valid)."""
    try:
        return BertConfig.from_dict(read_run_config(run_dir)["model"])
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{Path(run_dir) / RUN_CONFIG}: invalid model config ({exc})") from None


def load_latest_params(run_dir, fallback: bool = False) -> tuple[BertConfig, dict]:
    """(model config, parameters as host NumPy arrays) of a run's newest verified checkpoint, checked to fit
    the config."""
    config = run_model_config(run_dir)
    path, _ = latest_checkpoint(run_dir, fallback=fallback)
    check_checkpoint_tensors(path, config, groups=("params",))
    params, _ = load_checkpoint(path)
    return config, params
