#!/usr/bin/env python
"""Tokenize a corpus once into memory-mapped token shards, for `train.py --data DATA_DIR` (any corpus size: the
text is streamed, never held in memory, and training reads the shards without loading them).

    python scripts/prepare_data.py --corpus wiki/*.txt --out data/wiki --vocab-size 30522
    python scripts/prepare_data.py --corpus notes/*.txt --out data/notes --tokenizer path/to/bert-base-uncased
    python scripts/train.py --data data/wiki --config mini --seq-len 128

Paragraphs (blocks between blank lines) are cleaned, deduplicated and held out (about 3%, by a hash of their text)
exactly as `train.py --corpus` does. The WordPiece is trained on the first 64 MB of training text (--vocab-size), or
the tokenizer of a run or transformers folder is used (--tokenizer). Writes DATA_DIR/manifest.json, vocab.txt,
token shards and document indexes (see minibert/data/prepared.py) into DATA_DIR.partial-<pid>, renamed to DATA_DIR only
when complete; an existing DATA_DIR is never touched.

Exit status: 0 done; 2 bad input (a missing, empty or non-UTF-8 file, an existing --out, a bad tokenizer; nothing
written); 1 an I/O error while writing (a full disk: nothing left behind); 130 interrupted (nothing left behind).
"""
from __future__ import annotations

import sys

from minibert.data.prepared import main

if __name__ == "__main__":
    sys.exit(main())
