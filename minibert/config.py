"""Model configuration: one dataclass, with the presets the project ships."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

HIDDEN_ACTS = ("gelu", "gelu_tanh")

# The special tokens, defined once for the tokenizer, the data, the config and inference: token i has id i.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
SPECIAL_IDS = tuple(range(len(SPECIAL_TOKENS)))
IGNORE_LABEL = -100     # a label that asks for no prediction (the loss skips it), as in BERT

# name: (num_layers, hidden_size, num_heads, intermediate_size, max_position, vocab_size)
PRESETS = {
    "seed": (3, 192, 4, 768, 64, 8192),
    "tiny": (2, 128, 2, 512, 128, 8192),
    "mini": (4, 256, 4, 1024, 512, 8192),
    "small": (4, 512, 8, 2048, 512, 8192),
    "base": (12, 768, 12, 3072, 512, 30522),
}


@dataclass(frozen=True)
class BertConfig:
    """Shape and hyper-parameters of a BERT masked-LM (names follow the paper; defaults follow BERT-base)."""

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
    pad_token_id: int = PAD_ID

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

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> "BertConfig":
        """A named size (`seed`, `tiny`, `mini`, `small`, `base`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
        layers, hidden, heads, ffn, max_pos, vocab = PRESETS[name]
        fields = dict(num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=ffn,
                      max_position=max_pos, vocab_size=vocab)
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"BertConfig.preset({name!r}): unknown fields {unknown}; "
                             f"allowed: {[f.name for f in dataclasses.fields(cls)]}")
        fields.update(overrides)
        return cls(**fields)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "BertConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown BertConfig fields {unknown}; allowed: {sorted(known)}")
        return cls(**fields)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
