"""What the heads look at: the attention probabilities of one text, and a picture of every layer x head map.

The forward pass already computes them: each layer's `AttentionCache` keeps p = softmax(q k^T / sqrt(D) + mask)
[B, A, T, T] for the backward (`minibert.nn.attention.attention_forward`), so `attention_maps` runs the encoder once
(eval mode: no dropout) and reads them out. Row i of a head's map is how token i spreads its attention over the
T tokens (it sums to 1). One text, no padding: every token is real, so nothing is masked.

    python scripts/predict.py RUN "the [MASK] statement leaves a loop" --attention attn.png
"""
from __future__ import annotations

import numpy as np

from minibert.config import BertConfig
from minibert.data.finetune_encode import encode_texts
from minibert.nn.model import encoder_forward
from minibert.data.tokenizer import WordPieceTokenizer


def attention_maps(text: str, config: BertConfig, params, tokenizer: WordPieceTokenizer, backend,
                   text_pair: str | None = None, max_len: int | None = None) -> tuple[list[str], np.ndarray]:
    """(the T tokens, [CLS] and [SEP] included; the attention probabilities [L, A, T, T] as float64) of `text`
    (and `text_pair`), cut to `max_len` tokens (default: the model's max_position)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    encoded = encode_texts([text], tokenizer, max_len or config.max_position,
                           None if text_pair is None else [text_pair])
    ids, types = encoded.input_ids[0][None, :], encoded.token_type_ids[0][None, :]       # [T] -> [1, T]
    _, cache = encoder_forward(params, backend.asarray(ids), backend.asarray(types),
                               backend.asarray(np.ones_like(ids)), config, backend)
    probs = np.stack([backend.to_numpy(layer.attn.softmax.probs)[0] for layer in cache.layers])  # [L, A, T, T]
    return [tokenizer.id_to_token(int(i)) for i in ids[0]], probs.astype(np.float64)


def plot_attention(tokens: list[str], probs: np.ndarray, path, title: str = "") -> None:
    """A grid of L rows (layers) x A columns (heads), each the T x T map (query tokens down, key tokens across,
    darker = more attention); token labels on the first column and the last row when T <= 40."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads, seq = probs.shape[:3]
    cell = 2.2 if seq <= 24 else 3.0
    fig, axes = plt.subplots(layers, heads, figsize=(cell * heads + 1.0, cell * layers + 0.8), squeeze=False)
    labelled = seq <= 40
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer, head]
            ax.imshow(probs[layer, head], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_xticks(range(seq) if labelled and layer == layers - 1 else [])
            ax.set_yticks(range(seq) if labelled and head == 0 else [])
            if labelled and layer == layers - 1:
                ax.set_xticklabels(tokens, rotation=90, fontsize=6)
            if labelled and head == 0:
                ax.set_yticklabels(tokens, fontsize=6)
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
