"""BERT WordPiece tokenizer (lower-cased, accents stripped), trained with HuggingFace `tokenizers`.

The special tokens are fixed (`minibert.config.SPECIAL_TOKENS`): [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3,
[MASK]=4. A tokenizer is fully described by
its `vocab.txt` (one token per line, line number = id), which transformers' `BertTokenizerFast` reads and
tokenizes identically: `BertTokenizerFast.from_pretrained(<its folder>)` in any version, `vocab_file=<path>` up
to transformers 4 (5 silently ignores `vocab_file=`; pass `vocab=<path>`).

The WordPiece trainer stops when it runs out of merges, so on a small corpus the vocabulary comes out smaller
than asked (it can also be larger when the corpus alphabet alone is bigger than the request). The model's
`vocab_size` must be the tokenizer's real `vocab_size`, not the number asked for.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .config import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_IDS, SPECIAL_TOKENS, UNK_ID
from .corpus import corpus_fingerprint
from .fileio import atomic_write_bytes, remove_stale_temporaries

MAX_WORD_CHARS = 100  # longer words become [UNK], as in BERT


def default_cache_dir() -> str:
    """`$MINIBERT_CACHE` if set, else `~/.cache/minibert`."""
    return os.environ.get("MINIBERT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minibert")


def train_wordpiece(docs: Sequence[str], vocab_size: int, cache_dir: str | None = None) -> "WordPieceTokenizer":
    """Train a WordPiece vocabulary of up to `vocab_size` tokens on `docs`, or reuse the cached one.

    The vocabulary is cached as `cache_dir/<corpus fingerprint[:16]>-v<vocab_size>/vocab.txt`; when that file
    exists nothing is trained.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be an int > {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    vocab_path = os.path.join(cache_dir, f"{corpus_fingerprint(docs)[:16]}-v{vocab_size}", "vocab.txt")
    if not os.path.exists(vocab_path):
        tokenizer = _bert_tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS[UNK_ID],
                                                     max_input_chars_per_word=MAX_WORD_CHARS))
        # tokenizers numbers the "##x" pieces in hash-map order, which breaks ties between merges differently
        # from run to run (huggingface/tokenizers#1794); listing them up front, sorted, makes training repeatable.
        special_tokens = list(SPECIAL_TOKENS) + _continuing_pieces(tokenizer, docs)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                            show_progress=False)
        tokenizer.train_from_iterator(docs, trainer, length=len(docs))
        vocab = tokenizer.get_vocab()
        os.makedirs(os.path.dirname(vocab_path), exist_ok=True)
        remove_stale_temporaries(os.path.dirname(vocab_path), locked=False)   # shared cache: only dead writers'
        atomic_write_bytes(vocab_path, vocab_bytes(sorted(vocab, key=vocab.__getitem__)))
    return WordPieceTokenizer.from_vocab(vocab_path)


class WordPieceTokenizer:
    """Text <-> token ids with a fixed WordPiece vocabulary (build it with `from_vocab` or `train_wordpiece`)."""

    def __init__(self, tokens: Sequence[str]):
        tokens = list(tokens)
        if tuple(tokens[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {list(SPECIAL_TOKENS)}, "
                             f"got {tokens[:len(SPECIAL_TOKENS)]}")
        ids = {token: i for i, token in enumerate(tokens)}
        if len(ids) != len(tokens):
            raise ValueError("the vocabulary repeats tokens")
        self._tokens = tokens
        self._ids = ids
        self._tokenizer = _bert_tokenizer(models.WordPiece(ids, unk_token=SPECIAL_TOKENS[UNK_ID],
                                                           max_input_chars_per_word=MAX_WORD_CHARS))
        self._tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # "[MASK]" in text is the mask token

    @classmethod
    def from_vocab(cls, path: str) -> "WordPieceTokenizer":
        """Load a `vocab.txt` (one token per line, line number = id)."""
        with open(path, encoding="utf-8") as file:
            return cls(line.rstrip("\n") for line in file)

    def vocab_bytes(self) -> bytes:
        return vocab_bytes(self._tokens)

    def save_vocab(self, path: str) -> None:
        atomic_write_bytes(path, self.vocab_bytes())

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without added [CLS]/[SEP]; special tokens written in the text ("[MASK]")
        become their ids, as in transformers' BertTokenizerFast."""
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be a str, got {type(text).__name__}")
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of many texts at once (in parallel, in Rust)."""
        return [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids, "##" pieces joined to their word (the text comes back lower-cased)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < len(self._tokens)]
        if bad:
            raise ValueError(f"decode: token id {bad[0]} is out of range [0, {len(self._tokens)})")
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < len(self._tokens):
            raise ValueError(f"token id {token_id} is out of range [0, {len(self._tokens)})")
        return self._tokens[token_id]

    def token_to_id(self, token: str) -> int:
        if token not in self._ids:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return self._ids[token]

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def cls_id(self) -> int:
        return CLS_ID

    @property
    def sep_id(self) -> int:
        return SEP_ID

    @property
    def mask_id(self) -> int:
        return MASK_ID

    @property
    def special_ids(self) -> tuple[int, ...]:
        return SPECIAL_IDS


def _bert_tokenizer(model: models.WordPiece) -> Tokenizer:
    """BERT's uncased text pipeline around a WordPiece model (the same as transformers' BertTokenizerFast)."""
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _continuing_pieces(tokenizer: Tokenizer, docs: Sequence[str]) -> list[str]:
    """The sorted "##x" tokens of every character x that follows another one inside a pre-tokenized word."""
    chars = set()
    for doc in docs:
        words = tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(doc))
        chars.update("".join(word[1:] for word, _ in words))
    return ["##" + char for char in sorted(chars)]


def vocab_bytes(tokens: Sequence[str]) -> bytes:
    """The content of a vocab.txt: one token per line, line number = id, UTF-8."""
    return "".join(token + "\n" for token in tokens).encode("utf-8")
