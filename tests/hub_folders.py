"""Build transformers BERT folders laid out as the hub stores them (random weights, no network): Google's
vocabulary layout ([PAD]=0, [unused0..98], [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103), cased and uncased
tokenizers (vocab.txt + tokenizer_config.json, or tokenizer.json only), and the weight layouts users download
(BertForPreTraining with legacy LayerNorm gamma/beta names, a bare BertModel, sharded safetensors,
pytorch_model.bin only)."""
from __future__ import annotations

import json
import os

import numpy as np

from minibert.data.corpus import load_default_corpus

# Texts that exercise the tokenizer: accents, CJK, emoji, control characters, very long words, mixed case,
# special tokens written in the text (in and out of case), odd whitespace, punctuation runs.
VARIED_TEXTS = [
    "Hello World! The Quick brown FOX jumps over the lazy dog.",
    "Ünïcödé naïve café, ÄÖÜ straße! résumé Crème Brûlée",
    "中文 tokens 東京 and 日本語の文章 mixed with English",
    "emoji 😀 and 👍🏽 flags 🇫🇷 and symbols ★ ♥ ∑ √ ≠",
    "control\x00chars\x07and\ttabs\nnewlines\r\nand\u00a0nbsp\u200bzero-width\ufeffbom",
    "a" * 150 + " " + "supercalifragilisticexpialidocious" * 4 + " end",
    "The [MASK] returns a [CLS] list [SEP] of [PAD] items [UNK] and [mask] lower [Mask] mixed",
    "[MASK][MASK] glued[MASK]text and [unused0] and [unused1]",
    "Python's str.format() -- e.g. f'{x!r:>10}' & dict[key] != None; 3.14e-10 ... ???",
    "   leading and trailing spaces   ",
    "",
    "MiXeD CaSe WoRdS ThAt SpLiT InTo PiEcEs: JavaScript TypeScript HTTPServer getHTTPResponse",
    "Ａｌｌ ｆｕｌｌ－ｗｉｄｔｈ ｃｈａｒｓ and ﬁ ligatures and Å vs Å",
    "Ελληνικά Русский العربية עברית हिन्दी ไทย 한국어",
]


def google_vocab(cased: bool, size: int = 1200) -> list[str]:
    """A WordPiece vocabulary in Google's layout, trained on part of the embedded corpus and the varied texts
    (cased: case kept, so "Hello" and "hello" are both tokens)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=not cased)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    docs = load_default_corpus()[0][:400] + VARIED_TEXTS * 3
    trainer = trainers.WordPieceTrainer(vocab_size=size, special_tokens=special, show_progress=False)
    tokenizer.train_from_iterator(docs, trainer)
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert tokens[:1] == ["[PAD]"] and tokens[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return tokens


def write_tokenizer(folder, tokens: list[str], *, cased: bool, form: str = "vocab") -> None:
    """form "vocab": vocab.txt + tokenizer_config.json (as bert-base-cased/uncased on the hub); "json": only the
    tokenizer.json that transformers 5's save_pretrained writes (no tokenizer_config.json: read as uncased)."""
    os.makedirs(folder, exist_ok=True)
    if form == "vocab":
        with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as file:
            file.write("".join(token + "\n" for token in tokens))
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as file:
            json.dump({"do_lower_case": not cased, "model_max_length": 512}, file)
        return
    import transformers

    hf = transformers.BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=not cased)
    hf.save_pretrained(folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))


SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64)


def write_model(folder, class_name: str, vocab_size: int, *, seed: int = 0, legacy_names: bool = False,
                shard_size: str | None = None, bin_only: bool = False, **config):
    """A random transformers `class_name` (BertForPreTraining, BertModel, BertForMaskedLM, ...) saved to
    `folder`; returns the model (eval mode). legacy_names: LayerNorm weight/bias renamed gamma/beta in the file;
    shard_size: sharded safetensors; bin_only: only config.json + pytorch_model.bin."""
    import torch
    import transformers
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    hf_config = transformers.BertConfig(vocab_size=vocab_size, **{**SMALL, **config})
    model = getattr(transformers, class_name)(hf_config).eval()
    with torch.no_grad():       # nonzero biases and LayerNorm parameters, so every tensor matters
        for name, param in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    os.makedirs(folder, exist_ok=True)
    if bin_only:
        hf_config.architectures = [class_name]
        hf_config.to_json_file(os.path.join(folder, "config.json"))
        torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
        return model
    model.save_pretrained(folder, **({"max_shard_size": shard_size} if shard_size else {}))
    if legacy_names:
        path = os.path.join(folder, "model.safetensors")
        state = load_file(path)
        renamed = {name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"):
                   value for name, value in state.items()}
        save_file(renamed, path, metadata={"format": "pt"})
    return model


def random_batch(vocab_size: int, seed: int = 0, batch: int = 2, seq: int = 24):
    """input_ids, attention_mask (second row half padding), token_type_ids (a second segment) as int64."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, (batch, seq))
    mask = np.ones_like(ids)
    mask[1, seq // 2:] = 0
    types = np.zeros_like(ids)
    types[:, seq // 3:] = 1
    return ids, mask, types
