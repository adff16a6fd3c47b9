"""One writer per run directory, and I/O failures explained (issue 15).

A second writer (train or resume) is refused before any work, naming the directory and the holder's pid, while
the first run ends bit-identical to an undisturbed one; a SIGKILLed holder leaves no lock behind; a save that
fails (a full disk) stops the run with exit status 1, leaves no partial file and `latest` unchanged, names the last
good checkpoint and the resume command, and that command then finishes the run bit-identically; an --out that
cannot be created or written is refused before any work; readers need no lock.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from minibert.storage import checkpoint as ckpt
from minibert.storage import fileio
from minibert.storage.fileio import DirectoryLock, DirectoryLockedError
from minibert.training.pretrain import train
from minibert.training.rundir import RunIOError
from minibert.training.settings import TrainSettings
from support import ROOT, assert_tree_close, finish, latest_tensors, records
from test_robustness import STEPS, trace, train_args
# fixture: an undisturbed run of train_args()
from test_robustness import straight as reference  # noqa: F401


def start(env, *args, wrapper=None, wrapper_args=()):
    """scripts/train.py in a child process, optionally run by `wrapper` (Python source that patches the
    checkpoint writer, then runs the script in the same process: the child's pid is the writer's)."""
    script = [str(ROOT / "scripts" / "train.py"), *map(str, args)]
    command = [sys.executable, *(["-c", wrapper, *map(str, wrapper_args)] if wrapper else []), *script]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# at its first checkpoint write, the writer waits until the file `gate` exists (touching gate.waiting first)
PAUSE = r'''
import os, runpy, sys, time
gate = sys.argv[1]
import minibert.storage.checkpoint as ck
real_save = ck.save_file
def save_file(tensors, filename, metadata=None):
    if not os.path.exists(gate):
        open(gate + ".waiting", "w").close()
        while not os.path.exists(gate):
            time.sleep(0.01)
    real_save(tensors, filename, metadata=metadata)
ck.save_file = save_file
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''

# the `at`-th checkpoint's tensor file fills the disk part-way, as safetensors reports it (the traceback)
DISK_FULL = r'''
import os, runpy, sys
from safetensors import SafetensorError
import minibert.storage.checkpoint as ck
at, count = int(sys.argv[1]), [0]
real_save = ck.save_file
def save_file(tensors, filename, metadata=None):
    count[0] += 1
    real_save(tensors, filename, metadata=metadata)
    if count[0] == at:
        os.truncate(filename, os.path.getsize(filename) // 3)
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")
ck.save_file = save_file
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def wait_for(condition, proc, what, timeout=180):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the writer ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def assert_same_run(reference_dir, run_dir):
    assert_tree_close(latest_tensors(run_dir), latest_tensors(reference_dir), rtol=0, atol=0)   # params and both Adam moments
    assert trace(reference_dir) == trace(run_dir)                                 # losses, lr, norms, evaluations


def test_a_second_writer_is_refused_and_the_first_run_is_untouched(script_env, corpus, reference, tmp_path):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    first = start(script_env, *train_args(corpus), "--out", run_dir, wrapper=PAUSE, wrapper_args=[gate])
    wait_for(lambda: gate.with_name("gate.waiting").exists(), first, "its first checkpoint write")
    seconds = {"train --out": start(script_env, *train_args(corpus), "--out", run_dir),
               "train --resume": start(script_env, "--resume", run_dir, "--no-progress")}
    results = {case: finish(proc) for case, proc in seconds.items()}
    gate.touch()
    code, out, err = finish(first)
    assert code == 0, err[-3000:]
    for case, (code, out, err) in results.items():
        assert code == 2, (case, code, err[-2000:])
        assert (f"error: run directory {run_dir} is in use by another process (pid {first.pid}), which holds "
                f"{run_dir / fileio.LOCK_FILE}") in err, (case, err[-2000:])
        assert "Traceback" not in err and out == "", (case, out, err[-2000:])
    assert_same_run(reference(), run_dir)
    assert [r["step"] for r in records(run_dir)] == list(range(1, STEPS + 1))      # no interleaved steps
    assert not (run_dir / fileio.LOCK_FILE).exists()                              # released at the end


def test_a_sigkilled_writer_does_not_block_resume(script_env, corpus, reference, tmp_path):
    run_dir = tmp_path / "run"
    first = start(script_env, *train_args(corpus), "--out", run_dir)
    wait_for(lambda: (run_dir / ckpt.LATEST).exists() and len(records(run_dir)) >= 2, first, "a checkpoint")
    first.send_signal(signal.SIGKILL)
    assert finish(first)[0] == -signal.SIGKILL
    assert (run_dir / fileio.LOCK_FILE).exists()          # the file stays; the lock died with the process
    code, out, err = finish(start(script_env, "--resume", run_dir, "--no-progress"))
    assert code == 0, err[-3000:]
    assert "resuming" in out
    assert_same_run(reference(), run_dir)
    assert not list(run_dir.glob(fileio.TEMPORARY_GLOB))


def test_a_full_disk_stops_the_run_with_the_last_good_checkpoint_and_the_resume_command(script_env, corpus, reference, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = finish(start(script_env, *train_args(corpus), "--out", run_dir, wrapper=DISK_FULL, wrapper_args=[4]))
    assert code == 1, err[-3000:]
    message = re.search(r"error: could not write checkpoint ckpt-00000004\.safetensors \(step 4\) in (\S+): "
                        r"\[Errno 28\] No space left on device: '\S+\.tmp-\d+'\. Training stopped; no partial file "
                        r"was left; the last complete checkpoint, (\S+) \(step 3\), is safe and `latest` names it\. "
                        r"Once the cause is fixed, resume with: (python scripts/train\.py --resume (\S+))\n", err)
    assert message, err[-3000:]
    assert "Traceback" not in err
    assert message.group(1) == message.group(4) == str(run_dir)
    assert message.group(2) == str(run_dir / "ckpt-00000003.safetensors")
    assert ckpt.latest_checkpoint(run_dir)[0].name == "ckpt-00000003.safetensors"        # `latest` unchanged
    assert not list(run_dir.glob(fileio.TEMPORARY_GLOB)) and not list(run_dir.glob("ckpt-00000004*"))
    assert not (run_dir / fileio.LOCK_FILE).exists()
    command = message.group(3).split()
    assert command[:2] == ["python", "scripts/train.py"]
    code, out, err = finish(start(script_env, *command[2:], "--no-progress"))        # the command it printed
    assert code == 0, err[-3000:]
    assert_same_run(reference(), run_dir)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_failed_sidecar_write_removes_that_checkpoint(script_env, corpus, tmp_path, monkeypatch):
    """The disk fills up after the tensors are in place, while writing the sidecar (a Python write): the step's
    files are removed again, `latest` stays on the previous checkpoint, and the error says so."""
    monkeypatch.setenv("MINIBERT_CACHE", script_env["MINIBERT_CACHE"])
    real_write = ckpt.atomic_write_bytes

    def atomic_write_bytes(path, data):
        if path.name == "ckpt-00000003.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", atomic_write_bytes)
    run_dir = tmp_path / "run"
    settings = TrainSettings(backend="numpy", config="tiny", vocab_size=1000, seq_len=32, batch_size=8, steps=5,
                             save_every=1, eval_every=100, eval_batches=1, progress=False,
                             corpus=(str(corpus),), out=str(run_dir))
    with pytest.raises(RunIOError, match=rf"could not write checkpoint ckpt-00000003\.safetensors \(step 3\) in "
                                         rf"{re.escape(str(run_dir))}: \[Errno 28\] No space left on device: .*"
                                         r"ckpt-00000002\.safetensors \(step 2\), is safe"):
        train(settings, log=lambda message: None)
    assert ckpt.latest_checkpoint(run_dir)[0].name == "ckpt-00000002.safetensors"
    assert not list(run_dir.glob("ckpt-00000003*")) and not list(run_dir.glob(fileio.TEMPORARY_GLOB))
    assert (run_dir / "loss.png").exists() and not (run_dir / fileio.LOCK_FILE).exists()


OUT_CASES = ["a path under a file", "a read-only directory", "a read-only file system (simulated)"]


@pytest.mark.parametrize("case", OUT_CASES)
def test_an_out_that_cannot_be_written_is_refused_before_any_work(script_env, corpus, tmp_path, monkeypatch, case):
    cache = tmp_path / "cache"                 # a fresh tokenizer cache: it stays absent if no work started
    if case == "a path under a file":
        (tmp_path / "a-file").write_text("")
        out, expected = tmp_path / "a-file" / "run", r"cannot be created: \[Errno 20\] Not a directory: "
    elif case == "a read-only directory":
        if os.geteuid() == 0:
            pytest.skip("running as root: permission bits do not stop root from writing (the other cases cover "
                        "a directory that cannot be written)")
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        out, expected = tmp_path / "ro" / "run", r"cannot be created: \[Errno 13\] Permission denied: "
    else:                                      # the lock file cannot be created, as on a read-only mount
        real_open = os.open

        def read_only(path, flags, *args, **kwargs):
            if str(path).endswith(fileio.LOCK_FILE):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(fileio.os, "open", read_only)
        monkeypatch.setenv("MINIBERT_CACHE", str(cache))
        out = tmp_path / "new" / "run"
        with pytest.raises(OSError, match=rf"--out {re.escape(str(out))} is not writable: \[Errno 30\] Read-only "
                                          r"file system: "):
            train(TrainSettings(config="tiny", corpus=(str(corpus),), out=str(out), progress=False))
        assert not (tmp_path / "new").exists() and not cache.exists()
        return
    proc = start(dict(script_env, MINIBERT_CACHE=str(cache)), *train_args(corpus), "--out", out)
    code, _, err = finish(proc)
    assert code == 2, err[-2000:]
    assert re.search(rf"error: --out {re.escape(str(out))} {expected}", err), err[-2000:]
    assert "Traceback" not in err and not cache.exists()


def test_readers_need_no_lock_and_exports_take_one(script_env, corpus, reference, tmp_path):
    run_dir = reference()
    with DirectoryLock(run_dir):               # as if the run were still training
        predict = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), str(run_dir),
                                  "the [MASK] function"], cwd=ROOT, env=script_env, capture_output=True, text=True)
        assert predict.returncode == 0 and "[MASK] #1:" in predict.stdout, predict.stderr[-2000:]
        export = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_hf.py"), str(run_dir),
                                 str(tmp_path / "hf")], cwd=ROOT, env=script_env, capture_output=True, text=True)
        assert export.returncode == 0 and (tmp_path / "hf" / "model.safetensors").exists(), export.stderr[-2000:]
    (tmp_path / "busy").mkdir()
    with DirectoryLock(tmp_path / "busy"):     # another writer is exporting into it
        export = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_hf.py"), str(run_dir),
                                 str(tmp_path / "busy")], cwd=ROOT, env=script_env, capture_output=True, text=True)
    assert export.returncode == 2, export.stderr[-2000:]
    assert (f"error: export directory {tmp_path / 'busy'} is in use by another process (pid {os.getpid()})"
            in export.stderr)
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == []


def test_directory_lock(tmp_path):
    with DirectoryLock(tmp_path, "run directory") as held:
        assert (tmp_path / fileio.LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(DirectoryLockedError, match=rf"run directory {re.escape(str(tmp_path))} is in use by "
                                                       rf"another process \(pid {os.getpid()}\)"):
            DirectoryLock(tmp_path, "run directory").acquire()     # a second open file: refused like a process
        assert held._fd is not None
    assert not (tmp_path / fileio.LOCK_FILE).exists()
    DirectoryLock(tmp_path).acquire().release()                   # free again


def test_stale_temporaries_of_live_writers_are_kept_in_shared_directories(tmp_path):
    mine, dead = tmp_path / f".vocab.txt.tmp-{os.getpid()}", tmp_path / ".vocab.txt.tmp-999999999"
    mine.write_text("x")
    dead.write_text("x")
    assert fileio.remove_stale_temporaries(tmp_path, locked=False) == [dead]
    assert mine.exists()
    assert fileio.remove_stale_temporaries(tmp_path) == [mine]     # a locked directory: every one is stale
    assert not mine.exists() and not dead.exists()
