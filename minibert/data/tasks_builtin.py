"""Built-in fine-tuning tasks made from the embedded corpus (no download), held out as pretraining holds out.

Both tasks take their evaluation examples from the documents `load_default_corpus` holds out (the same hash
split), and their training examples from the documents it trains on, so no evaluation text was ever seen in
pretraining.

* `docstring_package_task`: which standard-library package (or top-level module) a docstring paragraph comes
  from, over the packages with the most paragraphs. Every word that contains the name of ANY of the packages
  (case-insensitively: "asyncio", "asyncio.events", "_asyncio", "XMLParser", "HTTPServer", "Turtle") is
  removed from every text, with the reST markup left empty by it, so the task is not a lookup. Evaluation texts
  that equal a training text after the removal are dropped.
* `code_span_task`: a token task -- which words the reST source marked as code (``literal``, `default role`,
  `old style', :func:`role` with a code role), with the markup removed, tagged B-CODE/I-CODE/O. Only a few
  percent of docstrings use such markup, so it is small (see its docstring).
"""
from __future__ import annotations

import re
from collections import Counter

from minibert.data.corpus import load_default_documents, split_heldout
from minibert.data.finetune_data import SequenceExample, TaskData, TokenExample, build_label_map

DEFAULT_NUM_PACKAGES = 10
_TOPICS_PREFIX = "pydoc_data.topics:"
_ROLES = r"(?::(?:[\w.+-]+:)+)"  # ":func:", ":py:meth:"
# A word with its dotted parts ("asyncio.events"), alone or as the whole of a markup span (":mod:`asyncio`").
_WORD = re.compile(rf"{_ROLES}?(?P<quote>``|`)[~!]?(?P<quoted>\w+(?:\.\w+)*(?:\(\))?)(?:(?P=quote)|')"
                   r"|(?P<word>\w+(?:\.\w+)*)")
# Code markup: ``literal``, :role:`target` (any number of :domain:role: parts), `default role` or `old style'.
_CODE_SPAN = re.compile(rf"``(?P<literal>[^`]+?)``|(?P<roles>{_ROLES})`(?P<target>[^`]+)`"
                        r"|(?<![\w`])`(?P<default>[^`'\s][^`']*?)[`'](?!_)")
_CODE_ROLES = frozenset({"func", "meth", "class", "mod", "attr", "data", "const", "exc", "obj", "samp",
                         "keyword", "envvar", "option", "program", "file", "type"})


def package_of(source: str) -> str | None:
    """The top-level package or module of a default-corpus source ("email/mime/text.py" -> "email",
    "typing.py" -> "typing"), or None for the pydoc topics and private modules ("_pydecimal.py")."""
    if source.startswith(_TOPICS_PREFIX):
        return None
    name = source.split("/")[0].removesuffix(".py")
    return None if name.startswith("_") else name


def docstring_package_task(num_packages: int = DEFAULT_NUM_PACKAGES) -> TaskData:
    """The "which package is this docstring from" sequence task over the `num_packages` packages with the most
    paragraphs in the default corpus (see the module docstring); labels are the package names."""
    if isinstance(num_packages, bool) or not isinstance(num_packages, int) or num_packages < 2:
        raise ValueError(f"num_packages must be an int >= 2, got {num_packages!r}")
    documents = load_default_documents()
    counts = Counter(package for package in (package_of(source) for source, _ in documents) if package)
    packages = sorted(package for package, _ in counts.most_common(num_packages))
    heldout = _heldout_set(documents)
    train, evaluation = [], []
    for source, doc in documents:
        package = package_of(source)
        if package in packages:
            text = remove_names(doc, packages)
            if any(char.isalnum() for char in text):
                (evaluation if doc in heldout else train).append(SequenceExample(text, package))
    train_texts = {example.text for example in train}
    evaluation = [example for example in evaluation if example.text not in train_texts]
    label2id, id2label = build_label_map(train, path="docstring_package_task", column="package label")
    return TaskData("sequence", train, evaluation, label2id, id2label)


def remove_names(text: str, names: list[str]) -> str:
    """`text` without the words (dotted parts included) that contain any of `names`, case-insensitively, with
    their markup when a word is all of a markup span (``asyncio.run()``, :mod:`asyncio`); whitespace collapsed."""
    lowered = [name.lower() for name in names]

    def keep_or_remove(match: re.Match) -> str:
        word = (match.group("quoted") or match.group("word")).lower()
        return "" if any(name in word for name in lowered) else match.group()

    return " ".join(_WORD.sub(keep_or_remove, text).split())


def code_span_task() -> TaskData:
    """The code-span token task: every stdlib docstring paragraph with at least one code span (see the module
    docstring), as words tagged B-CODE (first word of a span), I-CODE (its other words) or O.

    Words are the whitespace-separated pieces of the text with the markup removed; a code span is a word
    boundary on both sides ("(``x``)," gives "(", "x", "),"). A role's target is shown as Sphinx shows it:
    "title <target>" gives "title", "~a.b" gives "b", a leading "!" is dropped. Non-code roles (:ref:, :pep:,
    :term:, ...) become plain O text. On CPython 3.11.7 that is 573 training and 23 evaluation paragraphs.
    """
    documents = load_default_documents()
    heldout = _heldout_set(documents)
    train, evaluation = [], []
    for source, doc in documents:
        if not source.startswith(_TOPICS_PREFIX):  # the topics are rendered text, without reST markup
            example = code_span_example(doc)
            if example is not None:
                (evaluation if doc in heldout else train).append(example)
    label2id, id2label = build_label_map(train, path="code_span_task", column="tag label")
    return TaskData("token", train, evaluation, label2id, id2label)


def code_span_example(text: str) -> TokenExample | None:
    """`text` as a tagged TokenExample (see `code_span_task`), or None if it has no code span."""
    words, tags, position = [], [], 0
    for match in _CODE_SPAN.finditer(text):
        plain = text[position:match.start()].split()
        words += plain
        tags += ["O"] * len(plain)
        code, is_code = _span_text(match)
        span = code.split()
        words += span
        tags += (["B-CODE"] + ["I-CODE"] * (len(span) - 1) if is_code else ["O"] * len(span))[:len(span)]
        position = match.end()
    if "B-CODE" not in tags:
        return None
    plain = text[position:].split()
    return TokenExample(tuple(words + plain), tuple(tags + ["O"] * len(plain)))


def _span_text(match: re.Match) -> tuple[str, bool]:
    """The shown text of one markup match and whether it is code."""
    if match.group("literal") is not None:
        return match.group("literal"), True
    if match.group("default") is not None:
        return match.group("default"), True
    role = match.group("roles").strip(":").split(":")[-1]
    target = match.group("target")
    titled = re.fullmatch(r"(.*?)\s*<[^<>]*>", target)
    if titled and titled.group(1):
        target = titled.group(1)
    elif target.startswith("~"):
        target = target[1:].split(".")[-1]
    return target.lstrip("!"), role in _CODE_ROLES


def _heldout_set(documents: list[tuple[str, str]]) -> set[str]:
    """The documents pretraining holds out: `split_heldout` of the whole default corpus, as there."""
    return set(split_heldout([doc for _, doc in documents])[1])
