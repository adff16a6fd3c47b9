"""Using a trained model on files: batch prediction (minibert/predict_file.py, `predict.py --input FILE --output
FILE`) with the same outputs as the one-text predictions for sequence, token and masked-LM models, every input format,
bad rows reported by line (skipped or stopping the run, never dropped silently), the script's throughput line; and
the evaluation report (`evaluate.py RUN --report DIR`) with its confusion matrix, and the fine-tuning loss.png."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from minibert.inference import fill_mask, load_classifier_run, load_run, predict_text
from minibert.predict_file import PredictionError, load_predictor, predict_file
from support import TINY_RUN, assert_picture, run_script
from test_finetune import TINY, conll_sentences, finetune, sentiment_rows, write_conll, write_tsv

pytestmark = pytest.mark.slow

TEXTS = ["great fun so", "an awful film and", "a joy", "loved every minute yes ok so and great fun",
         "poor acting", "very good indeed ok", "hated every minute", "brilliant acting so and yes",
         "a pain ok", "terrible and boring yes"]


@pytest.fixture(scope="module")
def runs(script_env, tmp_path_factory):
    """A sequence classifier, a token classifier (BIO tags) and a masked LM, each trained for seconds."""
    root = tmp_path_factory.mktemp("predict")
    train, dev = write_tsv(root / "train.tsv", sentiment_rows(48, 0)), write_tsv(root / "dev.tsv", sentiment_rows(8, 1))
    tokens = write_conll(root / "train.conll", conll_sentences(40, 6))
    tokens_dev = write_conll(root / "dev.conll", conll_sentences(8, 7))
    made = {"sequence": root / "seq", "token": root / "tok", "mlm": root / "mlm", "dev": dev,
            "tok_dev": tokens_dev}
    for args in ((*TINY, "--train", train, "--eval", dev, "--epochs", "2", "--out", made["sequence"]),
                 (*TINY, "--task", "token", "--train", tokens, "--eval", tokens_dev, "--epochs", "2", "--out",
                  made["token"])):
        result = finetune(script_env, *args)
        assert result.returncode == 0, result.stderr[-3000:]
    result = run_script(script_env, "train.py", *TINY_RUN, "--steps", "4", "--out", made["mlm"])
    assert result.returncode == 0, result.stderr[-3000:]
    return made


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_sequence_predictions_equal_the_one_text_ones(runs, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    done = predict_file(load_predictor(str(runs["sequence"]), "numpy"), str(source), str(out), batch_size=3,
                        progress=False)
    assert done["rows"] == done["predicted"] == len(TEXTS) and done["skipped"] == 0 and done["texts_per_s"] > 0
    _, config, params, tokenizer, backend, max_len = load_classifier_run(runs["sequence"], "numpy")
    records = _lines(out)
    assert [r["line"] for r in records] == list(range(1, len(TEXTS) + 1))        # the input's order
    for record, text in zip(records, TEXTS):
        [(label, probs)] = predict_text(text, config, params, tokenizer, backend, max_len)
        assert record["text"] == text and record["label"] == label
        assert record["probabilities"] == pytest.approx(probs, abs=1e-5)


def test_token_predictions_equal_the_one_text_ones(runs, tmp_path):
    sentences = [" ".join(word for word, _ in s) for s in conll_sentences(9, 11)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"sentence": s}) + "\n" for s in sentences), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    predict_file(load_predictor(str(runs["token"]), "numpy"), str(source), str(out), batch_size=4, progress=False)
    _, config, params, tokenizer, backend, max_len = load_classifier_run(runs["token"], "numpy")
    for record, text in zip(_lines(out), sentences, strict=True):
        expected = predict_text(text, config, params, tokenizer, backend, max_len)
        assert record["words"] == text.split() and record["tags"] == [tag for tag, _ in expected]
        assert record["tag_probabilities"] == pytest.approx([probs[tag] for tag, probs in expected], abs=1e-5)


def test_masked_lm_fills_equal_the_one_text_ones_and_bad_rows_are_reported(runs, tmp_path):
    texts = ["the [MASK] function returns a list", "no mask in this one", "a [MASK] of the [MASK] module",
             "", "[MASK] is returned"]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out, messages = tmp_path / "fills.jsonl", []
    done = predict_file(load_predictor(str(runs["mlm"]), "numpy", top_k=3), str(source), str(out), batch_size=2,
                        progress=False, log=messages.append)
    assert (done["rows"], done["predicted"], done["skipped"]) == (5, 3, 2)
    assert [m.split(": ", 1)[0] for m in messages] == [f"skipped {source}, line 2", f"skipped {source}, line 4"]
    assert "no [MASK] token" in messages[0] and "empty line" in messages[1]
    config, params, tokenizer, backend = load_run(runs["mlm"], "numpy")
    records = _lines(out)
    assert [r["line"] for r in records] == [1, 3, 5]
    for record in records:
        expected = fill_mask(record["text"], config, params, tokenizer, backend, 3)
        assert [[f["token"] for f in mask] for mask in record["fills"]] == [[t for t, _ in m] for m in expected]
        assert np.allclose([[f["probability"] for f in mask] for mask in record["fills"]],
                           [[p for _, p in m] for m in expected], rtol=1e-4, atol=1e-7)
    with pytest.raises(PredictionError, match=f"{source}, line 2: no \\[MASK\\] token"):
        predict_file(load_predictor(str(runs["mlm"]), "numpy"), str(source), str(tmp_path / "stop.jsonl"),
                     on_error="stop", progress=False)
    assert not list(tmp_path.glob("*stop.jsonl*")), "a stopped run left an output (or its .stop.jsonl.tmp-PID) behind"


def test_every_input_format_gives_the_same_labels_and_csv_output_reads_back(runs, tmp_path):
    predictor = load_predictor(str(runs["sequence"]), "numpy")
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    write_tsv(tmp_path / "in.tsv", [(t, "x") for t in TEXTS], header=("review", "other"))
    with open(tmp_path / "in.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["id", "review"]] + [[i, t] for i, t in enumerate(TEXTS)])
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"review": t}) + "\n" for t in TEXTS), encoding="utf-8")
    labels = {}
    for name in ("in.txt", "in.tsv", "in.csv", "in.jsonl"):
        out = tmp_path / f"{name}.csv"
        predict_file(predictor, str(tmp_path / name), str(out), text_column="review", batch_size=4, progress=False)
        with open(out, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert [r["text"] for r in rows] == TEXTS
        probs = np.array([[float(r[f"p({label})"]) for label in ("neg", "pos")] for r in rows])
        assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
        labels[name] = [r["label"] for r in rows]
    assert len({tuple(v) for v in labels.values()}) == 1


def test_bad_csv_rows_are_skipped_by_line_or_stop_the_run(runs, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text('text,score\ngreat fun,1\n"",2\na,b,c\nan awful film,3\n', encoding="utf-8")
    out, messages = tmp_path / "out.jsonl", []
    done = predict_file(load_predictor(str(runs["sequence"]), "numpy"), str(source), str(out), progress=False,
                        log=messages.append)
    assert (done["predicted"], done["skipped"]) == (2, 2)
    assert [r["line"] for r in _lines(out)] == [2, 5]
    assert messages == [f"skipped {source}, line 3: column 'text' is missing, empty or not a string",
                        f"skipped {source}, line 4: ragged row: 3 fields where the header has 2"]
    with pytest.raises(ValueError, match="the header has no column 'review'"):
        predict_file(load_predictor(str(runs["sequence"]), "numpy"), str(source), str(out), text_column="review",
                     progress=False)


def test_script_labels_a_file_and_prints_its_throughput(script_env, runs, tmp_path):
    source = tmp_path / "reviews.csv"
    with open(source, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["review"]] + [[TEXTS[i % len(TEXTS)]] for i in range(300)])
    out = tmp_path / "labels.csv"
    result = run_script(script_env, "predict.py", runs["sequence"], "--input", source, "--output", out,
                        "--text-column", "review", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predicted 300 of 300 rows" in result.stdout and "texts/s" in result.stdout
    assert len(out.read_text(encoding="utf-8").splitlines()) == 301
    refused = run_script(script_env, "predict.py", runs["sequence"], "--input", tmp_path / "in.xlsx", "--output", out)
    assert refused.returncode == 2 and "--input" in refused.stderr and ".xlsx" in refused.stderr


def test_compare_predict_script_runs_both_sides_and_they_agree(script_env):
    """The throughput comparison on a tiny random classifier: it times both sides and the same model labels every
    text the same way in both libraries."""
    result = run_script(script_env, "compare_predict.py", "--preset", "tiny", "--texts", "40", "--repeats", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "time ratio against the pipeline" in result.stdout and "same label on 100.0% of the texts" in result.stdout


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_evaluation_report_of_a_sequence_run(script_env, runs, tmp_path):
    out = tmp_path / "report"
    result = run_script(script_env, "evaluate.py", runs["sequence"], "--eval", runs["dev"], "--report", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "class" in result.stdout and "weighted avg" in result.stdout and "confusion.png" in result.stdout
    report = json.loads((out / "report.json").read_text())
    examples, metrics = report["examples"], report["metrics"]
    counts = np.array(report["confusion"]["counts"])
    assert report["confusion"]["labels"] == ["neg", "pos"] and counts.sum() == examples == 8
    assert [c["support"] for c in report["classes"]] == counts.sum(1).tolist()
    assert np.trace(counts) / examples == pytest.approx(metrics["accuracy"])
    assert np.mean([c["f1"] for c in report["classes"]]) == pytest.approx(metrics["macro_f1"])
    errors = _csv_rows(out / "errors.csv")
    assert len(errors) == report["errors"] == examples - np.trace(counts)
    assert all(e["gold"] != e["predicted"] and float(e["p(predicted)"]) >= float(e["p(gold)"]) for e in errors)
    assert_picture(out / "confusion.png", 300, 300)
    assert_picture(runs["sequence"] / "loss.png", 600, 600)      # losses above, held-out accuracy and F1 below


def test_evaluation_report_of_a_token_run_has_per_type_spans(script_env, runs, tmp_path):
    out = tmp_path / "report"
    result = run_script(script_env, "evaluate.py", runs["token"], "--eval", runs["tok_dev"], "--report", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "span type" in result.stdout
    report = json.loads((out / "report.json").read_text())
    counts = np.array(report["confusion"]["counts"])
    words = sum(len(s) for s in conll_sentences(8, 7))
    assert counts.sum() == words and sorted(report["confusion"]["labels"]) == ["B-PER", "I-PER", "O"]
    assert np.trace(counts) / words == pytest.approx(report["metrics"]["token_accuracy"])
    [per] = report["spans"]
    assert per["type"] == "PER" and per["support"] == 8 and per["f1"] == pytest.approx(report["metrics"]["span_f1"])
    assert len(_csv_rows(out / "errors.csv")) == words - np.trace(counts)
    assert_picture(out / "confusion.png", 300, 300)


def test_report_is_refused_for_a_masked_lm(script_env, runs, tmp_path):
    result = run_script(script_env, "evaluate.py", runs["mlm"], "--report", tmp_path / "r")
    assert result.returncode == 2 and "--report applies to fine-tuned runs" in result.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", ["mlm", "sequence"])
def test_attention_maps_are_drawn_for_one_text(script_env, runs, tmp_path, kind):
    text = "the [MASK] film was great fun" if kind == "mlm" else "a wonderful film so"
    picture = tmp_path / "attn.png"
    result = run_script(script_env, "predict.py", runs[kind], text, "--attention", picture)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "attention maps: " in result.stdout and "2 layers x 2 heads over" in result.stdout
    assert_picture(picture, 300, 300)
    refused = run_script(script_env, "predict.py", runs[kind], text, "--attention", tmp_path / "attn.jpg")
    assert refused.returncode == 2 and "--attention must name a .png file" in refused.stderr


def test_every_backend_predicts_a_file_as_numpy_does(runs, tmp_path, backend):
    """On every backend, padding included (JAX pads batches to fixed shapes): the same labels and probabilities."""
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS * 3) + "\n", encoding="utf-8")
    outputs = {}
    for name in ("numpy", backend.name):
        out = tmp_path / f"{name}.jsonl"
        predict_file(load_predictor(str(runs["sequence"]), name), str(source), str(out), batch_size=4,
                     progress=False)
        outputs[name] = _lines(out)
    assert [r["label"] for r in outputs[backend.name]] == [r["label"] for r in outputs["numpy"]]
    for ours, ref in zip(outputs[backend.name], outputs["numpy"]):
        assert ours["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-5)
