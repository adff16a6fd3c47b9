"""Fine-tuning data files on the host: read and validate labelled examples, and build the label map.

Sequence task (one label per text, or per text pair), by file extension:

* `.tsv`: GLUE style, a header row then one example a line, tab-separated and NOT quoted (a `"` is text);
* `.csv`: a header row, comma-separated with standard CSV quoting;
* `.jsonl`: one JSON object a line, its keys being the columns.

Token task (one tag per word), by file extension:

* `.jsonl`: one object a line with a list of words (`tokens`) and a list of tags (`tags`) of the same length;
* anything else (`.conll`, `.txt`, `.tsv`, ...): CoNLL, one word a line with its columns separated by a tab (or,
  on lines without a tab, by whitespace, as CoNLL-2003's `word POS chunk NER`); the word is the first column and
  the tag the `tag_column`-th (default the last); a blank line ends a sentence; `-DOCSTART-` lines are skipped.

Every problem in a file is a `DataFileError` (a ValueError) naming the file, the line and the columns found,
raised while reading, so before any tokenization or training. Labels may be strings or integers; the label map
sorts them (numerically when every label is an integer), so it depends only on the set of training labels.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from minibert.metrics import majority_baseline

SEQUENCE_EXTENSIONS = (".tsv", ".csv", ".jsonl")
DEFAULT_TEXT_COLUMNS = ("sentence", "text")  # tried in this order when no text column is given
_INTEGER = re.compile(r"[+-]?\d+")


class DataFileError(ValueError):
    """A data file that cannot be used as it is (the message names the file, the line and what is allowed)."""


@dataclass(frozen=True)
class SequenceExample:
    """One text (or text pair) with its label: a class name as a str, or a float for regression."""
    text: str
    label: str | float
    text_pair: str | None = None
    line: int = 0  # where it is in its file (1-based), 0 when it comes from no file


@dataclass(frozen=True)
class TokenExample:
    """One pre-split sentence with a tag (a class name as a str) per word."""
    words: tuple[str, ...]
    tags: tuple[str, ...]
    line: int = 0  # the line of its first word (CoNLL) or of its object (JSON lines)


@dataclass
class TaskData:
    """A fine-tuning task: training and evaluation examples with the label map built from the training ones.

    `task` is "sequence" or "token"; regression (sequence task only) has float labels and no label map.
    """
    task: str
    train: list
    eval: list
    label2id: dict[str, int] = field(default_factory=dict)
    id2label: dict[int, str] = field(default_factory=dict)
    regression: bool = False

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.label2id)

    def majority_baseline(self) -> float:
        """Accuracy on the evaluation examples (per word for the token task) of always predicting the most
        frequent training label (the first in the label map on a tie)."""
        if self.regression or not self.eval:
            raise ValueError("a majority baseline needs class labels and evaluation examples")
        train, evaluation = ([self.label2id[label] for label in _labels_of(examples)]
                             for examples in (self.train, self.eval))
        return majority_baseline(train, evaluation)


def load_sequence_task(train_path: str, eval_path: str | None = None, *, text_column: str | None = None,
                       text_pair_column: str | None = None, label_column: str = "label",
                       regression: bool = False) -> TaskData:
    """Read a training file and an optional evaluation file (see `read_sequence_file`) into a `TaskData`.

    The label map comes from the training labels, which must hold at least two classes; an evaluation label
    the training file does not have is an error naming it. With `regression` the labels are floats.
    """
    columns = dict(text_column=text_column, text_pair_column=text_pair_column, label_column=label_column,
                   regression=regression)
    train = read_sequence_file(train_path, **columns)
    evaluation = [] if eval_path is None else read_sequence_file(eval_path, **columns)
    if regression:
        return TaskData("sequence", train, evaluation, regression=True)
    column = f"label column {label_column!r}"
    label2id, id2label = build_label_map(train, path=train_path, column=column)
    check_example_labels(evaluation, label2id, path=eval_path, column=column)
    return TaskData("sequence", train, evaluation, label2id, id2label)


def load_token_task(train_path: str, eval_path: str | None = None, *, tag_column: int = -1,
                    tokens_column: str = "tokens", tags_column: str = "tags") -> TaskData:
    """Read a training file and an optional evaluation file (see `read_token_file`) into a `TaskData`."""
    columns = dict(tag_column=tag_column, tokens_column=tokens_column, tags_column=tags_column)
    train = read_token_file(train_path, **columns)
    evaluation = [] if eval_path is None else read_token_file(eval_path, **columns)
    column = (f"tags column {tags_column!r}" if train_path.lower().endswith(".jsonl")
              else f"tag column {tag_column}")
    label2id, id2label = build_label_map(train, path=train_path, column=column)
    check_example_labels(evaluation, label2id, path=eval_path, column=column)
    return TaskData("token", train, evaluation, label2id, id2label)


def read_sequence_file(path: str, *, text_column: str | None = None, text_pair_column: str | None = None,
                       label_column: str = "label", regression: bool = False) -> list[SequenceExample]:
    """The examples of a `.tsv`, `.csv` or `.jsonl` file (see the module docstring).

    `text_column` None takes the first of DEFAULT_TEXT_COLUMNS the file has. `text_pair_column` names the
    second text of sentence-pair tasks. Class labels are kept as strings (JSON integers become their decimal
    string); with `regression` a label must be a finite number.
    """
    extension = os.path.splitext(path)[1].lower()
    if extension not in SEQUENCE_EXTENSIONS:
        raise DataFileError(f"{path}: unsupported file type {extension or '(none)'!r}; a sequence-task file is "
                            f"one of {', '.join(SEQUENCE_EXTENSIONS)}")
    content = _read_text(path)
    if extension == ".jsonl":
        rows = [(line, object_, list(object_)) for line, object_ in _json_objects(path, content)]
    else:
        rows = _delimited_rows(path, content, extension)
    examples = []
    for line, row, columns in rows:
        if text_column is None:
            text_column = next((name for name in DEFAULT_TEXT_COLUMNS if name in columns), None)
            if text_column is None:
                raise DataFileError(f"{path}, line {line}: no text column given and none of the default "
                                    f"{list(DEFAULT_TEXT_COLUMNS)} found; columns found: {list(columns)}")
        wanted = [text_column, label_column] + ([text_pair_column] if text_pair_column is not None else [])
        for name in wanted:
            if name not in row:
                raise DataFileError(f"{path}, line {line}: unknown column {name!r}; columns found: "
                                    f"{list(columns)}")
        text = _text(path, line, row, text_column)
        text_pair = None if text_pair_column is None else _text(path, line, row, text_pair_column)
        label = _label(path, line, row[label_column], label_column, regression)
        examples.append(SequenceExample(text, label, text_pair, line))
    if not examples:
        raise DataFileError(f"{path}: no examples (only a header); a file needs at least one data row")
    return examples


def read_token_file(path: str, *, tag_column: int = -1, tokens_column: str = "tokens",
                    tags_column: str = "tags") -> list[TokenExample]:
    """The sentences of a CoNLL file or of a `.jsonl` file with word and tag lists (see the module docstring).

    `tag_column` is the CoNLL column (0-based, negative from the end, never the word column 0) that holds the
    tags; `tokens_column`/`tags_column` are the JSON keys. Integer tags become their decimal strings.
    """
    content = _read_text(path)
    if path.lower().endswith(".jsonl"):
        examples = _jsonl_token_examples(path, content, tokens_column, tags_column)
    else:
        examples = _conll_examples(path, content, tag_column)
    if not examples:
        raise DataFileError(f"{path}: no sentences found")
    return examples


def build_label_map(examples: Sequence[SequenceExample | TokenExample], *, path: str = "<examples>",
                    column: str = "label column") -> tuple[dict[str, int], dict[int, str]]:
    """(label2id, id2label) of the labels (or tags) of training examples, sorted: as integers when every label
    is one (so "10" comes after "9"), else as strings. Fewer than two classes is an error."""
    labels = sorted(set(_labels_of(examples)))
    if len(labels) < 2:
        raise DataFileError(f"{path}: the {column} has only one class ({labels[0]!r}) in the training data; "
                            f"classification needs at least two (use regression for numeric targets)"
                            if labels else f"{path}: no labels in the training data")
    if all(_INTEGER.fullmatch(label) for label in labels):
        labels.sort(key=lambda label: (int(label), label))
    return {label: i for i, label in enumerate(labels)}, dict(enumerate(labels))


def check_example_labels(examples: Sequence[SequenceExample | TokenExample], label2id: dict[str, int], *,
                 path: str | None = "<examples>", column: str = "label column") -> None:
    """Raise if an example has a label (or tag) that `label2id` (the training labels) lacks, naming it."""
    for example in examples:
        for j, label in enumerate(_labels_of([example])):
            if label not in label2id:
                where = (f"line {example.line} (word {j + 1}, {example.words[j]!r})"
                         if isinstance(example, TokenExample) else f"line {example.line}")
                raise DataFileError(f"{path}, {where}: label {label!r} ({column}) never occurs in the training "
                                    f"data, whose labels are {list(label2id)}")


def _labels_of(examples: Iterable[SequenceExample | TokenExample]) -> Iterable[str]:
    for example in examples:
        if isinstance(example, TokenExample):
            yield from example.tags
        else:
            yield example.label


def _read_text(path: str) -> str:
    if not os.path.exists(path):
        raise DataFileError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise DataFileError(f"{path}: not a file (a directory?); pass a data file")
    with open(path, "rb") as file:
        data = file.read()
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path}: not UTF-8 text ({err})") from None
    if not content.strip():
        raise DataFileError(f"{path}: the file is empty")
    return content


def _lines(content: str) -> list[str]:
    """The lines of a text, split at "\n" only (so line numbers are an editor's), without their "\r\n"."""
    return content.replace("\r\n", "\n").split("\n")


def _delimited_rows(path: str, content: str, extension: str) -> Iterable[tuple[int, dict, list]]:
    """(line, {column: value}, columns) of each non-blank data row of a .tsv/.csv file with a header row."""
    if extension == ".tsv":
        reader = csv.reader(io.StringIO(content, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(content, newline=""), delimiter=",")
    try:
        header = next(row for row in reader if row)
        header_line = reader.line_num
        if len(set(header)) != len(header):
            raise DataFileError(f"{path}, line {header_line}: the header repeats a column name; columns found: "
                                f"{header}")
        rows = []
        start = reader.line_num + 1
        for row in reader:
            if row:
                if len(row) != len(header):
                    raise DataFileError(f"{path}, line {start}: ragged row, {len(row)} fields where the header "
                                        f"line {header_line} has {len(header)} columns {header}")
                rows.append((start, dict(zip(header, row)), header))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataFileError(f"{path}, line {reader.line_num}: malformed {extension} ({err})") from None
    return rows


def _json_objects(path: str, content: str) -> list[tuple[int, dict]]:
    """(line, object) of each non-blank line of a JSON-lines file."""
    objects = []
    for line, text in enumerate(_lines(content), 1):
        if text.strip():
            try:
                object_ = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataFileError(f"{path}, line {line}: bad JSON ({err.msg} at column {err.colno}); each "
                                    f"line must be one JSON object") from None
            if not isinstance(object_, dict):
                raise DataFileError(f"{path}, line {line}: a {type(object_).__name__} where a JSON object "
                                    f"({{\"column\": value, ...}}) is needed")
            objects.append((line, object_))
    return objects


def _text(path: str, line: int, row: dict, column: str) -> str:
    value = row[column]
    if not isinstance(value, str):
        raise DataFileError(f"{path}, line {line}: column {column!r} holds a {type(value).__name__}; "
                            f"a text must be a string")
    if not value.strip():
        raise DataFileError(f"{path}, line {line}: empty text in column {column!r}")
    return value


def _label(path: str, line: int, value, column: str, regression: bool) -> str | float:
    """A class label as a str (from a str or an int) or, for regression, a finite float."""
    if regression:
        try:
            number = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            raise DataFileError(f"{path}, line {line}: regression label {value!r} in column {column!r} is not "
                                f"a finite number")
        return number
    return _class_name(path, line, value, column)


def _class_name(path: str, line: int, value, column: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise DataFileError(f"{path}, line {line}: label {value!r} in column {column!r} is not allowed; a class "
                        f"label is a non-empty string or an integer")


def _jsonl_token_examples(path: str, content: str, tokens_column: str, tags_column: str) -> list[TokenExample]:
    examples = []
    for line, object_ in _json_objects(path, content):
        for name in (tokens_column, tags_column):
            if name not in object_:
                raise DataFileError(f"{path}, line {line}: unknown column {name!r}; columns found: "
                                    f"{list(object_)}")
            if not isinstance(object_[name], list):
                raise DataFileError(f"{path}, line {line}: column {name!r} must be a list, got a "
                                    f"{type(object_[name]).__name__}")
        words, tags = object_[tokens_column], object_[tags_column]
        if len(words) != len(tags):
            raise DataFileError(f"{path}, line {line}: {len(words)} {tokens_column} but {len(tags)} "
                                f"{tags_column}; there must be one tag per word")
        if not words:
            raise DataFileError(f"{path}, line {line}: empty text (no {tokens_column})")
        if not all(isinstance(word, str) and word.strip() for word in words):
            raise DataFileError(f"{path}, line {line}: every entry of {tokens_column!r} must be a non-empty "
                                f"string")
        examples.append(TokenExample(tuple(words), tuple(_class_name(path, line, tag, tags_column)
                                                         for tag in tags), line))
    return examples


def _conll_examples(path: str, content: str, tag_column: int) -> list[TokenExample]:
    examples, words, tags = [], [], []
    first_line = num_columns = None
    for line, text in enumerate(_lines(content) + [""], 1):
        fields = text.split("\t") if "\t" in text else text.split()
        if not text.strip() or fields[0] == "-DOCSTART-":
            if words:
                examples.append(TokenExample(tuple(words), tuple(tags), first_line))
            words, tags = [], []
            continue
        if num_columns is None:
            num_columns = len(fields)
            if num_columns < 2:
                raise DataFileError(f"{path}, line {line}: 1 column found; CoNLL needs a word and a tag per line "
                                    f"(word<TAB>tag, or whitespace-separated columns)")
            if tag_column in (0, -num_columns) or not -num_columns <= tag_column < num_columns:
                raise DataFileError(f"{path}, line {line}: tag_column={tag_column} is not allowed with the "
                                    f"{num_columns} columns found {fields}; it must be one of 1..{num_columns - 1} "
                                    f"or -1..-{num_columns - 1} (column 0 is the word)")
        if len(fields) != num_columns:
            raise DataFileError(f"{path}, line {line}: ragged row, {len(fields)} columns {fields} where the "
                                f"first line of the file has {num_columns}")
        if not fields[0].strip() or not fields[tag_column].strip():
            raise DataFileError(f"{path}, line {line}: empty word or tag in {fields}")
        first_line = line if not words else first_line
        words.append(fields[0])
        tags.append(fields[tag_column].strip())
    return examples
