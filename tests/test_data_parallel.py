"""Data-parallel training (JAX sharding): N devices and P processes give the result of one device; bad launches fail
clearly before any work. Virtual CPU devices must be asked for before JAX starts, so every multi-device check runs
in a child process (a child pytest for the array-level checks, scripts/train.py for the end-to-end ones)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from functools import partial

import numpy as np
import pytest
from safetensors.numpy import load_file

import backends
from support import ROOT, TINY_RUN, backend_or_skip, child_env, finish, random_batch, write_corpus
from minibert import BertConfig, init_params
from minibert.data.batch import check_batch, device_batches, padded_count
from minibert.nn.model import forward_backward, label_count
from minibert.nn.optim import AdamWConfig, init_state
from minibert.nn.step import accumulate_gradients, make_train_step

DEVICES_CHILD_ENV = "MINIBERT_TEST_DEVICES_CHILD"
IN_CHILD = bool(os.environ.get(DEVICES_CHILD_ENV))
SMALL = BertConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_position=12)
TINY = [*TINY_RUN, "--steps", "4", "--save-every", "2", "--eval-every", "2", "--dropout", "0.1",
        "--backend", "jax"]
child_only = pytest.mark.skipif(not IN_CHILD, reason="runs in the 4-device child (test_four_device_checks_pass)")


# --- array level, in a child with 4 virtual CPU devices ----------------------------------------------------------

def two_micro_batches():
    """Two 8-row micro-batches with different label counts (and different counts on each device's 2 rows)."""
    rng = np.random.default_rng(11)
    return [check_batch(random_batch(rng, SMALL, batch=8, seq=10, label_rate=rate), SMALL) for rate in (0.2, 0.7)]


def step_gradients(backend, batches, key_seed=None):
    """(loss, gradients, the compiled program's text) of one step over `batches`."""
    params = init_params(SMALL, seed=0, backend=backend)
    fn = backend.jit(partial(accumulate_gradients, partial(forward_backward, config=SMALL, backend=backend),
                             backend=backend, count_fn=label_count))
    micro = device_batches(batches, backend, "float32")
    key = None if key_seed is None else backend.key(key_seed)
    compiled = fn.lower(params, micro, key).compile()
    loss, grads = compiled(params, micro, key)
    return float(backend.to_numpy(loss)), {k: backend.to_numpy(v) for k, v in grads.items()}, compiled.as_text()


def assert_close(got, want, rtol):
    np.testing.assert_allclose(got[0], want[0], rtol=rtol)
    for name, ref in want[1].items():
        np.testing.assert_allclose(got[1][name], ref, rtol=rtol, atol=rtol * np.abs(ref).max(), err_msg=name)


@child_only
def test_child_four_devices_one_step_equals_one_device():
    one = backends.get_backend("jax")
    four = one.data_parallel(4)
    assert four.data_shards == 4 and one.data_shards == 1
    batches = two_micro_batches()
    sharded = step_gradients(four, batches)
    assert_close(sharded, step_gradients(one, batches), rtol=1e-5)
    # the batch really is split by rows, and the compiler summed the gradients over the devices
    arrays = device_batches(batches, four, "float32")[0]
    assert [s.data.shape for s in arrays.input_ids.addressable_shards] == [(2, 10)] * 4
    assert "all-reduce" in sharded[2]


@child_only
def test_child_four_devices_dropout_masks_do_not_depend_on_device_count():
    """JAX's partitionable threefry draws the same [B*T, H] mask whichever device holds which rows, so with dropout
    on, 4 devices still give the step of 1 device (and dropout does act: the loss differs from no dropout)."""
    one = backends.get_backend("jax")
    four = one.data_parallel(4)
    batches = two_micro_batches()
    with_dropout = step_gradients(one, batches, key_seed=5)
    assert_close(step_gradients(four, batches, key_seed=5), with_dropout, rtol=1e-5)
    assert abs(with_dropout[0] - step_gradients(one, batches)[0]) > 1e-3


@child_only
def test_child_four_devices_twenty_steps_follow_one_device():
    def losses(backend):
        params = init_params(SMALL, seed=0, backend=backend)
        state = init_state(params, backend)
        step = make_train_step(partial(forward_backward, config=SMALL, backend=backend),
                               AdamWConfig(lr=3e-3, warmup_steps=2, total_steps=20), backend, count_fn=label_count)
        rng = np.random.default_rng(3)
        out = []
        for i in range(20):
            batch = random_batch(rng, SMALL, batch=8, seq=10, label_rate=0.0)
            columns = rng.permuted(np.tile(np.arange(7), (8, 1)), axis=1)[:, :3]   # 3 labels a row: one shape
            np.put_along_axis(batch["labels"], columns, batch["input_ids"][np.arange(8)[:, None], columns], axis=1)
            batches = [check_batch(batch, SMALL)]
            params, state, loss, _ = step(params, state, device_batches(batches, backend, "float32"), None, i)
            out.append(float(backend.to_numpy(loss)))
        return np.array(out)

    one = backends.get_backend("jax")
    ref = losses(one)
    np.testing.assert_allclose(losses(one.data_parallel(4)), ref, rtol=1e-4)
    assert ref[-1] < ref[0]


@pytest.mark.slow
def test_four_device_checks_pass():
    """Runs the checks above in a child pytest that sees 4 virtual CPU devices."""
    backend_or_skip("jax")
    env = child_env(JAX_NUM_CPU_DEVICES="4", XLA_FLAGS="--xla_force_host_platform_device_count=4",
                    **{DEVICES_CHILD_ENV: "1"})
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "test_child_",
                             "tests/test_data_parallel.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"\b4 passed", summary) and "skipped" not in summary, summary


# --- scripts/train.py end to end ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    backend_or_skip("jax")
    root = tmp_path_factory.mktemp("dist")
    env = child_env(root / "cache", CORPUS=str(write_corpus(root / "corpus.txt")))
    for name in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES"):
        env.pop(name, None)
    return env


def train(env, *args, devices_present=1, timeout=600):
    child = dict(env, JAX_NUM_CPU_DEVICES=str(devices_present))
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *TINY, "--corpus", env["CORPUS"],
                             *map(str, args)], cwd=ROOT, env=child, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def losses(run_dir):
    return np.array([json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                     if '"loss"' in line])


def final_params(run_dir):
    return load_file(str(run_dir / (run_dir / "latest").read_text().strip()))


def back_to_step_2(run_dir, copy):
    """A copy of a finished 4-step run as if it had stopped after its step-2 checkpoint."""
    shutil.copytree(run_dir, copy)
    for path in copy.glob("ckpt-00000004.*"):
        path.unlink()
    (copy / "latest").write_text("ckpt-00000002.safetensors\n")
    return copy


@pytest.fixture(scope="module")
def four_device_run(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("four") / "run"
    code, _, err = finish(train(env, "--devices", "4", "--out", out, devices_present=4))
    assert code == 0, err[-3000:]
    return out


@pytest.mark.slow
def test_train_script_on_four_devices_matches_one_and_resumes_on_two(env, four_device_run, tmp_path):
    code, _, err = finish(train(env, "--out", tmp_path / "one"))
    assert code == 0, err[-3000:]
    np.testing.assert_allclose(losses(four_device_run), losses(tmp_path / "one"), rtol=1e-5)
    assert len(losses(four_device_run)) == 4
    resumed = back_to_step_2(four_device_run, tmp_path / "resumed")
    code, _, err = finish(train(env, "--resume", resumed, "--devices", "2", devices_present=2))
    assert code == 0, err[-3000:]
    np.testing.assert_allclose(losses(resumed), losses(four_device_run), rtol=1e-5)
    want = final_params(four_device_run)
    for name, value in final_params(resumed).items():
        np.testing.assert_allclose(value, want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_processes(env, *args):
    """Both processes of a 2-process run, to the end. No timing assumption: on a loaded machine JAX's start-up and
    compilation can take minutes, so the coordinator wait and the overall limit are far above a quiet run's
    (about 20 s); they only stop a hung run."""
    port = free_port()
    launch = ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--init-timeout", "900"]
    procs = [train(env, *launch, "--process-id", str(i), *args, devices_present=2) for i in range(2)]
    results = [finish(p, timeout=1800) for p in procs]
    for code, _, err in results:
        assert code == 0, err[-3000:]
    return results


@pytest.mark.slow
def test_two_processes_of_two_devices_match_one_process_of_four_and_resume(env, four_device_run, tmp_path):
    run = tmp_path / "two"
    (_, out0, _), (_, out1, _) = two_processes(env, "--out", run)
    np.testing.assert_allclose(losses(run), losses(four_device_run), rtol=1e-5)
    assert "done:" in out0                                   # process 1 reports nothing (gloo's own lines aside)
    assert [line for line in out1.splitlines() if not line.startswith("[Gloo]")] == [], out1
    resumed = back_to_step_2(run, tmp_path / "resumed")
    two_processes(env, "--resume", resumed)
    np.testing.assert_allclose(losses(resumed), losses(four_device_run), rtol=1e-5)
    want = final_params(four_device_run)
    for name, value in final_params(resumed).items():
        np.testing.assert_allclose(value, want[name], rtol=1e-5, atol=1e-6, err_msg=name)


# --- bad launches: a clear error, exit 2, before any work ---------------------------------------------------------

@pytest.mark.parametrize("args, present, message", [
    (["--devices", "8"], 2, r"--devices 8: only 2 cpu devices present; allowed: 1\.\.2, or all"),
    (["--devices", "3"], 4, r"--batch-size 8 cannot be split evenly over --devices 3: use a multiple of 3"),
    (["--devices", "2", "--backend", "numpy"], 2, r"--devices 2: backend 'numpy' runs on one device; .*--backend jax"),
    (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "2"], 1,
     r"--process-id 2 is out of range for --num-processes 2; allowed: 0\.\.1"),
    (["--coordinator", "localhost:1234", "--num-processes", "2"], 1, r"--coordinator, --num-processes needs "
                                                                     r"--process-id too"),
    (["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "0", "--backend", "numpy"], 1,
     r"multi-process training .* --backend jax; backend 'numpy' runs in one process"),
    (["--devices", "two"], 1, r"--devices: expected a positive int or 'all', got 'two'"),
])
def test_bad_launch_fails_before_any_work(env, tmp_path, args, present, message):
    code, out, err = finish(train(env, "--out", tmp_path / "run", *args, devices_present=present), timeout=120)
    assert code == 2 and re.search(message, err), err[-2000:]
    assert not (tmp_path / "run").exists()


def test_unreachable_coordinator_fails_within_the_timeout(env, tmp_path):
    started = time.monotonic()
    code, _, err = finish(train(env, "--out", tmp_path / "run", "--coordinator", f"localhost:{free_port()}",
                                "--num-processes", "2", "--process-id", "1", "--init-timeout", "3"), timeout=120)
    assert code == 2 and re.search(r"the coordinator localhost:\d+ did not answer within --init-timeout=3s", err), err
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run").exists()


def test_backends_without_sharding_name_jax_as_the_route():
    with pytest.raises(ValueError, match=r"backend 'numpy' runs on one device; .*--backend jax"):
        backends.get_backend("numpy").data_parallel(2)
    with pytest.raises(ValueError, match=r"--backend jax; backend 'torch' runs in one process"):
        backends.initialize_distributed("torch")


@child_only
def test_child_four_devices_scaling_report():
    """The scaling measurement for scripts/benchmark.py --devices (on CPU virtual devices a smoke test only)."""
    from minibert.training.scaling import format_scaling, measure_scaling
    rows = measure_scaling(backends.get_backend("jax"), SMALL, batch_size=8, seq_len=10, device_counts=(1, 4),
                           steps=2, warmup=1)
    assert [r["devices"] for r in rows] == [1, 4] and rows[0]["efficiency"] == 1.0
    for r in rows:
        assert r["step_s"] > 0
        np.testing.assert_allclose(r["tokens_per_s"], 8 * 10 / r["step_s"])
        np.testing.assert_allclose(r["efficiency"] * rows[0]["tokens_per_s"], r["tokens_per_s"] / r["devices"])
    assert format_scaling(rows).count("\n") == 2


def test_scaling_report_refuses_device_counts_that_do_not_divide_the_batch():
    from minibert.training.scaling import measure_scaling
    with pytest.raises(ValueError, match=r"device_counts must be positive ints that divide batch_size=8; got \[1, 3\]"):
        measure_scaling(backends.get_backend("numpy"), SMALL, batch_size=8, seq_len=10, device_counts=(1, 3))
    with pytest.raises(ValueError, match=r"backend 'numpy' runs on one device"):
        measure_scaling(backends.get_backend("numpy"), SMALL, batch_size=8, seq_len=10, device_counts=(1, 2), steps=1)


def test_device_batches_give_each_device_its_own_labels_in_blocks_of_one_shape():
    """The row-padding policy on a backend split over 4 devices (here NumPy told it has 4 shards and static
    shapes, so the layout is visible without devices): block d of positions/targets/weights holds the labels of
    rows [2d, 2d+2) as global flat indices, every block padded to the same bucket, padding at the block's first
    token with weight 0."""
    from backends.numpy_backend import create
    base = create()

    class FourShards(type(base)):
        data_shards, static_shapes = 4, True

    be = FourShards.__new__(FourShards)
    be.__dict__.update(base.__dict__)
    rng = np.random.default_rng(2)
    batches = [check_batch(random_batch(rng, SMALL, batch=8, seq=10, label_rate=rate), SMALL) for rate in (0.2, 0.9)]
    arrays = device_batches(batches, be, "float32")
    tokens_per_device = 2 * 10
    bucket = max(padded_count(int(np.sum(rows != -100))) for b in batches for rows in np.split(b["labels"], 4))
    for batch, a in zip(batches, arrays):
        blocks = np.split(np.asarray(a.positions), 4)
        assert len(a.positions) == 4 * bucket
        flat = batch["labels"].reshape(-1)
        for d, (pos, tgt, w) in enumerate(zip(blocks, np.split(a.targets, 4), np.split(a.weights, 4))):
            real = w == 1
            assert np.all((pos >= d * tokens_per_device) & (pos < (d + 1) * tokens_per_device))
            np.testing.assert_array_equal(pos[real], np.flatnonzero(flat[d * 20:(d + 1) * 20] != -100) + d * 20)
            np.testing.assert_array_equal(tgt[real], flat[pos[real]])
            assert np.all(pos[~real] == d * tokens_per_device) and np.all(w[~real] == 0)
        assert int(np.sum(a.weights)) == int(np.sum(batch["labels"] != -100))
