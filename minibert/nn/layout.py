"""The parameter layout: every parameter's name and shape for a config, and which ones get no weight decay.
Documented in docs/PARAMS.md. Weights are stored [in, out], so a dense layer is x @ W + b. Pure Python: the math
(`minibert.nn`) and the host side (`minibert.params` draws the initial weights) both read it."""
from __future__ import annotations

from minibert.config import BertConfig


def param_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in a fixed order."""
    hidden, inter = config.hidden_size, config.intermediate_size
    shapes = {
        "embeddings.word": (config.vocab_size, hidden),
        "embeddings.position": (config.max_position, hidden),
        "embeddings.token_type": (config.type_vocab_size, hidden),
        "embeddings.ln.weight": (hidden,),
        "embeddings.ln.bias": (hidden,),
    }
    for i in range(config.num_layers):
        shapes.update({
            f"layers.{i}.attn.qkv.weight": (hidden, 3 * hidden),
            f"layers.{i}.attn.qkv.bias": (3 * hidden,),
            f"layers.{i}.attn.out.weight": (hidden, hidden),
            f"layers.{i}.attn.out.bias": (hidden,),
            f"layers.{i}.attn.ln.weight": (hidden,),
            f"layers.{i}.attn.ln.bias": (hidden,),
            f"layers.{i}.ffn.in.weight": (hidden, inter),
            f"layers.{i}.ffn.in.bias": (inter,),
            f"layers.{i}.ffn.out.weight": (inter, hidden),
            f"layers.{i}.ffn.out.bias": (hidden,),
            f"layers.{i}.ffn.ln.weight": (hidden,),
            f"layers.{i}.ffn.ln.bias": (hidden,),
        })
    shapes.update(head_shapes(config))
    return shapes


def head_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """The head's parameters for `config.task`: the MLM head ("mlm"); pooler + classifier ("sequence", as
    BertForSequenceClassification); classifier only ("token", as BertForTokenClassification, which has no pooler)."""
    hidden = config.hidden_size
    if config.task == "mlm":
        return {
            "head.dense.weight": (hidden, hidden),
            "head.dense.bias": (hidden,),
            "head.ln.weight": (hidden,),
            "head.ln.bias": (hidden,),
            "head.decoder_bias": (config.vocab_size,),
        }
    shapes = {}
    if config.task == "sequence":
        shapes.update({"pooler.dense.weight": (hidden, hidden), "pooler.dense.bias": (hidden,)})
    shapes.update({"classifier.weight": (hidden, config.num_labels), "classifier.bias": (config.num_labels,)})
    return shapes


def is_layernorm_weight(name: str) -> bool:
    return name.endswith("ln.weight")


def is_no_decay(name: str) -> bool:
    """Biases and LayerNorm parameters get no weight decay (as in BERT)."""
    return name.endswith("bias") or ".ln." in name
