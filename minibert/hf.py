"""Checkpoints both ways between Mini-BERT and transformers' BERT (host side, NumPy arrays).

    config, params = from_transformers("path/to/bert")        # a BertForMaskedLM, or a local folder
    to_transformers(params, config, "out", vocab="vocab.txt")  # BertForMaskedLM.from_pretrained("out") loads it

`config.task` picks the transformers class: "mlm" = BertForMaskedLM, "sequence" = BertForSequenceClassification,
"token" = BertForTokenClassification (both ways). `encoder_from_transformers` reads just the encoder (and pooler)
of any BERT checkpoint (BertModel, BertForPreTraining, BertForMaskedLM, ...) to start a classifier from it with
`minibert.params.init_classifier_from`.

The config and parameter-name mapping (transposes, slices and concatenations only, so a float32 round trip is
bit-identical) is `minibert.hf_names`; this module reads and writes checkpoints and re-exports its public names.

Reading a folder's `config.json` and `model.safetensors` needs only NumPy and safetensors. torch and
transformers are imported lazily, and only where they are needed: converting a live `BertForMaskedLM`, reading a
folder that has only `pytorch_model.bin` (always through transformers' own loader: this module never unpickles),
and checking an export (`pip install -e '.[interop]'`).
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from minibert.config import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS as _TOKENS, UNK_ID, BertConfig
from minibert.fileio import (DirectoryLock, atomic_write, atomic_write_bytes, atomic_write_json, os_error_from,
                             remove_stale_temporaries)
from minibert.hf_names import (ARCHITECTURE_OF_TASK, HF_TO_MINI_ACT, TASK_OF_ARCHITECTURE, _DECODER_WEIGHT,
                               _POOLER, _POOLER_NAMES, _UNUSED_NAMES, _caster, _convert, _encoder_names,
                               _ignorable, _legacy_name, _listing, config_from_transformers,
                               config_to_transformers, params_from_state_dict, params_to_state_dict,
                               transformers_shapes)
from minibert.params import param_shapes
from minibert.tokenizer import vocab_bytes

__all__ = ["from_transformers", "to_transformers", "config_from_transformers", "config_to_transformers",
           "encoder_from_transformers", "params_from_state_dict", "params_to_state_dict", "transformers_shapes",
           "HF_TO_MINI_ACT", "TASK_OF_ARCHITECTURE"]

INTEROP_HINT = "pip install -e '.[interop]'"

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
