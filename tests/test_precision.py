"""Mixed precision (minibert/nn/precision.py): a bf16 step against PyTorch's torch.autocast on the same weights and
batch, fp16 dynamic loss scaling with an injected overflow, the refusals, and exact resume of an fp16 run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from minibert import loss_and_grads
from minibert.data.batch import device_batch, check_batch
from minibert.config import BertConfig
from minibert.nn.model import forward_backward, label_count
from minibert.nn.optim import AdamWConfig, init_state
from minibert.params import init_host_params
from minibert.nn.precision import (GROWTH_INTERVAL, PRECISIONS, cast_params, init_loss_scale, precision_policy,
                                update_loss_scale)
from minibert.nn.step import make_train_step
from support import TINY_RUN, backend_or_skip, latest_tensors, records, run_script

LOW_PRECISION_BACKENDS = ("torch", "jax")


def _cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def autocast_reference():
    """(config, host params, batch, fp32 loss, bf16 loss and grads) of transformers' BertForMaskedLM under
    torch.autocast(cpu, bfloat16), eval mode (no dropout), float32 weights."""
    torch = pytest.importorskip("torch", reason="the autocast reference needs torch: pip install -e '.[interop]'")
    pytest.importorskip("transformers", reason="the autocast reference needs transformers")
    from minibert.interop.hf import config_from_transformers, from_transformers, params_from_state_dict
    from test_hf_fidelity import hf_batch, hf_model

    model = hf_model(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
                     vocab_size=97, max_position_embeddings=24, type_vocab_size=2, hidden_act="gelu")
    config, params = from_transformers(model)
    batch = hf_batch(config, 4, 24)
    inputs = {key: torch.from_numpy(value) for key, value in batch.items()}
    with torch.no_grad():
        fp32_loss = float(model(**inputs).loss)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs)
    out.loss.backward()
    grads = {name: p.grad.detach().float().numpy() for name, p in model.named_parameters()}
    grads["cls.predictions.decoder.weight"] = grads["bert.embeddings.word_embeddings.weight"]
    grads = params_from_state_dict(grads, config_from_transformers(model.config), dtype=None)
    return config, params, batch, fp32_loss, float(out.loss.detach().float()), grads


@pytest.mark.parametrize("name", LOW_PRECISION_BACKENDS)
def test_bf16_step_matches_torch_autocast(autocast_reference, name):
    """Loss within 1e-2 relative of autocast's, every gradient's cosine similarity >= 0.999; and the bf16 run
    really ran in bf16 (its loss and gradients are not the float32 ones)."""
    backend = backend_or_skip(name)
    config, params, batch, fp32_loss, ref_loss, ref_grads = autocast_reference
    on = {k: backend.asarray(v, dtype="float32") for k, v in params.items()}
    loss, grads = loss_and_grads(on, batch, config=config, backend=backend, precision="bf16")
    fp32, fp32_grads = loss_and_grads(on, batch, config=config, backend=backend)
    assert abs(loss - ref_loss) <= 1e-2 * abs(ref_loss), (loss, ref_loss)
    assert fp32 == pytest.approx(fp32_loss, rel=1e-5) and loss != fp32
    host = {k: backend.to_numpy(g) for k, g in grads.items()}
    assert set(host) == set(ref_grads) and all(g.dtype == np.float32 for g in host.values())
    worst = min(((_cosine(host[k], ref_grads[k]), k) for k in ref_grads))
    assert worst[0] >= 0.999, f"gradient {worst[1]}: cosine {worst[0]:.5f} with autocast's"
    changed = [k for k in host if not np.array_equal(host[k], backend.to_numpy(fp32_grads[k]))]
    assert len(changed) == len(host), "some gradients are bit-identical to float32: the policy was not applied"


@pytest.mark.parametrize("name", LOW_PRECISION_BACKENDS)
def test_only_linear_weights_are_cast(name):
    backend = backend_or_skip(name)
    config = BertConfig.preset("tiny", vocab_size=50)
    params = {k: backend.asarray(v) for k, v in init_host_params(config).items()}
    cast = cast_params(params, PRECISIONS["bf16"], backend)
    narrow = sorted(k for k, v in cast.items() if v.dtype == backend.dtype("bfloat16"))
    assert narrow == sorted(k for k in params if k.endswith(".weight") and ".ln." not in k)
    assert all(cast[k] is params[k] for k in params if k not in narrow)      # the rest: the float32 masters
    assert cast_params(params, PRECISIONS["fp32"], backend) is params


@pytest.mark.parametrize("name", ["numpy", "strict"])
def test_backends_without_narrow_floats_refuse_and_name_the_ones_that_have_them(name):
    backend = backend_or_skip(name)
    for precision in ("bf16", "fp16"):
        with pytest.raises(ValueError, match=f"precision {precision} needs .* backend '{name}' .*--backend torch"):
            precision_policy(precision, backend)
    assert precision_policy("fp32", backend).compute is None
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, got 'fp8'"):
        precision_policy("fp8", backend)


def test_float64_master_weights_are_refused():
    backend = backend_or_skip("torch")
    with pytest.raises(ValueError, match="keeps float32 master weights"):
        precision_policy("bf16", backend, "float64")


def test_loss_scale_update_rule():
    """x2 after GROWTH_INTERVAL finite steps in a row, x0.5 and the count reset on an overflow."""
    backend = backend_or_skip("numpy")
    xp = backend.xp
    state = init_loss_scale(backend, 2.0 ** 16, GROWTH_INTERVAL - 2)
    host = lambda s: (float(s["scale"]), int(s["good_steps"]))  # noqa: E731
    state = update_loss_scale(state, xp.asarray(True))
    assert host(state) == (2.0 ** 16, GROWTH_INTERVAL - 1)
    state = update_loss_scale(state, xp.asarray(True))
    assert host(state) == (2.0 ** 17, 0)
    state = update_loss_scale(state, xp.asarray(False))
    assert host(state) == (2.0 ** 16, 0)


@pytest.mark.parametrize("name", LOW_PRECISION_BACKENDS)
def test_fp16_overflow_skips_the_step_and_halves_the_scale(name):
    """An injected overflow: a loss scale of 2^40 makes the float16 backward overflow (float16 tops at 65504), so
    the step must leave the parameters and moments exactly as they were and halve the scale; at a sane scale the
    next step updates, keeps the scale and counts one good step, and its gradients equal the unscaled ones."""
    backend = backend_or_skip(name)
    config = BertConfig.preset("tiny", vocab_size=60)
    host_params = init_host_params(config, seed=1)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 60, (4, 16))
    labels = np.where(rng.random((4, 16)) < 0.3, ids, -100)
    labels[0, 1] = ids[0, 1]
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids),
             "labels": labels}
    arrays = device_batch(check_batch(batch, config, backend), backend, backend.dtype("float32"))
    fb = lambda params, a, key, normaliser: forward_backward(params, a, key, normaliser, config=config,  # noqa: E731
                                                             backend=backend)
    step = make_train_step(fb, AdamWConfig(lr=1e-3, total_steps=10), backend, count_fn=label_count,
                           precision=PRECISIONS["fp16"])

    def fresh(scale):
        params = {k: backend.asarray(v) for k, v in host_params.items()}
        state = init_state(params, backend)
        state["loss_scale"] = init_loss_scale(backend, scale)
        return params, state

    params, state = fresh(2.0 ** 40)
    params, state, loss, norm = step(params, state, [arrays], None, 0)
    assert not np.isfinite(float(backend.to_numpy(norm)))
    assert float(backend.to_numpy(state["loss_scale"]["scale"])) == 2.0 ** 39
    assert int(backend.to_numpy(state["loss_scale"]["good_steps"])) == 0
    for k, v in host_params.items():
        assert np.array_equal(backend.to_numpy(params[k]), v), f"{k} changed on an overflowed step"
        assert not np.any(backend.to_numpy(state["m"][k])), f"the moment of {k} changed on an overflowed step"

    params, state = fresh(2.0 ** 8)
    params, state, loss, norm = step(params, state, [arrays], None, 0)
    assert float(backend.to_numpy(state["loss_scale"]["scale"])) == 2.0 ** 8
    assert int(backend.to_numpy(state["loss_scale"]["good_steps"])) == 1
    assert any(not np.array_equal(backend.to_numpy(params[k]), v) for k, v in host_params.items())
    on = {k: backend.asarray(v) for k, v in host_params.items()}
    ref_loss, _ = loss_and_grads(on, batch, config=config, backend=backend, precision="fp16")
    assert float(backend.to_numpy(loss)) == pytest.approx(ref_loss, rel=1e-3)      # unscaled


@pytest.mark.slow
def test_fp16_run_resumes_exactly_with_its_loss_scale(script_env, tmp_path):
    """An fp16 run's loss scale and skipped steps go into metrics.jsonl and the checkpoint; stopped at step 4 and
    resumed, it ends bit-identical to the same run done in one go."""
    backend_or_skip("torch")
    env = dict(script_env, MINIBERT_BACKEND="torch")
    args = [*TINY_RUN, "--steps", "8", "--eval-every", "4", "--precision", "fp16"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_script(env, "train.py", *args, "--out", straight).returncode == 0
    first = run_script(env, "train.py", *args, "--save-every", "4", "--out", resumed)
    assert first.returncode == 0, first.stderr[-3000:]
    steps = records(straight)
    assert [r["loss_scale"] for r in steps] == [2.0 ** 16] * 8 and all(r["skipped_nonfinite"] == 0 for r in steps)
    sidecar = json.loads((resumed / "ckpt-00000004.json").read_text())
    assert sidecar["loss_scale"] == {"scale": 2.0 ** 16, "good_steps": 4}
    (resumed / "ckpt-00000008.safetensors").unlink()
    (resumed / "ckpt-00000008.json").unlink()
    (resumed / "latest").write_text("ckpt-00000004.safetensors\n")
    again = run_script(env, "train.py", "--resume", resumed, "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    ours, theirs = latest_tensors(resumed), latest_tensors(straight)
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)
    assert json.loads((resumed / "ckpt-00000008.json").read_text())["loss_scale"] == {"scale": 2.0 ** 16,
                                                                                      "good_steps": 8}
    refused = run_script(env, "train.py", "--resume", resumed, "--precision", "bf16", "--steps", "9")
    assert refused.returncode == 2 and "--precision: run has 'fp16', asked 'bf16'" in refused.stderr


@pytest.mark.slow
def test_bf16_default_recipe_ends_within_2_percent_of_fp32(script_env, tmp_path):
    """500 steps of the default recipe (train.py's defaults on the embedded corpus), fp32 then bf16, on the torch
    backend: the final held-out losses differ by at most 2% (measured: 5.656 and 5.655, about 35 s each here)."""
    backend_or_skip("torch")
    env = dict(script_env, MINIBERT_BACKEND="torch")
    final = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        result = run_script(env, "train.py", "--steps", "500", "--no-progress", "--precision", precision, "--out", out)
        assert result.returncode == 0, result.stderr[-3000:]
        final[precision] = records(out, "eval_loss")[-1]["eval_loss"]
    assert abs(final["bf16"] - final["fp32"]) <= 0.02 * final["fp32"], final
