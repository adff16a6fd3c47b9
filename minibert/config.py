"""Model configuration: one dataclass, with the presets the project ships."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import NamedTuple

HIDDEN_ACTS = ("gelu", "gelu_tanh")
TASKS = ("mlm", "sequence", "token")
PROBLEM_TYPES = ("single_label_classification", "regression")
# fields that only a classification config (task "sequence" or "token") sets; an MLM config leaves them None and
# its to_dict() leaves them (and `task`) out, so MLM configs serialise exactly as before the classification heads
CLASSIFIER_FIELDS = ("num_labels", "id2label", "label2id", "problem_type", "classifier_dropout")

# The special token ids (pad, cls, sep, mask, ...) belong to a vocabulary: ask the tokenizer
# (`minibert.data.tokenizer.WordPieceTokenizer`), never a constant. The model needs only the pad id (`pad_token_id`).
IGNORE_LABEL = -100     # a label that asks for no prediction (the loss skips it), as in BERT


class Preset(NamedTuple):
    """A named model size: the fields of `BertConfig` it sets."""
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    max_position: int
    vocab_size: int


PRESETS = {
    "seed": Preset(3, 192, 4, 768, 64, 8192),
    "tiny": Preset(2, 128, 2, 512, 128, 8192),
    "mini": Preset(4, 256, 4, 1024, 512, 8192),
    "small": Preset(4, 512, 8, 2048, 512, 8192),
    "base": Preset(12, 768, 12, 3072, 512, 30522),
}


@dataclass(frozen=True)
class BertConfig:
    """Shape and hyper-parameters of a BERT (names follow the paper; defaults follow BERT-base).

    `task` picks the head: "mlm" (masked-LM, the default), "sequence" (transformers'
    BertForSequenceClassification: pooler + classifier on [CLS]) or "token" (BertForTokenClassification: a
    classifier on every position). Classification configs also carry, as transformers' config does:
      num_labels: classes (default len(id2label), else 2); 1 on a "sequence" task means regression;
      id2label / label2id: {int id: str label} and its inverse (default "LABEL_{i}"); JSON keys "0", "1", ...
        are read as ints;
      problem_type: "single_label_classification" (cross-entropy) or "regression" (MSE; num_labels == 1 only);
        default "regression" when num_labels == 1, as transformers;
      classifier_dropout: the dropout rate before the classifier (None: hidden_dropout, as transformers).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0       # the [PAD] row of the word embeddings (the tokenizer's pad_id)
    task: str = "mlm"
    num_labels: int | None = None
    # dicts are not hashable: left out of the hash (equal configs still hash equal), compared as usual
    id2label: dict | None = dataclasses.field(default=None, hash=False)
    label2id: dict | None = dataclasses.field(default=None, hash=False)
    problem_type: str | None = None
    classifier_dropout: float | None = None

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position", "type_vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"BertConfig.hidden_size={self.hidden_size} must be divisible by "
                             f"num_heads={self.num_heads}")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"BertConfig.hidden_act must be one of {HIDDEN_ACTS}, got {self.hidden_act!r}")
        for name in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {value!r}")
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"BertConfig.{name} must be a number > 0, got {value!r}")
        if (isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int)
                or not 0 <= self.pad_token_id < self.vocab_size):
            raise ValueError(f"BertConfig.pad_token_id must be in [0, vocab_size={self.vocab_size}), "
                             f"got {self.pad_token_id!r}")
        self._check_task()

    def _check_task(self):
        """Validate the classification fields and fill their defaults (as transformers' PretrainedConfig)."""
        if self.task not in TASKS:
            raise ValueError(f"BertConfig.task must be one of {TASKS}, got {self.task!r}")
        if self.task == "mlm":
            given = [name for name in CLASSIFIER_FIELDS if getattr(self, name) is not None]
            if given:
                raise ValueError(f"BertConfig: {given} apply only to a classification config (task 'sequence' "
                                 f"or 'token'); task is 'mlm'")
            return
        id2label = self.id2label
        if id2label is not None:
            if not isinstance(id2label, dict) or not id2label:
                raise ValueError(f"BertConfig.id2label must be a non-empty dict {{id: label}}, got {id2label!r}")
            id2label = {_label_id("id2label", key): value for key, value in id2label.items()}
            if sorted(id2label) != list(range(len(id2label))):
                raise ValueError(f"BertConfig.id2label ids must be 0..{len(id2label) - 1}, got {sorted(id2label)}")
            bad = [value for value in id2label.values() if not isinstance(value, str) or not value]
            if bad:
                raise ValueError(f"BertConfig.id2label labels must be non-empty strings, got {bad[0]!r}")
            if len(set(id2label.values())) != len(id2label):
                raise ValueError(f"BertConfig.id2label repeats a label: {sorted(id2label.values())}")
            id2label = {i: id2label[i] for i in range(len(id2label))}
        num_labels = self.num_labels
        if num_labels is None:
            num_labels = len(id2label) if id2label is not None else 2
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels <= 0:
            raise ValueError(f"BertConfig.num_labels must be a positive int, got {num_labels!r}")
        if id2label is None:
            id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        if len(id2label) != num_labels:
            raise ValueError(f"BertConfig.num_labels={num_labels} but id2label has {len(id2label)} labels; "
                             "they must match")
        label2id = {label: i for i, label in id2label.items()}
        if self.label2id is not None:
            given = (self.label2id if isinstance(self.label2id, dict) else None)
            if given is None or {k: _label_id("label2id", v) for k, v in given.items()} != label2id:
                raise ValueError(f"BertConfig.label2id must be the inverse of id2label ({label2id}), "
                                 f"got {self.label2id!r}")
        problem_type = self.problem_type
        if problem_type is None:
            problem_type = "regression" if num_labels == 1 else "single_label_classification"
        if problem_type not in PROBLEM_TYPES:
            raise ValueError(f"BertConfig.problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")
        if (problem_type == "regression") != (num_labels == 1):
            raise ValueError(f"BertConfig.problem_type={problem_type!r} with num_labels={num_labels}: regression "
                             "needs num_labels == 1, classification num_labels >= 2")
        if self.task == "token" and problem_type != "single_label_classification":
            raise ValueError("BertConfig.task='token' supports only problem_type 'single_label_classification' "
                             f"(num_labels >= 2), got {problem_type!r} with num_labels={num_labels}")
        dropout = self.classifier_dropout
        if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                    or not 0.0 <= dropout < 1.0):
            raise ValueError(f"BertConfig.classifier_dropout must be None or in [0, 1), got {dropout!r}")
        for name, value in (("num_labels", num_labels), ("id2label", id2label), ("label2id", label2id),
                            ("problem_type", problem_type)):
            object.__setattr__(self, name, value)

    @property
    def classifier_dropout_rate(self) -> float:
        """The dropout before the classifier: classifier_dropout, or hidden_dropout when None (transformers)."""
        return self.hidden_dropout if self.classifier_dropout is None else self.classifier_dropout

    @property
    def has_dropout(self) -> bool:
        """Whether training draws dropout masks anywhere: in the encoder (hidden, attention) or, for a classifier,
        before the classifier (`classifier_dropout_rate`, which may be on alone)."""
        return (self.hidden_dropout > 0 or self.attention_dropout > 0
                or (self.task != "mlm" and self.classifier_dropout_rate > 0))

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> "BertConfig":
        """A named size (`seed`, `tiny`, `mini`, `small`, `base`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
        fields = PRESETS[name]._asdict()
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"BertConfig.preset({name!r}): unknown fields {unknown}; "
                             f"allowed: {[f.name for f in dataclasses.fields(cls)]}")
        fields.update(overrides)
        return cls(**fields)

    def to_dict(self) -> dict:
        """The fields as a JSON-friendly dict (id2label keys as strings, as transformers' config.json); an MLM
        config leaves out `task` and the classification fields, so its dict is what it was before them."""
        fields = dataclasses.asdict(self)
        if self.task == "mlm":
            for name in ("task", *CLASSIFIER_FIELDS):
                del fields[name]
        else:
            fields["id2label"] = {str(i): label for i, label in self.id2label.items()}
        return fields

    @classmethod
    def from_dict(cls, fields: dict) -> "BertConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown BertConfig fields {unknown}; allowed: {sorted(known)}")
        return cls(**fields)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _label_id(where: str, value) -> int:
    """A label id from a Python int or its JSON spelling ("3"); anything else is refused by name."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"BertConfig.{where}: label ids must be ints (or digit strings in JSON), got {value!r}")
    return value
