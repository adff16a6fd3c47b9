"""BERT WordPiece tokenizer, as transformers' `BertTokenizerFast` builds it, trained with HuggingFace `tokenizers`.

A vocabulary Mini-BERT trains (`train_wordpiece`) puts its special tokens first: [PAD]=0, [UNK]=1, [CLS]=2,
[SEP]=3, [MASK]=4 (`MINIBERT_SPECIAL_TOKENS`), and is lower-cased. A vocabulary read from a transformers folder
(`load_tokenizer`) keeps its own layout (Google's: [PAD]=0, [unused0..98], [UNK]=100, [CLS]=101, [SEP]=102,
[MASK]=103), casing and special-token strings: every user of the special ids (packing, masking, padding, fill-mask,
export) asks the tokenizer, never a constant.

A run directory keeps its tokenizer as vocab.txt (one token per line, line number = id) plus, when it is not
Mini-BERT's default, a tokenizer_config.json: the files transformers' `BertTokenizerFast.from_pretrained(<folder>)`
reads, and tokenizes identically (transformers 5 rebuilds the BERT pipeline from the vocabulary and
tokenizer_config.json even when a tokenizer.json is present; `load_tokenizer` does the same).

The WordPiece trainer stops when it runs out of merges, so on a small corpus the vocabulary comes out smaller
than asked (it can also be larger when the corpus alphabet alone is bigger than the request). The model's
`vocab_size` must be the tokenizer's real `vocab_size`, not the number asked for.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from minibert.data.corpus import corpus_fingerprint
from minibert.storage.fileio import atomic_write_bytes, json_bytes, remove_stale_temporaries

# The special tokens of a vocabulary Mini-BERT trains, in id order (token i has id i).
MINIBERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# transformers' BertTokenizer defaults: role -> token string, for a folder whose tokenizer_config.json names none
DEFAULT_SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                          "mask_token": "[MASK]"}
TOKENIZER_CONFIG = "tokenizer_config.json"
_UNUSED = re.compile(r"\[unused\d+\]")        # Google's placeholder tokens: never masked, never drawn
_ADDED_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")
MAX_WORD_CHARS = 100  # longer words become [UNK], as in BERT


def default_cache_dir() -> str:
    """`$MINIBERT_CACHE` if set, else `~/.cache/minibert`."""
    return os.environ.get("MINIBERT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minibert")


def train_wordpiece(docs: Sequence[str], vocab_size: int, cache_dir: str | None = None) -> "WordPieceTokenizer":
    """Train a WordPiece vocabulary of up to `vocab_size` tokens on `docs`, or reuse the cached one.

    The vocabulary is cached as `cache_dir/<corpus fingerprint[:16]>-v<vocab_size>/vocab.txt`; when that file
    exists nothing is trained.
    """
    if (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
            or vocab_size <= len(MINIBERT_SPECIAL_TOKENS)):
        raise ValueError(f"vocab_size must be an int > {len(MINIBERT_SPECIAL_TOKENS)}, got {vocab_size!r}")
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    vocab_path = os.path.join(cache_dir, f"{corpus_fingerprint(docs)[:16]}-v{vocab_size}", "vocab.txt")
    if not os.path.exists(vocab_path):
        tokenizer = _bert_tokenizer(models.WordPiece(unk_token=DEFAULT_SPECIAL_TOKENS["unk_token"],
                                                     max_input_chars_per_word=MAX_WORD_CHARS))
        # tokenizers numbers the "##x" pieces in hash-map order, which breaks ties between merges differently
        # from run to run (huggingface/tokenizers#1794); listing them up front, sorted, makes training repeatable.
        special_tokens = list(MINIBERT_SPECIAL_TOKENS) + _continuing_pieces(tokenizer, docs)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                            show_progress=False)
        tokenizer.train_from_iterator(docs, trainer, length=len(docs))
        vocab = tokenizer.get_vocab()
        os.makedirs(os.path.dirname(vocab_path), exist_ok=True)
        remove_stale_temporaries(os.path.dirname(vocab_path), locked=False)   # shared cache: only dead writers'
        atomic_write_bytes(vocab_path, vocab_bytes(sorted(vocab, key=vocab.__getitem__)))
    return WordPieceTokenizer.from_vocab(vocab_path)


class WordPieceTokenizer:
    """Text <-> token ids with a fixed WordPiece vocabulary, as transformers' `BertTokenizer(Fast)` builds it.

    `tokens[i]` is the token of id i. The special tokens are looked up in the vocabulary by their strings
    (`special_tokens`: unk/sep/pad/cls/mask_token, default "[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"), so any
    layout works: Mini-BERT's own ([PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4) or Google's ([PAD]=0,
    [unused0..98], [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103). The text pipeline is transformers':
    BertNormalizer(clean_text, handle_chinese_chars=`tokenize_chinese_chars`, strip_accents=`strip_accents`,
    lowercase=`do_lower_case`), BertPreTokenizer, WordPiece (words over 100 characters become the unknown token),
    and the special tokens (plus any `added_tokens`, dicts as in tokenizer.json) matched in the raw text.
    Build one with `load_tokenizer` (a run or a transformers folder), `from_vocab` or `train_wordpiece`.
    """

    def __init__(self, tokens: Sequence[str], *, do_lower_case: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, special_tokens: Mapping[str, str] | None = None,
                 model_max_length: int | None = None, added_tokens: Sequence[Mapping] = ()):
        tokens = list(tokens)
        ids = {token: i for i, token in enumerate(tokens)}
        if len(ids) != len(tokens):
            repeated = next(token for i, token in enumerate(tokens) if ids[token] != i)
            raise ValueError(f"the vocabulary repeats the token {repeated!r}")
        for name, value in (("do_lower_case", do_lower_case), ("tokenize_chinese_chars", tokenize_chinese_chars)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        if strip_accents is not None and not isinstance(strip_accents, bool):
            raise ValueError(f"strip_accents must be true, false or null (follow do_lower_case), got {strip_accents!r}")
        if model_max_length is not None and (isinstance(model_max_length, bool)
                                             or not isinstance(model_max_length, int) or model_max_length < 3):
            raise ValueError(f"model_max_length must be an int >= 3 or null, got {model_max_length!r}")
        special = dict(DEFAULT_SPECIAL_TOKENS)
        unknown = sorted(set(special_tokens or {}) - set(special))
        if unknown:
            raise ValueError(f"unknown special token role(s) {unknown}; allowed: {list(special)}")
        special.update(special_tokens or {})
        absent = [f"{role}={token!r}" for role, token in special.items() if token not in ids]
        if absent:
            raise ValueError(f"the vocabulary ({len(tokens)} tokens, starting {tokens[:5]}) lacks the special "
                             f"token(s) {', '.join(absent)}; a BERT vocabulary needs all of "
                             f"{list(special.values())}")
        added = [dict(entry) for entry in added_tokens]
        for entry in added:
            content, token_id = entry.get("content"), entry.get("id")
            if content not in ids or ids[content] != token_id:
                raise ValueError(f"added token {content!r} has id {token_id!r}, but the vocabulary has it at "
                                 f"{ids.get(content)!r}")
        self._tokens, self._ids, self._special, self._added = tokens, ids, special, added
        self.do_lower_case, self.strip_accents = do_lower_case, strip_accents
        self.tokenize_chinese_chars, self.model_max_length = tokenize_chinese_chars, model_max_length
        self._tokenizer = _bert_tokenizer(models.WordPiece(ids, unk_token=special["unk_token"],
                                                           max_input_chars_per_word=MAX_WORD_CHARS),
                                          do_lower_case, strip_accents, tokenize_chinese_chars)
        self._tokenizer.add_tokens([_added_token(entry) for entry in added if not entry.get("special")])
        special_added = [_added_token(entry) for entry in added if entry.get("special")]
        listed = {token.content for token in special_added}
        # special tokens written in the text ("[MASK]") become their ids, as in transformers
        self._tokenizer.add_special_tokens(special_added + [token for token in special.values() if token not in listed])
        unused = [i for i, token in enumerate(tokens) if _UNUSED.fullmatch(token)]
        self._special_ids = tuple(sorted({ids[token] for token in special.values()} | set(unused)
                                         | {entry["id"] for entry in added if entry.get("special")}))

    @classmethod
    def from_vocab(cls, path: str, **options) -> "WordPieceTokenizer":
        """Load a `vocab.txt` (one token per line, line number = id); `options` as the constructor's."""
        return cls(_read_vocab_file(path), **options)

    def vocab_bytes(self) -> bytes:
        return vocab_bytes(self._tokens)

    def save_vocab(self, path: str) -> None:
        atomic_write_bytes(path, self.vocab_bytes())

    def tokenizer_config(self) -> dict:
        """The tokenizer_config.json that makes transformers' `BertTokenizer(Fast).from_pretrained` (and
        `load_tokenizer`) build this tokenizer again from vocab.txt."""
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.do_lower_case,
                  "strip_accents": self.strip_accents, "tokenize_chinese_chars": self.tokenize_chinese_chars,
                  "clean_up_tokenization_spaces": True, **self._special}
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        if self._added:
            config["added_tokens_decoder"] = {str(entry["id"]): {k: v for k, v in entry.items() if k != "id"}
                                              for entry in self._added}
        return config

    def files(self) -> dict[str, bytes]:
        """The files that describe this tokenizer completely (name -> content): vocab.txt and, unless it is
        Mini-BERT's default (lower-cased, default special tokens, nothing added), tokenizer_config.json. A run
        directory keeps them; `load_tokenizer` reads them back."""
        files = {"vocab.txt": self.vocab_bytes()}
        default = (self.do_lower_case and self.strip_accents is None and self.tokenize_chinese_chars
                   and self._special == DEFAULT_SPECIAL_TOKENS and self.model_max_length is None and not self._added)
        if not default:
            files[TOKENIZER_CONFIG] = json_bytes(self.tokenizer_config())
        return files

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
        """Text of token ids, "##" pieces joined to their word (lower-cased text comes back lower-cased)."""
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
    def special_tokens(self) -> dict[str, str]:
        """{"unk_token": "[UNK]", "sep_token": ..., "pad_token": ..., "cls_token": ..., "mask_token": ...}"""
        return dict(self._special)

    @property
    def pad_id(self) -> int:
        return self._ids[self._special["pad_token"]]

    @property
    def unk_id(self) -> int:
        return self._ids[self._special["unk_token"]]

    @property
    def cls_id(self) -> int:
        return self._ids[self._special["cls_token"]]

    @property
    def sep_id(self) -> int:
        return self._ids[self._special["sep_token"]]

    @property
    def mask_id(self) -> int:
        return self._ids[self._special["mask_token"]]

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids that are never masked nor drawn as a random replacement in MLM masking, and never the
        most-frequent-token baseline: the five special tokens, every [unusedN] placeholder and added special
        tokens (sorted)."""
        return self._special_ids


def load_tokenizer(folder) -> WordPieceTokenizer:
    """The tokenizer of a Mini-BERT run directory or a transformers BERT folder, read as transformers'
    `BertTokenizerFast.from_pretrained(folder)` reads it: the vocabulary (and added tokens) from tokenizer.json
    when present, else vocab.txt; casing, accents, Chinese characters, model_max_length and the special-token
    strings from tokenizer_config.json (else special_tokens_map.json, else BERT's defaults: lower-cased)."""
    folder = Path(folder)
    config = _read_json_object(folder / TOKENIZER_CONFIG) if (folder / TOKENIZER_CONFIG).is_file() else {}
    special_map = (_read_json_object(folder / "special_tokens_map.json")
                   if (folder / "special_tokens_map.json").is_file() else {})
    special = {role: _token_string(config.get(role, special_map.get(role)), folder, role)
               for role in DEFAULT_SPECIAL_TOKENS if config.get(role, special_map.get(role)) is not None}
    if (folder / "tokenizer.json").is_file():
        tokens, added = _tokenizer_json_vocab(folder / "tokenizer.json")
    elif (folder / "vocab.txt").is_file():
        tokens, added = _read_vocab_file(folder / "vocab.txt"), _added_from_config(config, folder)
    else:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
        raise FileNotFoundError(f"{folder}: no tokenizer.json or vocab.txt, so no vocabulary to tokenize with"
                                + (f" (found: {', '.join(found) or 'nothing'})" if found is not None
                                   else " (no such directory)"))
    max_length = config.get("model_max_length")
    if isinstance(max_length, (int, float)) and not isinstance(max_length, bool) and max_length > 1e9:
        max_length = None          # transformers' "no limit" (int(1e30))
    try:
        return WordPieceTokenizer(tokens, do_lower_case=config.get("do_lower_case", True),
                                  strip_accents=config.get("strip_accents"),
                                  tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
                                  special_tokens=special, model_max_length=max_length, added_tokens=added)
    except ValueError as exc:
        raise ValueError(f"{folder}: {exc}") from None


def _bert_tokenizer(model: models.WordPiece, do_lower_case: bool = True, strip_accents: bool | None = None,
                    tokenize_chinese_chars: bool = True) -> Tokenizer:
    """BERT's text pipeline around a WordPiece model (the same as transformers' BertTokenizerFast)."""
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
                                                      strip_accents=strip_accents, lowercase=do_lower_case)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _added_token(entry: Mapping) -> AddedToken:
    return AddedToken(entry["content"], **{flag: bool(entry[flag]) for flag in _ADDED_FLAGS if flag in entry})


def _read_vocab_file(path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as file:
            return [line.rstrip("\n") for line in file]
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc})") from None


def _read_json_object(path: Path) -> dict:
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(fields).__name__}")
    return fields


def _token_string(value, folder: Path, role: str) -> str:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise ValueError(f"{folder}: {role} must be a token string, got {value!r}")
    return value


def _tokenizer_json_vocab(path: Path) -> tuple[list[str], list[dict]]:
    """(tokens by id, added tokens) of a tokenizer.json with a WordPiece model."""
    fields = _read_json_object(path)
    model = fields.get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise ValueError(f"{path}: the tokenizer model is {model.get('type')!r}; a BERT tokenizer is 'WordPiece' "
                         "with a vocab")
    vocab = dict(model["vocab"])
    added = [{key: entry[key] for key in ("id", "content", *_ADDED_FLAGS) if key in entry}
             for entry in fields.get("added_tokens") or ()]
    for entry in added:
        vocab.setdefault(entry["content"], entry["id"])
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[token] for token in tokens] != list(range(len(tokens))):
        raise ValueError(f"{path}: token ids are not 0..{len(tokens) - 1} without gaps")
    return tokens, added


def _added_from_config(config: dict, folder: Path) -> list[dict]:
    """tokenizer_config.json's added_tokens_decoder ({"id": {"content": ..., flags}}) as tokenizer.json entries."""
    decoder = config.get("added_tokens_decoder") or {}
    try:
        return [{"id": int(key), **{k: v for k, v in entry.items() if k in ("content", *_ADDED_FLAGS)}}
                for key, entry in decoder.items()]
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"{folder}: tokenizer_config.json's added_tokens_decoder must map ids to token "
                         f"entries, got {decoder!r}") from None


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


def check_tokenizer_fits(config, tokenizer: WordPieceTokenizer, where: str = "the tokenizer") -> None:
    """The model's vocab_size and pad_token_id must be the tokenizer's (a ValueError naming both otherwise)."""
    if config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{where} has {tokenizer.vocab_size} tokens but the model has vocab_size="
                         f"{config.vocab_size}: they must match")
    if config.pad_token_id != tokenizer.pad_id:
        raise ValueError(f"{where} has {tokenizer.special_tokens['pad_token']} at id {tokenizer.pad_id} but the "
                         f"model's pad_token_id is {config.pad_token_id}: they must match")
