"""Text corpora: the embedded default corpus and user text files, as train/held-out lists of documents.

The default corpus is English technical prose that ships with every CPython, so it needs no network:

* the help topics of `pydoc_data.topics` (79 on 3.11: the language reference sections `help("if")` shows), and
* every module, class and function docstring in the standard library's source files, read with `ast`
  (nothing is imported), skipping tests, IDLE, lib2to3, turtledemo, encodings, ensurepip and site-packages.

On CPython 3.11.7 that is 1.83 MB of text (0.34 MB of it from the topics) in 15,426 documents after cleaning
and deduplication (14,987 train, 439 held out), 0.45 M WordPiece tokens at vocab 8192; loading it takes about
2.4 s (parsing the sources).
The exact content follows the Python version; it is deterministic for a given installation.

A document is one paragraph (a block between blank lines) with its whitespace collapsed to single spaces.
Documents keep their source order (topics by name, then stdlib files by path, docstrings in source order), so
consecutive documents are consecutive text. Exact duplicates are dropped (the first one stays), and about 3%
of the documents, chosen by a hash of their text, are held out.
"""
from __future__ import annotations

import ast
import glob
import hashlib
import os
import re
import sysconfig
import tokenize
import warnings
from collections.abc import Iterable, Iterator

HELDOUT_FRACTION = 0.03
STDLIB_SKIPPED_DIRS = frozenset({
    "test", "tests", "idlelib", "lib2to3", "turtledemo", "encodings", "ensurepip", "pydoc_data",
    "site-packages", "dist-packages", "lib-dynload", "__pycache__",
})
_DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")
_UNDERLINE = re.compile(r"^\s*([-=*~^#+_.:])\1{2,}\s*$")  # reST title rules such as "*****" or "====="


def load_default_corpus() -> tuple[list[str], list[str]]:
    """The embedded corpus (see the module docstring) as (train_docs, heldout_docs)."""
    return split_heldout(_clean_documents(_default_texts()))


def load_default_documents() -> list[tuple[str, str]]:
    """The embedded corpus as (source, document) pairs in corpus order, before the held-out split.

    The documents are exactly those of `load_default_corpus` (`split_heldout` of them gives its two parts); the
    source of each is `"pydoc_data.topics:<topic>"` or the path of its stdlib file relative to the stdlib root,
    with "/" separators (e.g. `"email/message.py"`). A paragraph repeated in several sources keeps its first.
    """
    return _clean_sourced_documents(_default_sourced_texts())


def load_corpus_files(paths: list[str]) -> tuple[list[str], list[str]]:
    """UTF-8 text files (paths or glob patterns) as (train_docs, heldout_docs), one document per paragraph."""
    texts = (_read_utf8(path) for path in _expand_paths(paths))
    docs = _clean_documents(texts)
    if not docs:
        raise ValueError(f"empty corpus: the files {list(paths)} contain no text")
    return split_heldout(docs)


def corpus_fingerprint(docs: Iterable[str]) -> str:
    """sha256 hex digest of the documents, their order and their boundaries (a cache key)."""
    digest = hashlib.sha256()
    for doc in docs:
        data = doc.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def split_heldout(docs: list[str]) -> tuple[list[str], list[str]]:
    """Hold out the documents whose text hash falls in the lowest HELDOUT_FRACTION of the hash range.

    The choice of each document depends only on its own text. Given two or more documents, at least one is held
    out and at least one is kept for training. Both parts keep the input order.
    """
    keys = [_unit_hash(doc) for doc in docs]
    num_heldout = sum(key < HELDOUT_FRACTION for key in keys)
    num_heldout = min(max(num_heldout, 1 if len(docs) >= 2 else 0), max(len(docs) - 1, 0))
    heldout = set(sorted(range(len(docs)), key=keys.__getitem__)[:num_heldout])
    train_docs = [doc for i, doc in enumerate(docs) if i not in heldout]
    heldout_docs = [doc for i, doc in enumerate(docs) if i in heldout]
    return train_docs, heldout_docs


def _unit_hash(text: str) -> float:
    """A stable hash of the text, uniform in [0, 1)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _clean_documents(texts: Iterable[str]) -> list[str]:
    """Split texts into paragraphs, collapse whitespace, drop text-free and repeated paragraphs."""
    return [doc for _, doc in _clean_sourced_documents(("", text) for text in texts)]


def _clean_sourced_documents(sourced_texts: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """`_clean_documents` of (source, text) pairs, each document paired with the source of its text."""
    seen = set()
    docs = []
    for source, text in sourced_texts:
        for paragraph in _BLANK_LINES.split(text.replace("\r\n", "\n")):
            doc = _clean_paragraph(paragraph.split("\n"))
            if doc and doc not in seen:
                seen.add(doc)
                docs.append((source, doc))
    return docs


def _clean_paragraph(lines: list[str]) -> str:
    """One paragraph's lines as a document: reST title rules dropped, whitespace collapsed; "" if it has no
    letter or digit."""
    doc = " ".join(" ".join(line for line in lines if not _UNDERLINE.match(line)).split())
    return doc if any(char.isalnum() for char in doc) else ""


def stream_documents(path: str, block_bytes: int = 1 << 22) -> Iterator[list[str]]:
    """The documents of one UTF-8 file, read `block_bytes` at a time (never the whole file), as lists of
    documents cleaned exactly as `load_corpus_files` cleans them (paragraphs between blank lines), not yet
    deduplicated. A file that is not UTF-8 is a ValueError naming it and the line."""
    pieces, line = [], 1          # the text of a paragraph that may go on in the next block; the block's first line
    with open(path, "rb") as file:
        carry, first = b"", True
        while True:
            block = file.read(block_bytes)
            data = carry + block
            cut = data.rfind(b"\n") + 1 if block else len(data)     # whole lines only, until the end
            whole, carry = data[:cut], data[cut:]
            if not whole and block:
                continue
            try:
                text = whole.decode("utf-8-sig" if first else "utf-8")
            except UnicodeDecodeError as err:
                where = line + whole[:err.start].count(b"\n")
                raise ValueError(f"corpus file {path!r} is not UTF-8 text (line {where}: {err})") from None
            first = False
            line += whole.count(b"\n")
            text = text.replace("\r\n", "\n")
            # the pending text ends with a newline, where a blank-line separator may start: split "\n" + text
            # (never the pending text again, so a long paragraph costs linear time)
            paragraphs = _BLANK_LINES.split("\n" + text if pieces else text)
            if pieces:
                paragraphs[0] = "".join(pieces) + paragraphs[0][1:]
            pieces = [paragraphs.pop()] if block else []
            docs = [doc for doc in (_clean_paragraph(paragraph.split("\n")) for paragraph in paragraphs) if doc]
            if docs:
                yield docs
            if not block:
                return


def expand_corpus_paths(paths: list[str]) -> list[str]:
    """Corpus paths and glob patterns as the files they name (an error for any that names none)."""
    return _expand_paths(paths)


def _default_texts() -> Iterator[str]:
    return (text for _, text in _default_sourced_texts())


def _default_sourced_texts() -> Iterator[tuple[str, str]]:
    """(source, text) of every text of the default corpus, in corpus order (see `load_default_documents`)."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"pydoc_data.topics:{name}", topics[name]
    root = sysconfig.get_paths()["stdlib"]
    for path in _stdlib_sources():
        source = os.path.relpath(path, root).replace(os.sep, "/")
        for docstring in _docstrings(path):
            yield source, docstring


def _stdlib_sources() -> list[str]:
    """The standard library's .py files, sorted by path relative to the stdlib root."""
    root = sysconfig.get_paths()["stdlib"]
    sources = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames
                       if name not in STDLIB_SKIPPED_DIRS and not name.startswith("config-")]
        sources += [os.path.relpath(os.path.join(dirpath, name), root)
                    for name in filenames if name.endswith(".py")]
    return [os.path.join(root, rel) for rel in sorted(sources, key=lambda rel: rel.split(os.sep))]


def _docstrings(path: str) -> list[str]:
    """Module, class and function docstrings of one source file, in source order (none if it does not parse)."""
    try:
        with tokenize.open(path) as file, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning for invalid escapes in old files
            tree = ast.parse(file.read(), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    return list(_docstrings_in_order(tree))


def _docstrings_in_order(node: ast.AST) -> Iterator[str]:
    if isinstance(node, _DOCSTRING_OWNERS):
        doc = ast.get_docstring(node)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(node):
        yield from _docstrings_in_order(child)


def _expand_paths(paths: list[str]) -> list[str]:
    """Plain paths as given, glob patterns expanded (sorted); anything that names no file is an error."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for path in map(os.fspath, paths):
        if any(char in path for char in "*?["):
            matches = sorted(match for match in glob.glob(path, recursive=True) if os.path.isfile(match))
            if not matches:
                raise FileNotFoundError(f"no file matches the corpus pattern {path!r}")
            files += matches
        elif os.path.isdir(path):
            raise IsADirectoryError(f"corpus path {path!r} is a directory; pass files or a glob like "
                                    f"{os.path.join(path, '*.txt')!r}")
        elif not os.path.isfile(path):
            raise FileNotFoundError(f"corpus file not found: {path!r}")
        else:
            files.append(path)
    return files


def _read_utf8(path: str) -> str:
    with open(path, "rb") as file:
        data = file.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"corpus file {path!r} is not UTF-8 text ({err})") from None
