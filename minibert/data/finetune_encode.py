"""Fine-tuning examples as model inputs on the host (NumPy only): WordPiece encoding, truncation, padded batches.

Sequence task: `[CLS] a [SEP]`, or `[CLS] a [SEP] b [SEP]` for pairs with token_type_ids 0 on `[CLS] a [SEP]` and 1
on `b [SEP]`. Texts longer than `max_len` are truncated as transformers' BertTokenizerFast does with
`truncation="longest_first"`: a single text keeps its first `max_len - 2` tokens; of a pair, the shorter text
keeps min(its length, budget // 2) tokens (budget = max_len - 3; the first text counts as the shorter on a tie)
and the longer one the rest.

Token task: words come pre-split; each is word-pieced on its own, its tag goes on its FIRST piece and -100 on
the others, on `[CLS]`/`[SEP]` and on padding (as transformers' run_ner aligns labels with `word_ids()`). A word
with no pieces at all (only characters the normalizer drops) gets no position and no label. Truncation keeps
whole words: the words whose pieces fit in `max_len - 2`, or the first pieces of the first word if it alone
does not fit.

A batch is a dict of int32 arrays [B, T] `input_ids`, `attention_mask`, `token_type_ids`, and `labels`: [B] int32
(classes), [B] float32 (regression) or [B, T] int32 (token tags, -100 ignored).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from minibert.data.mlm import IGNORE_LABEL, EpochBatcher
from minibert.data.finetune_data import SequenceExample, TokenExample, check_example_labels
from minibert.data.tokenizer import WordPieceTokenizer


@dataclass
class EncodedExamples:
    """Encoded examples of one task, one row per example, not yet padded.

    `labels` is None for unlabelled texts (prediction). `word_starts` (token task only) gives, per example,
    each word's first-piece position, or -1 for a word that has none (truncated away or empty after
    normalization). `num_truncated` counts the examples that lost tokens to `max_len`.
    """
    input_ids: list[np.ndarray]  # each [T_i] int32
    token_type_ids: list[np.ndarray]  # each [T_i] int32
    labels: np.ndarray | list[np.ndarray] | None  # [N] int32 or float32, or each [T_i] int32
    num_truncated: int
    word_starts: list[np.ndarray] | None = None  # each [num_words_i] int32

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_texts(texts: Sequence[str], tokenizer: WordPieceTokenizer, max_len: int,
                 text_pairs: Sequence[str] | None = None) -> EncodedExamples:
    """Texts (and their pair texts) as `[CLS] a [SEP] (b [SEP])` rows of at most `max_len` tokens, no labels."""
    _check_max_len(max_len, 5 if text_pairs is not None else 3)
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"text_pairs must have one text per text: {len(text_pairs)} for {len(texts)} texts")
    firsts = tokenizer.encode_batch(texts)
    seconds = tokenizer.encode_batch(text_pairs) if text_pairs is not None else [None] * len(firsts)
    input_ids, token_type_ids, num_truncated = [], [], 0
    for a, b in zip(firsts, seconds):
        if b is None:
            len_a, len_b = min(len(a), max_len - 2), 0
            truncated = len_a < len(a)
        else:
            len_a, len_b = _longest_first(len(a), len(b), max_len - 3)
            truncated = len_a + len_b < len(a) + len(b)
        ids = [tokenizer.cls_id, *a[:len_a], tokenizer.sep_id]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b[:len_b], tokenizer.sep_id]
            types += [1] * (len_b + 1)
        input_ids.append(np.asarray(ids, dtype=np.int32))
        token_type_ids.append(np.asarray(types, dtype=np.int32))
        num_truncated += truncated
    return EncodedExamples(input_ids, token_type_ids, None, num_truncated)


def encode_sequence_examples(examples: Sequence[SequenceExample], tokenizer: WordPieceTokenizer, max_len: int, *,
                             label2id: dict[str, int] | None) -> EncodedExamples:
    """`encode_texts` of the examples with their labels: ids from `label2id`, or floats when it is None
    (regression)."""
    pairs = [example.text_pair for example in examples]
    if any(pair is None for pair in pairs) != all(pair is None for pair in pairs):
        raise ValueError("either every example has a text_pair or none has")
    encoded = encode_texts([example.text for example in examples], tokenizer, max_len,
                           None if pairs and pairs[0] is None else pairs)
    if label2id is None:
        encoded.labels = np.asarray([example.label for example in examples], dtype=np.float32)
    else:
        check_example_labels(examples, label2id)
        encoded.labels = np.asarray([label2id[example.label] for example in examples], dtype=np.int32)
    return encoded


def encode_words(sentences: Sequence[Sequence[str]], tokenizer: WordPieceTokenizer, max_len: int,
                 tags: Sequence[Sequence[int]] | None = None) -> EncodedExamples:
    """Pre-split sentences as `[CLS] pieces [SEP]` rows, with the tag ids `tags` (if given) aligned on each
    word's first piece and -100 elsewhere; see the module docstring for truncation."""
    _check_max_len(max_len, 3)
    if tags is not None and [len(s) for s in sentences] != [len(t) for t in tags]:
        raise ValueError("tags must have one tag per word of each sentence")
    pieces = iter(tokenizer.encode_batch([word for sentence in sentences for word in sentence]))
    input_ids, token_type_ids, labels, word_starts, num_truncated = [], [], [], [], 0
    for i, sentence in enumerate(sentences):
        word_pieces = [next(pieces) for _ in sentence]
        ids, starts, row_labels = [tokenizer.cls_id], [], [IGNORE_LABEL]
        for j, word in enumerate(word_pieces):
            room = max_len - 1 - len(ids)
            kept = word if len(word) <= room else (word[:room] if len(ids) == 1 else [])
            starts.append(len(ids) if kept else -1)
            if kept and tags is not None:
                row_labels += [int(tags[i][j])] + [IGNORE_LABEL] * (len(kept) - 1)
            ids += kept
            if len(kept) < len(word):  # this word and all after it are (partly) cut
                starts += [-1] * (len(word_pieces) - j - 1)
                num_truncated += 1
                break
        ids.append(tokenizer.sep_id)
        row_labels.append(IGNORE_LABEL)
        input_ids.append(np.asarray(ids, dtype=np.int32))
        token_type_ids.append(np.zeros(len(ids), dtype=np.int32))
        labels.append(np.asarray(row_labels, dtype=np.int32))
        word_starts.append(np.asarray(starts, dtype=np.int32))
    return EncodedExamples(input_ids, token_type_ids, labels if tags is not None else None, num_truncated,
                           word_starts)


def encode_token_examples(examples: Sequence[TokenExample], tokenizer: WordPieceTokenizer, max_len: int, *,
                          label2id: dict[str, int]) -> EncodedExamples:
    """`encode_words` of the examples' words with their tags mapped by `label2id`."""
    check_example_labels(examples, label2id)
    return encode_words([example.words for example in examples], tokenizer, max_len,
                        [[label2id[tag] for tag in example.tags] for example in examples])


def pad_batch(encoded: EncodedExamples, rows: Sequence[int], *, pad_to: int | None = None,
              pad_id: int = 0) -> dict[str, np.ndarray]:
    """The examples `rows` padded to their longest (or to `pad_to`) as a batch (see the module docstring)."""
    lengths = [len(encoded.input_ids[row]) for row in rows]
    width = max(lengths) if pad_to is None else pad_to
    if width < max(lengths):
        raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({max(lengths)} tokens)")
    column = np.arange(width)[None, :]
    attention_mask = column < np.asarray(lengths)[:, None]  # [B, T]

    def padded(arrays, fill):
        out = np.full((len(rows), width), fill, dtype=arrays[rows[0]].dtype)
        for i, row in enumerate(rows):
            out[i, :lengths[i]] = arrays[row]
        return out

    batch = {"input_ids": padded(encoded.input_ids, pad_id), "attention_mask": attention_mask.astype(np.int32),
             "token_type_ids": padded(encoded.token_type_ids, 0)}
    if isinstance(encoded.labels, np.ndarray):
        batch["labels"] = encoded.labels[np.asarray(rows)]
    elif encoded.labels is not None:
        batch["labels"] = padded(encoded.labels, IGNORE_LABEL)
    return batch


class FinetuneBatcher(EpochBatcher):
    """Endless padded batches of encoded examples, exactly resumable (see `EpochBatcher`, shared with
    `MLMBatcher`: `batch(epoch, index)`, iteration, `state_dict`/`load_state_dict`).

    Without `drop_last` (the default, as transformers' Trainer) the last batch of an epoch holds the remainder.
    Rows are padded to the batch's longest, or to `pad_to` (fixed shapes for compiling backends).
    """

    def __init__(self, encoded: EncodedExamples, batch_size: int, seed: int, *, shuffle: bool = True,
                 drop_last: bool = False, pad_to: int | None = None, pad_id: int = 0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if encoded.labels is None:
            raise ValueError("the examples have no labels; encode them with their labels to train or evaluate")
        if len(encoded) < (batch_size if drop_last else 1):
            raise ValueError(f"only {len(encoded)} examples, fewer than one batch of batch_size={batch_size}"
                             + (" with drop_last" if drop_last else ""))
        longest = max(len(ids) for ids in encoded.input_ids)
        if pad_to is not None and pad_to < longest:
            raise ValueError(f"pad_to={pad_to} is shorter than the longest example ({longest} tokens)")
        super().__init__(len(encoded), batch_size, seed, shuffle=shuffle, drop_last=drop_last)
        self.encoded = encoded
        self.pad_to = pad_to
        self.pad_id = pad_id

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """Batch `index` of `epoch` (the same every time it is asked for)."""
        return pad_batch(self.encoded, self.rows(epoch, index).tolist(), pad_to=self.pad_to, pad_id=self.pad_id)


def _longest_first(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Kept lengths of a pair truncated to `budget` tokens as tokenizers' LongestFirst strategy keeps them."""
    if len_a + len_b <= budget:
        return len_a, len_b
    shorter = min(min(len_a, len_b), budget // 2)
    return (shorter, budget - shorter) if len_a <= len_b else (budget - shorter, shorter)


def _check_max_len(max_len: int, least: int) -> None:
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < least:
        raise ValueError(f"max_len must be an int >= {least} (room for the special tokens and one token per "
                         f"text), got {max_len!r}")
