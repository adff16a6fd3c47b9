"""Model behaviour on every backend: masking, stability, agreement across backends, training, dtypes."""
from __future__ import annotations

import ast
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

import backends
from minibert import BertConfig, forward_backward, init_params, loss_and_grads, mlm_logits
from minibert.nn import ops
from minibert.nn.attention import attention_forward, mask_bias
from minibert.data.batch import check_batch, device_batch
from minibert.nn.optim import AdamWConfig, accumulate, init_state
from minibert.nn.step import make_train_step
from support import ROOT, assert_tree_close, backend_or_skip, child_env, random_batch

SMALL = BertConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_position=12)


# --- the padding mask acts on attention scores ---------------------------------------------------------------

def test_masked_keys_get_zero_probability(backend):
    rng = np.random.default_rng(0)
    batch, seq, hidden, heads = 2, 6, 8, 2
    mask = np.ones((batch, seq), np.int32)
    mask[0, 4:] = 0
    mask[1, 1] = 0
    x = backend.asarray(rng.standard_normal((batch * seq, hidden)), dtype="float32")
    w = [backend.asarray(rng.standard_normal(s) * 0.5, dtype="float32")
         for s in ((hidden, 3 * hidden), (3 * hidden,), (hidden, hidden), (hidden,))]
    _, cache = attention_forward(x, *w, mask_bias(backend.asarray(mask), x.dtype), heads, 0.0, None, backend)
    probs = backend.to_numpy(cache.softmax.probs)          # [B, A, T, T]
    assert np.all(probs[0, :, :, 4:] == 0.0) and np.all(probs[1, :, :, 1] == 0.0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_tokens_at_padded_positions_change_nothing_elsewhere(backend):
    params = init_params(SMALL, seed=0, backend=backend)
    rng = np.random.default_rng(1)
    ids = rng.integers(5, SMALL.vocab_size, (2, 8))
    mask = np.ones((2, 8), np.int32)
    mask[:, 5:] = 0
    other = ids.copy()
    other[:, 5:] = rng.integers(5, SMALL.vocab_size, (2, 3))
    a = backend.to_numpy(mlm_logits(params, ids, mask, None, config=SMALL, backend=backend))
    b = backend.to_numpy(mlm_logits(params, other, mask, None, config=SMALL, backend=backend))
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[:, 5:], b[:, 5:])   # the padded positions themselves did change


def test_softmax_is_stable_for_huge_scores_and_fully_masked_rows(backend):
    scores = np.array([[1e4, -1e4, 0.0, 1e4 - 1.0], [-1e4, -1e4, -1e4, -1e4]], np.float32)
    p = backend.to_numpy(ops.softmax_forward(backend.asarray(scores))[0])
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p[0], [1 / (1 + np.exp(-1)), 0, 0, np.exp(-1) / (1 + np.exp(-1))], rtol=1e-5)
    np.testing.assert_allclose(p[1], 0.25, rtol=1e-6)
    fully_masked = backend.to_numpy(mask_bias(backend.asarray(np.zeros((1, 4), np.int32)), backend.dtype("float32")))
    p = backend.to_numpy(ops.softmax_forward(backend.asarray(fully_masked[0, 0] + scores[:1]))[0])
    assert np.all(np.isfinite(p)) and abs(p.sum() - 1) < 1e-5


# --- gradient accumulation and embedding gradients (the classic bugs) ---------------------------------------

def test_gradient_accumulation_reuses_its_buffers_where_writeable(backend):
    params = init_params(SMALL, seed=0, backend=backend)
    batches = [random_batch(np.random.default_rng(s), SMALL, seq=8) for s in range(3)]
    grads = [loss_and_grads(params, b, config=SMALL, backend=backend)[1] for b in batches]
    expected = {k: sum(backend.to_numpy(g[k]) for g in grads) for k in grads[0]}
    total = accumulate(None, grads[0])
    first = dict(total)
    for g in grads[1:]:
        total = accumulate(total, g)
    assert_tree_close(total, expected, rtol=1e-5, atol=1e-6)
    if backend.inplace:
        assert all(total[k] is first[k] for k in total), "accumulation allocated new buffers"


def test_embedding_gradient_is_one_scatter_add_call(backend, monkeypatch):
    calls = []
    original = backend.scatter_add

    def counting(table, indices, updates):
        calls.append(tuple(indices.shape))
        return original(table, indices, updates)
    monkeypatch.setattr(backend, "scatter_add", counting)
    params = init_params(SMALL, seed=0, backend=backend)
    batch = random_batch(np.random.default_rng(0), SMALL, batch=3, seq=10)
    loss_and_grads(params, batch, config=SMALL, backend=backend)
    # word ids, token types, the labelled rows of the head and the loss's targets: one vectorised call each,
    # never one per token
    assert sorted(calls).count((30,)) == 2 and len(calls) == 4, calls


# --- agreement across backends -------------------------------------------------------------------------------

@pytest.mark.parametrize("dropout_seed", [None, 3])
def test_every_backend_matches_numpy_float32(backend, dropout_seed):
    if dropout_seed is not None and backend.name != "numpy":
        pytest.skip("dropout masks come from each backend's own generator, so they differ across backends")
    reference = backends.get_backend("numpy")
    batch = random_batch(np.random.default_rng(0), SMALL, seq=9)
    loss_ref, grads_ref = loss_and_grads(init_params(SMALL, 0, reference), batch, config=SMALL, backend=reference,
                                         dropout_seed=dropout_seed)
    loss, grads = loss_and_grads(init_params(SMALL, 0, backend), batch, config=SMALL, backend=backend,
                                 dropout_seed=dropout_seed)
    assert abs(loss - loss_ref) <= 1e-4 * abs(loss_ref)
    assert all(g.dtype == np.float32 for g in grads_ref.values())
    assert_tree_close(grads, grads_ref, rtol=1e-4, atol=0, scaled_atol=1e-4)      # dtypes too: float32


def test_every_backend_matches_numpy_float64(float64_backend):
    reference = backends.get_backend("numpy")
    batch = random_batch(np.random.default_rng(0), SMALL, seq=9)
    loss_ref, grads_ref = loss_and_grads(init_params(SMALL, 0, reference, "float64"), batch, config=SMALL,
                                         backend=reference)
    loss, grads = loss_and_grads(init_params(SMALL, 0, float64_backend, "float64"), batch, config=SMALL,
                                 backend=float64_backend)
    assert abs(loss - loss_ref) <= 1e-10 * abs(loss_ref)
    assert_tree_close(grads, grads_ref, rtol=1e-10, atol=0, scaled_atol=1e-10)


def train_losses(backend, config, batch, steps, lr, dropout_seed=None, accum=1):
    params = init_params(config, seed=0, backend=backend)
    state = init_state(params, backend)
    opt = AdamWConfig(lr=lr, warmup_steps=min(10, steps), total_steps=steps)
    step = make_train_step(partial(forward_backward, config=config, backend=backend), opt, backend)
    checked = check_batch(batch, config)
    micro = [device_batch(checked, backend, params["embeddings.word"].dtype)] * accum
    losses = []
    for i in range(steps):
        key = None if dropout_seed is None else backend.fold_in(backend.key(dropout_seed), i)
        params, state, loss, _ = step(params, state, micro, key, i)
        losses.append(float(backend.to_numpy(loss)))
    return np.array(losses), params


def test_twenty_adamw_steps_follow_numpy(backend):
    batch = random_batch(np.random.default_rng(2), SMALL, batch=4, seq=10)
    ref, _ = train_losses(backends.get_backend("numpy"), SMALL, batch, 20, 1e-3)
    got, _ = train_losses(backend, SMALL, batch, 20, 1e-3)
    np.testing.assert_allclose(got, ref, rtol=1e-3)
    assert ref[-1] < ref[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["numpy", "jax"])
def test_tiny_model_overfits_one_batch(name):
    be = backend_or_skip(name)
    config = BertConfig.preset("tiny", vocab_size=60, max_position=16)
    batch = random_batch(np.random.default_rng(3), config, batch=4, seq=16, pad=3, label_rate=0.5)
    losses, _ = train_losses(be, config, batch, 200, 2e-3, dropout_seed=0)
    assert losses[-1] <= 0.1 * losses[0], (losses[0], losses[-1])


def test_accumulating_two_equal_micro_batches_equals_one(backend):
    batch = random_batch(np.random.default_rng(4), SMALL, batch=2, seq=8)
    one, p1 = train_losses(backend, SMALL, batch, 3, 1e-3, accum=1)
    two, p2 = train_losses(backend, SMALL, batch, 3, 1e-3, accum=2)
    np.testing.assert_allclose(two, one, rtol=1e-5)
    assert_tree_close(p2, p1, rtol=1e-4, atol=1e-6)


def test_float32_run_keeps_every_array_float32(backend):
    """No silent float64: every cached activation and every gradient of a float32 step is float32."""
    params = init_params(SMALL, seed=0, backend=backend)
    arrays = device_batch(check_batch(random_batch(np.random.default_rng(0), SMALL), SMALL), backend,
                          params["embeddings.word"].dtype)
    from minibert.nn.model import encoder_forward
    _, caches = encoder_forward(params, arrays.input_ids, arrays.token_type_ids, arrays.attention_mask,
                                SMALL, backend, backend.key(0))
    seen = []

    def walk(item):
        if isinstance(item, (tuple, list)):
            for x in item:
                walk(x)
        elif isinstance(item, dict):
            for x in item.values():
                walk(x)
        elif hasattr(item, "dtype") and hasattr(item, "shape") and len(item.shape) > 0:
            seen.append(item.dtype)
    walk(caches)
    floats = [d for d in seen if "float" in str(d)]
    assert floats and all(d == backend.dtype("float32") for d in floats), set(map(str, floats))
    loss, grads = forward_backward(params, arrays, backend.key(0), config=SMALL, backend=backend)
    assert loss.dtype == backend.dtype("float32")
    assert all(g.dtype == backend.dtype("float32") for g in grads.values())


@pytest.mark.slow
def test_jax_hand_written_gradients_equal_jax_grad():
    be = backend_or_skip("jax")
    import jax

    config = BertConfig(vocab_size=50, hidden_size=24, num_layers=2, num_heads=3, intermediate_size=40,
                        max_position=12, hidden_act="gelu")
    params = init_params(config, seed=0, backend=be)
    arrays = device_batch(check_batch(random_batch(np.random.default_rng(0), config, seq=10), config), be,
                          params["embeddings.word"].dtype)
    key = be.key(1)

    def loss_only(p):
        return forward_backward(p, arrays, key, config=config, backend=be)[0]
    auto = jax.grad(loss_only)(params)
    _, hand = forward_backward(params, arrays, key, config=config, backend=be)
    assert_tree_close(hand, auto, rtol=1e-5, atol=1e-9, scaled_atol=1e-5)


ARRAY_LIBRARIES = {"numpy", "jax", "jaxlib", "cupy", "cupyx", "torch", "array_api_strict"}


def _imports(path: Path) -> set[str]:
    """The modules a source file imports (absolute names; `from minibert.nn import ops` gives minibert.nn.ops)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _source_of(module: str) -> Path | None:
    """The file of one of this repository's modules (a package's __init__.py), or None for anything else."""
    parts = module.split(".")
    if parts[0] not in ("minibert", "backends"):
        return None
    base = Path(ROOT, *parts)
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def test_nothing_under_minibert_nn_imports_an_array_library_even_through_other_modules():
    """The math's rule, by folder: walk the import graph from every module of minibert/nn (into every repository
    module it reaches, the packages' __init__ files included) and find no array library."""
    start = [f"minibert.nn.{p.stem}" for p in Path(ROOT, "minibert", "nn").glob("*.py") if p.stem != "__init__"]
    assert {"minibert.nn.ops", "minibert.nn.model", "minibert.nn.step", "minibert.nn.layout"} <= set(start)
    seen, stack, reached_by = set(), list(start), {}
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [".".join(module.split(".")[:i]) for i in range(1, len(module.split(".")))]
        for name in parents + sorted(_imports(_source_of(module))) if _source_of(module) else []:
            root = name.split(".")[0]
            assert root not in ARRAY_LIBRARIES, (
                f"{module} imports {name}; reached from minibert/nn by {' <- '.join(_chain(module, reached_by))}")
            if _source_of(name) and name not in seen:
                reached_by.setdefault(name, module)
                stack.append(name)
    assert "minibert.config" in seen                      # the walk follows repository imports


def test_importing_the_math_loads_no_array_library():
    """At run time too: a fresh interpreter importing every module of minibert/nn (and the package above it)
    has no array library in sys.modules; the public names of `minibert` still import on use."""
    modules = sorted(f"minibert.nn.{p.stem}" for p in Path(ROOT, "minibert", "nn").glob("*.py"))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(ARRAY_LIBRARIES)!r})))\n"
            "import minibert\nassert callable(minibert.loss_and_grads) and minibert.BertConfig\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[0] == "[]", f"importing minibert/nn loaded {out.stdout.strip()}"


def _chain(module, reached_by):
    chain = [module]
    while chain[-1] in reached_by:
        chain.append(reached_by[chain[-1]])
    return chain