"""Checkpoints: safetensors + JSON only (loading never executes code), written atomically, verified on load.

A run directory holds `ckpt-00000100.safetensors` files (parameters, AdamW moments) each with a sidecar
`ckpt-00000100.json` (step, size, sha256, batcher state), and a `latest` file naming the newest complete one.
Each file is written to a temporary name, flushed, fsynced and renamed, so a crash at any moment leaves either
the old file or the new one, never a partial file under a real name; `latest` is updated last.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from minibert.config import BertConfig

LATEST = "latest"
RUN_CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupted or does not fit the run."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file, fsync and rename (and fsync the directory)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.safetensors"


def save_checkpoint(run_dir, step: int, params: dict, state: dict, extra: dict, keep: int = 3) -> Path:
    """Write parameters and AdamW moments (host NumPy arrays) for `step`; keep the newest `keep` checkpoints."""
    run_dir = Path(run_dir)
    tensors = {f"params/{k}": np.ascontiguousarray(v) for k, v in params.items()}
    tensors.update({f"adam_m/{k}": np.ascontiguousarray(v) for k, v in state["m"].items()})
    tensors.update({f"adam_v/{k}": np.ascontiguousarray(v) for k, v in state["v"].items()})
    path = run_dir / checkpoint_name(step)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"step": str(step)})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    sidecar = {"file": path.name, "step": step, "size": path.stat().st_size, "sha256": _sha256(path), **extra}
    atomic_write_json(path.with_suffix(".json"), sidecar)
    atomic_write_bytes(run_dir / LATEST, (path.name + "\n").encode())
    for old in sorted(run_dir.glob("ckpt-*.safetensors"))[:-keep]:
        old.unlink()
        old.with_suffix(".json").unlink(missing_ok=True)
    return path


def verify_checkpoint(path) -> dict:
    """The sidecar of `path` after checking the file's size and sha256 against it; CheckpointError if not."""
    path = Path(path)
    sidecar_path = path.with_suffix(".json")
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    if not sidecar_path.exists():
        raise CheckpointError(f"checkpoint {path} has no sidecar {sidecar_path.name}: it was never completed")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint sidecar {sidecar_path} is not valid JSON ({exc})") from None
    size = path.stat().st_size
    if size != sidecar.get("size"):
        raise CheckpointError(f"checkpoint {path} is {size} bytes but was written as {sidecar.get('size')} "
                              "bytes: it is truncated or was overwritten")
    if _sha256(path) != sidecar.get("sha256"):
        raise CheckpointError(f"checkpoint {path} fails its sha256 check: the file is corrupted")
    return sidecar


def list_checkpoints(run_dir) -> list[Path]:
    """Checkpoint files in `run_dir`, newest first."""
    return sorted(Path(run_dir).glob("ckpt-*.safetensors"), reverse=True)


def latest_checkpoint(run_dir, fallback: bool = False) -> tuple[Path, dict]:
    """(path, sidecar) of the newest checkpoint that `latest` names, verified.

    With `fallback`, a corrupted newest checkpoint is skipped for the newest older one that verifies.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    latest_file = run_dir / LATEST
    if not latest_file.exists():
        raise CheckpointError(f"run directory {run_dir} has no checkpoint ('{LATEST}' file missing)")
    newest = run_dir / latest_file.read_text().strip()
    candidates = [newest] + [p for p in list_checkpoints(run_dir) if p != newest] if fallback else [newest]
    errors = []
    for path in candidates:
        try:
            return path, verify_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
    hint = "" if fallback else " (pass --resume-fallback to resume from the newest older checkpoint that verifies)"
    raise CheckpointError("; ".join(errors) + hint)


def load_checkpoint(path) -> tuple[dict, dict]:
    """(params, state) as host NumPy arrays from a verified checkpoint file."""
    tensors = load_file(str(path))
    params = {k[len("params/"):]: v for k, v in tensors.items() if k.startswith("params/")}
    state = {"m": {k[len("adam_m/"):]: v for k, v in tensors.items() if k.startswith("adam_m/")},
             "v": {k[len("adam_v/"):]: v for k, v in tensors.items() if k.startswith("adam_v/")}}
    return params, state


def read_run_config(run_dir) -> dict:
    path = Path(run_dir) / RUN_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a Mini-BERT run directory")
    return json.loads(path.read_text())


def load_latest_params(run_dir) -> tuple[BertConfig, dict]:
    """(model config, parameters as host NumPy arrays) of a run's newest verified checkpoint."""
    config = BertConfig.from_dict(read_run_config(run_dir)["model"])
    path, _ = latest_checkpoint(run_dir)
    params, _ = load_checkpoint(path)
    return config, params
