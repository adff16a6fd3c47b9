"""Masked-LM training data on the host (NumPy only): packed `[CLS] A [SEP] B [SEP]` sequences and masked batches.

Every array is int32 with shape [N, seq_len] (packed sequences) or [B, T] (batches). A batch is a dict with
`input_ids`, `attention_mask`, `token_type_ids` and `labels` (`IGNORE_LABEL`, -100, where no prediction is asked).
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np

from minibert.config import IGNORE_LABEL
from minibert.data.tokenizer import WordPieceTokenizer
MASK_PROB = 0.15
_SHUFFLE_STREAM, _MASK_STREAM = 0, 1  # keep the shuffle and masking random streams apart


def pack_sequences(token_docs: Sequence[Sequence[int]], seq_len: int, seed: int, *, cls_id: int,
                   sep_id: int, pad_id: int) -> dict[str, np.ndarray]:
    """Pack consecutive text into BERT pairs `[CLS] A [SEP] B [SEP] [PAD]...` of length `seq_len`.

    The documents are read as one token stream, cut into chunks of `seq_len - 3` tokens (the last one may be
    shorter, and is dropped below 2 tokens); each chunk is split into non-empty A and B at a point drawn
    uniformly from `seed`. token_type_ids is 0 on `[CLS] A [SEP]` and padding, 1 on `B [SEP]`; attention_mask
    is 1 on every token but padding. Returns `input_ids`, `token_type_ids`, `attention_mask`, each [N, seq_len].
    `PackedStream` builds the same rows on demand from a stream that need not fit in memory.
    """
    stream = np.fromiter(itertools.chain.from_iterable(token_docs), dtype=np.int32)
    packed = PackedStream(stream, seq_len, seed, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id)
    return packed.rows(np.arange(len(packed)))


@functools.lru_cache(maxsize=8)
def _non_special_ids(vocab_size: int, special_ids: tuple[int, ...]) -> np.ndarray:
    """The ids a random replacement is drawn from (computed once per vocabulary, not per batch)."""
    ids = np.setdiff1d(np.arange(vocab_size), special_ids)
    ids.flags.writeable = False
    return ids


class PackedStream:
    """The `pack_sequences` rows of a token stream, built on demand: `rows(indices)`, `len()`.

    `stream` is any 1-D integer array with slicing and `take`: a NumPy array, or a memory-mapped
    `minibert.data.prepared.TokenShards` that never loads the corpus. Only the split point of each chunk (drawn from
    `seed` exactly as `pack_sequences` draws it) is kept in memory: 2 bytes a sequence.
    """

    def __init__(self, stream, seq_len: int, seed: int, *, cls_id: int, sep_id: int, pad_id: int):
        if seq_len < 5:
            raise ValueError(f"seq_len must be at least 5 ([CLS] a [SEP] b [SEP]), got {seq_len}")
        self.stream, self.seq_len = stream, seq_len
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        self.chunk_len = seq_len - 3
        total = len(stream)
        count = -(-total // self.chunk_len)
        if count and total - (count - 1) * self.chunk_len < 2:        # a last chunk of one token is dropped
            count -= 1
        self._count = count
        lengths = np.full(count, self.chunk_len, dtype=np.int64)
        if count:
            lengths[-1] = min(self.chunk_len, total - (count - 1) * self.chunk_len)
        self._last_len = int(lengths[-1]) if count else 0
        self._len_a = np.random.default_rng(seed).integers(1, lengths).astype(np.uint16)  # 1 .. length-1

    def __len__(self) -> int:
        return self._count

    def rows(self, indices) -> dict[str, np.ndarray]:
        """input_ids, token_type_ids, attention_mask [len(indices), seq_len] of the sequences `indices`."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = indices * self.chunk_len
        lengths = np.where(indices == self._count - 1, self._last_len, self.chunk_len)
        sep_a = 1 + self._len_a[indices].astype(np.int64)[:, None]   # column of the first [SEP]
        sep_b = 2 + lengths[:, None]                                   # column of the second [SEP]
        column = np.arange(self.seq_len)[None, :]
        offset = column - np.where(column < sep_a, 1, 2)               # stream offset of the token at each column
        positions = np.clip(starts[:, None] + offset, 0, len(self.stream) - 1)   # [N, seq_len]
        input_ids = np.asarray(self.stream.take(positions), dtype=np.int32)
        input_ids[:, 0] = self.cls_id
        input_ids = np.where((column == sep_a) | (column == sep_b), self.sep_id, input_ids)
        input_ids = np.where(column > sep_b, self.pad_id, input_ids)
        token_type_ids = (column > sep_a) & (column <= sep_b)
        attention_mask = column <= sep_b
        return {"input_ids": input_ids.astype(np.int32), "token_type_ids": token_type_ids.astype(np.int32),
                "attention_mask": attention_mask.astype(np.int32)}


def mask_tokens(input_ids: np.ndarray, rng: np.random.Generator, vocab_size: int, *,
                special_ids: Sequence[int], mask_id: int, mask_prob: float = MASK_PROB) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking: pick round(mask_prob * n) of each row's n non-special tokens (at least 1 when n > 0);
    of those, 80% become [MASK], 10% a random non-special token, 10% stay. Returns (masked_ids, labels),
    labels holding the original id at picked positions and `IGNORE_LABEL` (-100) elsewhere.
    """
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob!r}")
    maskable = ~np.isin(input_ids, special_ids)
    num_maskable = maskable.sum(axis=1)
    num_picked = np.minimum(np.maximum(np.rint(mask_prob * num_maskable), 1), num_maskable)
    # A random order over each row's maskable positions; the first num_picked of it are picked.
    keys = np.where(maskable, rng.random(input_ids.shape), np.inf)
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    picked = rank < num_picked[:, None]

    action = rng.random(input_ids.shape)
    non_special = _non_special_ids(vocab_size, tuple(special_ids))
    random_ids = non_special[rng.integers(0, len(non_special), input_ids.shape)]
    masked_ids = np.where(picked & (action < 0.8), mask_id, input_ids)
    masked_ids = np.where(picked & (action >= 0.8) & (action < 0.9), random_ids, masked_ids)
    labels = np.where(picked, input_ids, IGNORE_LABEL)
    return masked_ids.astype(np.int32), labels.astype(np.int32)


class EpochBatcher:
    """Endless batches visiting `num_sequences` rows epoch after epoch, exactly resumable (a base class).

    Each epoch visits the rows in an order drawn from (seed, epoch) (or in stored order with `shuffle=False`);
    a subclass's `batch(epoch, index)` builds batch `index` of an epoch from `rows(epoch, index)` as a pure
    function of (seed, epoch, index), so the iteration state is just (epoch, position): `state_dict` saves it,
    `load_state_dict` restores it. With `drop_last` every batch has exactly `batch_size` rows; otherwise the
    last one of an epoch holds the remainder.
    """

    def __init__(self, num_sequences: int, batch_size: int, seed: int, *, shuffle: bool, drop_last: bool):
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        self.num_sequences = num_sequences
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        self._order_cache: tuple[int, np.ndarray] | None = None

    @property
    def batches_per_epoch(self) -> int:
        full, remainder = divmod(self.num_sequences, self.batch_size)
        return full + (remainder > 0 and not self.drop_last)

    def rows(self, epoch: int, index: int) -> np.ndarray:
        """The row numbers of batch `index` of `epoch`."""
        if not 0 <= index < self.batches_per_epoch:
            raise IndexError(f"batch index {index} is out of range [0, {self.batches_per_epoch})")
        return self._order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]

    def __iter__(self) -> "EpochBatcher":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch(self.epoch, self.position)
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where the iteration stands (plus what it must be resumed with), as plain ints."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_sequences": self.num_sequences, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue exactly where the batcher that saved `state` stood (same data, seed and batch size)."""
        for key in ("seed", "num_sequences", "batch_size"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"cannot resume: the saved batcher had {key}={state[key]}, "
                                 f"this one has {getattr(self, key)}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.batches_per_epoch:
            raise ValueError(f"cannot resume at epoch={epoch}, position={position}: "
                             f"an epoch has {self.batches_per_epoch} batches")
        self.epoch, self.position = epoch, position

    def _order(self, epoch: int) -> np.ndarray:
        """The row order of `epoch` (cached for the latest epoch asked)."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng((self.seed, _SHUFFLE_STREAM, epoch)).permutation(self.num_sequences)
            else:
                order = np.arange(self.num_sequences)
            self._order_cache = (epoch, order)
        return self._order_cache[1]


class MLMBatcher(EpochBatcher):
    """Endless masked-LM batches over packed sequences, exactly resumable (see `EpochBatcher`).

    Each batch is masked anew from (seed, epoch, batch index), so a batch is a pure function of
    (seed, epoch, index) -- see `batch`. `drop_last` defaults to True (every batch has `batch_size` rows).
    """

    def __init__(self, sequences, batch_size: int, vocab_size: int, seed: int, *,
                 shuffle: bool = True, drop_last: bool = True, mask_prob: float = MASK_PROB,
                 special_ids: Sequence[int], mask_id: int):
        """`sequences`: packed rows, as arrays (a dict of input_ids, attention_mask, token_type_ids [N, T]) or
        built on demand (a `PackedStream` over a memory-mapped corpus)."""
        self.sequences = sequences if isinstance(sequences, PackedStream) else _PackedArrays(sequences)
        num_sequences = len(self.sequences)
        if num_sequences < batch_size:
            raise ValueError(f"only {num_sequences} sequences, fewer than one batch of batch_size={batch_size}; "
                             f"use a bigger corpus, a shorter seq_len or a smaller batch")
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), the share of tokens to predict, got {mask_prob!r}")
        super().__init__(num_sequences, batch_size, seed, shuffle=shuffle, drop_last=drop_last)
        self.vocab_size = vocab_size
        self.mask_prob = mask_prob
        self.special_ids = tuple(special_ids)
        self.mask_id = mask_id

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        """Batch `index` of `epoch` (the same every time it is asked for)."""
        batch = self.sequences.rows(self.rows(epoch, index))
        rng = np.random.default_rng((self.seed, _MASK_STREAM, epoch, index))
        batch["input_ids"], batch["labels"] = mask_tokens(
            batch["input_ids"], rng, self.vocab_size, special_ids=self.special_ids, mask_id=self.mask_id,
            mask_prob=self.mask_prob)
        return batch


class _PackedArrays:
    """Packed rows held in memory, with the `rows` / `len` interface of `PackedStream`."""

    def __init__(self, sequences: dict[str, np.ndarray]):
        self.arrays = {name: np.asarray(sequences[name], dtype=np.int32)
                       for name in ("input_ids", "attention_mask", "token_type_ids")}

    def __len__(self) -> int:
        return len(self.arrays["input_ids"])

    def rows(self, indices) -> dict[str, np.ndarray]:
        return {name: array[indices] for name, array in self.arrays.items()}


def build_datasets(train_docs: Sequence[str], heldout_docs: Sequence[str], tokenizer: WordPieceTokenizer, seq_len: int,
                   seed: int, heldout_seed: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Tokenize and pack both parts of a corpus: (train_sequences, heldout_sequences), see `pack_sequences`;
    the held-out part with `heldout_seed` (default: `seed`)."""
    special = dict(cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, pad_id=tokenizer.pad_id)
    train = pack_sequences(tokenizer.encode_batch(train_docs), seq_len, seed, **special)
    heldout = pack_sequences(tokenizer.encode_batch(heldout_docs), seq_len, seed if heldout_seed is None else heldout_seed,
                             **special)
    return train, heldout
