"""Fine-tuning end to end: scripts/finetune.py on small files the tests write (sequence, pairs, regression, token),
bit-exact resume, the frozen encoder of a linear probe, every bad input refused before any work, predict/evaluate
on a fine-tuned run, and a fine-tuned export that transformers' pipeline reads with the same prediction."""
from __future__ import annotations

import json
import random
import shutil
import subprocess

import numpy as np
import pytest

from support import (ALL_BACKENDS, ROOT, TINY_RUN, assert_tree_close, backend_or_skip, latest_tensors, python_command,
                     records, run_script)

pytestmark = pytest.mark.slow

# a tiny random model, its WordPiece trained on the training texts: a run takes seconds
TINY = ["--from-scratch", "--config", "tiny", "--vocab-size", "300", "--batch-size", "8", "--lr", "1e-3",
        "--no-progress"]
GOOD = ["great fun", "a wonderful film", "loved every minute", "brilliant acting", "very good indeed", "a joy"]
BAD = ["terrible and boring", "an awful film", "hated every minute", "poor acting", "very bad indeed", "a pain"]


def sentiment_rows(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.choice(["pos", "neg"])
        rows.append((f"{rng.choice(GOOD if label == 'pos' else BAD)} {rng.choice(['so', 'and', 'yes', 'ok'])}",
                     label))
    return rows


def write_tsv(path, rows, header=("sentence", "label")):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


def conll_sentences(count: int, seed: int) -> list[list[tuple[str, str]]]:
    """Sentences with PER names (B-PER / I-PER) among O words."""
    rng = random.Random(seed)
    names = [["alice"], ["bob", "smith"], ["carol", "ann", "jones"]]
    words = ["met", "the", "today", "with", "and", "saw", "a", "cat"]
    sentences = []
    for _ in range(count):
        sentence = [(rng.choice(words), "O") for _ in range(rng.randint(1, 3))]
        name = rng.choice(names)
        sentence += [(word, "B-PER" if i == 0 else "I-PER") for i, word in enumerate(name)]
        sentence += [(rng.choice(words), "O") for _ in range(rng.randint(0, 2))]
        sentences.append(sentence)
    return sentences


def write_conll(path, sentences):
    path.write_text("\n\n".join("\n".join(f"{word}\t{tag}" for word, tag in s) for s in sentences) + "\n",
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftdata")
    found = {"train": write_tsv(root / "train.tsv", sentiment_rows(48, 0)),
             "dev": write_tsv(root / "dev.tsv", sentiment_rows(16, 1))}
    for name, count, seed in (("pairs_train", 40, 2), ("pairs_dev", 12, 3)):
        rows = sentiment_rows(2 * count, seed)
        with open(root / f"{name}.csv", "w", encoding="utf-8") as f:
            f.write("first,second,label\n")
            for (a, la), (b, lb) in zip(rows[::2], rows[1::2]):
                f.write(f'"{a}, really","{b}",{"same" if la == lb else "different"}\n')
        found[name] = root / f"{name}.csv"
    for name, count, seed in (("reg_train", 40, 4), ("reg_dev", 12, 5)):
        with open(root / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for text, label in sentiment_rows(count, seed):
                score = (1.0 if label == "pos" else -1.0) + 0.01 * len(text)
                f.write(json.dumps({"text": text, "score": score}) + "\n")
        found[name] = root / f"{name}.jsonl"
    found["tok_train"] = write_conll(root / "train.conll", conll_sentences(40, 6))
    found["tok_dev"] = write_conll(root / "dev.conll", conll_sentences(12, 7))
    return found


def finetune(env, *args):
    return run_script(env, "finetune.py", *args)


@pytest.fixture(scope="module")
def sequence_run(script_env, files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ftruns") / "seq"
    result = finetune(script_env, *TINY, "--train", files["train"], "--eval", files["dev"], "--epochs", "3",
                      "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_sequence_run_directory_metrics_and_summary(sequence_run):
    run_dir, result = sequence_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "vocab.txt", "metrics.jsonl", "loss.png", "latest", "ckpt-00000018.safetensors"} <= names
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["task"] == "sequence" and config["model"]["num_labels"] == 2
    assert config["model"]["id2label"] == {"0": "neg", "1": "pos"}
    assert config["training"]["epochs"] == 3 and config["init"] == "random"
    steps = records(run_dir)
    assert [r["step"] for r in steps] == list(range(1, 19))        # 48 examples / 8 = 6 steps an epoch
    evals = records(run_dir, "eval_loss")
    assert [r["step"] for r in evals] == [6, 12, 18]
    final = evals[-1]
    assert {"accuracy", "macro_f1", "baseline_accuracy"} <= set(final)
    assert 0.0 <= final["accuracy"] <= 1.0 and 0.0 < final["baseline_accuracy"] < 1.0
    assert np.mean([r["loss"] for r in steps[-6:]]) < np.mean([r["loss"] for r in steps[:6]])   # it learns
    assert f"held-out accuracy {final['accuracy']:.3f}" in result.stdout
    assert f"majority-class baseline {final['baseline_accuracy']:.3f}" in result.stdout


def test_majority_baseline_is_the_training_majority_on_the_eval_file(sequence_run, files):
    run_dir, _ = sequence_run
    train = [line.split("\t")[1] for line in files["train"].read_text().splitlines()[1:]]
    dev = [line.split("\t")[1] for line in files["dev"].read_text().splitlines()[1:]]
    majority = max(sorted(set(train)), key=train.count)
    assert records(run_dir, "eval_loss")[-1]["baseline_accuracy"] == pytest.approx(dev.count(majority) / len(dev))


def test_resume_is_bit_exact(script_env, sequence_run, tmp_path):
    reference, _ = sequence_run
    run_dir = tmp_path / "resumed"
    shutil.copytree(reference, run_dir)
    for suffix in (".safetensors", ".json"):
        (run_dir / f"ckpt-00000018{suffix}").unlink()
    (run_dir / "latest").write_text("ckpt-00000012.safetensors\n")
    result = finetune(script_env, "--resume", run_dir, "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "from ckpt-00000012.safetensors (step 12)" in result.stdout
    assert_tree_close(latest_tensors(run_dir), latest_tensors(reference), rtol=0, atol=0)
    assert [r["loss"] for r in records(run_dir)] == [r["loss"] for r in records(reference)]
    assert records(run_dir, "eval_loss")[-1] == records(reference, "eval_loss")[-1]


@pytest.mark.parametrize("name", ALL_BACKENDS)
def test_freeze_encoder_trains_only_the_head(script_env, sequence_run, files, tmp_path, name):
    backend_or_skip(name)
    source, _ = sequence_run
    out = tmp_path / "probe"
    result = finetune(script_env, "--init-from", source, "--freeze-encoder", "--train", files["train"],
                      "--eval", files["dev"], "--epochs", "1", "--lr", "1e-2", "--no-progress", "--out", out,
                      "--backend", name)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "encoder frozen" in result.stdout
    before, after = latest_tensors(source), latest_tensors(out)
    head = ("params/pooler.", "params/classifier.")
    encoder = [k for k in before if k.startswith("params/") and not k.startswith(head)]
    assert len(encoder) > 10
    assert_tree_close({k: after[k] for k in encoder}, {k: before[k] for k in encoder}, rtol=0, atol=0)
    for name in ("params/pooler.dense.weight", "params/classifier.weight", "params/classifier.bias"):
        assert not np.array_equal(after[name], before[name]), f"{name} did not train"
    assert not np.any(after["adam_m/embeddings.word"])          # no update ever reached the encoder's moments


def test_sentence_pairs(script_env, files, tmp_path):
    out = tmp_path / "pairs"
    result = finetune(script_env, *TINY, "--train", files["pairs_train"], "--eval", files["pairs_dev"],
                      "--text-column", "first", "--text-pair-column", "second", "--epochs", "1", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    final = records(out, "eval_loss")[-1]
    assert {"accuracy", "macro_f1", "baseline_accuracy"} <= set(final)
    predicted = run_script(script_env, "predict.py", out, "great fun so, really", "--text-pair", "a joy")
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith("label: ") and predicted.stdout.split()[1] in ("same", "different")
    missing = run_script(script_env, "predict.py", out, "great fun")
    assert missing.returncode == 2 and "--text-pair" in missing.stderr


def test_regression(script_env, files, tmp_path):
    out = tmp_path / "reg"
    result = finetune(script_env, *TINY, "--train", files["reg_train"], "--eval", files["reg_dev"], "--regression",
                      "--label-column", "score", "--epochs", "2", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["num_labels"] == 1 and config["problem_type"] == "regression"
    final = records(out, "eval_loss")[-1]
    assert "accuracy" not in final and {"pearson", "spearman"} <= set(final)
    assert all(final[k] is None or -1.0 <= final[k] <= 1.0 for k in ("pearson", "spearman"))
    assert "pearson" in result.stdout
    predicted = run_script(script_env, "predict.py", out, "a joy so")
    assert predicted.returncode == 0 and predicted.stdout.startswith("predicted value: ")
    float(predicted.stdout.split()[-1])


def test_token_task_on_conll(script_env, files, tmp_path):
    out = tmp_path / "tok"
    result = finetune(script_env, *TINY, "--task", "token", "--train", files["tok_train"], "--eval",
                      files["tok_dev"], "--epochs", "3", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["task"] == "token" and sorted(config["id2label"].values()) == ["B-PER", "I-PER", "O"]
    final = records(out, "eval_loss")[-1]
    assert {"token_accuracy", "span_f1", "span_precision", "span_recall", "baseline_accuracy"} <= set(final)
    assert 0.0 <= final["span_f1"] <= 1.0 and "span F1" in result.stdout
    predicted = run_script(script_env, "predict.py", out, "saw bob smith today")
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["saw", "bob", "smith", "today"]
    assert all(line.split("\t")[1] in ("O", "B-PER", "I-PER") for line in lines)
    evaluated = run_script(script_env, "evaluate.py", out, "--eval", files["tok_dev"])
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"token_accuracy     {final['token_accuracy']:.4f}" in evaluated.stdout


def test_predict_and_evaluate_on_a_fine_tuned_run(script_env, sequence_run, files, tmp_path):
    run_dir, _ = sequence_run
    predicted = run_script(script_env, "predict.py", run_dir, "loved every minute so")
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.strip().splitlines()
    assert lines[0].split()[:1] == ["label:"] and lines[0].split()[1] in ("pos", "neg")
    probs = [float(line.split()[0].rstrip("%")) for line in lines[1:]]
    assert len(probs) == 2 and sum(probs) == pytest.approx(100.0, abs=0.02) and probs == sorted(probs, reverse=True)
    assert lines[1].split()[1] == lines[0].split()[1]            # the label shown is the most probable
    out_json = tmp_path / "metrics.json"
    evaluated = run_script(script_env, "evaluate.py", run_dir, "--eval", files["dev"], "--json", out_json)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(out_json.read_text())
    final = records(run_dir, "eval_loss")[-1]
    assert metrics["accuracy"] == final["accuracy"] and metrics["eval_loss"] == pytest.approx(final["eval_loss"])
    unseen = write_tsv(tmp_path / "unseen.tsv", [("great fun", "pos"), ("what", "meh")])
    refused = run_script(script_env, "evaluate.py", run_dir, "--eval", unseen)
    assert refused.returncode == 2 and "label 'meh'" in refused.stderr and "line 3" in refused.stderr


def test_export_loads_in_a_transformers_pipeline_with_the_same_prediction(script_env, sequence_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    import backends
    from minibert.inference import load_classifier_run, predict_text

    run_dir, _ = sequence_run
    out = tmp_path / "hf"
    exported = run_script(script_env, "export_hf.py", run_dir, out, "--verify")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    classifier = transformers.pipeline("text-classification", model=str(out), top_k=None)
    _, config, params, tokenizer, backend, max_len = load_classifier_run(run_dir, "numpy")
    assert backend is backends.get_backend("numpy")
    for text in ("loved every minute so", "an awful film ok", "a joy"):
        label, probs = predict_text(text, config, params, tokenizer, backend, max_len)[0]
        theirs = {entry["label"]: entry["score"] for entry in classifier([text])[0]}
        assert max(theirs, key=theirs.get) == label
        assert theirs == pytest.approx(probs, abs=1e-5)


# --- bad input: a clear error before any work, exit 2, no run directory --------------------------------------------

def _bad_files(files, tmp_path) -> dict:
    """name -> (extra arguments, text the error must contain)."""
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("sentence\tlabel\ngreat fun\tpos\nbad\tneg\textra\n")
    blank = tmp_path / "blank.tsv"
    blank.write_text("sentence\tlabel\ngreat fun\tpos\n  \tneg\n")
    one_class = write_tsv(tmp_path / "one.tsv", [("great fun", "pos"), ("a joy", "pos")])
    uneven = tmp_path / "uneven.jsonl"
    uneven.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O", "B-X"]}) + "\n"
                      + json.dumps({"tokens": ["a", "b", "c"], "tags": ["O", "O"]}) + "\n")
    not_bert = tmp_path / "gpt2"
    not_bert.mkdir()
    (not_bert / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                                      "n_embd": 8, "n_layer": 1, "n_head": 2}))
    (not_bert / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    dev = ["--eval", files["dev"]]
    return {
        "missing file": (["--train", tmp_path / "nope.tsv", *dev], f"{tmp_path / 'nope.tsv'}: no such file"),
        "empty file": (["--train", empty, *dev], f"{empty}: the file is empty"),
        "unknown column": (["--train", files["train"], *dev, "--label-column", "stars"],
                           "line 2: unknown column 'stars'; columns found: ['sentence', 'label']"),
        "ragged row": (["--train", ragged, *dev], f"{ragged}, line 3: ragged row, 3 fields"),
        "empty text": (["--train", blank, *dev], f"{blank}, line 3: empty text in column 'sentence'"),
        "one class": (["--train", one_class, *dev], "has only one class ('pos')"),
        "tokens and tags": (["--task", "token", "--train", uneven, "--eval", uneven],
                            f"{uneven}, line 2: 3 tokens but 2 tags"),
        "not a BERT": (["--init-from", not_bert, "--train", files["train"], *dev],
                       f"--init-from {not_bert} is not a BERT: its config.json says model_type 'gpt2'"),
    }


@pytest.mark.parametrize("case", ["missing file", "empty file", "unknown column", "ragged row", "empty text",
                                  "one class", "tokens and tags", "not a BERT"])
def test_bad_input_is_refused_before_any_work(script_env, files, tmp_path, case):
    args, message = _bad_files(files, tmp_path)[case]
    out = tmp_path / "runs" / "never"
    scratch = [] if case == "not a BERT" else TINY
    result = finetune(script_env, *scratch, *args, "--out", out, "--no-progress")
    assert result.returncode == 2, (result.stdout, result.stderr[-3000:])
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_resume_with_other_labels_is_refused_and_changes_nothing(script_env, files, tmp_path):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(16, 8))
    out = tmp_path / "run"
    result = finetune(script_env, *TINY, "--train", train, "--eval", files["dev"], "--epochs", "1", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    (out / "latest").unlink()         # as if stopped early: resumable from the checkpoint it names
    (out / "latest").write_text("ckpt-00000002.safetensors\n")
    write_tsv(train, sentiment_rows(16, 8) + [("so so", "neutral")])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = finetune(script_env, "--resume", out, "--no-progress")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "the run has num_labels=2" in refused.stderr and "num_labels=3" in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_no_pretrained_run_says_which_command_to_run(script_env, files, tmp_path):
    result = subprocess.run(python_command(ROOT / "scripts" / "finetune.py", "--no-progress"), cwd=tmp_path,
                            env=script_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "no complete pretrained run under runs/" in result.stderr
    assert "python scripts/train.py" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_default_pretrained_run_is_the_newest_complete_mlm_run(script_env, corpus, sequence_run, tmp_path):
    from minibert.training.finetune import default_pretrained_run

    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(sequence_run[0], runs / "a-classifier")    # a fine-tuned run is not a pretrained one
    with pytest.raises(FileNotFoundError, match="python scripts/train.py"):
        default_pretrained_run(str(runs))
    result = run_script(script_env, "train.py", *TINY_RUN, "--corpus", corpus, "--steps", "2", "--out",
                        runs / "b-pretrained")
    assert result.returncode == 0, result.stderr[-3000:]
    assert default_pretrained_run(str(runs)) == runs / "b-pretrained"
    incomplete = runs / "c-incomplete"
    shutil.copytree(runs / "b-pretrained", incomplete)
    config = json.loads((incomplete / "config.json").read_text())
    config["training"]["steps"] = 5                              # its checkpoint is step 2 of 5: not complete
    (incomplete / "config.json").write_text(json.dumps(config))
    assert default_pretrained_run(str(runs)) == runs / "b-pretrained"
