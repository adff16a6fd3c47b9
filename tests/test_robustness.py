"""Training loses nothing: SIGKILL at any moment (checkpoint writes included) then --resume ends bit-identical to an
uninterrupted run; SIGTERM writes a checkpoint and says how to resume; a truncated or corrupted checkpoint is
detected (naming the file) and --resume-fallback takes the previous one; a non-finite loss or gradient stops
training with the last good checkpoint kept, or is skipped and counted with --skip-nonfinite; no pickle anywhere.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

import backends
import minibert.training.pretrain
from minibert.storage import checkpoint as ckpt
from minibert.storage import fileio
from minibert.training.loop import NonFiniteError
from minibert.training.pretrain import train
from minibert.training.settings import TrainSettings
from support import (ROOT, TINY_RUN, assert_tree_close, child_env, finish, latest_tensors, records, start,
                     start_script)

STEPS = 16


def train_args(corpus, *extra):
    return [*TINY_RUN, "--corpus", corpus, "--steps", str(STEPS), "--save-every", "1", "--eval-every", "5",
            "--dropout", "0.1", "--keep-checkpoints", "3", *extra]


def start_train(env, *args, phase=None, at=0):
    """scripts/train.py in a child process; with `phase`, it SIGKILLs itself at its `at`-th checkpoint write:
    'tensors' with the temporary tensor file half written, 'sidecar' after the tensor file is renamed into place
    but before its sidecar, 'latest' after the sidecar but before `latest` moves."""
    if phase:
        return start(env, "-c", KILLER, phase, at, ROOT / "scripts" / "train.py", *args)
    return start_script(env, "train.py", *args)


KILLER = r'''
import os, runpy, signal, sys
phase, at = sys.argv[1], int(sys.argv[2])
import minibert.storage.checkpoint as ck
count = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if phase == "tensors":
    real_save = ck.save_file
    def save_file(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        count[0] += 1
        if count[0] == at:
            os.truncate(filename, os.path.getsize(filename) // 2)
            die()
    ck.save_file = save_file
else:
    real_write = ck.atomic_write_bytes
    def atomic_write_bytes(path, data):
        name = os.path.basename(str(path))
        if name == "latest" if phase == "latest" else (name.startswith("ckpt-") and name.endswith(".json")):
            count[0] += 1
            if count[0] == at:
                die()
        real_write(path, data)
    ck.atomic_write_bytes = atomic_write_bytes
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def trace(run_dir):
    """Everything in metrics.jsonl that must not depend on interruptions (not the timings)."""
    return ([(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in records(run_dir)],
            [{k: v for k, v in r.items()} for r in records(run_dir, "eval_loss")])


def assert_consistent(run_dir):
    """The invariants a crash must never break: `latest` (if any) names a checkpoint that verifies, and every
    checkpoint with a sidecar verifies (a checkpoint without one was never announced)."""
    if (run_dir / ckpt.LATEST).exists():
        ckpt.latest_checkpoint(run_dir)
    for path in ckpt.list_checkpoints(run_dir):
        if path.with_suffix(".json").exists():
            ckpt.verify_checkpoint(path)


@pytest.fixture(scope="module")
def straight(script_env, corpus, tmp_path_factory):
    """An uninterrupted run, started in the background; `straight()` waits for it and returns its directory."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    proc = start_train(script_env, *train_args(corpus), "--out", run_dir)

    def wait():
        if proc.returncode is None:
            code, _, err = finish(proc)
            assert code == 0, err[-3000:]
        return run_dir
    yield wait
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# --- (a) SIGKILL at random moments, checkpoint writes included; resume; bit-identical -----------------------------

def test_sigkill_at_any_moment_then_resume_is_bit_identical(script_env, corpus, straight, tmp_path):
    rng = np.random.default_rng(20261127)
    run_dir = tmp_path / "run"
    # the first attack kills the first checkpoint write of a fresh run: nothing to resume, the run starts over
    plan = [("tensors", 1), ("kill", None), ("sidecar", int(rng.integers(1, 3))), ("kill", None),
            ("latest", int(rng.integers(1, 3))), ("tensors", int(rng.integers(2, 4))), ("kill", None)]
    fresh = True
    log = []
    for phase, at in plan:
        args = train_args(corpus, "--out", run_dir) if fresh else ["--resume", run_dir, "--no-progress"]
        before = ckpt.latest_checkpoint(run_dir)[1]["step"] if not fresh else 0
        if phase == "kill":
            proc = start_train(script_env, *args)
            target, reset = before + int(rng.integers(1, 4)), False
            while proc.poll() is None:         # wait for step `target` of this process (not a stale record)
                top = max((r["step"] for r in records(run_dir)), default=0)
                reset = reset or top <= before
                if reset and top >= target:
                    break
                time.sleep(0.005)
            time.sleep(float(rng.uniform(0.0, 0.06)))      # anywhere in the next step or checkpoint write
            proc.send_signal(signal.SIGKILL)
        else:
            proc = start_train(script_env, *args, phase=phase, at=at)
        code, out, err = finish(proc)
        assert code == -signal.SIGKILL, (phase, code, err[-3000:])
        assert_consistent(run_dir)
        fresh = not (run_dir / ckpt.LATEST).exists() and not ckpt.complete_checkpoints(run_dir)
        log.append((phase, at, before, None if fresh else ckpt.latest_checkpoint(run_dir)[1]["step"],
                    len(list(run_dir.glob(fileio.TEMPORARY_GLOB)))))
        if fresh:      # stopped before its first checkpoint: --resume says so, and changes nothing
            code, _, err = finish(start_train(script_env, "--resume", run_dir, "--no-progress"))
            assert code == 2 and "has no checkpoint yet" in err and f"--out {run_dir}" in err, err[-2000:]
    assert log[0][3] is None and log[0][4] == 1, log     # killed in the first write: a temporary file, no checkpoint
    assert log[-1][3] is not None and log[-1][3] < STEPS, log
    code, out, err = finish(start_train(script_env, "--resume", run_dir, "--no-progress"))
    assert code == 0, err[-3000:]
    assert "resuming" in out
    assert not list(run_dir.glob(fileio.TEMPORARY_GLOB)), "temporary files were left behind"
    assert len(ckpt.list_checkpoints(run_dir)) == 3
    reference = straight()
    # params and both Adam moments, bit for bit
    assert_tree_close(latest_tensors(run_dir), latest_tensors(reference), rtol=0, atol=0)
    assert trace(reference) == trace(run_dir), log


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "data.bin"
    ckpt.atomic_write_bytes(target, b"old")

    def refuse(src, dst):
        raise OSError(f"simulated crash before renaming {src}")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"

    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    state = {"m": {"w": np.zeros((2, 3), np.float32)}, "v": {"w": np.ones((2, 3), np.float32)}}
    monkeypatch.undo()
    ckpt.save_checkpoint(tmp_path, 1, params, state, {})
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.save_checkpoint(tmp_path, 2, {"w": params["w"] + 1}, state, {})
    monkeypatch.undo()
    path, sidecar = ckpt.latest_checkpoint(tmp_path)
    assert path.name == "ckpt-00000001.safetensors" and sidecar["step"] == 1
    assert not (tmp_path / "ckpt-00000002.safetensors").exists()
    assert np.array_equal(ckpt.load_checkpoint(path)[0]["w"], params["w"])
    assert not list(tmp_path.glob(fileio.TEMPORARY_GLOB))    # a failed write removes its temporary file


def test_atomic_write_killed_mid_write_leaves_the_old_file(tmp_path):
    """A child writes 32 MB through atomic_write_bytes and is SIGKILLed before the data is durable and renamed."""
    target = tmp_path / "big.bin"
    target.write_bytes(b"old contents")
    child = start(child_env(), "-c", r'''
import os, sys, time
from minibert.storage import fileio
def slow_fsync(fd):
    print("writing", flush=True)
    time.sleep(60)
os.fsync = slow_fsync
fileio.atomic_write_bytes(sys.argv[1], os.urandom(32 << 20))
''', target)
    assert child.stdout.readline().strip() == "writing"
    child.kill()
    finish(child)
    assert target.read_bytes() == b"old contents"
    leftovers = list(tmp_path.glob(fileio.TEMPORARY_GLOB))
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".big.bin.tmp-")


# --- (b) SIGTERM: a checkpoint, a clean exit, and how to resume ------------------------------------------------------

def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(script_env, corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_train(script_env, *train_args(corpus, "--save-every", "1000", "--steps", "1000", "--out", run_dir))
    while proc.poll() is None and len(records(run_dir)) < 2:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before two steps"
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    message = re.search(r"SIGTERM received: saved (\S+) at step (\d+)\. Resume with: python scripts/train.py "
                        r"--resume (\S+)", out + err)
    assert message, out + err
    path, sidecar = ckpt.latest_checkpoint(run_dir)
    assert str(path) == message.group(1) and message.group(3) == str(run_dir)
    assert sidecar["step"] == int(message.group(2)) == records(run_dir)[-1]["step"] < 1000   # no step lost
    assert "Traceback" not in err


# --- (c) a truncated or corrupted checkpoint --------------------------------------------------------------------------

def test_corrupted_latest_checkpoint_is_named_and_fallback_resumes_from_the_previous(script_env, straight, tmp_path):
    reference = straight()
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    newest = run_dir / "ckpt-00000016.safetensors"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 8])
    newest.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}

    code, out, err = finish(start_train(script_env, "--resume", run_dir, "--no-progress"))
    assert code == 2, err[-3000:]
    assert f"checkpoint {newest} fails its sha256 check: the file is corrupted" in err
    assert "--resume-fallback" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before      # refused: nothing touched

    code, out, err = finish(start_train(script_env, "--resume", run_dir, "--resume-fallback", "--no-progress"))
    assert code == 0, err[-3000:]
    assert "from ckpt-00000015.safetensors (step 15)" in out
    # step 16 redone, bit-identical
    assert_tree_close(latest_tensors(run_dir), latest_tensors(reference), rtol=0, atol=0)
    assert trace(reference) == trace(run_dir)


def damaged_copy(reference, tmp_path, name):
    run_dir = tmp_path / name
    shutil.copytree(reference, run_dir)
    return run_dir, run_dir / "ckpt-00000016.safetensors"


def test_truncated_missing_or_unannounced_checkpoints(straight, tmp_path):
    reference = straight()
    run_dir, newest = damaged_copy(reference, tmp_path, "truncated")
    size = newest.stat().st_size
    os.truncate(newest, size - 100)
    with pytest.raises(ckpt.CheckpointError, match=rf"checkpoint {re.escape(str(newest))} is {size - 100} bytes but "
                                                   rf"was written as {size} bytes: it is truncated.*--resume-fallback"):
        ckpt.latest_checkpoint(run_dir)
    assert ckpt.latest_checkpoint(run_dir, fallback=True)[0].name == "ckpt-00000015.safetensors"

    run_dir, newest = damaged_copy(reference, tmp_path, "deleted")           # `latest` names a deleted file
    newest.unlink()
    with pytest.raises(ckpt.CheckpointError, match=rf"checkpoint file {re.escape(str(newest))} does not exist"):
        ckpt.latest_checkpoint(run_dir)
    assert ckpt.latest_checkpoint(run_dir, fallback=True)[0].name == "ckpt-00000015.safetensors"

    run_dir, newest = damaged_copy(reference, tmp_path, "bad_sidecar")
    newest.with_suffix(".json").write_text('{"step": 16, "si')
    with pytest.raises(ckpt.CheckpointError, match=r"sidecar .*ckpt-00000016\.json is not valid JSON"):
        ckpt.latest_checkpoint(run_dir)

    run_dir, newest = damaged_copy(reference, tmp_path, "no_latest")       # `latest` lost: the newest complete one
    (run_dir / "latest").unlink()
    assert ckpt.latest_checkpoint(run_dir)[0] == newest
    newest.with_suffix(".json").unlink()                                   # never announced: not a checkpoint
    assert ckpt.latest_checkpoint(run_dir)[0].name == "ckpt-00000015.safetensors"

    run_dir, newest = damaged_copy(reference, tmp_path, "all_bad")
    for path in ckpt.list_checkpoints(run_dir):
        os.truncate(path, 10)
    with pytest.raises(ckpt.CheckpointError, match=r"ckpt-00000016.*truncated.*ckpt-00000015.*truncated.*"
                                                   r"ckpt-00000014.*truncated"):
        ckpt.latest_checkpoint(run_dir, fallback=True)


# --- (d) non-finite loss or gradient ---------------------------------------------------------------------------------

@pytest.fixture
def poisoned_step(monkeypatch, script_env):
    """Training in this process, where the gradient of chosen forward_backward calls (1-based) is made inf, and
    chosen calls send this process SIGINT (as Ctrl-C would). The numpy backend's rows stay on one thread here, so
    that call n is step n (with row threads every block of a batch is a call)."""
    monkeypatch.setenv("MINIBERT_CACHE", script_env["MINIBERT_CACHE"])
    monkeypatch.setattr(backends.get_backend("numpy"), "row_threads", 1)
    real = minibert.training.pretrain.forward_backward
    plan = {"calls": 0, "poison": set(), "interrupt": set()}

    def forward_backward(params, arrays, key=None, normaliser=None, *, config, backend):
        plan["calls"] += 1
        loss, grads = real(params, arrays, key, normaliser, config=config, backend=backend)
        if plan["calls"] in plan["poison"]:
            grads["head.decoder_bias"] = grads["head.decoder_bias"] * np.inf
        if plan["calls"] in plan["interrupt"]:
            os.kill(os.getpid(), signal.SIGINT)
        return loss, grads

    monkeypatch.setattr(minibert.training.pretrain, "forward_backward", forward_backward)
    return plan


def nan_settings(corpus, run_dir, **overrides):
    return TrainSettings(**{**dict(backend="numpy", config="tiny", vocab_size=1000, seq_len=32, batch_size=8, steps=5, save_every=1,
                                   eval_every=100, eval_batches=1, dropout=0.0, keep_checkpoints=10, progress=False,
                                   corpus=(str(corpus),), out=str(run_dir)), **overrides})


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nonfinite_gradient_stops_and_keeps_the_last_good_checkpoint(corpus, poisoned_step, tmp_path):
    poisoned_step["poison"] = {3}
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"non-finite gradient norm at step 3 \(loss=[\d.]+, grad_norm=(inf|nan)\)"
                                             r": training stopped without saving this step; the last good checkpoint, "
                                             r".*ckpt-00000002\.safetensors \(step 2\), is kept; continue from it with: "
                                             r"python scripts/train.py --resume .* --skip-nonfinite"):
        train(nan_settings(corpus, run_dir))
    path, sidecar = ckpt.latest_checkpoint(run_dir)
    assert path.name == "ckpt-00000002.safetensors" and sidecar["step"] == 2
    assert not (run_dir / "ckpt-00000003.safetensors").exists()
    assert all(np.isfinite(v).all() for v in load_file(str(path)).values())


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_skip_nonfinite_skips_the_step_counts_it_and_keeps_the_count_on_resume(corpus, poisoned_step, tmp_path):
    poisoned_step["poison"], poisoned_step["interrupt"] = {3}, {4}
    run_dir = tmp_path / "run"
    result = train(nan_settings(corpus, run_dir, skip_nonfinite=True))
    assert result["interrupted"] == "SIGINT" and result["step"] == 4
    before, skipped = (load_file(str(run_dir / f"ckpt-0000000{s}.safetensors")) for s in (2, 3))
    assert_tree_close(skipped, before, rtol=0, atol=0)     # params and Adam moments unchanged by the skipped step
    poisoned_step["poison"], poisoned_step["interrupt"] = set(), set()
    result = train(TrainSettings.resumed(run_dir, progress=False))
    assert result["step"] == 5
    steps = {r["step"]: r for r in records(run_dir)}
    assert [steps[s]["skipped_nonfinite"] for s in range(1, 6)] == [0, 0, 1, 1, 1]
    assert not np.isfinite(steps[3]["grad_norm"]) and np.isfinite(steps[4]["grad_norm"])
    assert ckpt.latest_checkpoint(run_dir)[1]["skipped_nonfinite"] == 1
    again = train(TrainSettings.resumed(run_dir, progress=False), log=lambda message: None)
    assert again == {"step": 5, "run_dir": str(run_dir), "complete": True}     # a finished run: nothing redone
    assert len(records(run_dir, "eval_loss")) == 1


def test_a_second_signal_stops_at_once():
    from minibert.training.loop import StopRequested

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopRequested() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="SIGTERM received twice"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers    # restored


# --- safetensors and JSON only ----------------------------------------------------------------------------------------

UNSAFE = re.compile(r"^\s*(import|from)\s+(c?pickle|dill|joblib|shelve|marshal)\b|\b(c?pickle|dill|joblib|marshal)\."
                    r"(loads?|dumps?|Unpickler)\b|\btorch\.(load|save)\s*\(|allow_pickle\s*=\s*True|"
                    r"\b(np|numpy)\.(load|save|savez\w*)\s*\(|weights_only\s*=\s*False", re.MULTILINE)


CONVERTER = ROOT / "scripts" / "convert_bin.py"      # the one place a pickle is read: tensors only, on request


def test_no_pickle_anywhere():
    sources = [p for folder in ("minibert", "backends", "scripts") for p in (ROOT / folder).rglob("*.py")]
    assert len(sources) > 10 and CONVERTER in sources
    found = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p in sources if p != CONVERTER
             for m in UNSAFE.finditer(p.read_text())]
    assert found == []
    # the converter (scripts/convert_bin.py, run by the user) loads .bin files with weights_only=True only
    loads = re.findall(r"torch\.load\(([^)]*)\)", CONVERTER.read_text())
    assert loads and all("weights_only=True" in call for call in loads)
    assert [m.group(0) for m in UNSAFE.finditer(CONVERTER.read_text())] == ["torch.load("] * len(loads)
    assert UNSAFE.search("x = np.load(path, allow_pickle=True)") and UNSAFE.search("import pickle")


def test_a_run_directory_holds_only_safetensors_json_and_text(straight):
    run_dir = straight()
    allowed = re.compile(r"ckpt-\d{8}\.(safetensors|json)|config\.json|vocab\.txt|metrics\.jsonl|latest|loss\.png")
    assert all(allowed.fullmatch(p.name) for p in run_dir.iterdir()), sorted(p.name for p in run_dir.iterdir())
