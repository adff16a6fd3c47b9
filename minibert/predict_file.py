"""Batch prediction over a file (host side): `scripts/predict.py MODEL --input FILE --output FILE`.

    rows (streamed)  ->  chunks of CHUNK_BATCHES * batch_size rows  ->  each chunk tokenized, its rows sorted by
    length and cut into batches (padding only to the longest row of a batch)  ->  predictions written in the
    input's order  ->  the next chunk

Memory is bounded by one chunk whatever the file's size. Inputs: `.txt` (one text a line), `.csv`, `.tsv` (a
header row) and `.jsonl` (one object a line), the text (and, for pair tasks, second text) columns named as for
`scripts/finetune.py` (default: the first of "sentence", "text"). Outputs: `.jsonl` (one object a line) or `.csv`,
one record per input row that could be read, with its line number:

    sequence classifier:  label and every label's probability (regression: value)
    token classifier:     the words (whitespace-separated) and a tag per word ("" where truncated away)
    masked LM:            the top-k fills of each [MASK], token and probability

A row that cannot be used (malformed JSON, a ragged CSV row, an empty text, a masked-LM text without [MASK] or
longer than the model) is reported with its line number and skipped (`on_error="skip"`) or stops the run
(`"stop"`); the output is written to a temporary file renamed into place at the end
(`minibert.storage.fileio.atomic_write`), so a stopped run leaves none.
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from minibert.api import classify_logits, mlm_logits
from minibert.data.finetune_data import DEFAULT_TEXT_COLUMNS, DataFileError
from minibert.data.finetune_encode import encode_texts, encode_words
from minibert.inference import (label_probabilities, load_classifier_run, load_run, masked_ids, model_config,
                                top_fills)
from minibert.metrics import softmax
from minibert.storage.fileio import atomic_write

INPUT_EXTENSIONS = (".txt", ".csv", ".tsv", ".jsonl")
OUTPUT_EXTENSIONS = (".jsonl", ".csv")
ON_ERROR = ("skip", "stop")
CHUNK_BATCHES = 16        # batches tokenized, sorted by length and predicted at a time
SHAPE_STEP = 32           # static-shape backends: batch widths rounded up to a multiple of this


@dataclass(frozen=True)
class Row:
    line: int               # 1-based line number in the input file
    text: str
    text_pair: str | None = None


@dataclass(frozen=True)
class BadRow:
    line: int
    message: str


class PredictionError(ValueError):
    """A bad input row under on_error="stop" (its message names the file and line)."""


# --- reading ----------------------------------------------------------------------------------------------------

def check_paths(input_path: str, output_path: str) -> None:
    """ValueError naming the argument unless the input is a readable file of a known type and the output has a
    known type and is not the input; before any model is loaded."""
    extension = os.path.splitext(input_path)[1].lower()
    if extension not in INPUT_EXTENSIONS:
        raise ValueError(f"--input {input_path}: unsupported file type {extension or '(none)'!r}; allowed: "
                         f"{', '.join(INPUT_EXTENSIONS)}")
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"--input {input_path}: no such file")
    out_extension = os.path.splitext(output_path)[1].lower()
    if out_extension not in OUTPUT_EXTENSIONS:
        raise ValueError(f"--output {output_path}: unsupported file type {out_extension or '(none)'!r}; allowed: "
                         f"{', '.join(OUTPUT_EXTENSIONS)}")
    if os.path.exists(output_path) and os.path.samefile(input_path, output_path):
        raise ValueError(f"--output {output_path} is the input file; write the predictions elsewhere")


def read_rows(path: str, *, text_column: str | None = None, text_pair_column: str | None = None
              ) -> Iterator[Row | BadRow]:
    """The input rows of `path`, streamed, in order: a `Row` for each usable one, a `BadRow` (line, reason) for
    each that is not. Blank lines of .csv/.tsv/.jsonl are not rows; a blank line of a .txt file is a bad row (an
    empty text). A file-level problem (not UTF-8, a .csv header without the text column) raises DataFileError."""
    extension = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8-sig", newline="") as file:
        try:
            if extension == ".txt":
                for line, text in enumerate(file, 1):
                    text = text.rstrip("\r\n")
                    yield Row(line, text) if text.strip() else BadRow(line, "empty line: no text")
            elif extension == ".jsonl":
                yield from _jsonl_rows(path, file, text_column, text_pair_column)
            else:
                yield from _delimited_rows(path, file, extension, text_column, text_pair_column)
        except UnicodeDecodeError as err:
            raise DataFileError(f"{path}: not UTF-8 text ({err})") from None


def _text_of(row: dict, column: str) -> str | None:
    value = row.get(column)
    return value if isinstance(value, str) and value.strip() else None


def _row_of(line: int, row: dict, text_column: str, text_pair_column: str | None) -> Row | BadRow:
    text = _text_of(row, text_column)
    if text is None:
        return BadRow(line, f"column {text_column!r} is missing, empty or not a string")
    if text_pair_column is None:
        return Row(line, text)
    pair = _text_of(row, text_pair_column)
    if pair is None:
        return BadRow(line, f"column {text_pair_column!r} is missing, empty or not a string")
    return Row(line, text, pair)


def _text_column_of(path: str, line: int, columns, text_column: str | None) -> str:
    if text_column is not None:
        return text_column
    found = next((name for name in DEFAULT_TEXT_COLUMNS if name in columns), None)
    if found is None:
        raise DataFileError(f"{path}, line {line}: no text column given (--text-column) and none of the default "
                            f"{list(DEFAULT_TEXT_COLUMNS)} found; columns found: {list(columns)}")
    return found


def _jsonl_rows(path, file, text_column, text_pair_column) -> Iterator[Row | BadRow]:
    for line, text in enumerate(file, 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            yield BadRow(line, f"bad JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(row, dict):
            yield BadRow(line, f"a JSON {type(row).__name__} where an object is needed")
            continue
        text_column = _text_column_of(path, line, row, text_column)
        yield _row_of(line, row, text_column, text_pair_column)


def _delimited_rows(path, file, extension, text_column, text_pair_column) -> Iterator[Row | BadRow]:
    reader = (csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE) if extension == ".tsv"
              else csv.reader(file, delimiter=","))
    header = next((row for row in reader if row), None)
    if header is None:
        raise DataFileError(f"{path}: the file is empty (a {extension} file needs a header row)")
    header_line = reader.line_num
    text_column = _text_column_of(path, header_line, header, text_column)
    for name in (text_column, text_pair_column):
        if name is not None and name not in header:
            raise DataFileError(f"{path}, line {header_line}: the header has no column {name!r}; columns found: "
                                f"{header}")
    start = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield BadRow(start, f"malformed {extension} ({err})")
            start = reader.line_num + 1
            continue
        if fields:
            if len(fields) != len(header):
                yield BadRow(start, f"ragged row: {len(fields)} fields where the header has {len(header)}")
            else:
                yield _row_of(start, dict(zip(header, fields)), text_column, text_pair_column)
        start = reader.line_num + 1


# --- predicting ----------------------------------------------------------------------------------------------------

class Predictor:
    """A model loaded once, predicting batches of rows: `encode(rows)` (-> per row an encoding or a BadRow
    reason) and `predict(rows, encodings)` -> one JSON-ready record per row. Built by `load_predictor`."""

    kind: str                         # "sequence", "regression", "token" or "mlm"

    def __init__(self, config, params, tokenizer, backend, max_len: int, top_k: int, pairs: bool | None):
        self.config, self.params, self.tokenizer, self.backend = config, params, tokenizer, backend
        self.max_len, self.top_k, self.pairs = max_len, top_k, pairs
        self.kind = ("mlm" if config.task == "mlm" else "regression" if config.problem_type == "regression"
                     else config.task)

    def encode(self, rows: list[Row]) -> list:
        """Per row: (token ids with [CLS]/[SEP], the token types (sequence task), word starts (token task) or
        [MASK] positions (masked LM)), or the reason it cannot be predicted (a str). One tokenizer call for all."""
        out: list = [None] * len(rows)
        usable = []
        for i, row in enumerate(rows):
            if self.pairs is not None and (row.text_pair is not None) != self.pairs:
                out[i] = ("the model was fine-tuned on sentence pairs: give --text-pair-column" if self.pairs else
                          "the model was fine-tuned on single texts: no second text applies")
            else:
                usable.append(i)
        texts = [rows[i].text for i in usable]
        if self.kind == "mlm":
            for i, pieces in zip(usable, self.tokenizer.encode_batch(texts)):
                out[i] = masked_ids(pieces, self.config, self.tokenizer)
        elif self.kind == "token" and usable:
            encoded = encode_words([text.split() for text in texts], self.tokenizer, self.max_len)
            for n, i in enumerate(usable):
                out[i] = (encoded.input_ids[n], list(encoded.word_starts[n]))
        elif usable:
            # read_rows gives every row a second text, or none (--text-pair-column)
            pairs = None if rows[usable[0]].text_pair is None else [rows[i].text_pair for i in usable]
            encoded = encode_texts(texts, self.tokenizer, self.max_len, pairs)
            for n, i in enumerate(usable):
                out[i] = (encoded.input_ids[n], encoded.token_type_ids[n])
        return out

    def predict(self, rows: list[Row], encodings: list, batch_size: int | None = None) -> list[dict]:
        """One record per row (rows of one batch, every one encoded). On a backend that compiles for every new
        shape (JAX: `static_shapes`) the batch is padded to `batch_size` rows and its width up to a multiple of
        SHAPE_STEP tokens, so a whole file compiles a few programs, not one per batch."""
        width, count = max(len(ids) for ids, _ in encodings), len(rows)
        if self.backend.static_shapes:
            width = min(-(-width // SHAPE_STEP) * SHAPE_STEP, self.config.max_position)
            count = max(count, batch_size or count)
        ids = np.full((count, width), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((count, width), np.int32)
        types = np.zeros((count, width), np.int32)
        mask[len(rows):, 0] = 1                     # padding rows (static shapes): one token, never read
        for r, (row_ids, extra) in enumerate(encodings):
            ids[r, :len(row_ids)], mask[r, :len(row_ids)] = row_ids, 1
            if self.kind in ("sequence", "regression"):
                types[r, :len(extra)] = extra
        if self.kind == "mlm":
            logits = self.backend.to_numpy(mlm_logits(self.params, ids, mask, types, config=self.config,
                                                      backend=self.backend))
            return [self._fills(row, logits[r], encodings[r][1]) for r, row in enumerate(rows)]
        logits = self.backend.to_numpy(classify_logits(self.params, ids, mask, types, config=self.config,
                                                       backend=self.backend)).astype(np.float64)
        return [self._classified(row, logits[r], encodings[r][1]) for r, row in enumerate(rows)]

    def _fills(self, row: Row, logits, positions) -> dict:
        fills = [[{"token": token, "probability": p} for token, p in top_fills(logits[position], self.tokenizer,
                                                                               self.top_k)]
                 for position in positions]
        return {**_base(row), "fills": fills}

    def _classified(self, row: Row, logits, extra) -> dict:
        if self.kind == "regression":
            return {**_base(row), "value": float(logits[0])}
        probs = softmax(logits)                                           # [C] or [T, C]
        if self.kind == "sequence":
            label, probabilities = label_probabilities(probs, self.config)
            return {**_base(row), "label": label, "probabilities": probabilities}
        words = [None if start < 0 else label_probabilities(probs[start], self.config) for start in extra]
        return {**_base(row), "words": row.text.split(), "tags": ["" if w is None else w[0] for w in words],
                "tag_probabilities": [None if w is None else w[1][w[0]] for w in words]}


def _base(row: Row) -> dict:
    return {"line": row.line, "text": row.text, **({} if row.text_pair is None else {"text_pair": row.text_pair})}


def load_predictor(model_dir: str, backend_name: str | None, top_k: int = 5) -> Predictor:
    """The model of a run directory or a transformers folder, on the backend, ready to predict."""
    if model_config(model_dir).task == "mlm":
        config, params, tokenizer, backend = load_run(model_dir, backend_name)
        return Predictor(config, params, tokenizer, backend, config.max_position, top_k, None)
    settings, config, params, tokenizer, backend, max_len = load_classifier_run(model_dir, backend_name)
    pairs = None if settings is None else settings.text_pair_column is not None
    return Predictor(config, params, tokenizer, backend, max_len, top_k, pairs)


# --- writing ---------------------------------------------------------------------------------------------------------

class RecordWriter:
    """Records to a .jsonl file (one object a line) or a .csv file (columns fixed by the model's kind)."""

    def __init__(self, file, extension: str, kind: str, labels: list[str]):
        self.file, self.csv = file, None
        if extension == ".csv":
            self.columns = {"sequence": ["line", "text", "text_pair", "label"] + [f"p({name})" for name in labels],
                            "regression": ["line", "text", "text_pair", "value"],
                            "token": ["line", "text", "tags"],
                            "mlm": ["line", "text", "fills"]}[kind]
            self.csv = csv.writer(file)
            self.csv.writerow(self.columns)

    def write(self, record: dict) -> None:
        if self.csv is None:
            self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        flat = dict(record)
        if "probabilities" in record:
            flat.update({f"p({name})": f"{p:.6g}" for name, p in record["probabilities"].items()})
        if "tags" in record:
            flat["tags"] = " ".join(tag or "-" for tag in record["tags"])
        if "fills" in record:
            flat["fills"] = " ; ".join(" | ".join(f"{f['token']} {f['probability']:.4f}" for f in mask)
                                       for mask in record["fills"])
        self.csv.writerow([flat.get(column, "") for column in self.columns])


# --- the whole file ------------------------------------------------------------------------------------------------

def predict_file(predictor: Predictor, input_path: str, output_path: str, *, batch_size: int = 32,
                 text_column: str | None = None, text_pair_column: str | None = None, on_error: str = "skip",
                 progress: bool = True, log: Callable = print, sort_by_length: bool = True) -> dict:
    """Predict every row of `input_path` into `output_path` (see the module docstring); returns
    {"rows", "predicted", "skipped", "seconds", "texts_per_s"}. PredictionError on a bad row under "stop".
    `sort_by_length=False` batches the rows in the input's order (as transformers' pipeline does): the same
    predictions, more padding."""
    if on_error not in ON_ERROR:
        raise ValueError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be a positive int, got {batch_size!r}")
    check_paths(input_path, output_path)
    from tqdm import tqdm

    labels = [predictor.config.id2label[i] for i in range(predictor.config.num_labels)] \
        if predictor.kind == "sequence" else []
    counts = {"rows": 0, "predicted": 0, "skipped": 0}
    started = time.perf_counter()
    bar = tqdm(disable=not progress, unit="text", dynamic_ncols=True, desc="predicting")

    def bad(line: int, message: str) -> None:
        where = f"{input_path}, line {line}: {message}"
        if on_error == "stop":
            raise PredictionError(f"{where} (--on-error stop: nothing written; --on-error skip reports and skips "
                                  "such rows)")
        counts["skipped"] += 1
        bar.write(f"skipped {where}") if progress else log(f"skipped {where}")

    def flush(chunk: list, writer: RecordWriter) -> None:
        encoded = list(zip(chunk, predictor.encode(chunk)))
        good = [(i, row, enc) for i, (row, enc) in enumerate(encoded) if not isinstance(enc, str)]
        records: dict[int, dict] = {}
        order = sorted(good, key=lambda item: len(item[2][0])) if sort_by_length else good   # little padding
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            predicted = predictor.predict([r for _, r, _ in batch], [e for _, _, e in batch], batch_size)
            for (i, _, _), record in zip(batch, predicted):
                records[i] = record
        for i, (row, enc) in enumerate(encoded):
            if isinstance(enc, str):
                bad(row.line, enc)
            else:
                writer.write(records[i])
                counts["predicted"] += 1
        bar.update(len(chunk))

    def write_all(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8", newline="") as out:
            writer = RecordWriter(out, os.path.splitext(output_path)[1].lower(), predictor.kind, labels)
            chunk: list[Row] = []
            for item in read_rows(input_path, text_column=text_column, text_pair_column=text_pair_column):
                counts["rows"] += 1
                if isinstance(item, BadRow):
                    flush(chunk, writer)                  # keep the output in the input's order
                    chunk = []
                    bad(item.line, item.message)
                    continue
                chunk.append(item)
                if len(chunk) == CHUNK_BATCHES * batch_size:
                    flush(chunk, writer)
                    chunk = []
            flush(chunk, writer)

    try:
        atomic_write(output_path, write_all)             # a temporary renamed into place: never half a file
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    return {**counts, "seconds": seconds, "texts_per_s": counts["predicted"] / max(seconds, 1e-9)}
