"""transformers' BERT names for Mini-BERT's: the config fields (`config_from_transformers`,
`config_to_transformers`) and every parameter (`params_from_state_dict`, `params_to_state_dict`, host side).

The parameter layout and the transformers name of every parameter are in docs/PARAMS.md: Mini-BERT stores dense
weights [in, out] (transformers [out, in]) and fuses query/key/value into one [H, 3H] matrix. Both directions are
transposes, slices and concatenations only, so a float32 round trip is bit-identical. Reading and writing
checkpoint folders is `minibert.interop.hf`, the public import point, which re-exports these names.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from minibert.config import BertConfig
from minibert.nn.layout import param_shapes

# transformers' activation names whose function is Mini-BERT's exact GELU or tanh-approximated GELU.
# ("gelu_fast" writes sqrt(2/pi) as 0.7978845608, 3.6e-12 off: far below float32 resolution.)
HF_TO_MINI_ACT = {
    "gelu": "gelu", "gelu_python": "gelu",
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_python_tanh": "gelu_tanh",
    "gelu_accurate": "gelu_tanh", "gelu_fast": "gelu_tanh",
}
MINI_TO_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}

# transformers' BertConfig defaults, for fields a config.json leaves out.
_HF_DEFAULTS = {
    "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
}
# transformers field -> Mini-BERT field
_FIELD_MAP = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads", "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position", "type_vocab_size": "type_vocab_size", "hidden_act": "hidden_act",
    "hidden_dropout_prob": "hidden_dropout", "attention_probs_dropout_prob": "attention_dropout",
    "layer_norm_eps": "layer_norm_eps", "initializer_range": "initializer_range", "pad_token_id": "pad_token_id",
}

# Tensors other BERT heads carry that a masked LM does not use: the pooler and the next-sentence head
# (BertForPreTraining checkpoints such as bert-base-uncased have both), and a non-persistent buffer that old
# checkpoints saved. transformers' BertForMaskedLM drops them too; any other extra tensor is an error.
_UNUSED_PREFIXES = ("bert.pooler.", "cls.seq_relationship.")
_UNUSED_NAMES = ("bert.embeddings.position_ids",)
_DECODER_WEIGHT = "cls.predictions.decoder.weight"
_DECODER_BIAS = "cls.predictions.decoder.bias"
_WORD = "bert.embeddings.word_embeddings.weight"
_HEAD_BIAS = "cls.predictions.bias"
_POOLER = "bert.pooler."
# transformers class <-> Mini-BERT config.task
TASK_OF_ARCHITECTURE = {"BertForMaskedLM": "mlm", "BertForSequenceClassification": "sequence",
                        "BertForTokenClassification": "token"}
ARCHITECTURE_OF_TASK = {task: name for name, task in TASK_OF_ARCHITECTURE.items()}


# --- configuration ---------------------------------------------------------------------------------------------

def config_from_transformers(hf_config, task: str = "mlm") -> BertConfig:
    """A Mini-BERT `BertConfig` from a transformers `BertConfig` (object or dict, e.g. a parsed config.json).

    `task` "sequence" or "token" also reads the classification fields: id2label (num_labels is its length;
    label2id is derived from it, as pipelines use id2label only), problem_type and classifier_dropout.
    Refuses what Mini-BERT cannot reproduce exactly: another model type, relative position embeddings, a decoder
    or cross-attention, activations other than exact or tanh-approximated GELU, and multi-label classification.
    """
    fields = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    model_type = fields.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(f"model_type {model_type!r} is not supported; Mini-BERT reads only 'bert' checkpoints")
    position = fields.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ValueError(f"position_embedding_type={position!r} is not supported; Mini-BERT has only "
                         "'absolute' (learned) position embeddings")
    for flag in ("is_decoder", "add_cross_attention"):
        if fields.get(flag):
            raise ValueError(f"{flag}=True is not supported; Mini-BERT is a bidirectional encoder without "
                             "cross-attention")
    values = {key: fields.get(key, default) for key, default in _HF_DEFAULTS.items()}
    act = values["hidden_act"]
    if not isinstance(act, str) or act not in HF_TO_MINI_ACT:
        raise ValueError(f"hidden_act={act!r} is not supported; allowed: {', '.join(HF_TO_MINI_ACT)} "
                         "(exact GELU: gelu, gelu_python; tanh-approximated GELU: the others)")
    values["hidden_act"] = HF_TO_MINI_ACT[act]
    if values["pad_token_id"] is None:
        warnings.warn("the transformers config has pad_token_id=None; Mini-BERT uses pad_token_id=0",
                      stacklevel=2)
        values["pad_token_id"] = 0
    mini = {_FIELD_MAP[key]: value for key, value in values.items()}
    if task != "mlm":
        id2label = fields.get("id2label")
        if not id2label:
            num_labels = fields.get("num_labels", 2)
            id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        problem_type = fields.get("problem_type")
        if problem_type == "multi_label_classification":
            raise ValueError("problem_type='multi_label_classification' is not supported; Mini-BERT's classifiers are "
                             "single-label (cross-entropy) or regression (MSE, num_labels=1)")
        mini.update(task=task, id2label=dict(id2label), problem_type=problem_type,
                    classifier_dropout=fields.get("classifier_dropout"))
    return BertConfig(**mini)


def config_to_transformers(config: BertConfig) -> dict:
    """The config.json dict of the transformers model with Mini-BERT's `config` (float32): a `BertForMaskedLM`
    (tied decoder), or for a classification config a `BertForSequenceClassification` /
    `BertForTokenClassification` with its label map, problem_type and classifier_dropout."""
    labels = {}
    if config.task != "mlm":
        labels = {"id2label": {str(i): label for i, label in config.id2label.items()},
                  "label2id": dict(config.label2id), "problem_type": config.problem_type}
    return {
        "architectures": [ARCHITECTURE_OF_TASK[config.task]],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": MINI_TO_HF_ACT[config.hidden_act],
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_position,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "classifier_dropout": config.classifier_dropout,
        "is_decoder": False,
        "add_cross_attention": False,
        "use_cache": True,
        "tie_word_embeddings": True,
        "dtype": "float32",
        **labels,
    }


# --- tensors ------------------------------------------------------------------------------------------------------

def transformers_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor the transformers model of `config` must hold (transformers names,
    [out, in] weights): for a tied `BertForMaskedLM` without the tied copies cls.predictions.decoder.{weight,bias};
    for `BertForSequenceClassification` the pooler and classifier; for `BertForTokenClassification` the
    classifier (it has no pooler)."""
    hidden, inter = config.hidden_size, config.intermediate_size
    shapes = {
        _WORD: (config.vocab_size, hidden),
        "bert.embeddings.position_embeddings.weight": (config.max_position, hidden),
        "bert.embeddings.token_type_embeddings.weight": (config.type_vocab_size, hidden),
        "bert.embeddings.LayerNorm.weight": (hidden,),
        "bert.embeddings.LayerNorm.bias": (hidden,),
    }
    for i in range(config.num_layers):
        p = f"bert.encoder.layer.{i}."
        for part in ("query", "key", "value"):
            shapes[p + f"attention.self.{part}.weight"] = (hidden, hidden)
            shapes[p + f"attention.self.{part}.bias"] = (hidden,)
        shapes.update({
            p + "attention.output.dense.weight": (hidden, hidden),
            p + "attention.output.dense.bias": (hidden,),
            p + "attention.output.LayerNorm.weight": (hidden,),
            p + "attention.output.LayerNorm.bias": (hidden,),
            p + "intermediate.dense.weight": (inter, hidden),
            p + "intermediate.dense.bias": (inter,),
            p + "output.dense.weight": (hidden, inter),
            p + "output.dense.bias": (hidden,),
            p + "output.LayerNorm.weight": (hidden,),
            p + "output.LayerNorm.bias": (hidden,),
        })
    if config.task == "mlm":
        shapes.update({
            "cls.predictions.transform.dense.weight": (hidden, hidden),
            "cls.predictions.transform.dense.bias": (hidden,),
            "cls.predictions.transform.LayerNorm.weight": (hidden,),
            "cls.predictions.transform.LayerNorm.bias": (hidden,),
            _HEAD_BIAS: (config.vocab_size,),
        })
        return shapes
    if config.task == "sequence":
        shapes.update({_POOLER + "dense.weight": (hidden, hidden), _POOLER + "dense.bias": (hidden,)})
    shapes.update({"classifier.weight": (config.num_labels, hidden), "classifier.bias": (config.num_labels,)})
    return shapes


# Mini-BERT name -> (transformers name, transposed?), for every parameter that is a plain copy or a transpose.
_POOLER_NAMES = {"pooler.dense.weight": (_POOLER + "dense.weight", True),
                 "pooler.dense.bias": (_POOLER + "dense.bias", False)}
_CLASSIFIER_NAMES = {"classifier.weight": ("classifier.weight", True), "classifier.bias": ("classifier.bias", False)}


def _head_names(config: BertConfig) -> dict[str, tuple[str, bool]]:
    if config.task == "mlm":
        return {
            "head.dense.weight": ("cls.predictions.transform.dense.weight", True),
            "head.dense.bias": ("cls.predictions.transform.dense.bias", False),
            "head.ln.weight": ("cls.predictions.transform.LayerNorm.weight", False),
            "head.ln.bias": ("cls.predictions.transform.LayerNorm.bias", False),
            "head.decoder_bias": (_HEAD_BIAS, False),
        }
    names = dict(_POOLER_NAMES) if config.task == "sequence" else {}
    names.update(_CLASSIFIER_NAMES)
    return names


def _direct_names(config: BertConfig) -> dict[str, tuple[str, bool]]:
    return {**_encoder_names(config), **_head_names(config)}


def _encoder_names(config: BertConfig) -> dict[str, tuple[str, bool]]:
    names = {
        "embeddings.word": (_WORD, False),
        "embeddings.position": ("bert.embeddings.position_embeddings.weight", False),
        "embeddings.token_type": ("bert.embeddings.token_type_embeddings.weight", False),
        "embeddings.ln.weight": ("bert.embeddings.LayerNorm.weight", False),
        "embeddings.ln.bias": ("bert.embeddings.LayerNorm.bias", False),
    }
    for i in range(config.num_layers):
        p, h = f"layers.{i}.", f"bert.encoder.layer.{i}."
        names.update({
            p + "attn.out.weight": (h + "attention.output.dense.weight", True),
            p + "attn.out.bias": (h + "attention.output.dense.bias", False),
            p + "attn.ln.weight": (h + "attention.output.LayerNorm.weight", False),
            p + "attn.ln.bias": (h + "attention.output.LayerNorm.bias", False),
            p + "ffn.in.weight": (h + "intermediate.dense.weight", True),
            p + "ffn.in.bias": (h + "intermediate.dense.bias", False),
            p + "ffn.out.weight": (h + "output.dense.weight", True),
            p + "ffn.out.bias": (h + "output.dense.bias", False),
            p + "ffn.ln.weight": (h + "output.LayerNorm.weight", False),
            p + "ffn.ln.bias": (h + "output.LayerNorm.bias", False),
        })
    return names


def _legacy_name(name: str) -> str:
    """Old (TF-converted) checkpoints name LayerNorm parameters gamma/beta; transformers renames them on load."""
    if ".LayerNorm.gamma" in name:
        return name.replace(".LayerNorm.gamma", ".LayerNorm.weight")
    if ".LayerNorm.beta" in name:
        return name.replace(".LayerNorm.beta", ".LayerNorm.bias")
    return name


def _listing(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:8])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 8 else "")


def _ignorable(config: BertConfig):
    """(names, prefixes) of tensors a checkpoint for `config.task` may hold that the model does not use: a masked
    LM skips the pooler and next-sentence head (BertForPreTraining checkpoints have both) and the tied decoder
    copies; a token classifier skips a pooler (BertForTokenClassification has none); every task skips the
    position_ids buffer old checkpoints saved."""
    if config.task == "mlm":
        return {_DECODER_WEIGHT, _DECODER_BIAS, *_UNUSED_NAMES}, _UNUSED_PREFIXES
    return set(_UNUSED_NAMES), ((_POOLER,) if config.task == "token" else ())


def _convert(tensors: Mapping[str, np.ndarray], config: BertConfig, names: Mapping[str, tuple[str, bool]], cast):
    """Mini-BERT params from transformers tensors: `names` (plain copies and transposes) plus each layer's fused
    qkv = [query | key | value] (weights transposed to [in, out])."""
    params = {mini: cast(tensors[name].T if transpose else tensors[name]) for mini, (name, transpose) in names.items()}
    for i in range(config.num_layers):
        h = f"bert.encoder.layer.{i}.attention.self."
        params[f"layers.{i}.attn.qkv.weight"] = cast(np.concatenate(
            [tensors[h + part + ".weight"].T for part in ("query", "key", "value")], axis=1))
        params[f"layers.{i}.attn.qkv.bias"] = cast(np.concatenate(
            [tensors[h + part + ".bias"] for part in ("query", "key", "value")]))
    return params


def _caster(dtype):
    def cast(array):
        return np.ascontiguousarray(array if dtype is None else array.astype(dtype, copy=False))
    return cast


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], config: BertConfig,
                           dtype: str | None = "float32") -> dict[str, np.ndarray]:
    """Mini-BERT parameters (NumPy, `param_shapes` order) from the state dict (host arrays) of the transformers
    model of `config.task` (`BertForMaskedLM`, `BertForSequenceClassification`, `BertForTokenClassification`).
    The same linear map converts gradients (transformers' grads -> Mini-BERT's layout).

    Masked LM: cls.predictions.decoder.weight, when present, must equal the word embeddings (Mini-BERT ties them).
    The decoder bias is cls.predictions.decoder.bias when present (the one forward adds), else
    cls.predictions.bias. Pooler and next-sentence tensors are skipped. Token classification skips a pooler.
    Any other missing, extra or misshapen tensor is a ValueError naming it. `dtype` None keeps the stored one.
    """
    tensors = {_legacy_name(name): np.asarray(value) for name, value in state_dict.items()}
    if config.task == "mlm" and _DECODER_BIAS in tensors:
        # the bias the MLM head adds is the decoder's (nn.Linear) own; cls.predictions.bias is the same parameter in
        # a tied model, and unused by forward in an untied one
        tensors[_HEAD_BIAS] = tensors[_DECODER_BIAS]
    expected = transformers_shapes(config)
    ignorable, ignorable_prefixes = _ignorable(config)
    architecture = ARCHITECTURE_OF_TASK[config.task]
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected and name not in ignorable
                  and not name.startswith(ignorable_prefixes)]
    if missing:
        raise ValueError(f"the checkpoint is missing {len(missing)} tensor(s) a {architecture} with this config "
                         f"needs: {_listing(missing)}")
    if unexpected:
        raise ValueError(f"the checkpoint has {len(unexpected)} tensor(s) Mini-BERT does not know: "
                         f"{_listing(unexpected)} (a {architecture} with num_hidden_layers="
                         f"{config.num_layers} has no such tensor)")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape} for this "
                             "config")
    decoder = tensors.get(_DECODER_WEIGHT) if config.task == "mlm" else None
    if decoder is not None and not np.array_equal(decoder, tensors[_WORD]):
        what = ("shape " + str(tuple(decoder.shape)) if decoder.shape != tensors[_WORD].shape else
                f"max difference {float(np.max(np.abs(decoder.astype(np.float64) - tensors[_WORD])))}")
        raise ValueError(f"{_DECODER_WEIGHT} differs from {_WORD} ({what}): Mini-BERT ties the MLM decoder to the "
                         "word embeddings, so an untied checkpoint cannot be represented")
    params = _convert(tensors, config, _direct_names(config), _caster(dtype))
    return {name: params[name] for name in param_shapes(config)}


def _host(value, backend=None) -> np.ndarray:
    """A backend array (NumPy, JAX, torch, CuPy, array-api-strict) as a host NumPy array."""
    if backend is not None:
        return np.asarray(backend.to_numpy(value))
    import array_api_compat
    if isinstance(value, np.ndarray):
        return value
    if array_api_compat.is_torch_array(value):
        return value.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(value):
        return value.get()
    try:
        return np.asarray(value)
    except Exception:  # noqa: BLE001 - e.g. arrays that refuse __array__ but speak DLPack
        return np.from_dlpack(value)


def params_to_state_dict(params: Mapping, config: BertConfig, dtype: str = "float32",
                         backend=None) -> dict[str, np.ndarray]:
    """The state dict of the transformers model of `config.task` (contiguous host arrays, [out, in] weights) of
    Mini-BERT `params` (backend or NumPy arrays): `transformers_shapes(config)`; a masked LM's leaves out the tied
    copies cls.predictions.decoder.{weight,bias} (what transformers' own save_pretrained writes for a tied model)."""
    expected = param_shapes(config)
    missing = [name for name in expected if name not in params]
    unexpected = [name for name in params if name not in expected]
    if missing or unexpected:
        raise ValueError("params do not match the config: " + "; ".join(
            part for part in (missing and f"missing {_listing(missing)}",
                              unexpected and f"unexpected {_listing(unexpected)}") if part))
    host = {}
    for name, shape in expected.items():
        array = _host(params[name], backend)
        if tuple(array.shape) != shape:
            raise ValueError(f"param {name} has shape {tuple(array.shape)}, expected {shape} for this config")
        if not np.issubdtype(array.dtype, np.floating):
            raise TypeError(f"param {name} must be floating point, got dtype {array.dtype}")
        host[name] = array

    def cast(array):
        return np.ascontiguousarray(array.astype(dtype, copy=False))

    state = {}
    for mini, (name, transpose) in _direct_names(config).items():
        state[name] = cast(host[mini].T if transpose else host[mini])
    hidden = config.hidden_size
    for i in range(config.num_layers):
        h = f"bert.encoder.layer.{i}.attention.self."
        weight, bias = host[f"layers.{i}.attn.qkv.weight"], host[f"layers.{i}.attn.qkv.bias"]
        for j, part in enumerate(("query", "key", "value")):
            state[h + part + ".weight"] = cast(weight[:, j * hidden:(j + 1) * hidden].T)
            state[h + part + ".bias"] = cast(bias[j * hidden:(j + 1) * hidden])
    return {name: state[name] for name in transformers_shapes(config)}
