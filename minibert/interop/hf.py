"""Checkpoints both ways between Mini-BERT and transformers' BERT (host side, NumPy arrays).

    config, params = from_transformers("path/to/bert")        # a BertForMaskedLM, or a local folder
    to_transformers(params, config, "out", vocab="vocab.txt")  # BertForMaskedLM.from_pretrained("out") loads it

`config.task` picks the transformers class: "mlm" = BertForMaskedLM, "sequence" = BertForSequenceClassification,
"token" = BertForTokenClassification (both ways). `encoder_from_transformers` reads just the encoder (and pooler)
of any BERT checkpoint (BertModel, BertForPreTraining, BertForMaskedLM, ...) to start a classifier from it with
`minibert.params.init_classifier_from`.

The config and parameter-name mapping (transposes, slices and concatenations only, so a float32 round trip is
bit-identical) is `minibert.interop.hf_names`; this module reads and writes checkpoints and re-exports its public names.

Reading a folder's `config.json` and `model.safetensors` (or its shards) needs only NumPy and safetensors. A
folder with only `pytorch_model.bin` (a pickle) is refused with the command that converts it
(`scripts/convert_bin.py`): this module never unpickles. torch and transformers are imported lazily, only to
convert a live transformers model or to check an export (`pip install -e '.[interop]'`).
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from minibert.config import BertConfig
from minibert.storage.fileio import (DirectoryLock, atomic_write, atomic_write_bytes, atomic_write_json, os_error_from,
                             remove_stale_temporaries)
from minibert.interop.hf_names import (ARCHITECTURE_OF_TASK, HF_TO_MINI_ACT, TASK_OF_ARCHITECTURE, _CLASSIFIER_NAMES,
                               _DECODER_WEIGHT, _POOLER, _POOLER_NAMES, _caster, _convert, _encoder_names,
                               _legacy_name, _listing, config_from_transformers,
                               config_to_transformers, params_from_state_dict, params_to_state_dict,
                               transformers_shapes)
from minibert.params import init_host_params
from minibert.nn.layout import head_shapes, param_shapes
from minibert.data.tokenizer import WordPieceTokenizer, load_tokenizer

__all__ = ["from_transformers", "to_transformers", "config_from_transformers", "config_to_transformers",
           "encoder_from_transformers", "masked_lm_from_transformers", "checkpoint_config", "load_tokenizer",
           "params_from_state_dict", "params_to_state_dict", "transformers_shapes", "HF_TO_MINI_ACT",
           "TASK_OF_ARCHITECTURE", "ARCHITECTURE_OF_TASK"]

INTEROP_HINT = "pip install -e '.[interop]'"
CONVERT_HINT = "python scripts/convert_bin.py"


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


def _read_folder_tensors(folder: str) -> dict[str, np.ndarray]:
    """The state dict of a local checkpoint folder: model.safetensors, or the shards its
    model.safetensors.index.json lists. Anything else is refused before any work, naming what the folder holds:
    pytorch_model.bin (a pickle: never loaded here) with the command that converts it."""
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(single):
        return _read_safetensors(single)
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as file:
                shards = sorted(set(json.load(file)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{index} is not a safetensors index (a JSON object with a weight_map): {exc}") from None
        absent = [shard for shard in shards if not os.path.isfile(os.path.join(folder, shard))]
        if absent:
            raise FileNotFoundError(f"{folder}: model.safetensors.index.json lists shard(s) that are not there: "
                                    f"{_listing(absent)}")
        tensors = {}
        for shard in shards:
            tensors.update(_read_safetensors(os.path.join(folder, shard)))
        return tensors
    found = sorted(os.listdir(folder))
    if any(name.startswith("pytorch_model") and name.endswith((".bin", ".bin.index.json")) for name in found):
        raise ValueError(f"{folder} holds its weights only as pytorch_model.bin, a pickle, which Mini-BERT does not "
                         f"load (unpickling can run code); convert it to model.safetensors once with:\n"
                         f"    {CONVERT_HINT} {folder}")
    raise FileNotFoundError(f"{folder} has no model.safetensors or model.safetensors.index.json (found: "
                            f"{', '.join(found) or 'nothing'}); Mini-BERT reads BERT weights as safetensors")


def _state_dict_of(model) -> dict[str, np.ndarray]:
    return {name: tensor.detach().cpu().float().numpy() if tensor.is_floating_point() else tensor.cpu().numpy()
            for name, tensor in model.state_dict().items()}


# --- public API ---------------------------------------------------------------------------------------------------

def _task_of_folder(hf_fields: dict, tensors) -> str:
    """config.task of a checkpoint (folder or model): from config.json's architectures (or the model's class)
    when they name a class Mini-BERT reads; otherwise from the tensors (a classifier with a pooler: sequence;
    without: token; none: masked LM)."""
    for name in hf_fields.get("architectures") or ():
        if name in TASK_OF_ARCHITECTURE:
            return TASK_OF_ARCHITECTURE[name]
    if "classifier.weight" in tensors:
        return "sequence" if _POOLER + "dense.weight" in tensors else "token"
    return "mlm"


def _read_config_json(folder: str) -> dict:
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        found = sorted(os.listdir(folder)) if os.path.isdir(folder) else None
        raise FileNotFoundError(f"{folder!r} is not a transformers checkpoint folder: no config.json there"
                                + (" (no such directory)" if found is None else
                                   f" (found: {', '.join(found) or 'nothing'})"))
    with open(config_path, encoding="utf-8") as file:
        try:
            fields = json.load(file)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{config_path} must hold a JSON object, got {type(fields).__name__}")
    return fields


def _normalized(tensors: Mapping) -> dict[str, np.ndarray]:
    """Tensor names as a transformers BERT with a head names them: legacy LayerNorm gamma/beta renamed, and the
    "bert." prefix added where the checkpoint is a bare BertModel (whose names have none)."""
    tensors = {_legacy_name(name): np.asarray(value) for name, value in tensors.items()}
    if not any(name.startswith("bert.") for name in tensors):
        tensors = {"bert." + name: value for name, value in tensors.items()}
    return tensors


def _read_checkpoint(model_or_dir, who: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json fields, normalized tensors) of a folder, or of a live transformers model."""
    if isinstance(model_or_dir, (str, os.PathLike)):
        folder = os.fspath(model_or_dir)
        fields = _read_config_json(folder)
        return fields, _normalized(_read_folder_tensors(folder))
    if hasattr(model_or_dir, "state_dict") and hasattr(model_or_dir, "config"):
        fields = {**model_or_dir.config.to_dict(), "architectures": [type(model_or_dir).__name__]}
        return fields, _normalized(_state_dict_of(model_or_dir))
    raise TypeError(f"{who} takes a transformers BERT model or a folder path, got {type(model_or_dir).__name__}")


def from_transformers(model_or_dir, dtype: str = "float32") -> tuple[BertConfig, dict[str, np.ndarray]]:
    """(Mini-BERT config, NumPy params) from a transformers `BertForMaskedLM`, `BertForPreTraining` (its
    next-sentence head and pooler left out), `BertForSequenceClassification` or `BertForTokenClassification`
    (config.task "mlm", "sequence", "token"; with the label map), or a local checkpoint folder of one (the class
    from config.json's architectures, else from the tensors it holds).

    A folder needs config.json and model.safetensors (or sharded model.safetensors.index.json); legacy
    LayerNorm gamma/beta names are read. Weights are cast to `dtype` (float32 keeps float32 checkpoints
    bit-identical). For a checkpoint without a masked-LM head (BertModel), see `masked_lm_from_transformers`;
    for only the encoder, `encoder_from_transformers`.
    """
    hf_fields, tensors = _read_checkpoint(model_or_dir, "from_transformers")
    config = config_from_transformers(hf_fields, _task_of_folder(hf_fields, tensors))
    if config.task == "mlm" and not any(name.startswith("cls.predictions.") for name in tensors):
        kind = ", ".join(hf_fields.get("architectures") or ["BertModel"])
        raise ValueError(f"{model_or_dir} has no masked-LM head (a {kind}: an encoder only), so it cannot fill "
                         "masks; continue pretraining it (scripts/train.py --init-from, which draws a fresh head) "
                         "or fine-tune it (scripts/finetune.py --init-from)")
    if (config.task == "mlm" and not hf_fields.get("tie_word_embeddings", True)
            and _DECODER_WEIGHT not in tensors):
        raise ValueError(f"{model_or_dir}: config.json says tie_word_embeddings=false but the checkpoint has no "
                         f"{_DECODER_WEIGHT}; Mini-BERT ties the decoder to the word embeddings")
    return config, params_from_state_dict(tensors, config, dtype)


def checkpoint_config(folder) -> BertConfig:
    """The config `from_transformers(folder)` gives (task from config.json's architectures, else from the tensor
    names in the safetensors headers), without reading the weights."""
    from safetensors import safe_open

    folder = os.fspath(folder)
    hf_fields = _read_config_json(folder)
    if not any(name in TASK_OF_ARCHITECTURE for name in hf_fields.get("architectures") or ()):
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as file:
                names = list(json.load(file)["weight_map"])
        elif os.path.isfile(os.path.join(folder, "model.safetensors")):
            with safe_open(os.path.join(folder, "model.safetensors"), framework="np") as file:
                names = list(file.keys())
        else:
            names = list(_read_folder_tensors(folder))     # raises, naming what the folder holds
        return config_from_transformers(hf_fields, _task_of_folder(hf_fields, _normalized(dict.fromkeys(names, 0))))
    return config_from_transformers(hf_fields, _task_of_folder(hf_fields, {}))


def _dropped_heads(tensors: Mapping, keep: tuple[str, ...]) -> list[str]:
    """What a checkpoint holds that the model being built leaves out, in words (for one log line)."""
    heads = {"cls.seq_relationship.": "the next-sentence head (cls.seq_relationship)", _POOLER: "the pooler",
             "classifier.": "the classifier", "cls.predictions.": "the masked-LM head"}
    return [words for prefix, words in heads.items()
            if prefix not in keep and any(name.startswith(prefix) for name in tensors)]


def masked_lm_from_transformers(model_or_dir, dtype: str = "float32",
                                seed: int = 0) -> tuple[BertConfig, dict[str, np.ndarray], list[str]]:
    """A masked LM from any transformers BERT checkpoint (to continue pretraining or fill masks): (config,
    NumPy params, notes). `BertForMaskedLM` and `BertForPreTraining` keep their MLM head; a checkpoint without one
    (`BertModel`, a classifier) gets a fresh head drawn as `init_host_params(config, seed)` draws it. The notes
    say, once each, what was left out (next-sentence head, pooler, classifier) and what was drawn fresh."""
    hf_fields, tensors = _read_checkpoint(model_or_dir, "masked_lm_from_transformers")
    config = config_from_transformers(hf_fields)
    head = [name for name in transformers_shapes(config) if name.startswith("cls.predictions.")]
    dropped = _dropped_heads(tensors, keep=("cls.predictions.",))
    notes = [f"left out {' and '.join(dropped)}: a masked LM does not use it"] if dropped else []
    if all(name in tensors for name in head):
        kept = {name: value for name, value in tensors.items() if not name.startswith("classifier.")}
        return config, params_from_state_dict(kept, config, dtype), notes
    _, encoder = _encoder_params(hf_fields, tensors, dtype)
    fresh = init_host_params(config, seed, dtype)
    params = {name: encoder[name] if name in encoder else fresh[name] for name in param_shapes(config)}
    notes.append(f"the checkpoint has no masked-LM head ({', '.join(hf_fields.get('architectures') or ['BertModel'])}"
                 f"): drew {', '.join(head_shapes(config))} fresh (seed {seed})")
    return config, params, notes


def encoder_from_transformers(model_or_dir, dtype: str = "float32") -> tuple[BertConfig, dict[str, np.ndarray]]:
    """The encoder of any transformers BERT checkpoint, to start a classifier from (see
    `minibert.params.init_classifier_from`): (a masked-LM `BertConfig` with the encoder's shape, NumPy params of
    the embeddings and layers, plus pooler.dense.weight/bias and classifier.weight/bias where the checkpoint
    has them).

    Reads a model object or a folder of `BertModel` (tensor names without the "bert." prefix),
    `BertForPreTraining`, `BertForMaskedLM`, `BertForSequenceClassification`, ...; the MLM and next-sentence
    heads are left out. As transformers' `from_pretrained` of a classifier, the pooler and classifier are taken
    when present (BertModel with its pooling layer, BertForPreTraining, a sequence classifier) and absent
    otherwise (BertForMaskedLM has none): the caller then initialises them fresh.
    """
    hf_fields, tensors = _read_checkpoint(model_or_dir, "encoder_from_transformers")
    return _encoder_params(hf_fields, tensors, dtype)


def _encoder_params(hf_fields: dict, tensors: Mapping, dtype) -> tuple[BertConfig, dict[str, np.ndarray]]:
    config = config_from_transformers(hf_fields)
    names = _encoder_names(config)
    hidden = config.hidden_size
    expected = {name: shape for name, shape in transformers_shapes(config).items() if name.startswith("bert.")}
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise ValueError(f"the checkpoint is missing {len(missing)} encoder tensor(s) a BERT with this config "
                         f"needs: {_listing(missing)}")
    if all(hf in tensors for hf, _ in _POOLER_NAMES.values()):
        names.update(_POOLER_NAMES)
        expected.update({_POOLER + "dense.weight": (hidden, hidden), _POOLER + "dense.bias": (hidden,)})
    if "classifier.weight" in tensors and "classifier.bias" in tensors:
        names.update(_CLASSIFIER_NAMES)
        labels = tensors["classifier.bias"].shape[0] if tensors["classifier.bias"].ndim == 1 else -1
        expected.update({"classifier.weight": (labels, hidden), "classifier.bias": (labels,)})
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape} for this "
                             "config")
    params = _convert(tensors, config, names, _caster(dtype))
    extra = [*_POOLER_NAMES, *_CLASSIFIER_NAMES]
    order = [name for name in param_shapes(config) if name in params] + [name for name in extra if name in params]
    return config, {name: params[name] for name in order}


def _as_tokenizer(vocab, do_lower_case: bool) -> WordPieceTokenizer:
    """A tokenizer from what `to_transformers` accepts: a WordPieceTokenizer (kept as it is), a folder with one
    (`load_tokenizer`), a vocab.txt path or a list of token strings (BERT's default special tokens)."""
    if isinstance(vocab, WordPieceTokenizer):
        return vocab
    if isinstance(vocab, (str, os.PathLike)):
        if os.path.isdir(vocab):
            return load_tokenizer(vocab)
        return WordPieceTokenizer.from_vocab(vocab, do_lower_case=do_lower_case)
    if isinstance(vocab, Sequence) and all(isinstance(token, str) for token in vocab):
        return WordPieceTokenizer(vocab, do_lower_case=do_lower_case)
    raise TypeError(f"vocab must be a WordPieceTokenizer, a tokenizer folder, a vocab.txt path or a list of token "
                    f"strings, got {type(vocab).__name__}")


def to_transformers(params: Mapping, config: BertConfig, out_dir, vocab=None, *, backend=None,
                    do_lower_case: bool = True) -> str:
    """Write a folder that the transformers class of `config.task` (`BertForMaskedLM`,
    `BertForSequenceClassification`, `BertForTokenClassification`) loads with `from_pretrained(out_dir)` with no
    missing and no unexpected keys: config.json (with the label map for a classifier) and model.safetensors
    (float32, transformers names and [out, in] layout; a masked LM's tied decoder weight and bias are left out, as
    transformers' save_pretrained does).

    `vocab` adds the tokenizer: vocab.txt, tokenizer_config.json (casing, accents, special-token strings) and
    special_tokens_map.json, so `BertTokenizerFast.from_pretrained(out_dir)` tokenizes exactly as the tokenizer
    does and `pipeline("fill-mask" / "text-classification" / "token-classification", model=out_dir)` works
    offline. It is a `WordPieceTokenizer` (e.g. a run's, from `load_tokenizer`: its layout and casing are kept),
    or a vocab.txt path or list of tokens (lower-cased unless `do_lower_case=False`). `params` may be backend
    arrays (pass `backend` to copy them with its to_numpy) or NumPy. Returns `out_dir`.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    if not isinstance(config, BertConfig):
        raise TypeError(f"config must be a minibert BertConfig, got {type(config).__name__}")
    state = params_to_state_dict(params, config, "float32", backend)
    tokenizer = None
    if vocab is not None:
        tokenizer = _as_tokenizer(vocab, do_lower_case)
        if tokenizer.vocab_size != config.vocab_size:
            raise ValueError(f"vocab has {tokenizer.vocab_size} tokens but config.vocab_size={config.vocab_size}")
        tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
        if any("\n" in token or "\r" in token for token in tokens):
            raise ValueError("vocab tokens must not contain line breaks")
        if tokenizer.pad_id != config.pad_token_id:
            raise ValueError(f"vocab has {tokenizer.special_tokens['pad_token']} at id {tokenizer.pad_id} but "
                             f"config.pad_token_id={config.pad_token_id}")
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
        if tokenizer is not None:
            atomic_write_bytes(os.path.join(out_dir, "vocab.txt"), tokenizer.vocab_bytes())
            atomic_write_json(os.path.join(out_dir, "tokenizer_config.json"),
                              {"model_max_length": config.max_position, **tokenizer.tokenizer_config()})
            atomic_write_json(os.path.join(out_dir, "special_tokens_map.json"), tokenizer.special_tokens)
    return out_dir
