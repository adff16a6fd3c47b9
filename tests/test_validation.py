"""Bad input gets a clear error -- the argument, the value seen, what is allowed -- before any work starts.

Through the public API (mlm_logits, loss_and_grads, BertConfig, backends.get_backend, init_params, the tokenizer
and corpus readers, TrainSettings) and through scripts/train.py as a subprocess (exit status 2, the message on
stderr, and no run directory created).
"""
from __future__ import annotations

import json
import re
import gc
import shutil
import sys

import numpy as np
import pytest

import backends
import minibert.api
from minibert.storage import checkpoint as ckpt
from minibert.api import loss_and_grads, mlm_logits
from minibert.data.batch import check_batch, check_params
from minibert.config import BertConfig
from minibert.data.corpus import load_corpus_files
from minibert.params import init_host_params, init_params
from minibert.data.tokenizer import WordPieceTokenizer, load_tokenizer, train_wordpiece
from minibert.training.settings import TrainSettings
from support import TINY_RUN, backend_or_skip, finish, random_batch, start_script

CONFIG = BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position=12)


# --- model API: every bad batch fails on the host, before any array reaches the backend ---------------------------

@pytest.fixture(scope="module")
def numpy_params():
    return init_params(CONFIG, 0, backends.get_backend("numpy"))


@pytest.fixture
def no_device_work(monkeypatch):
    """The numpy backend, with every way into device work (asarray, the compiled model) made to fail loudly."""
    backend = backends.get_backend("numpy")

    def started(*args, **kwargs):
        raise AssertionError("device work started before the input was validated")

    monkeypatch.setattr(backend, "asarray", started)
    monkeypatch.setattr(minibert.api, "compiled", started)
    return backend


def good_batch(batch=2, seq=8):
    return random_batch(np.random.default_rng(0), CONFIG, batch=batch, seq=seq)


def with_(batch, key, value=None, **at):
    """`batch` with `key` replaced by `value`, or with single entries set: with_(b, "input_ids", pos=((0, 3), -1))."""
    out = {k: v.copy() for k, v in batch.items()}
    if value is not None:
        out[key] = value
    for index, item in at.values():
        out[key][index] = item
    return out


GOOD = good_batch()
INPUT_CASES = {   # (batch, exception, message): each is checked through mlm_logits and loss_and_grads
    "negative id": (with_(GOOD, "input_ids", pos=((0, 3), -1)), ValueError,
                    r"input_ids must be in \[0, 50\) \(vocab_size=50\); got value -1 at position \(0, 3\)"),
    "id >= vocab_size": (with_(GOOD, "input_ids", pos=((1, 2), 50)), ValueError,
                         r"input_ids must be in \[0, 50\) \(vocab_size=50\); got value 50 at position \(1, 2\)"),
    "huge id": (with_(GOOD, "input_ids", GOOD["input_ids"].astype(np.int64), pos=((0, 0), 2**40)), ValueError,
                r"input_ids must be in \[0, 50\).*got value 1099511627776"),
    "longer than max_position": (good_batch(seq=13), ValueError,
                                 r"input_ids has sequence length 13, longer than max_position=12; allowed: 1\.\.12"),
    "float ids": (with_(GOOD, "input_ids", GOOD["input_ids"].astype(np.float32)), TypeError,
                  r"input_ids must be an integer array .*got dtype float32"),
    "bool ids": (with_(GOOD, "input_ids", GOOD["input_ids"] > 3), TypeError,
                 r"input_ids must be an integer array .*got dtype bool"),
    "ragged ids": (with_(GOOD, "input_ids", [[1, 2, 3], [4, 5]]), TypeError,
                   r"input_ids must be a rectangular integer array"),
    "1-D ids": (with_(GOOD, "input_ids", GOOD["input_ids"][0]), ValueError,
                r"input_ids must be 2-D \[batch, sequence\], got shape \(8,\)"),
    "attention_mask shape": (with_(GOOD, "attention_mask", GOOD["attention_mask"][:, :7]), ValueError,
                             r"attention_mask has shape \(2, 7\), but input_ids has shape \(2, 8\); they must match"),
    "token_type_ids shape": (with_(GOOD, "token_type_ids", GOOD["token_type_ids"][:1]), ValueError,
                             r"token_type_ids has shape \(1, 8\), but input_ids has shape \(2, 8\)"),
    "token_type >= type_vocab_size": (with_(GOOD, "token_type_ids", pos=((1, 5), 2)), ValueError,
                                      r"token_type_ids must be in \[0, 2\) \(type_vocab_size=2\); got value 2 at "
                                      r"position \(1, 5\)"),
    "float attention_mask": (with_(GOOD, "attention_mask", GOOD["attention_mask"].astype(float)), TypeError,
                             r"attention_mask must be an integer array .*got dtype float64"),
    "attention_mask value 2": (with_(GOOD, "attention_mask", pos=((0, 0), 2)), ValueError,
                               r"attention_mask must be in \[0, 2\) \(1 = attend, 0 = padding\); got value 2"),
    "row attends to nothing": (with_(GOOD, "attention_mask", np.array([[1] * 8, [0] * 8], np.int32)), ValueError,
                               r"attention_mask row 1 is all 0 \(attends to no token"),
    "empty batch": ({k: v[:0] for k, v in GOOD.items()}, ValueError,
                    r"input_ids is empty \(shape \(0, 8\)\); a batch needs at least one token"),
    "empty list": ({"input_ids": [], "labels": []}, ValueError, r"input_ids is empty \(shape \(0,\)|must be 2-D"),
}
LABEL_CASES = {   # only the loss reads labels
    "labels shape": (with_(GOOD, "labels", GOOD["labels"][:, 1:]), ValueError,
                     r"labels has shape \(2, 7\), but input_ids has shape \(2, 8\); they must match"),
    "label >= vocab_size": (with_(GOOD, "labels", pos=((1, 4), 50)), ValueError,
                            r"labels must be in \[0, 50\) \(vocab_size=50\) or -100 \(ignored\); got value 50 at "
                            r"position \(1, 4\)"),
    "negative label other than -100": (with_(GOOD, "labels", pos=((0, 2), -1)), ValueError,
                                       r"labels must be in \[0, 50\).* or -100 \(ignored\); got value -1"),
    "float labels": (with_(GOOD, "labels", GOOD["labels"].astype(np.float64)), TypeError,
                     r"labels must be an integer array .*got dtype float64"),
    "no labelled position": (with_(GOOD, "labels", np.full((2, 8), -100, np.int32)), ValueError,
                             r"labels has no labelled position \(all 16 values are -100\)"),
    "missing labels": ({k: v for k, v in GOOD.items() if k != "labels"}, ValueError,
                       r"batch is missing \['labels'\]"),
    "unknown key": (dict(GOOD, position_ids=GOOD["labels"]), ValueError, r"batch has unknown keys \['position_ids'\]"),
}


@pytest.mark.parametrize("case", INPUT_CASES)
def test_mlm_logits_refuses_bad_input_before_device_work(numpy_params, no_device_work, case):
    batch, error, message = INPUT_CASES[case]
    with pytest.raises(error, match=message):
        mlm_logits(numpy_params, batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                   config=CONFIG, backend=no_device_work)


@pytest.mark.parametrize("case", {**INPUT_CASES, **LABEL_CASES})
def test_loss_and_grads_refuses_bad_batch_before_device_work(numpy_params, no_device_work, case):
    batch, error, message = {**INPUT_CASES, **LABEL_CASES}[case]
    with pytest.raises(error, match=message):
        loss_and_grads(numpy_params, batch, config=CONFIG, backend=no_device_work)


def test_a_good_batch_passes(numpy_params):
    loss, grads = loss_and_grads(numpy_params, GOOD, config=CONFIG, backend=backends.get_backend("numpy"))
    assert np.isfinite(loss) and grads.keys() == numpy_params.keys()
    assert mlm_logits(numpy_params, GOOD["input_ids"], config=CONFIG,
                      backend=backends.get_backend("numpy")).shape == (2, 8, 50)


def test_jax_never_sees_an_out_of_range_id(monkeypatch):
    """JAX clamps or fills out-of-range gathers silently; the host check must stop such ids before any transfer."""
    jax_backend = backend_or_skip("jax")
    params = init_params(CONFIG, 0, jax_backend)
    import jax

    transfers = []
    real_put = jax.device_put
    monkeypatch.setattr(jax, "device_put", lambda *a, **k: transfers.append(a) or real_put(*a, **k))
    monkeypatch.setattr(minibert.api, "compiled", lambda *a, **k: pytest.fail("the compiled model was reached"))
    device_ids = jax.numpy.asarray(with_(GOOD, "input_ids", pos=((1, 7), 50))["input_ids"])
    for ids in (with_(GOOD, "input_ids", pos=((1, 7), 50))["input_ids"], device_ids):
        with pytest.raises(ValueError, match=r"input_ids must be in \[0, 50\).*got value 50 at position \(1, 7\)"):
            mlm_logits(params, ids, config=CONFIG, backend=jax_backend)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 50\).*got value 77"):
        loss_and_grads(params, with_(GOOD, "labels", pos=((0, 1), 77)), config=CONFIG, backend=jax_backend)
    assert transfers == []


def test_check_params_names_the_mismatching_parameter():
    params = init_host_params(CONFIG)
    check_params(params, CONFIG, "float32")
    with pytest.raises(ValueError, match=r"layers\.0\.ffn\.in\.weight has shape \(16, 8\), the model config needs "
                                         r"\(16, 32\)"):
        check_params(dict(params, **{"layers.0.ffn.in.weight": np.zeros((16, 8), np.float32)}), CONFIG)
    with pytest.raises(ValueError, match=r"missing \['embeddings\.word'\], unexpected \[\]"):
        check_params({k: v for k, v in params.items() if k != "embeddings.word"}, CONFIG)
    with pytest.raises(ValueError, match=r"embeddings\.word has dtype float64, expected float32"):
        check_params(dict(params, **{"embeddings.word": params["embeddings.word"].astype(np.float64)}), CONFIG,
                     "float32")


# --- model configuration -----------------------------------------------------------------------------------------

def test_hidden_size_must_divide_by_heads():
    with pytest.raises(ValueError, match=r"BertConfig\.hidden_size=100 must be divisible by num_heads=3"):
        BertConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match=r"hidden_size=128 must be divisible by num_heads=3"):
        BertConfig.preset("tiny", num_heads=3)


@pytest.mark.parametrize("name", ["vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                                  "max_position", "type_vocab_size"])
@pytest.mark.parametrize("value", [0, -4, 2.0, True])
def test_sizes_must_be_positive_ints(name, value):
    with pytest.raises(ValueError, match=rf"BertConfig\.{name} must be a positive int, got {value!r}"):
        BertConfig(**{name: value})


@pytest.mark.parametrize("name", ["hidden_dropout", "attention_dropout"])
@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan")])
def test_dropout_must_be_in_0_1(name, value):
    with pytest.raises(ValueError, match=rf"BertConfig\.{name} must be in \[0, 1\), got {value!r}"):
        BertConfig(**{name: value})
    BertConfig(**{name: 0.0})


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; allowed: seed, tiny, mini, small, base"):
        BertConfig.preset("huge")


# --- backends ----------------------------------------------------------------------------------------------------

def unavailable_backend():
    """A registered backend that cannot run here (CuPy on a machine without it), or None."""
    try:
        backends.get_backend("cupy")
    except backends.BackendUnavailableError:
        return "cupy"
    return None


def test_unavailable_backend(monkeypatch):
    def factory():
        raise backends.BackendUnavailableError("backend 'gpu-only' needs a GPU, and none is present")

    monkeypatch.setattr(backends, "_factories", dict(backends._factories, **{"gpu-only": factory}))
    with pytest.raises(backends.BackendUnavailableError, match="backend 'gpu-only' needs a GPU"):
        backends.get_backend("gpu-only")
    name = unavailable_backend()          # a real one, where this machine lacks it (CuPy without a GPU)
    if name is not None:
        with pytest.raises(backends.BackendUnavailableError, match=rf"backend '{name}' needs CuPy"):
            backends.get_backend(name)


def test_float64_on_jax_without_x64_is_refused_before_any_array():
    jax_backend = backend_or_skip("jax")
    if jax_backend.supports_float64:
        pytest.skip("x64 is on in this process")
    with pytest.raises(ValueError, match=r"dtype 'float64' is not available on backend 'jax': .*JAX_ENABLE_X64=1.*"
                                         r"allowed here: 'float32'"):
        init_params(CONFIG, 0, jax_backend, dtype="float64")


# --- tokenizer and corpus ----------------------------------------------------------------------------------------

def test_tokenizer_boundaries(tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size must be an int > 5, got 3"):
        train_wordpiece(["some text"], 3, cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no-vocab.txt"):
        WordPieceTokenizer.from_vocab(str(tmp_path / "no-vocab.txt"))
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) unk_token='\[UNK\]', sep_token='\[SEP\]'"):
        WordPieceTokenizer(["a", "b", "c", "d", "e", "f"])
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) mask_token='<mask>'"):
        WordPieceTokenizer(specials + ["a"], special_tokens={"mask_token": "<mask>"})
    with pytest.raises(ValueError, match=r"unknown special token role\(s\) \['bos_token'\]"):
        WordPieceTokenizer(specials, special_tokens={"bos_token": "<s>"})
    with pytest.raises(ValueError, match="repeats the token 'a'"):
        WordPieceTokenizer(specials + ["a", "b", "a"])
    with pytest.raises(ValueError, match="do_lower_case must be true or false, got 'yes'"):
        WordPieceTokenizer(specials, do_lower_case="yes")
    with pytest.raises(ValueError, match="strip_accents must be true, false or null"):
        WordPieceTokenizer(specials, strip_accents=1)
    # a folder's tokenizer files that do not fit: named by the folder
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "vocab.txt").write_text("".join(t + "\n" for t in specials), encoding="utf-8")
    (tmp_path / "bad" / "tokenizer_config.json").write_text('{"do_lower_case": "no"}')
    with pytest.raises(ValueError, match=r"bad: do_lower_case must be true or false"):
        load_tokenizer(tmp_path / "bad")
    (tmp_path / "bad" / "tokenizer_config.json").write_text('[1, 2]')
    with pytest.raises(ValueError, match=r"tokenizer_config.json must hold a JSON object"):
        load_tokenizer(tmp_path / "bad")
    (tmp_path / "bad" / "tokenizer_config.json").unlink()
    (tmp_path / "bad" / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {}}}')
    with pytest.raises(ValueError, match=r"tokenizer.json: the tokenizer model is 'BPE'"):
        load_tokenizer(tmp_path / "bad")


def test_corpus_boundaries(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"corpus file not found: '.*missing\.txt'"):
        load_corpus_files([str(tmp_path / "missing.txt")])
    with pytest.raises(FileNotFoundError, match=r"no file matches the corpus pattern '.*\*\.none'"):
        load_corpus_files([str(tmp_path / "*.none")])
    (tmp_path / "empty.txt").write_text("  \n\n \n")
    with pytest.raises(ValueError, match=r"empty corpus: the files \['.*empty\.txt'\] contain no text"):
        load_corpus_files([str(tmp_path / "empty.txt")])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(ValueError, match=r"corpus file '.*latin1\.txt' is not UTF-8 text \(.*position 3"):
        load_corpus_files([str(tmp_path / "latin1.txt")])
    with pytest.raises(IsADirectoryError, match=r"corpus path '.*' is a directory"):
        load_corpus_files([str(tmp_path)])


# --- training settings (in process) ------------------------------------------------------------------------------

SETTINGS_CASES = [
    ({"steps": 0}, r"--steps must be a positive int, got 0"),
    ({"batch_size": -8}, r"--batch-size must be a positive int, got -8"),
    ({"keep_checkpoints": 0}, r"--keep-checkpoints must be a positive int, got 0"),
    ({"vocab_size": 5}, r"--vocab-size must be an int > 5 .*got 5"),
    ({"seq_len": 4}, r"--seq-len must be an int >= 5 .*got 4"),
    ({"lr": 0.0}, r"--lr must be > 0, got 0\.0"),
    ({"lr": float("nan")}, r"--lr must be a finite number, got nan"),
    ({"weight_decay": -0.1}, r"--weight-decay must be >= 0, got -0\.1"),
    ({"clip_norm": 0.0}, r"--clip-norm must be > 0, got 0\.0"),
    ({"dropout": 1.0}, r"--dropout must be in \[0, 1\), got 1\.0"),
    ({"dropout": -0.5}, r"--dropout must be in \[0, 1\), got -0\.5"),
    ({"dtype": "float16"}, r"--dtype must be one of float32, float64, got 'float16'"),
    ({"config": "huge"}, r"--config: unknown preset 'huge'; allowed: seed, tiny, mini, small, base"),
    ({"warmup": 20, "steps": 10, "lr_schedule": "linear"}, r"--warmup must be an int in \[0, --steps=10\], got 20"),
    ({"eval_batches": -1}, r"--eval-batches must be an int >= 0 \(0 = all\), got -1"),
    ({"seed": -1}, r"--seed must be a non-negative int, got -1"),
    ({"resume_fallback": True}, r"--resume-fallback only applies with --resume DIR"),
    ({"mask_rate": 0.0}, r"--mask-rate must be a number in \(0, 1\), the share of tokens to predict, got 0\.0"),
    ({"mask_rate": 1.0}, r"--mask-rate must be a number in \(0, 1\).*got 1\.0"),
    ({"mask_rate": float("nan")}, r"--mask-rate must be a number in \(0, 1\).*got nan"),
    ({"lr_schedule": "cosine"}, r"--lr-schedule must be one of linear, one-cycle, got 'cosine'"),
    ({"lr_schedule": "one-cycle", "warmup": 10}, r"--warmup 10 cannot be used with --lr-schedule one-cycle"),
]


@pytest.mark.parametrize("fields,message", SETTINGS_CASES, ids=[str(c[0]) for c in SETTINGS_CASES])
def test_train_settings_validate(fields, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TrainSettings(**fields).validate()


# --- scripts/train.py: exit status 2, the message on stderr, nothing created -------------------------------------

def snapshot(run_dir):
    """Every file of a run directory with its size and modification time (to show that nothing was touched)."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.iterdir()}


@pytest.fixture(scope="module")
def cli(tmp_path_factory, script_env, corpus):
    """Every command-line case, run concurrently: {case: (returncode, stdout, stderr, its --out directory)}."""
    root = tmp_path_factory.mktemp("cli")
    (root / "empty.txt").write_text("\n\n")
    (root / "latin1.txt").write_bytes("na\xefve caf\xe9\n".encode("latin-1"))
    (root / "small.txt").write_text("A short text.\n\nWith two paragraphs, and only a few words in all.\n")
    good = root / "good"
    good_run = start_script(script_env, "train.py", *TINY_RUN, "--corpus", corpus, "--steps", "2", "--save-every", "1",
                            "--eval-every", "100", "--out", good)
    fresh = {
        "missing corpus": ["--corpus", root / "missing.txt"],
        "empty corpus": ["--corpus", root / "empty.txt"],
        "corpus not UTF-8": ["--corpus", root / "latin1.txt"],
        "corpus is a directory": ["--corpus", root],
        "corpus too small for one batch": ["--corpus", root / "small.txt"],
        "unknown preset": ["--corpus", corpus, "--config", "huge"],
        "unknown backend": ["--corpus", corpus, "--backend", "no-such-backend"],
        "unavailable backend": ["--corpus", corpus, "--backend", unavailable_backend() or "numpy"],
        "float64 on jax without x64": ["--corpus", corpus, "--backend", "jax", "--dtype", "float64"],
        "dropout 1": ["--corpus", corpus, "--dropout", "1.0"],
        "negative lr": ["--corpus", corpus, "--lr", "-0.001"],
        "zero steps": ["--corpus", corpus, "--steps", "0"],
        "seq-len over max_position": ["--corpus", corpus, "--config", "seed", "--seq-len", "100"],
        "non-int flag": ["--corpus", corpus, "--batch-size", "eight"],
    }
    procs = {case: start_script(script_env, "train.py", *TINY_RUN, *args, "--out", root / case.replace(" ", "_"))
             for case, args in fresh.items()}
    results = {case: (*finish(proc), root / case.replace(" ", "_")) for case, proc in procs.items()}
    code, _, err = finish(good_run)
    assert code == 0, err[-3000:]

    (root / "not_a_run").mkdir()
    no_checkpoint = root / "no_checkpoint"      # a run stopped before its first save
    no_checkpoint.mkdir()
    shutil.copy(good / "config.json", no_checkpoint)
    shutil.copy(good / "vocab.txt", no_checkpoint)
    other_model = root / "other_model"          # config.json's model no longer fits the checkpoint's tensors
    shutil.copytree(good, other_model)
    saved = json.loads((other_model / "config.json").read_text())
    saved["model"]["intermediate_size"] = 256
    (other_model / "config.json").write_text(json.dumps(saved))
    resumes = {
        "resume missing dir": [root / "nowhere"],
        "resume not a run": [root / "not_a_run"],
        "resume no checkpoint": [no_checkpoint],
        "resume other settings": [good, "--config", "seed"],
        "resume tensors do not fit": [other_model],
    }
    before = {case: snapshot(args[0]) for case, args in resumes.items() if args[0].exists()}
    procs = {case: start_script(script_env, "train.py", "--resume", *args, "--no-progress")
             for case, args in resumes.items()}
    for case, proc in procs.items():
        results[case] = (*finish(proc), resumes[case][0])
        results[case + " untouched"] = before.get(case) == (snapshot(resumes[case][0])
                                                             if resumes[case][0].exists() else None)
    return results


CLI_CASES = {
    "missing corpus": r"error: --corpus: corpus file not found: '.*missing\.txt'",
    "empty corpus": r"error: --corpus: corpus file '.*empty\.txt' is empty: it holds no paragraph with a letter or digit",
    "corpus not UTF-8": r"error: --corpus: corpus file '.*latin1\.txt' is not UTF-8 text",
    "corpus is a directory": r"error: --corpus: corpus path '.*' is a directory",
    "corpus too small for one batch": r"error: --corpus .*small\.txt is too small for one batch: its training part "
                                      r"\(\d+ paragraphs?\) packs into \d sequences? of --seq-len=32, fewer than "
                                      r"--batch-size=8",
    "unknown preset": r"error: --config: unknown preset 'huge'; allowed: seed, tiny, mini, small, base",
    "unknown backend": r"error: --backend no-such-backend: unknown backend 'no-such-backend'; registered backends: "
                       r"cupy, jax, numpy",
    "unavailable backend": r"error: --backend (\w+): backend '\1' needs",
    "float64 on jax without x64": r"error: --dtype float64: dtype 'float64' is not available on backend 'jax': "
                                  r".*JAX_ENABLE_X64=1",
    "dropout 1": r"error: --dropout must be in \[0, 1\), got 1\.0",
    "negative lr": r"error: --lr must be > 0, got -0\.001",
    "zero steps": r"error: --steps must be a positive int, got 0",
    "seq-len over max_position": r"error: --seq-len=100 is longer than the model's max_position=64; allowed: 5\.\.64",
    "non-int flag": r"argument --batch-size: invalid int value: 'eight'",
    "resume missing dir": r"error: --resume .*nowhere: no such directory",
    "resume not a run": r"error: .*not_a_run.config\.json not found: .*not_a_run is not a Mini-BERT run directory",
    "resume no checkpoint": r"error: run directory .*no_checkpoint has no checkpoint yet .*stopped before its first "
                            r"save\. Start it again with --out .*no_checkpoint",
    "resume other settings": r"error: cannot resume .*good: settings differ from the run's \(--config: run has "
                             r"'tiny', asked 'seed'\)",
    "resume tensors do not fit": r"error: checkpoint .*other_model.ckpt-00000002\.safetensors: tensor "
                                 r"params/layers\.0\.ffn\.in\.weight has shape \(128, 512\), but the run's model "
                                 r"config needs \(128, 256\)",
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CLI_CASES)
def test_train_script_refuses_bad_input_before_starting(cli, case):
    if case == "unavailable backend" and unavailable_backend() is None:
        pytest.skip("every registered backend is available here")
    if case == "float64 on jax without x64":
        backend_or_skip("jax")
    code, out, err, run_dir = cli[case]
    assert code == 2, (code, err[-2000:])
    assert re.search(CLI_CASES[case], err), err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    if case.startswith("resume"):
        assert cli[case + " untouched"], f"{case}: the run directory was modified"
    else:
        assert not run_dir.exists(), f"{case}: {run_dir} was created"


# --- the cost of validation ----------------------------------------------------------------------------------------

def python_calls(fn, *args):
    """How many Python-level and C-level function calls `fn(*args)` makes (garbage collection paused, so that no
    collector callback is counted)."""
    calls = [0]

    def count(frame, event, arg):
        if event in ("call", "c_call"):
            calls[0] += 1
    gc.disable()
    sys.setprofile(count)
    try:
        fn(*args)
    finally:
        sys.setprofile(None)
        gc.enable()
    return calls[0]


def test_validation_is_vectorised_so_its_cost_does_not_grow_with_the_batch():
    """check_batch makes about as many calls for a 32 x 128 batch (the `mini` preset's training batch) as for a
    2 x 8 one: whole-array NumPy work, never a Python step per token (that would add thousands of calls), so it
    costs well under a millisecond (measured ~0.1 ms at 32 x 128, against ~1 s for the training step). Counting
    calls, not timing them, keeps this true on a loaded machine."""
    config = BertConfig.preset("mini")
    small = random_batch(np.random.default_rng(0), config, batch=2, seq=8, pad=2, label_rate=0.15)
    large = random_batch(np.random.default_rng(0), config, batch=32, seq=128, pad=20, label_rate=0.15)
    check_batch(small, config)                       # imports and caches on the first call are not counted
    small_calls, large_calls = python_calls(check_batch, small, config), python_calls(check_batch, large, config)
    assert small_calls < 500 and large_calls <= small_calls + 20, (small_calls, large_calls)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(ckpt.CheckpointError, ValueError)
