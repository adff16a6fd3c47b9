"""A prepared corpus: text tokenized once into memory-mapped token shards, read back without loading it.

    DATA_DIR/manifest.json           format, tokenizer, counts, content fingerprint, shard sizes (written last)
    DATA_DIR/vocab.txt (+ tokenizer_config.json)   the tokenizer the tokens belong to
    DATA_DIR/train-00000.bin ...     token ids, uint16 when the vocabulary fits (else uint32), little-endian
    DATA_DIR/train.idx               int64 offset of every document's first token in the split's stream, then the
                                     total (documents + 1 entries)
    DATA_DIR/train.counts            int64 count of every token id in the training split (the baseline token)
    DATA_DIR/heldout-00000.bin, heldout.idx

`prepare_corpus` streams the files (a bounded number of lines at a time), cleans and deduplicates paragraphs and
holds out documents exactly as `minibert.data.corpus.load_corpus_files` does (so a prepared corpus has the same
documents, tokens and packed sequences as the in-memory one), tokenizes batches of documents in parallel (Rust),
and appends them to the shards. Everything is written into `DATA_DIR.partial-<pid>` and renamed to DATA_DIR when
complete: an interrupted prepare leaves no DATA_DIR, and the next one removes the dead partial and starts again.
`minibert.data.shards.open_prepared` reads it back, checking the manifest against its shards (sizes; sha256 with
`verify`) before any training.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from minibert.data.corpus import HELDOUT_FRACTION, expand_corpus_paths, stream_documents
from minibert.storage.fileio import _pid_alive, atomic_write_json
from minibert.data.shards import FORMAT, MANIFEST, SPLITS, _shard_name
from minibert.data.tokenizer import WordPieceTokenizer, load_tokenizer, train_wordpiece

SAMPLE_BYTES = 64 << 20             # the WordPiece is trained on at most this much training text (the first of it)
SHARD_TOKENS = 1 << 27              # tokens a shard holds at most (256 MB of uint16)
ENCODE_BATCH_BYTES = 1 << 20        # text tokenized per encode_batch call (its Encodings take ~100x that)


class _SplitWriter:
    """Appends tokenized documents of one split to its shards and its document index."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, vocab_size: int):
        self.folder, self.split, self.dtype = folder, split, dtype
        self.shards: list[dict] = []
        self.tokens = self.documents = 0
        self.counts = np.zeros(vocab_size, np.int64)
        self.index = open(folder / f"{split}.idx", "wb")
        self.index.write(np.int64(0).tobytes())
        self._file = self._digest = None

    def _open_shard(self):
        name = _shard_name(self.split, len(self.shards))
        self.shards.append({"file": name, "tokens": 0})
        self._file, self._digest = open(self.folder / name, "wb"), hashlib.sha256()

    def add(self, docs_ids: list[list[int]]) -> None:
        if not docs_ids:
            return
        lengths = np.fromiter((len(ids) for ids in docs_ids), np.int64, len(docs_ids))
        flat = np.fromiter(itertools.chain.from_iterable(docs_ids), np.int64, int(lengths.sum()))
        self.counts += np.bincount(flat, minlength=len(self.counts))
        self.index.write((self.tokens + np.cumsum(lengths)).astype("<i8").tobytes())
        self.documents += len(docs_ids)
        data = flat.astype(self.dtype)
        while len(data):
            if self._file is None or self.shards[-1]["tokens"] == SHARD_TOKENS:
                self._close_shard()
                self._open_shard()
            room = SHARD_TOKENS - self.shards[-1]["tokens"]
            piece, data = data[:room], data[room:]
            raw = piece.tobytes()
            self._file.write(raw)
            self._digest.update(raw)
            self.shards[-1]["tokens"] += len(piece)
            self.tokens += len(piece)

    def _close_shard(self):
        if self._file is not None:
            self._file.close()
            self.shards[-1]["sha256"] = self._digest.hexdigest()
            self._file = None

    def close(self) -> dict:
        if not self.shards:                 # an empty split still has one (empty) shard
            self._open_shard()
        self._close_shard()
        self.index.close()
        if self.split == "train":
            self.counts.astype("<i8").tofile(self.folder / "train.counts")
        return {"shards": self.shards, "tokens": self.tokens, "documents": self.documents}


class _Fingerprint:
    """`minibert.data.corpus.corpus_fingerprint(train_docs + heldout_docs)`, computed while streaming: training
    documents go into the digest as they come, held-out ones wait in a spill file (3% of the text)."""

    def __init__(self, folder: Path):
        self.digest = hashlib.sha256()
        self.spill = open(folder / ".heldout-text", "w+b")

    def add(self, doc: str, heldout: bool) -> None:
        data = doc.encode("utf-8")
        record = len(data).to_bytes(8, "little") + data
        if heldout:
            self.spill.write(record)
        else:
            self.digest.update(record)

    def hexdigest(self) -> str:
        self.spill.seek(0)
        for block in iter(lambda: self.spill.read(1 << 22), b""):
            self.digest.update(block)
        self.spill.close()
        os.unlink(self.spill.name)
        return self.digest.hexdigest()


def _unit_key(digest: bytes) -> float:
    return int.from_bytes(digest[:8], "big") / 2.0**64       # minibert.data.corpus._unit_hash, from the digest


def _documents(files: list[str]):
    """(document, digest) of every first occurrence of a cleaned paragraph in the files, in corpus order."""
    seen = set()
    for path in files:
        any_text = False
        for docs in stream_documents(path):
            any_text = True
            for doc in docs:
                digest = hashlib.sha256(doc.encode("utf-8")).digest()
                if digest[:16] not in seen:
                    seen.add(digest[:16])
                    yield path, doc, digest
        if not any_text:
            raise ValueError(f"corpus file {path!r} is empty: it holds no paragraph with a letter or digit")


def prepare_corpus(corpus: list[str], out, *, vocab_size: int | None = None,
                   tokenizer: WordPieceTokenizer | None = None, progress: bool = True, log=print) -> Path:
    """Tokenize the files `corpus` (paths or globs) into the prepared corpus `out` (see the module docstring);
    returns its path. The tokenizer: `tokenizer` (e.g. `load_tokenizer` of a run or a transformers folder), or a
    WordPiece of `vocab_size` trained on the first SAMPLE_BYTES of training text (all of it when the corpus is
    smaller, which gives the vocabulary `train.py --corpus` always trained). Refuses an `out` that exists."""
    if (vocab_size is None) == (tokenizer is None):
        raise ValueError("pass one of --vocab-size (train a WordPiece) or --tokenizer RUN_OR_HF_DIR")
    out = Path(out)
    files = expand_corpus_paths(list(corpus))
    if out.exists():
        raise FileExistsError(f"--out {out} exists; prepared data is never overwritten: remove it or pick another "
                              "--out")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(out.name + ".partial-*"):           # an interrupted prepare: start again
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    partial = out.parent / f"{out.name}.partial-{os.getpid()}"
    partial.mkdir()
    try:
        _write(files, partial, vocab_size, tokenizer, progress, log)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _write(files: list[str], folder: Path, vocab_size, tokenizer, progress: bool, log) -> None:
    total_bytes = sum(os.path.getsize(path) for path in files)
    started = time.perf_counter()
    if tokenizer is None:
        sample, sample_bytes = [], 0
        for _, doc, digest in _documents(files):
            if _unit_key(digest) >= HELDOUT_FRACTION:
                sample.append(doc)
                sample_bytes += len(doc)
                if sample_bytes >= SAMPLE_BYTES:
                    break
        log(f"training a WordPiece of {vocab_size} on {sample_bytes / 1e6:.1f} MB of training text")
        tokenizer = train_wordpiece(sample, vocab_size)
        del sample
    for name, content in tokenizer.files().items():
        (folder / name).write_bytes(content)
    dtype = np.dtype("<u2") if tokenizer.vocab_size <= 1 << 16 else np.dtype("<u4")
    writers = {split: _SplitWriter(folder, split, dtype, tokenizer.vocab_size) for split in SPLITS}
    fingerprint = _Fingerprint(folder)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", file=sys.stderr, mininterval=1.0)
    pending = {split: [] for split in SPLITS}
    pending_bytes, file_bytes, current = 0, 0, None
    # tokenizing (Rust, in parallel, without the GIL) runs in a worker thread while this one reads and cleans the
    # next batch of text; batches are written in order
    worker = ThreadPoolExecutor(1, thread_name_prefix="minibert-tokenize")
    in_flight = None

    def flush(last: bool = False):
        nonlocal in_flight
        batch = {split: list(docs) for split, docs in pending.items()}
        for docs in pending.values():
            docs.clear()
        if in_flight is not None:
            for split, ids in in_flight.result().items():
                writers[split].add(ids)
        in_flight = worker.submit(lambda: {split: tokenizer.encode_batch(docs) for split, docs in batch.items()})
        if last:
            for split, ids in in_flight.result().items():
                writers[split].add(ids)
            in_flight = None

    for path, doc, digest in _documents(files):
        if path != current:
            if bar is not None and current is not None:
                bar.update(os.path.getsize(current) - file_bytes)
            current, file_bytes = path, 0
        heldout = _unit_key(digest) < HELDOUT_FRACTION
        pending["heldout" if heldout else "train"].append(doc)
        fingerprint.add(doc, heldout)
        size = len(doc) + 2
        pending_bytes += size
        file_bytes += size
        if bar is not None:
            bar.update(size)
        if pending_bytes >= ENCODE_BATCH_BYTES:
            flush()
            pending_bytes = 0
    flush(last=True)
    worker.shutdown()
    if bar is not None:
        bar.close()
    splits = {split: writer.close() for split, writer in writers.items()}
    if splits["train"]["documents"] == 0 or splits["heldout"]["documents"] == 0:
        raise ValueError(f"the corpus {files} is too small to prepare: {splits['train']['documents']} training and "
                         f"{splits['heldout']['documents']} held-out documents (about {HELDOUT_FRACTION:.0%} of the "
                         "paragraphs are held out); add text, or train on it with train.py --corpus")
    seconds = time.perf_counter() - started
    atomic_write_json(folder / MANIFEST, {
        "format": FORMAT, "dtype": dtype.name, "vocab_size": tokenizer.vocab_size,
        "fingerprint": fingerprint.hexdigest(), "heldout_fraction": HELDOUT_FRACTION, "splits": splits,
        "source": {"files": [os.path.abspath(path) for path in files], "bytes": total_bytes},
        "prepare_seconds": round(seconds, 1)})
    log(f"prepared {total_bytes / 1e6:.1f} MB in {seconds:.0f} s ({total_bytes / 1e6 / max(seconds, 1e-9):.1f} "
        f"MB/s): {splits['train']['tokens']:,} training tokens in {splits['train']['documents']:,} documents, "
        f"{splits['heldout']['tokens']:,} held-out tokens in {splits['heldout']['documents']:,}")


def prepared_for_corpus(corpus: list[str], vocab_size: int | None = None, tokenizer: WordPieceTokenizer | None = None,
                        *, cache_dir=None, progress: bool = True, log=print) -> Path | None:
    """The prepared corpus of the files `corpus` (train.py --corpus) with a WordPiece of `vocab_size` trained on
    it, or with `tokenizer`: reused from the cache when the same content was prepared before (key: sha256 of the
    files' bytes in order, the tokenizer or vocabulary size, the format), else prepared into it, with progress.
    None when the corpus is too small to prepare (no held-out document by the hash rule): the caller keeps it in
    memory, where the split always holds one out."""
    from minibert.data.tokenizer import default_cache_dir

    files = expand_corpus_paths(list(corpus))
    digest = hashlib.sha256(f"format {FORMAT} vocab {vocab_size}".encode())
    for name, content in sorted((tokenizer.files() if tokenizer is not None else {}).items()):
        digest.update(name.encode() + hashlib.sha256(content).digest())
    for path in files:
        with open(path, "rb") as file:
            digest.update(len(path).to_bytes(8, "little"))
            for block in iter(lambda: file.read(1 << 22), b""):
                digest.update(block)
        digest.update(b"\0end of file\0")
    out = Path(cache_dir or default_cache_dir()) / "data" / digest.hexdigest()[:24]
    if (out / MANIFEST).is_file():
        log(f"--corpus: using its prepared tokens in {out} (prepared before; same content)")
        return out
    log(f"--corpus: preparing {len(files)} file(s) into {out} (once; later runs reuse it)")
    with tempfile.TemporaryDirectory() as scratch:
        args = ["--corpus", *files, "--out", str(out)] + ([] if progress else ["--no-progress"])
        if tokenizer is None:
            args += ["--vocab-size", str(vocab_size)]
        else:
            for name, content in tokenizer.files().items():
                (Path(scratch) / name).write_bytes(content)
            args += ["--tokenizer", scratch]
        code, message = _run_child(args)
    if code == 0 or (out / MANIFEST).is_file():      # done, or another process prepared the same content meanwhile
        return out
    if "too small to prepare" in message:
        return None
    if code == 130:
        raise KeyboardInterrupt
    raise (OSError if code == 1 else ValueError)(message.removeprefix("error: "))


def _run_child(args: list[str]) -> tuple[int, str]:
    """`python -m minibert.data.prepared ARGS` in a child process, its stderr (progress bar, messages) passed through;
    (exit status, its last "error:" line). A child, because the training process's allocator settings (the
    NumPy backend keeps one malloc arena) halve the speed of the tokenizers' threads."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "minibert.data.prepared", *args], stderr=subprocess.PIPE, env=env)
    tail = b""
    for chunk in iter(lambda: os.read(proc.stderr.fileno(), 1 << 16), b""):
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail = (tail + chunk)[-4096:]
    code = proc.wait()
    errors = [line for line in tail.decode("utf-8", "replace").splitlines() if line.startswith("error: ")]
    return code, errors[-1] if errors else f"preparing the corpus failed with exit status {code}"


def main(argv=None) -> int:
    """The command line of scripts/prepare_data.py (see its docstring for the exit statuses)."""
    import argparse

    p = argparse.ArgumentParser(prog="prepare_data.py", description="Tokenize a corpus once into memory-mapped "
                                "token shards for train.py --data DATA_DIR (see scripts/prepare_data.py).")
    p.add_argument("--corpus", nargs="+", required=True, metavar="PATH", help="UTF-8 text files or globs")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="the prepared corpus to create")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--vocab-size", type=int, help="train a WordPiece of this many tokens")
    group.add_argument("--tokenizer", metavar="RUN_OR_HF_DIR", help="use this run's or folder's tokenizer")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    if args.vocab_size is not None and args.vocab_size <= 5:
        p.error(f"--vocab-size must be an int > 5, got {args.vocab_size}")
    try:
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        prepare_corpus(args.corpus, args.out, vocab_size=args.vocab_size, tokenizer=tokenizer,
                       progress=args.progress, log=lambda line: print(line, file=sys.stderr))
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    except (FileNotFoundError, FileExistsError, IsADirectoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc} (nothing written)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
