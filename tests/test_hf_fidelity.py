"""Fidelity to the reference BERT: Mini-BERT against transformers' BertForMaskedLM (PyTorch, CPU).

Random, small transformers models are built locally (no download), with every weight, bias and LayerNorm
parameter drawn away from its trivial initial value, and converted with minibert.interop.hf. On every backend, Mini-BERT's
logits, MLM loss and every gradient must equal transformers' (eval mode, no dropout); checkpoints must go both
ways losslessly and load in transformers with no missing or unexpected keys.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the transformers fidelity tests need torch: pip install -e '.[interop]'")
transformers = pytest.importorskip(
    "transformers", reason="the transformers fidelity tests need transformers: pip install -e '.[interop]'")

from minibert import BertConfig, loss_and_grads, mlm_logits, param_shapes  # noqa: E402
from minibert.interop.hf import (config_from_transformers, from_transformers, params_from_state_dict,  # noqa: E402
                         params_to_state_dict, to_transformers, transformers_shapes)
from minibert.params import init_host_params  # noqa: E402
from minibert.data.tokenizer import MINIBERT_SPECIAL_TOKENS as SPECIAL_TOKENS, WordPieceTokenizer  # noqa: E402
from support import assert_tree_close, backend_or_skip, load_script  # noqa: E402

transformers.logging.set_verbosity_error()
if hasattr(transformers.utils.logging, "disable_progress_bar"):
    transformers.utils.logging.disable_progress_bar()

# Tolerances (float32): logits and loss, absolute and relative; gradients relative to each tensor's largest entry.
LOGITS_TOL = 1e-5
GRAD_RTOL = 1e-4
F64_TOL = 1e-10

# id: transformers.BertConfig fields, and the batch (rows, sequence length). Head sizes 8..64, 1..4 layers, both
# GELUs in three spellings, 2 and 3 token types, sequences up to max_position, an intermediate size below H.
CASES = {
    "h48-a3-L1-gelu-fullpos": (dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=1, intermediate_size=80,
                                    vocab_size=61, max_position_embeddings=16, type_vocab_size=2, hidden_act="gelu"),
                               (3, 16)),
    "h40-a5-L3-pytorch_tanh": (dict(hidden_size=40, num_attention_heads=5, num_hidden_layers=3, intermediate_size=72,
                                    vocab_size=53, max_position_embeddings=12, type_vocab_size=3,
                                    hidden_act="gelu_pytorch_tanh", pad_token_id=3), (3, 9)),
    "h64-a1-L2-gelu_new": (dict(hidden_size=64, num_attention_heads=1, num_hidden_layers=2, intermediate_size=96,
                                vocab_size=37, max_position_embeddings=10, type_vocab_size=2, hidden_act="gelu_new"),
                           (2, 10)),
    "h96-a2-L4-gelu": (dict(hidden_size=96, num_attention_heads=2, num_hidden_layers=4, intermediate_size=37,
                            vocab_size=101, max_position_embeddings=24, type_vocab_size=2, hidden_act="gelu"),
                       (3, 13)),
}


def hf_model(seed=0, attn="eager", model_class="BertForMaskedLM", **fields):
    """A random transformers `model_class` (default BertForMaskedLM) in eval mode: linear weights ~ N(0, 1/fan_in),
    embeddings ~ N(0, 0.3^2), every bias ~ N(0, 0.1^2), LayerNorm weights ~ 1 + N(0, 0.2^2), so no bias or scale
    is trivial."""
    fields.setdefault("pad_token_id", 0)
    config = transformers.BertConfig(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **fields)
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)._from_config(config, attn_implementation=attn)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
            elif "embeddings" in name:
                param.copy_(0.3 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / param.shape[1] ** 0.5)
    return model.eval()


def hf_batch(config: BertConfig, rows, seq, seed=0, pad_inside=False):
    """A host batch with padding (row 1 shorter, row 2 only 3 tokens long), every token type, and labels at
    about 40% of the real positions. Padding positions hold pad_token_id; real positions never do, unless
    `pad_inside` (then a few attended positions hold it too)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size - 1, (rows, seq))
    ids = np.where(ids >= config.pad_token_id, ids + 1, ids)          # never the pad id at real positions
    mask = np.ones((rows, seq), np.int64)
    if rows > 1:
        mask[1, seq - seq // 3:] = 0
    if rows > 2:
        mask[2, 3:] = 0
    ids[mask == 0] = config.pad_token_id
    if pad_inside:
        ids[0, 1] = ids[0, seq - 1] = config.pad_token_id
    types = np.zeros((rows, seq), np.int64)
    for t in range(1, config.type_vocab_size):
        types[:, t * seq // config.type_vocab_size:] = t
    labels = np.where(rng.random((rows, seq)) < 0.4, rng.integers(0, config.vocab_size, (rows, seq)), -100)
    labels[0, 0] = ids[0, 0]
    labels[-1, 1] = 7 % config.vocab_size
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}


def torch_reference(model, batch, dtype=torch.float32):
    """(logits, loss, grads in Mini-BERT's layout) from transformers with torch autograd."""
    model = model.to(dtype)
    model.zero_grad(set_to_none=True)
    out = model(**{key: torch.from_numpy(value) for key, value in batch.items()})
    out.loss.backward()
    grads = {name: param.grad.detach().numpy() for name, param in model.named_parameters()}
    # named_parameters lists a tied parameter once; its one .grad holds the sum over both uses, as ours does.
    grads["cls.predictions.decoder.weight"] = grads["bert.embeddings.word_embeddings.weight"]
    config = config_from_transformers(model.config)
    return (out.logits.detach().numpy(), float(out.loss.detach()), params_from_state_dict(grads, config, dtype=None))


_CACHE = {}


def reference(case, dtype=torch.float32, pad_inside=False):
    """(config, host params, batch, logits, loss, grads) for a case, computed once per process."""
    key = (case, str(dtype), pad_inside)
    if key not in _CACHE:
        fields, (rows, seq) = CASES[case]
        model = hf_model(**fields)
        config, params = from_transformers(model)
        batch = hf_batch(config, rows, seq, pad_inside=pad_inside)
        logits, loss, grads = torch_reference(model, batch, dtype)
        trivial = [name for name, g in grads.items() if not np.any(g)]
        assert not trivial, f"reference gradients {trivial} are all zero: comparing with them would prove nothing"
        _CACHE[key] = (config, params, batch, logits, loss, grads)
    return _CACHE[key]


def on(backend, params, dtype="float32"):
    return {name: backend.asarray(value, dtype=dtype) for name, value in params.items()}


def assert_numpy_logits_match(model, config, params):
    """Mini-BERT's logits on numpy equal the transformers model's (eval mode) on a padded batch."""
    backend = backend_or_skip("numpy")
    batch = hf_batch(config, 2, 8)
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in batch.items() if k != "labels"}).logits.numpy()
    ours = backend.to_numpy(mlm_logits(on(backend, params), batch["input_ids"], batch["attention_mask"],
                                       batch["token_type_ids"], config=config, backend=backend))
    np.testing.assert_allclose(ours, ref, rtol=LOGITS_TOL, atol=LOGITS_TOL)


# --- logits, loss and gradients on every backend ----------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(backend, case):
    config, params, batch, ref_logits, _, _ = reference(case)
    logits = backend.to_numpy(mlm_logits(on(backend, params), batch["input_ids"], batch["attention_mask"],
                                         batch["token_type_ids"], config=config, backend=backend))
    assert logits.dtype == np.float32 and logits.shape == ref_logits.shape
    # Every position, padded query rows included: both models add the padding bias on keys only, so a padded
    # query still attends to the real tokens of its row and gets the same (unused) logits.
    np.testing.assert_allclose(logits, ref_logits, rtol=LOGITS_TOL, atol=LOGITS_TOL)


@pytest.mark.parametrize("case", CASES)
def test_loss_and_every_gradient_match_torch_autograd(backend, case):
    config, params, batch, _, ref_loss, ref_grads = reference(case)
    loss, grads = loss_and_grads(on(backend, params), batch, config=config, backend=backend, dropout_seed=None)
    np.testing.assert_allclose(loss, ref_loss, rtol=LOGITS_TOL, atol=LOGITS_TOL)
    assert_tree_close(grads, ref_grads, rtol=0, atol=0, scaled_atol=GRAD_RTOL)


@pytest.mark.parametrize("case", ["h40-a5-L3-pytorch_tanh", "h96-a2-L4-gelu"])
def test_float64_matches_torch_float64(float64_backend, case):
    """In float64 the agreement is ~1e-14, so any formula difference hidden by float32 rounding shows."""
    config, params, batch, ref_logits, ref_loss, ref_grads = reference(case, torch.float64)
    device_params = on(float64_backend, params, "float64")
    logits = float64_backend.to_numpy(mlm_logits(device_params, batch["input_ids"], batch["attention_mask"],
                                                 batch["token_type_ids"], config=config, backend=float64_backend))
    np.testing.assert_allclose(logits, ref_logits, rtol=F64_TOL, atol=F64_TOL)
    loss, grads = loss_and_grads(device_params, batch, config=config, backend=float64_backend)
    np.testing.assert_allclose(loss, ref_loss, rtol=F64_TOL, atol=F64_TOL)
    assert_tree_close(grads, ref_grads, rtol=0, atol=0, scaled_atol=F64_TOL)


def test_pad_token_row_gradient_matches_transformers(backend):
    """[PAD] at attended positions: like nn.Embedding(padding_idx=...), the pad row gets no gradient from the
    input lookup (only the tied decoder's share), so every gradient matches transformers'."""
    case = "h40-a5-L3-pytorch_tanh"
    config, params, batch, _, ref_loss, ref_grads = reference(case, pad_inside=True)
    loss, grads = loss_and_grads(on(backend, params), batch, config=config, backend=backend)
    np.testing.assert_allclose(loss, ref_loss, rtol=LOGITS_TOL, atol=LOGITS_TOL)
    assert_tree_close(grads, ref_grads, rtol=0, atol=0, scaled_atol=GRAD_RTOL)


def test_sdpa_attention_gives_the_same_logits():
    """transformers' default SDPA attention agrees with its eager one (and so with Mini-BERT)."""
    for case in ("h48-a3-L1-gelu-fullpos", "h40-a5-L3-pytorch_tanh"):
        fields, (rows, seq) = CASES[case]
        try:
            model = hf_model(attn="sdpa", **fields)
        except (ValueError, ImportError) as exc:
            pytest.skip(f"sdpa attention unsupported here: {exc}")
        config, _, batch, ref_logits, _, _ = reference(case)
        with torch.no_grad():
            logits = model(**{k: torch.from_numpy(v) for k, v in batch.items() if k != "labels"}).logits.numpy()
        np.testing.assert_allclose(logits, ref_logits, rtol=LOGITS_TOL, atol=LOGITS_TOL)


@pytest.mark.parametrize("act", ["gelu_python", "gelu_python_tanh", "gelu_accurate", "gelu_fast"])
def test_equivalent_activation_spellings(act):
    fields = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=48, vocab_size=29,
                  max_position_embeddings=8, hidden_act=act)
    model = hf_model(**fields)
    config, params = from_transformers(model)
    assert config.hidden_act == ("gelu" if act == "gelu_python" else "gelu_tanh")
    assert_numpy_logits_match(model, config, params)


# --- checkpoints both ways ----------------------------------------------------------------------------------------

def load_hf(folder):
    model, info = transformers.BertForMaskedLM.from_pretrained(
        str(folder), local_files_only=True, output_loading_info=True, attn_implementation="eager")
    return model.eval(), info


def assert_clean(info):
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert not info["error_msgs"], info


def test_transformers_round_trip_is_lossless_and_loads_cleanly(tmp_path):
    case = "h40-a5-L3-pytorch_tanh"
    fields, _ = CASES[case]
    model = hf_model(**fields)
    config, params = from_transformers(model)
    to_transformers(params, config, tmp_path)
    config_back, params_back = from_transformers(tmp_path)
    assert config_back == config
    assert list(params_back) == list(param_shapes(config))
    assert all(value.dtype == np.float32 for value in params_back.values())
    assert_tree_close(params_back, params, rtol=0, atol=0)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["BertForMaskedLM"] and written["model_type"] == "bert"
    assert written["hidden_act"] == "gelu_pytorch_tanh"
    loaded, info = load_hf(tmp_path)
    assert_clean(info)
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    for name, tensor in model.state_dict().items():            # every tensor transformers holds, bit for bit
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    batch = hf_batch(config, 3, 9)
    inputs = {k: torch.from_numpy(v) for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        np.testing.assert_array_equal(loaded(**inputs).logits.numpy(), model(**inputs).logits.numpy())


def export_perturbed(backend, config, folder):
    """Freshly initialised weights moved off their init values (so nothing is accidentally 0 or 1), exported with
    `to_transformers` from `backend` arrays (converted without being told how) and read back losslessly; returns
    the host weights."""
    host = init_host_params(config, seed=3)
    rng = np.random.default_rng(1)
    host = {k: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32) for k, v in host.items()}
    to_transformers(on(backend, host), config, folder)
    _, back = from_transformers(folder)
    assert_tree_close(back, host, rtol=0, atol=0)
    return host


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_tanh"])
def test_minibert_export_loads_in_transformers_with_the_same_logits(backend, tmp_path, hidden_act):
    config = BertConfig(vocab_size=45, hidden_size=24, num_layers=2, num_heads=3, intermediate_size=40,
                        max_position=11, type_vocab_size=2, hidden_act=hidden_act, pad_token_id=0)
    params = on(backend, export_perturbed(backend, config, tmp_path))
    model, info = load_hf(tmp_path)
    assert_clean(info)
    hf_config = transformers.BertConfig.from_pretrained(str(tmp_path), local_files_only=True)
    assert hf_config.hidden_act == {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[hidden_act]
    assert config_from_transformers(hf_config) == config
    batch = hf_batch(config, 3, 11)
    inputs = [batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")]
    ours = backend.to_numpy(mlm_logits(params, *inputs, config=config, backend=backend))
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in batch.items() if k != "labels"}).logits.numpy()
    np.testing.assert_allclose(ours, ref, rtol=LOGITS_TOL, atol=LOGITS_TOL)


def test_fill_mask_pipeline_loads_the_export_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    words = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "rug", "and", "##s", ".", "big", "small"]
    tokens = list(SPECIAL_TOKENS) + words
    config = BertConfig(vocab_size=len(tokens), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                        max_position=16)
    host = init_host_params(config, seed=0)
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    backend = backend_or_skip("numpy")
    out = to_transformers(host, config, tmp_path / "hf", vocab=str(tmp_path / "vocab.txt"))
    assert (tmp_path / "hf" / "vocab.txt").read_text(encoding="utf-8") == (tmp_path / "vocab.txt").read_text()
    fill = transformers.pipeline("fill-mask", model=str(out))
    text = "The cats [MASK] on a big mat."
    results = fill(text, top_k=len(tokens))
    # the tokenizer transformers built from vocab.txt splits text like Mini-BERT's own ...
    tokenizer = fill.tokenizer
    ours_tok = WordPieceTokenizer(tokens)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ours_tok.encode(text)
    ids = np.array([tokenizer(text)["input_ids"]])
    assert ids[0, 0] == tokens.index("[CLS]") and ids[0, -1] == tokens.index("[SEP]")
    # ... and the pipeline's scores are the softmax of Mini-BERT's logits at the mask
    logits = backend.to_numpy(mlm_logits(on(backend, host), ids, config=config, backend=backend))[0]
    at = int(np.flatnonzero(ids[0] == tokens.index("[MASK]"))[0])
    probs = np.exp(logits[at] - logits[at].max())
    probs /= probs.sum()
    assert len(results) == len(tokens)
    for result in results:
        np.testing.assert_allclose(result["score"], probs[result["token"]], rtol=1e-4, atol=1e-6)
    # a vocabulary given as a list writes the same files
    to_transformers(host, config, tmp_path / "hf2", vocab=tokens)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "hf2" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()


# --- reading transformers folders -----------------------------------------------------------------------------------

SMALL = dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=2, intermediate_size=24, vocab_size=31,
             max_position_embeddings=8)


def test_reads_sharded_safetensors_bin_and_half_precision(tmp_path):
    model = hf_model(**SMALL)
    _, expected = from_transformers(model)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="4KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    _, params = from_transformers(tmp_path / "sharded")
    assert_tree_close(params, expected, rtol=0, atol=0)
    # only pytorch_model.bin: refused (never unpickled here) with the command that converts it; after it, exact
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(model.config.to_json_string())
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model.bin, a pickle.*\n    python scripts/convert_bin.py "):
        from_transformers(tmp_path / "bin")
    assert load_script("convert_bin").main([str(tmp_path / "bin")]) == 0
    _, params = from_transformers(tmp_path / "bin")
    assert_tree_close(params, expected, rtol=0, atol=0)
    # bfloat16 (which NumPy lacks) and float16 checkpoints widen exactly to float32
    for dtype in (torch.bfloat16, torch.float16):
        half = hf_model(**SMALL).to(dtype)
        half.save_pretrained(tmp_path / str(dtype))
        _, params = from_transformers(tmp_path / str(dtype))
        _, direct = from_transformers(half)
        assert all(value.dtype == np.float32 for value in params.values())
        assert_tree_close(params, direct, rtol=0, atol=0)


def test_skips_pooler_and_next_sentence_head_and_reads_gamma_beta_names():
    model = hf_model(**SMALL)
    _, expected = from_transformers(model)
    config = config_from_transformers(model.config)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["bert.pooler.dense.weight"] = np.zeros((16, 16), np.float32)
    state["bert.pooler.dense.bias"] = np.zeros(16, np.float32)
    state["cls.seq_relationship.weight"] = np.zeros((2, 16), np.float32)
    state["cls.seq_relationship.bias"] = np.zeros(2, np.float32)
    state["bert.embeddings.LayerNorm.gamma"] = state.pop("bert.embeddings.LayerNorm.weight")
    state["bert.embeddings.LayerNorm.beta"] = state.pop("bert.embeddings.LayerNorm.bias")
    params = params_from_state_dict(state, config)
    assert_tree_close(params, expected, rtol=0, atol=0)


def test_state_dict_round_trip_is_exact_and_complete():
    config = BertConfig(vocab_size=23, hidden_size=12, num_layers=3, num_heads=3, intermediate_size=20,
                        max_position=9)
    host = init_host_params(config, seed=5)
    state = params_to_state_dict(host, config)
    assert {k: v.shape for k, v in state.items()} == transformers_shapes(config)
    assert all(v.flags.c_contiguous and v.dtype == np.float32 for v in state.values())
    back = params_from_state_dict(state, config)
    assert_tree_close(back, host, rtol=0, atol=0)
    # the layout of docs/PARAMS.md: qkv columns [0:H] = query.weight.T, [H:2H] = key, [2H:3H] = value
    qkv = host["layers.1.attn.qkv.weight"]
    np.testing.assert_array_equal(state["bert.encoder.layer.1.attention.self.key.weight"], qkv[:, 12:24].T)
    np.testing.assert_array_equal(state["bert.encoder.layer.1.intermediate.dense.weight"],
                                  host["layers.1.ffn.in.weight"].T)


# --- what cannot be converted is refused, by name ----------------------------------------------------------------

@pytest.mark.parametrize("change, match", [
    ({"hidden_act": "relu"}, r"hidden_act='relu'.*allowed: gelu"),
    ({"hidden_act": "quick_gelu"}, r"quick_gelu"),
    ({"position_embedding_type": "relative_key"}, r"position_embedding_type='relative_key'"),
    ({"is_decoder": True}, r"is_decoder"),
    ({"add_cross_attention": True}, r"add_cross_attention"),
    ({"model_type": "roberta"}, r"model_type 'roberta'"),
])
def test_unsupported_configs_are_refused(change, match):
    fields = transformers.BertConfig(**SMALL).to_dict()
    fields.update(change)
    with pytest.raises(ValueError, match=match):
        config_from_transformers(fields)


def test_untied_decoder_is_refused(tmp_path):
    model = hf_model(tie_word_embeddings=False, **SMALL)
    with torch.no_grad():
        model.cls.predictions.decoder.weight.add_(0.01)
    with pytest.raises(ValueError, match="Mini-BERT ties"):
        from_transformers(model)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cls.predictions.decoder.weight differs"):
        from_transformers(tmp_path)
    # an untied model whose decoder happens to equal the embeddings converts; its bias is the decoder's own
    # (cls.predictions.bias, untied here, is not used by transformers' forward)
    with torch.no_grad():
        model.cls.predictions.decoder.weight.copy_(model.bert.embeddings.word_embeddings.weight)
    assert not torch.equal(model.cls.predictions.decoder.bias, model.cls.predictions.bias)
    config, params = from_transformers(model)
    assert_numpy_logits_match(model, config, params)


def test_missing_unexpected_and_misshapen_tensors_are_named():
    model = hf_model(**SMALL)
    config = config_from_transformers(model.config)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    name = "bert.encoder.layer.1.attention.self.value.bias"
    with pytest.raises(ValueError, match=r"missing 1 tensor.*" + name.replace(".", r"\.")):
        params_from_state_dict({k: v for k, v in state.items() if k != name}, config)
    extra = dict(state, **{"bert.encoder.layer.2.output.dense.weight": np.zeros((16, 24), np.float32)})
    with pytest.raises(ValueError, match=r"bert\.encoder\.layer\.2\.output\.dense\.weight"):
        params_from_state_dict(extra, config)
    bad = dict(state, **{"bert.encoder.layer.0.intermediate.dense.weight": np.zeros((16, 24), np.float32)})
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight has shape \(16, 24\), expected \(24, 16\)"):
        params_from_state_dict(bad, config)


def test_export_refuses_params_or_vocab_that_do_not_fit(tmp_path):
    config = BertConfig(vocab_size=10, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8, max_position=4)
    host = init_host_params(config)
    with pytest.raises(ValueError, match=r"missing head\.ln\.bias"):
        to_transformers({k: v for k, v in host.items() if k != "head.ln.bias"}, config, tmp_path)
    with pytest.raises(ValueError, match=r"layers\.0\.ffn\.in\.weight has shape"):
        to_transformers(dict(host, **{"layers.0.ffn.in.weight": np.zeros((8, 9), np.float32)}), config, tmp_path)
    tokens = list(SPECIAL_TOKENS) + ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="vocab has 9 tokens but config.vocab_size=10"):
        to_transformers(host, config, tmp_path, vocab=tokens)
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        to_transformers(host, config, tmp_path, vocab=tokens[:4] + ["x"] + tokens[5:] + ["e"])
    assert not os.listdir(tmp_path)                             # nothing written by a refused export


# --- scripts/export_hf.py -------------------------------------------------------------------------------------------

def test_export_script_writes_a_loadable_folder_from_a_run(tmp_path, capsys):
    checkpoint = pytest.importorskip("minibert.storage.checkpoint", reason="minibert.storage.checkpoint (run directories) missing")
    if not hasattr(checkpoint, "save_checkpoint"):
        pytest.skip("minibert.storage.checkpoint has no save_checkpoint yet")
    export_hf = load_script("export_hf")

    tokens = list(SPECIAL_TOKENS) + ["the", "cat", "sat", "on", "mat", "##s"]
    config = BertConfig(vocab_size=len(tokens), hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24,
                        max_position=12)
    params = init_host_params(config, seed=7)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": config.to_dict()}))
    (run / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    checkpoint.save_checkpoint(run, 10, params, {"m": zeros, "v": zeros}, {})
    assert export_hf.main([str(run), str(tmp_path / "out"), "--verify"]) == 0
    assert "no missing/unexpected keys" in capsys.readouterr().out
    config_back, back = from_transformers(tmp_path / "out")
    assert config_back == config
    assert_tree_close(back, params, rtol=0, atol=0)
    assert (tmp_path / "out" / "vocab.txt").read_text(encoding="utf-8") == (run / "vocab.txt").read_text()
