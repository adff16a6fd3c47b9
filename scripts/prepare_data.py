#!/usr/bin/env python
"""Tokenize a corpus once into memory-mapped token shards, for `train.py --data DATA_DIR` (any corpus size: the
text is streamed, never held in memory, and training reads the shards without loading them).

    python scripts/prepare_data.py --corpus wiki/*.txt --out data/wiki --vocab-size 30522
    python scripts/prepare_data.py --corpus notes/*.txt --out data/notes --tokenizer path/to/bert-base-uncased
    python scripts/train.py --data data/wiki --config mini --seq-len 128

Paragraphs (blocks between blank lines) are cleaned, deduplicated and held out (about 3%, by a hash of their text)
exactly as `train.py --corpus` does. The WordPiece is trained on the first 64 MB of training text (--vocab-size), or
the tokenizer of a run or transformers folder is used (--tokenizer). Writes DATA_DIR/manifest.json, vocab.txt,
token shards and document indexes (see minibert/prepared.py) into DATA_DIR.partial-<pid>, renamed to DATA_DIR only
when complete; an existing DATA_DIR is never touched.

Exit status: 0 done; 2 bad input (a missing, empty or non-UTF-8 file, an existing --out, a bad tokenizer; nothing
written); 1 an I/O error while writing (a full disk: nothing left behind); 130 interrupted (nothing left behind).
"""
from __future__ import annotations

import argparse
import sys

from minibert.prepared import prepare_corpus
from minibert.tokenizer import load_tokenizer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
                       progress=args.progress)
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
