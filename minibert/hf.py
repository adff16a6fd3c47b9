"""Checkpoints both ways between Mini-BERT and transformers' BERT (host side, NumPy arrays).

    config, params = from_transformers("path/to/bert")        # a BertForMaskedLM, or a local folder
    to_transformers(params, config, "out", vocab="vocab.txt")  # BertForMaskedLM.from_pretrained("out") loads it

`config.task` picks the transformers class: "mlm" = BertForMaskedLM, "sequence" = BertForSequenceClassification,
"token" = BertForTokenClassification (both ways). `encoder_from_transformers` reads just the encoder (and pooler)
of any BERT checkpoint (BertModel, BertForPreTraining, BertForMaskedLM, ...) to start a classifier from it with
`minibert.params.init_classifier_from`.

The parameter layout and the transformers name of every parameter are in docs/PARAMS.md: Mini-BERT stores dense
weights [in, out] (transformers [out, in]) and fuses query/key/value into one [H, 3H] matrix. Both directions are
transposes, slices and concatenations only, so a float32 round trip is bit-identical.

Reading a folder's `config.json` and `model.safetensors` needs only NumPy and safetensors. torch and
transformers are imported lazily, and only where they are needed: converting a live `BertForMaskedLM`, reading a
folder that has only `pytorch_model.bin` (always through transformers' own loader: this module never unpickles),
and checking an export (`pip install -e '.[interop]'`).
"""
from __future__ import annotations

import json
import os
import struct
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from minibert.config import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS as _TOKENS, UNK_ID, BertConfig
from minibert.fileio import (DirectoryLock, atomic_write, atomic_write_bytes, atomic_write_json, os_error_from,
                             remove_stale_temporaries)
from minibert.params import param_shapes
from minibert.tokenizer import vocab_bytes

__all__ = ["from_transformers", "to_transformers", "config_from_transformers", "config_to_transformers",
           "encoder_from_transformers", "params_from_state_dict", "params_to_state_dict", "transformers_shapes",
           "HF_TO_MINI_ACT", "TASK_OF_ARCHITECTURE"]

INTEROP_HINT = "pip install -e '.[interop]'"

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

SPECIAL_TOKENS = {"unk_token": _TOKENS[UNK_ID], "sep_token": _TOKENS[SEP_ID], "pad_token": _TOKENS[PAD_ID],
                  "cls_token": _TOKENS[CLS_ID], "mask_token": _TOKENS[MASK_ID]}


def _need_transformers(what: str):
    try:
        import torch  # noqa: F401
        import transformers
    except ImportError as exc:
        raise ImportError(f"{what} needs torch and transformers, which are not installed ({exc}); install them "
                          f"with: {INTEROP_HINT}") from None
    return transformers


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
    names.update({"classifier.weight": ("classifier.weight", True), "classifier.bias": ("classifier.bias", False)})
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


# --- safetensors files ------------------------------------------------------------------------------------------

def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as NumPy. bfloat16 (which NumPy lacks) is widened to float32 exactly."""
    from safetensors import safe_open

    tensors, bf16 = {}, []
    with safe_open(path, framework="np") as file:
        for name in file.keys():
            try:
                tensors[name] = file.get_tensor(name)
            except TypeError:
                bf16.append(name)
    if bf16:
        with open(path, "rb") as file:
            (header_len,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(header_len))
            base = 8 + header_len
            for name in bf16:
                entry = header[name]
                if entry["dtype"] != "BF16":
                    raise TypeError(f"{path}: tensor {name} has dtype {entry['dtype']}, which NumPy cannot read")
                start, end = entry["data_offsets"]
                file.seek(base + start)
                raw = np.frombuffer(file.read(end - start), dtype="<u2").astype(np.uint32) << 16
                tensors[name] = raw.view(np.float32).reshape(entry["shape"])
    return tensors


def _read_folder_tensors(folder: str):
    """The state dict of a local checkpoint folder, or None when it holds no safetensors weights."""
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(single):
        return _read_safetensors(single)
    if os.path.exists(index):
        with open(index, encoding="utf-8") as file:
            shards = sorted(set(json.load(file)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(_read_safetensors(os.path.join(folder, shard)))
        return tensors
    return None


def _state_dict_of(model) -> dict[str, np.ndarray]:
    return {name: tensor.detach().cpu().float().numpy() if tensor.is_floating_point() else tensor.cpu().numpy()
            for name, tensor in model.state_dict().items()}


# --- public API ---------------------------------------------------------------------------------------------------

def _task_of_folder(hf_fields: dict, tensors) -> str:
    """config.task of a checkpoint (folder or model): from config.json's architectures (or the model's class)
    when they name a class Mini-BERT reads; otherwise from the tensors (a classifier with a pooler: sequence;
    without: token; none: masked LM). A folder with only pytorch_model.bin (tensors None) needs architectures
    to be read as a classifier."""
    for name in hf_fields.get("architectures") or ():
        if name in TASK_OF_ARCHITECTURE:
            return TASK_OF_ARCHITECTURE[name]
    if tensors is not None and "classifier.weight" in tensors:
        return "sequence" if _POOLER + "dense.weight" in tensors else "token"
    return "mlm"


def _load_bin(folder: str, class_name: str, ignorable_prefixes=(), encoder_only=False) -> dict[str, np.ndarray]:
    """The state dict of a folder with only pytorch_model.bin, through transformers' own (weights-only) loader.
    `encoder_only`: only the embeddings and encoder must be in the file; head tensors it lacks (which transformers
    fills randomly) are dropped, and tensors the class does not have are ignored."""
    if not any(os.path.exists(os.path.join(folder, name))
               for name in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise FileNotFoundError(f"{folder!r} has no model.safetensors, model.safetensors.index.json or "
                                "pytorch_model.bin")
    transformers = _need_transformers("reading pytorch_model.bin")
    model, info = getattr(transformers, class_name).from_pretrained(
        folder, local_files_only=True, output_loading_info=True, dtype="float32")
    state = _state_dict_of(model)
    missing = list(info["missing_keys"])
    if encoder_only:
        state = {name: value for name, value in state.items() if name not in missing}
        missing = [name for name in missing if "embeddings." in name or "encoder." in name]
    if missing:
        raise ValueError(f"{folder}: the checkpoint is missing {_listing(missing)}")
    unknown = [] if encoder_only else [name for name in info["unexpected_keys"]
                                       if not name.startswith(ignorable_prefixes) and name not in _UNUSED_NAMES]
    if unknown:       # transformers drops these silently; a layer too many is not a checkpoint we read
        raise ValueError(f"{folder}: the checkpoint has tensor(s) a {class_name} with this config does "
                         f"not have: {_listing(unknown)}")
    return state


def _read_config_json(folder: str) -> dict:
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{folder!r} is not a transformers checkpoint folder: no config.json there")
    with open(config_path, encoding="utf-8") as file:
        return json.load(file)


def from_transformers(model_or_dir, dtype: str = "float32") -> tuple[BertConfig, dict[str, np.ndarray]]:
    """(Mini-BERT config, NumPy params) from a transformers `BertForMaskedLM`, `BertForSequenceClassification` or
    `BertForTokenClassification` (config.task "mlm", "sequence", "token"; with the label map), or a local
    checkpoint folder of one (the class from config.json's architectures, else from the tensors it holds).

    A folder needs config.json and model.safetensors (or sharded model.safetensors.index.json), read directly;
    a folder with only pytorch_model.bin goes through transformers' own loader (never unpickled here). Weights
    are cast to `dtype` (float32 keeps float32 checkpoints bit-identical). For only the encoder of another BERT
    (BertModel, BertForPreTraining), see `encoder_from_transformers`.
    """
    if isinstance(model_or_dir, (str, os.PathLike)):
        folder = os.fspath(model_or_dir)
        hf_fields = _read_config_json(folder)
        tensors = _read_folder_tensors(folder)
        task = _task_of_folder(hf_fields, tensors)
        config = config_from_transformers(hf_fields, task)
        if tensors is None:
            tensors = _load_bin(folder, ARCHITECTURE_OF_TASK[task], _ignorable(config)[1])
        if (task == "mlm" and not hf_fields.get("tie_word_embeddings", True)
                and _DECODER_WEIGHT not in tensors):
            raise ValueError(f"{folder}: config.json says tie_word_embeddings=false but the checkpoint has no "
                             f"{_DECODER_WEIGHT}; Mini-BERT ties the decoder to the word embeddings")
        return config, params_from_state_dict(tensors, config, dtype)
    if not hasattr(model_or_dir, "state_dict") or not hasattr(model_or_dir, "config"):
        raise TypeError(f"from_transformers takes a transformers {', '.join(TASK_OF_ARCHITECTURE)} or a folder "
                        f"path, got {type(model_or_dir).__name__} (for the encoder of another BERT model, use "
                        "encoder_from_transformers)")
    tensors = _state_dict_of(model_or_dir)
    config = config_from_transformers(model_or_dir.config,
                                      _task_of_folder({"architectures": [type(model_or_dir).__name__]}, tensors))
    return config, params_from_state_dict(tensors, config, dtype)


def encoder_from_transformers(model_or_dir, dtype: str = "float32") -> tuple[BertConfig, dict[str, np.ndarray]]:
    """The encoder of any transformers BERT checkpoint, to start a classifier from (see
    `minibert.params.init_classifier_from`): (a masked-LM `BertConfig` with the encoder's shape, NumPy params of
    the embeddings and layers, plus pooler.dense.weight/bias where the checkpoint has a pooler).

    Reads a model object or a folder of `BertModel` (tensor names without the "bert." prefix),
    `BertForPreTraining`, `BertForMaskedLM`, `BertForSequenceClassification`, ...; every head other than the
    pooler (MLM, next-sentence, classifier) is left out. As transformers' `from_pretrained` of a classifier, the
    pooler is taken when present (BertModel with its pooling layer, BertForPreTraining, a sequence classifier)
    and absent otherwise (BertForMaskedLM has none): the caller then initialises it fresh.
    """
    if isinstance(model_or_dir, (str, os.PathLike)):
        folder = os.fspath(model_or_dir)
        hf_fields = _read_config_json(folder)
        tensors = _read_folder_tensors(folder)
        if tensors is None:
            transformers = _need_transformers("reading pytorch_model.bin")
            names = [name for name in hf_fields.get("architectures") or ()
                     if name.startswith("Bert") and hasattr(transformers, name)]
            tensors = _load_bin(folder, names[0] if names else "BertModel", encoder_only=True)
    elif hasattr(model_or_dir, "state_dict") and hasattr(model_or_dir, "config"):
        hf_fields = model_or_dir.config.to_dict()
        tensors = _state_dict_of(model_or_dir)
    else:
        raise TypeError(f"encoder_from_transformers takes a transformers BERT model or a folder path, got "
                        f"{type(model_or_dir).__name__}")
    config = config_from_transformers(hf_fields)
    tensors = {_legacy_name(name): np.asarray(value) for name, value in tensors.items()}
    if not any(name.startswith("bert.") for name in tensors):      # a BertModel: its names have no "bert." prefix
        tensors = {"bert." + name: value for name, value in tensors.items()}
    names = _encoder_names(config)
    pooler = all(hf in tensors for hf, _ in _POOLER_NAMES.values())
    if pooler:
        names.update(_POOLER_NAMES)
    hidden = config.hidden_size
    expected = {name: shape for name, shape in transformers_shapes(config).items() if name.startswith("bert.")}
    if pooler:
        expected.update({_POOLER + "dense.weight": (hidden, hidden), _POOLER + "dense.bias": (hidden,)})
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise ValueError(f"the checkpoint is missing {len(missing)} encoder tensor(s) a BERT with this config "
                         f"needs: {_listing(missing)}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape} for this "
                             "config")
    params = _convert(tensors, config, names, _caster(dtype))
    order = [name for name in param_shapes(config) if name in params] + [name for name in _POOLER_NAMES
                                                                         if name in params]
    return config, {name: params[name] for name in order}


def _read_vocab(vocab) -> list[str]:
    if isinstance(vocab, (str, os.PathLike)):
        with open(vocab, encoding="utf-8") as file:
            return [line.rstrip("\n") for line in file]
    if isinstance(vocab, Sequence) and all(isinstance(token, str) for token in vocab):
        return list(vocab)
    raise TypeError(f"vocab must be a path to a vocab.txt or a list of token strings, got {type(vocab).__name__}")


def to_transformers(params: Mapping, config: BertConfig, out_dir, vocab=None, *, backend=None,
                    do_lower_case: bool = True) -> str:
    """Write a folder that the transformers class of `config.task` (`BertForMaskedLM`,
    `BertForSequenceClassification`, `BertForTokenClassification`) loads with `from_pretrained(out_dir)` with no
    missing and no unexpected keys: config.json (with the label map for a classifier) and model.safetensors
    (float32, transformers names and [out, in] layout; a masked LM's tied decoder weight and bias are left out, as
    transformers' save_pretrained does).

    `vocab` (a vocab.txt path or a list of tokens, one per id) adds vocab.txt, tokenizer_config.json and
    special_tokens_map.json for a BERT WordPiece tokenizer (lower-cased like Mini-BERT's unless
    `do_lower_case=False`), so `pipeline("fill-mask" / "text-classification" / "token-classification",
    model=out_dir)` works offline. `params` may be backend
    arrays (pass `backend` to copy them with its to_numpy) or NumPy. Returns `out_dir`.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    if not isinstance(config, BertConfig):
        raise TypeError(f"config must be a minibert BertConfig, got {type(config).__name__}")
    state = params_to_state_dict(params, config, "float32", backend)
    tokens = None
    if vocab is not None:
        tokens = _read_vocab(vocab)
        if len(tokens) != config.vocab_size:
            raise ValueError(f"vocab has {len(tokens)} tokens but config.vocab_size={config.vocab_size}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocab repeats tokens")
        if any("\n" in token or "\r" in token for token in tokens):
            raise ValueError("vocab tokens must not contain line breaks")
        absent = [token for token in SPECIAL_TOKENS.values() if token not in tokens]
        if absent:
            raise ValueError(f"vocab lacks the special token(s) {absent}; a BERT tokenizer needs "
                             f"{list(SPECIAL_TOKENS.values())}")
        pad = SPECIAL_TOKENS["pad_token"]
        if tokens.index(pad) != config.pad_token_id:
            raise ValueError(f"vocab has {pad} at id {tokens.index(pad)} but config.pad_token_id="
                             f"{config.pad_token_id}")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with DirectoryLock(out_dir, "export directory"):      # one writer at a time
        remove_stale_temporaries(out_dir)
        atomic_write_json(os.path.join(out_dir, "config.json"), config_to_transformers(config))

        def write_model(tmp):
            try:
                save_file(state, tmp, metadata={"format": "pt"})
            except SafetensorError as exc:       # safetensors reports OS errors (a full disk) as text
                raise os_error_from(exc, tmp) from None

        atomic_write(os.path.join(out_dir, "model.safetensors"), write_model)
        if tokens is not None:
            atomic_write_bytes(os.path.join(out_dir, "vocab.txt"), vocab_bytes(tokens))
            atomic_write_json(os.path.join(out_dir, "tokenizer_config.json"), {
                "tokenizer_class": "BertTokenizer", "do_lower_case": do_lower_case, "strip_accents": None,
                "tokenize_chinese_chars": True, "model_max_length": config.max_position,
                "clean_up_tokenization_spaces": True, **SPECIAL_TOKENS})
            atomic_write_json(os.path.join(out_dir, "special_tokens_map.json"), SPECIAL_TOKENS)
    return out_dir
