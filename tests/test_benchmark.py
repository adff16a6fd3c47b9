"""The benchmark (the `bench` package behind scripts/benchmark.py): its FLOP counter by hand, and one tiny run
through the real command line."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

from bench.cli import parse_args
from bench.flops import (effective_seq_len, inference_flops, labelled_count, make_host_batch, model_config,
                         train_flops)
from bench.report import format_report
from bench.schedule import worker_entries
from bench.stats import summarize
from minibert.config import BertConfig
from support import ROOT, child_env, run_script


def test_train_flops_by_hand():
    # L=1, H=4, A=2, I=8, V=10; B=1, T=2 (N=2 tokens); 1 labelled row.
    config = BertConfig(vocab_size=10, hidden_size=4, num_layers=1, num_heads=2, intermediate_size=8,
                        max_position=8)
    flops = train_flops(config, batch=1, seq=2, labelled=1)
    # dense per layer: 2*N*(3H*H + H*H + 2*H*I) = 2*2*(48 + 16 + 64) = 512
    assert flops["encoder_dense_fwd"] == 512
    # attention: scores 2*B*T*T*H = 32 and context 32 -> 64 (A heads of D = H/A share the H)
    assert flops["attention_fwd"] == 64
    # head at 1 row: dense 2*1*H*H = 32, decoder 2*1*H*V = 80
    assert flops["head_fwd"] == 112
    assert flops["forward"] == 688
    assert flops["backward"] == 2 * 688
    assert flops["total"] == 3 * 688 == 2064


def test_flops_scale_and_inference():
    config = BertConfig.preset("mini")
    b, t = 32, 128
    train = train_flops(config, b, t, labelled_count(b, t))
    assert labelled_count(b, t) == round(0.15 * b * t) == 614
    # two layers' worth of encoder work is twice one layer's
    one = train_flops(BertConfig.preset("mini", num_layers=1), b, t, 0)
    two = train_flops(BertConfig.preset("mini", num_layers=2), b, t, 0)
    assert two["total"] == 2 * one["total"]
    # mini at B32 T128: encoder 4 * (2*4096*(4*256^2 + 2*256*1024) + 4*32*128^2*256), head at 614 rows
    encoder = 4 * (2 * 4096 * (4 * 256 ** 2 + 2 * 256 * 1024) + 4 * 32 * 128 ** 2 * 256)
    head = 2 * 614 * 256 * (256 + 8192)
    assert train["total"] == 3 * (encoder + head)
    infer = inference_flops(config, b, t)
    assert infer["total"] == encoder + 2 * 4096 * 256 * (256 + 8192)


def test_host_batch_labels():
    config = BertConfig.preset("tiny")
    batch = make_host_batch(config, 4, 32)
    labelled = (batch["labels"] != -100).sum()
    assert labelled == labelled_count(4, 32) == 19
    again = make_host_batch(config, 4, 32)
    assert all((batch[k] == again[k]).all() for k in batch)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
                    reason="the PyTorch reference needs torch and transformers")
def test_tiny_run_writes_sane_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script(
        child_env(), "benchmark.py", "--presets", "tiny", "--batch-size", "4", "--seq-len", "32", "--repeats", "2",
        "--infer-repeats", "1", "--warmup", "1", "--max-warmup", "1", "--backends", "numpy",
        "--reference-variants", "eager", "--gemm-size", "128", "--gemm-repeats", "1", "--scatter-repeats", "2",
        "--pause", "0", "--burst-warmup", "0", "--json", out, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "TRAIN STEP" in result.stdout and "pytorch-eager" in result.stdout
    assert "same-work (+) = pytorch-eager-labelled" in result.stdout and "paired x same (+)" in result.stdout
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_model"] and report["machine"]["usable_cpus"] >= 1
    assert "OPENBLAS_CORETYPE" in report["machine"] and "numpy" in report["machine"]["versions"]
    res = report["results"]["tiny"]
    assert res["seq_len"] == 32 and not res["seq_len_clamped"] and res["labelled_rows"] == 19
    assert res["reference"] == "pytorch-eager" and not res["errors"]
    assert res["reference_same_work"] == "pytorch-eager-labelled"
    flops = train_flops(BertConfig.preset("tiny"), 4, 32, 19)["total"]
    assert res["flops"]["train"]["total"] == flops
    for name in ("numpy", "pytorch-eager", "pytorch-eager-labelled"):
        lib = res["libraries"][name]
        train = lib["train"]
        assert len(train["times_s"]) == 2 and all(t > 0 for t in train["times_s"])
        assert 0 < train["min_ms"] <= train["median_ms"] <= train["max_ms"]
        assert train["tokens_per_s"] == pytest.approx(4 * 32 / (train["median_ms"] / 1000))
        assert train["gflops"] == pytest.approx(flops / (train["median_ms"] / 1000) / 1e9)
        assert train["fraction_of_gemm_peak"] > 0
        assert lib["inference"]["median_ms"] > 0
        assert lib["gemm"]["gflops_best"] > 0 and lib["gemm"]["size"] == 128
        assert lib["scatter"]["median_ms"] > 0 and 0 < lib["scatter"]["share_of_step"]
        assert lib["memory"]["peak_delta"] > 0 and lib["memory"]["rss_before_build"] > 0
        assert all(math.isfinite(x) and 5 < x < 15 for x in lib["warmup_losses"] + train["losses"])
        for against in ("vs_reference", "vs_same_work"):        # both references' ratios, every library
            ratios = lib[against]
            for key in ("train_time", "train_time_paired_median", "inference_time", "memory_peak_delta"):
                assert ratios[key] > 0, (against, key)
    libs = res["libraries"]
    assert libs["pytorch-eager"]["vs_reference"]["train_time"] == 1.0
    assert libs["pytorch-eager-labelled"]["vs_same_work"]["train_time"] == 1.0
    assert libs["numpy"]["info"]["row_threads"] >= 1
    assert libs["pytorch-eager"]["info"]["head"] == "all" and libs["pytorch-eager-labelled"]["info"]["head"] == "labelled"
    # the same-work reference computes the same loss: on the initial weights without dropout in one process ...
    check = libs["pytorch-eager-labelled"]["info"]["same_work_check"]
    assert 5 < check["loss_all_positions"] < 15
    assert check["loss_labelled_rows"] == pytest.approx(check["loss_all_positions"], rel=1e-5)
    assert check["abs_diff"] == pytest.approx(abs(check["loss_labelled_rows"] - check["loss_all_positions"]))
    # ... and both workers' first training step (same seed, weights, batch and dropout draws) has the same loss
    assert libs["pytorch-eager-labelled"]["warmup_losses"][0] == pytest.approx(
        libs["pytorch-eager"]["warmup_losses"][0], rel=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
                    reason="the PyTorch reference needs torch and transformers")
def test_tiny_sequence_classification_run(tmp_path):
    """--task sequence: the fine-tuning step (classify_forward_backward + AdamW) against
    BertForSequenceClassification, on one label per sequence."""
    out = tmp_path / "bench.json"
    result = run_script(
        child_env(), "benchmark.py", "--task", "sequence", "--presets", "tiny", "--batch-size", "4", "--seq-len",
        "32", "--repeats", "2", "--infer-repeats", "1", "--warmup", "1", "--max-warmup", "1", "--backends", "numpy",
        "--reference-variants", "eager", "--gemm-size", "128", "--gemm-repeats", "1", "--scatter-repeats", "1",
        "--pause", "0", "--burst-warmup", "0", "--json", out, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "BertForSequenceClassification" in result.stdout
    res = json.loads(out.read_text())["results"]["tiny"]
    assert res["task"] == "sequence" and res["labelled_rows"] == 4 and not res["errors"]
    assert res["reference"] == "pytorch-eager" and res["reference_same_work"] is None
    assert set(res["libraries"]) == {"numpy", "pytorch-eager"}
    config = model_config("tiny", 8192, 0.1, "sequence")
    assert res["flops"]["train"]["total"] == train_flops(config, 4, 32, 4)["total"]
    assert res["flops"]["inference"]["total"] == inference_flops(config, 4, 32)["total"]
    assert res["libraries"]["pytorch-eager"]["info"]["model"] == "BertForSequenceClassification"
    for name, lib in res["libraries"].items():
        # two classes: a fresh classifier's loss is near ln 2
        assert all(0.3 < x < 1.2 for x in lib["warmup_losses"] + lib["train"]["losses"]), name
        for key in ("train_time", "train_time_paired_median", "inference_time"):
            assert lib["vs_reference"][key] > 0, (name, key)


def test_seq_len_clamped_to_max_position():
    args = parse_args(["--presets", "seed", "--seq-len", "128"])
    config = model_config("seed", args.vocab, args.dropout)
    assert config.max_position == 64 and config.vocab_size == 8192 and config.hidden_dropout == 0.1
    assert effective_seq_len(config, args.seq_len) == 64
    assert effective_seq_len(config, 32) == 32
    assert args.backends and args.reference_variants == ["eager", "sdpa"]
    assert args.reference_heads == ["all", "labelled"] and args.task == "mlm"
    assert parse_args(["--quick"]).repeats < args.repeats


def test_reference_workers_and_their_heads():
    """Every attention runs with both heads by default; an explicit :head runs that head alone; --task sequence
    has the whole model only, and asking it for the labelled head is an error naming the variant."""
    names = [e["name"] for e in worker_entries(parse_args(["--backends", "numpy"]))]
    assert names == ["numpy", "pytorch-eager", "pytorch-eager-labelled", "pytorch-sdpa", "pytorch-sdpa-labelled"]
    names = [e["name"] for e in worker_entries(parse_args(["--backends", "numpy", "--reference-variants",
                                                           "sdpa:labelled,eager", "--reference-heads", "all"]))]
    assert names == ["numpy", "pytorch-sdpa-labelled", "pytorch-eager"]
    args = parse_args(["--backends", "numpy", "--task", "sequence"])
    assert [e["head"] for e in worker_entries(args)[1:]] == ["all", "all"]
    with pytest.raises(SystemExit):
        parse_args(["--task", "sequence", "--reference-variants", "eager:labelled"])
    with pytest.raises(SystemExit):
        parse_args(["--reference-heads", "some"])


def test_sequence_task_flops_and_batch():
    """The fine-tuning step's head: pooler H x H and classifier H x C at the B [CLS] rows; labels one class per
    sequence."""
    config = model_config("tiny", 8192, 0.1, "sequence")
    assert config.task == "sequence" and config.num_labels == 2
    flops = train_flops(config, 4, 32, labelled=19)          # the MLM label count does not apply
    assert flops["head_fwd"] == 2 * 4 * 128 * 128 + 2 * 4 * 128 * 2
    assert inference_flops(config, 4, 32)["head_fwd"] == flops["head_fwd"]
    batch = make_host_batch(config, 4, 32)
    assert batch["labels"].shape == (4,) and set(batch["labels"].tolist()) <= {0, 1}
    assert (batch["input_ids"] == make_host_batch(model_config("tiny", 8192, 0.1), 4, 32)["input_ids"]).all()


def _lib(kind, times, pressures, gemm_s=0.01, mem=100, scatter_s=0.005):
    bursts = [{"round": r, "times_s": [t], "median_s": t, "foreign_cores": 0.0, "cpu_pressure": p}
              for r, (t, p) in enumerate(zip(times, pressures))]
    train = {"times_s": list(times), "cpu_s": [2 * t for t in times], "losses": [], "bursts": bursts}
    return {"kind": kind, "info": {}, "train": train, "gemm": {"size": 1000, "times_s": [gemm_s]},
            "memory": {"peak_delta": mem}, "scatter": {"times_s": [scatter_s]}}


def test_summarize_ratios_and_quiet_reference():
    """Rates, peak fraction and ratios from synthetic timings; the reference is the faster PyTorch attention
    on the quiet rounds (round 1 is noisy: CPU pressure 0.5 >= 0.1)."""
    result = {"flops": {"train": {"total": 10**9}, "inference": {"total": 10**9},
                        "pytorch_train_executed": {"total": 2 * 10**9}},
              "tokens": 100, "threads": 2, "quiet_threshold": 0.3, "quiet_pressure": 0.1,
              "libraries": {"numpy": _lib("minibert", [0.5, 0.6], [0.0, 0.5], mem=50),
                            "pytorch-eager": _lib("reference", [1.0, 1.2], [0.0, 0.5]),
                            "pytorch-sdpa": _lib("reference", [1.1, 0.9], [0.0, 0.5])}}
    summarize(result)
    assert result["reference_same_work"] is None and "vs_same_work" not in result["libraries"]["numpy"]
    # sdpa has the lower overall median (1000 ms vs 1100 ms), but eager is faster where both were quiet
    assert result["reference"] == "pytorch-eager" and result["reference_chosen_by"] == "quiet_median_ms"
    numpy_ = result["libraries"]["numpy"]
    train = numpy_["train"]
    assert train["median_ms"] == pytest.approx(550) and train["quiet_median_ms"] == pytest.approx(500)
    assert train["noisy_bursts"] == 1 and train["tokens_per_s"] == pytest.approx(100 / 0.55)
    assert train["gflops"] == pytest.approx(1 / 0.55)
    assert numpy_["gemm"]["gflops_best"] == pytest.approx(200.0)            # 2 * 1000^3 / 0.01 s
    assert train["fraction_of_gemm_peak"] == pytest.approx(1 / 0.55 / 200)
    assert train["cpu_utilisation"] == pytest.approx(1.0)                   # 2 CPU-s per s on 2 threads
    assert numpy_["scatter"]["share_of_step"] == pytest.approx(0.005 / 0.5)   # against the quiet median
    r = numpy_["vs_reference"]
    assert r["train_time"] == pytest.approx(0.55 / 1.1)
    assert r["train_time_paired_median"] == pytest.approx(0.5)             # 0.5/1.0 and 0.6/1.2
    assert r["train_time_paired_quiet_median"] == pytest.approx(0.5) and r["train_time_paired_quiet_rounds"] == 1
    assert r["memory_peak_delta"] == pytest.approx(0.5)
    assert result["libraries"]["pytorch-eager"]["vs_reference"]["train_time"] == 1.0
    text = format_report({"machine": {"cpu_model": "x", "usable_cpus": 2, "loadavg_start": (0, 0, 0),
                                      "loadavg_end": (0, 0, 0), "OPENBLAS_CORETYPE": None},
                          "settings": {"gpu": False, "threads": 2, "batch_size": 1, "dropout": 0.1, "vocab": 8,
                                       "repeats": 2, "burst": 1, "burst_warmup": 1, "warmup": 1,
                                       "gemm_size": 1000,
                                       "quiet_pressure": 0.1, "quiet_threshold": 0.3},
                          "results": {}})
    assert "Mini-BERT vs PyTorch" in text


def test_summarize_same_work_reference():
    """The same-work reference is the faster -labelled PyTorch and never the all-positions one; every library gets
    its ratios against both, paired by round."""
    result = {"flops": {"train": {"total": 10**9}, "inference": {"total": 10**9},
                        "pytorch_train_executed": {"total": 2 * 10**9}},
              "tokens": 100, "threads": 2, "quiet_threshold": 0.3, "quiet_pressure": 0.1,
              "libraries": {"numpy": _lib("minibert", [0.6, 0.9], [0.0, 0.0]),
                            "pytorch-sdpa": _lib("reference", [1.2, 1.5], [0.0, 0.0]),
                            "pytorch-eager-labelled": _lib("reference", [0.6, 0.8], [0.0, 0.0]),
                            "pytorch-sdpa-labelled": _lib("reference", [0.5, 0.75], [0.0, 0.0])}}
    summarize(result)
    assert result["reference"] == "pytorch-sdpa" and result["reference_same_work"] == "pytorch-sdpa-labelled"
    numpy_ = result["libraries"]["numpy"]
    assert numpy_["vs_reference"]["train_time_paired_median"] == pytest.approx((0.5 + 0.6) / 2)   # 0.6/1.2, 0.9/1.5
    assert numpy_["vs_same_work"]["train_time_paired_median"] == pytest.approx((1.2 + 1.2) / 2)   # 0.6/0.5, 0.9/0.75
    assert numpy_["vs_same_work"]["train_time_paired_min"] == pytest.approx(1.2)
    labelled = result["libraries"]["pytorch-sdpa-labelled"]
    assert labelled["vs_same_work"]["train_time"] == 1.0 and "gflops_executed" not in labelled["train"]
    assert result["libraries"]["pytorch-sdpa"]["train"]["gflops_executed"] > 0
