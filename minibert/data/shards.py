"""Reading a prepared corpus (host side): `open_prepared(DIR)` checks the manifest and memory-maps the token shards
that `minibert.data.prepared` wrote (`TokenShards`: a split's tokens as one array-like over several files)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minibert.data.tokenizer import WordPieceTokenizer, load_tokenizer
from minibert.storage.fileio import sha256_file

FORMAT = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "heldout")


class PreparedDataError(ValueError):
    """A prepared corpus that is incomplete, inconsistent or from another tokenizer (message names the file)."""


class TokenShards:
    """The token stream of one split, over its memory-mapped shards: `len()`, `take(positions)`, slicing."""

    def __init__(self, paths: list[Path], dtype: str):
        self.maps = [np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r") if path.stat().st_size
                     else np.zeros(0, dtype) for path in paths]
        self.ends = np.cumsum([len(m) for m in self.maps], dtype=np.int64)
        self.starts = self.ends - [len(m) for m in self.maps]

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def take(self, positions) -> np.ndarray:
        """Tokens at the global `positions` (any shape) as int32."""
        positions = np.asarray(positions, dtype=np.int64)
        flat = positions.reshape(-1)
        out = np.empty(flat.shape, np.int32)
        shard = np.searchsorted(self.ends, flat, side="right")
        for s in np.unique(shard):
            where = shard == s
            out[where] = self.maps[s][flat[where] - self.starts[s]]
        return out.reshape(positions.shape)

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(len(self))
        return self.take(np.arange(start, stop, step))


@dataclass
class Prepared:
    """An opened prepared corpus: its directory, manifest, tokenizer and the two token streams."""
    path: Path
    manifest: dict
    tokenizer: WordPieceTokenizer
    train: TokenShards
    heldout: TokenShards

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def train_counts(self) -> np.ndarray:
        """How often each token id occurs in the training split (int64 [vocab_size])."""
        return np.fromfile(self.path / "train.counts", dtype="<i8")


def _shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


def open_prepared(data_dir, verify: bool = False) -> Prepared:
    """Open DATA_DIR written by `prepare_corpus`: the manifest, every shard's size (and sha256 with `verify`) and
    the tokenizer checked before anything is read. A PreparedDataError names what does not fit."""
    path = Path(data_dir)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        partial = sorted(p.name for p in path.parent.glob(path.name + ".partial-*")) if path.parent.is_dir() else []
        raise PreparedDataError(f"--data {path}: no {MANIFEST} there, so not a finished prepared corpus"
                                + (f" ({', '.join(partial)} is an unfinished prepare; run it again)" if partial
                                   else "; make one with scripts/prepare_data.py --corpus FILES --out DIR"))
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            raise PreparedDataError(f"{manifest_path}: format {manifest.get('format')!r}, this Mini-BERT reads "
                                    f"format {FORMAT}")
        splits = {split: manifest["splits"][split] for split in SPLITS}
        dtype = manifest["dtype"]
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, PreparedDataError):
            raise
        raise PreparedDataError(f"{manifest_path} is not a prepared-corpus manifest ({exc})") from None
    itemsize = np.dtype(dtype).itemsize
    streams = {}
    for split, entry in splits.items():
        paths = []
        for shard in entry["shards"]:
            shard_path = path / shard["file"]
            if not shard_path.is_file():
                raise PreparedDataError(f"{shard_path} is missing (listed in {manifest_path})")
            size = shard_path.stat().st_size
            if size != shard["tokens"] * itemsize:
                raise PreparedDataError(f"{shard_path} holds {size} bytes, but {MANIFEST} says {shard['tokens']} "
                                        f"{dtype} tokens ({shard['tokens'] * itemsize} bytes): truncated or "
                                        "not this corpus's; prepare it again")
            if verify and sha256_file(shard_path) != shard["sha256"]:
                raise PreparedDataError(f"{shard_path}: sha256 differs from {MANIFEST}'s: the shard changed")
            paths.append(shard_path)
        streams[split] = TokenShards(paths, dtype)
        if len(streams[split]) != entry["tokens"]:
            raise PreparedDataError(f"{manifest_path}: the {split} shards hold {len(streams[split])} tokens, the "
                                    f"manifest says {entry['tokens']}")
    try:
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError) as exc:
        raise PreparedDataError(f"--data {path}: its tokenizer cannot be read ({exc})") from None
    if tokenizer.vocab_size != manifest["vocab_size"]:
        raise PreparedDataError(f"{path}/vocab.txt has {tokenizer.vocab_size} tokens, {MANIFEST} says "
                                f"{manifest['vocab_size']}")
    return Prepared(path, manifest, tokenizer, streams["train"], streams["heldout"])


# --- writing ----------------------------------------------------------------------------------------------------------
