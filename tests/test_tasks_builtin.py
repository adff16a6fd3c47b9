"""Built-in fine-tuning tasks from the embedded corpus: classes, no name leakage, the pretraining split."""
import sys
from collections import Counter

import pytest

from minibert.data.corpus import corpus_fingerprint, load_default_corpus, load_default_documents, split_heldout
from minibert.data.tasks_builtin import (code_span_example, code_span_task, docstring_package_task, package_of,
                                    remove_names)


@pytest.fixture(scope="module")
def documents():
    return load_default_documents()


@pytest.fixture(scope="module")
def package_task():
    return docstring_package_task()


def test_sourced_documents_are_the_default_corpus(documents):
    train_docs, heldout_docs = load_default_corpus()
    assert split_heldout([doc for _, doc in documents]) == (train_docs, heldout_docs)
    sources = [source for source, _ in documents]
    assert sources[0].startswith("pydoc_data.topics:") and "email/message.py" in sources
    if sys.version_info[:3] != (3, 11, 7):
        pytest.skip("the fingerprints below were measured on CPython 3.11.7 before sources were added")
    assert corpus_fingerprint(train_docs) == "74c68d61ae61466ccbcee76272610c55eb12bde739973c892bd77a69a5fccab6"
    assert corpus_fingerprint(heldout_docs) == "2c04d8ca985abd92c1bee657b43d72b961e12b83f6ffff4ad9457f8e7cc7fddc"


def test_package_of():
    assert package_of("email/mime/text.py") == "email" and package_of("typing.py") == "typing"
    assert package_of("_pydecimal.py") is None and package_of("pydoc_data.topics:if") is None


def test_remove_names_takes_every_variant():
    text = ("Use ``asyncio.run()`` or asyncio's loop; see :py:mod:`~asyncio.events` and _asyncio. "
            "HTTPServer speaks https, XMLParser reads ``xml``, not ``json`` nor ``from xml import y``.")
    assert remove_names(text, ["asyncio", "http", "xml"]) == (
        "Use or 's loop; see and . speaks , reads , not ``json`` nor ``from import y``.")


def test_package_task_classes_and_no_name_leakage(package_task):
    packages = list(package_task.label2id)
    assert len(packages) == 10 and packages == sorted(packages)
    assert {"tkinter", "asyncio", "email"} <= set(packages)
    train_counts = Counter(example.label for example in package_task.train)
    eval_counts = Counter(example.label for example in package_task.eval)
    assert min(train_counts.values()) >= 250 and min(eval_counts.values()) >= 5
    assert set(eval_counts) == set(packages)
    for example in package_task.train + package_task.eval:
        assert not any(name in example.text.lower() for name in packages), example
    majority = max(eval_counts[label] for label, _ in train_counts.most_common(1)) / len(package_task.eval)
    assert package_task.majority_baseline() == pytest.approx(majority)
    assert package_task.majority_baseline() < 0.3


def test_package_task_is_held_out_as_pretraining(package_task, documents):
    train_docs, heldout_docs = split_heldout([doc for _, doc in documents])  # = load_default_corpus(), as tested
    packages = list(package_task.label2id)
    texts_of = lambda docs: {remove_names(doc, packages) for source, doc in documents  # noqa: E731
                             if package_of(source) in packages and doc in docs}
    heldout_texts, train_texts = texts_of(set(heldout_docs)), texts_of(set(train_docs))
    assert {example.text for example in package_task.eval} <= heldout_texts
    assert {example.text for example in package_task.train} <= train_texts
    assert not {example.text for example in package_task.eval} & {example.text for example in package_task.train}


def test_code_span_example_markup():
    text = ("Return ``None`` if :func:`~os.path.join` fails (see :ref:`the guide <guide>`); `name' is "
            ":py:class:`foo.Bar`.")
    example = code_span_example(text)
    tagged = list(zip(example.words, example.tags))
    assert tagged == [("Return", "O"), ("None", "B-CODE"), ("if", "O"), ("join", "B-CODE"), ("fails", "O"),
                      ("(see", "O"), ("the", "O"), ("guide", "O"), (");", "O"), ("name", "B-CODE"), ("is", "O"),
                      ("foo.Bar", "B-CODE"), (".", "O")]
    multi = code_span_example("Write ``from x import y`` here.")
    assert multi.tags == ("O", "B-CODE", "I-CODE", "I-CODE", "I-CODE", "O")
    assert code_span_example("No markup, and a :pep:`8` reference.") is None


def test_code_span_task_is_held_out_as_pretraining(documents):
    task = code_span_task()
    _, heldout_docs = split_heldout([doc for _, doc in documents])
    assert list(task.label2id) == ["B-CODE", "I-CODE", "O"]
    assert len(task.train) > 300 and len(task.eval) >= 10
    heldout_examples = {code_span_example(doc) for doc in heldout_docs} - {None}
    assert set(task.eval) <= heldout_examples and not set(task.train) & heldout_examples
    tags = Counter(tag for example in task.eval for tag in example.tags)
    assert task.majority_baseline() == pytest.approx(tags["O"] / sum(tags.values()))
