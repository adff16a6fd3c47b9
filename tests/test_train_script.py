"""scripts/train.py, evaluate.py and predict.py through their real command lines (subprocesses)."""
from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest

from support import (ALL_BACKENDS, ROOT, TINY_RUN, assert_picture, assert_tree_close, backend_or_skip, finish,
                     latest_tensors, records, run_script, start)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def numpy_run(script_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "numpy"
    result = run_script(script_env, "train.py", *TINY_RUN, "--steps", "6", "--eval-every", "3", "--save-every", "3",
                        "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_run_directory_holds_everything(numpy_run):
    names = {p.name for p in numpy_run.iterdir()}
    assert {"config.json", "vocab.txt", "metrics.jsonl", "loss.png", "latest"} <= names
    assert "ckpt-00000006.safetensors" in names and "ckpt-00000006.json" in names
    config = json.loads((numpy_run / "config.json").read_text())
    assert config["model"]["num_layers"] == 2 and config["training"]["steps"] == 6
    train, evals = records(numpy_run), records(numpy_run, "eval_loss")
    assert [r["step"] for r in train] == list(range(1, 7))
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 and np.isfinite(r["loss"]) for r in train)
    assert [r["step"] for r in evals] == [3, 6]
    for r in evals:
        assert np.isclose(r["eval_perplexity"], np.exp(r["eval_loss"]))
        assert 0 <= r["eval_accuracy"] <= 1 and 0 < r["baseline_accuracy"] < 1
    tensors = latest_tensors(numpy_run)
    assert any(k.startswith("adam_m/") for k in tensors) and "params/embeddings.word" in tensors
    assert_picture(numpy_run / "loss.png", 600, 350)


@pytest.mark.parametrize("name", [b for b in ALL_BACKENDS if b != "numpy"])
def test_smoke_run_on_each_backend(script_env, tmp_path, name):
    backend_or_skip(name)
    env = dict(script_env, MINIBERT_BACKEND=name)
    result = run_script(env, "train.py", *TINY_RUN, "--steps", "3", "--eval-every", "3", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["backend"] == name
    assert all(np.isfinite(r["loss"]) for r in records(tmp_path / "run"))


def test_backend_flag_overrides_environment(script_env, tmp_path):
    env = dict(script_env, MINIBERT_BACKEND="no-such-backend")
    result = run_script(env, "train.py", *TINY_RUN, "--steps", "2", "--backend", "numpy", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script(env, "train.py", *TINY_RUN, "--steps", "2", "--out", tmp_path / "other")
    assert result.returncode == 2 and "unknown backend 'no-such-backend'" in result.stderr


def test_evaluate_prints_model_beside_baseline(script_env, numpy_run, tmp_path):
    result = run_script(script_env, "evaluate.py", numpy_run, "--eval-batches", "2", "--json", tmp_path / "m.json")
    assert result.returncode == 0, result.stderr
    assert "masked-token accuracy" in result.stdout and "most-frequent token" in result.stdout
    reported = json.loads((tmp_path / "m.json").read_text())
    final_eval = records(numpy_run, "eval_loss")[-1]
    assert reported["eval_loss"] == pytest.approx(final_eval["eval_loss"], rel=1e-6)


def test_predict_fills_the_mask(script_env, numpy_run):
    result = run_script(script_env, "predict.py", numpy_run, "the [MASK] function returns a list", "--top-k", "4")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip().endswith(tuple("abcdefghijklmnopqrstuvwxyz.,)]"))
             or "%" in line]
    probs = [float(line.split("%")[0]) for line in lines if "%" in line]
    assert len(probs) == 4 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.0001
    bad = run_script(script_env, "predict.py", numpy_run, "no mask here")
    assert bad.returncode == 2 and "no [MASK]" in bad.stderr


def test_sigint_then_resume_is_bit_identical_to_an_uninterrupted_run(script_env, tmp_path):
    args = [*TINY_RUN, "--steps", "14", "--eval-every", "1", "--save-every", "100", "--dropout", "0.1"]
    straight = tmp_path / "straight"
    assert run_script(script_env, "train.py", *args, "--out", straight).returncode == 0
    interrupted = tmp_path / "interrupted"
    proc = start(script_env, ROOT / "scripts" / "train.py", *args, "--out", interrupted)
    while proc.poll() is None and not any(r["step"] >= 4 for r in records(interrupted)):   # however long it takes
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, err[-3000:]
    assert "Resume with: python scripts/train.py --resume" in out + err
    stopped_at = int(json.loads((interrupted / (interrupted / "latest").read_text().strip()).with_suffix(".json")
                                .read_text())["step"])
    assert 4 <= stopped_at < 14
    resumed = run_script(script_env, "train.py", "--resume", interrupted, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_tree_close(latest_tensors(interrupted), latest_tensors(straight), rtol=0, atol=0)
    losses = lambda d: [(r["step"], r["loss"]) for r in records(d)]  # noqa: E731
    assert losses(straight) == losses(interrupted)


def test_resume_with_different_settings_is_refused(script_env, numpy_run):
    result = run_script(script_env, "train.py", "--resume", numpy_run, "--lr", "0.5")
    assert result.returncode == 2 and "--lr" in result.stderr and "settings differ" in result.stderr


def test_init_from_a_transformers_directory_starts_from_its_weights(script_env, numpy_run, tmp_path):
    pytest.importorskip("transformers")
    exported = tmp_path / "hf"
    result = run_script(script_env, "export_hf.py", numpy_run, exported)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "from-hf"
    result = run_script(script_env, "train.py", *TINY_RUN, "--steps", "1", "--lr", "1e-9", "--init-from", exported,
                        "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["model"] == \
        json.loads((numpy_run / "config.json").read_text())["model"]
    params = lambda d: {k: v for k, v in latest_tensors(d).items() if k.startswith("params/")}  # noqa: E731
    assert_tree_close(params(out), params(numpy_run), rtol=1e-7, atol=1e-6)
