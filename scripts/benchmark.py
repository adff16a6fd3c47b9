#!/usr/bin/env python
"""Speed of Mini-BERT's training step and inference forward, measured side by side with PyTorch.

    python scripts/benchmark.py                        # numpy + jax vs PyTorch, presets seed and mini, B32 T128
    python scripts/benchmark.py --quick                # fewer repeats: under 2 minutes on 2 cores
    python scripts/benchmark.py --gpu                  # cupy + jax vs PyTorch CUDA, presets mini and small
    python scripts/benchmark.py --backends numpy --presets small --threads 1 --json out.json

What is timed, per library and preset, after warm-up (and compilation, for JAX):
  * the full training step: forward, hand-written backward and AdamW (global-norm clipping at 1.0, lr 1e-4,
    weight decay 0.01 off biases and LayerNorm, eps 1e-6), with dropout, on one fixed batch whose labels are
    -100 except at ~15% of the tokens; the clock stops after backend.synchronize(loss) and reading the loss
    to the host. The reference is transformers' BertForMaskedLM (same shapes, GELU, dropout, tied decoder)
    with torch.optim.AdamW and clip_grad_norm_, in train mode, torch.set_num_threads(--threads);
  * the inference forward: Mini-BERT's `logits_all` (logits at all B*T positions, compiled via
    minibert.api.compiled), against BertForMaskedLM(...).logits under torch.inference_mode();
  * a large float32 GEMM in the same process (same library and threads): the peak the step is measured against;
  * the word-embedding gradient scatter-add ([V, H] += B*T rows at the batch's word ids) in isolation.

Every library runs in its own worker subprocess (OpenBLAS, XLA and torch's OpenMP thread pools fight if they
share a process), all workers of a preset stay alive, and the parent runs them in ROUNDS: each round gives every
library one burst of --burst timed steps in turn (after --burst-warmup untimed ones; the order rotates each
round) while the others sit idle, so every ratio compares runs taken seconds apart. The paired ratio is the
median over rounds of (library's burst median) / (reference's burst median): robust to a shared machine's load
drifting between rounds.

On a shared machine, every burst also records how busy the rest of the machine was (CPU pressure from
/proc/pressure/cpu and other processes' CPU use from /proc/stat); bursts where our threads had to wait for a CPU
are flagged noisy, and the "quiet" figures use only the others. Warm-up runs until steps stop getting faster.
Per step the workers also record CPU time, its kernel share and page faults: NumPy, XLA and torch have the kernel
map and zero fresh pages for big temporaries. Settings in the environment reach every worker and are recorded in
the JSON, e.g. glibc malloc keeping freed memory for reuse:
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minibert.config import PRESETS, BertConfig  # noqa: E402  (imports no array library)

REPLY = "@@benchmark-reply "
LABEL_RATE = 0.15
CPU_PRESETS = ("seed", "mini")
GPU_PRESETS = ("mini", "small")
MINIBERT_BACKENDS = ("numpy", "jax", "cupy", "torch", "strict")
REFERENCE_PREFIX = "pytorch"
MEMORY_METHOD = (
    "peak RSS growth = getrusage(RUSAGE_SELF).ru_maxrss of the worker subprocess, read right after the timed "
    "training steps (before inference and the GEMM), minus its RSS (/proc/self/statm) measured after importing "
    "the library and before building the model: so it covers parameters, optimizer state, activations, "
    "gradients, allocator caches and, for JAX, the compiler's own peak. tracemalloc would miss BLAS and "
    "allocations made outside Python's allocator, so it is not used. On a GPU the device's peak is also "
    "reported (torch.cuda.max_memory_allocated, CuPy's memory-pool high-water mark, JAX's peak_bytes_in_use).")
FLOP_METHOD = (
    "useful FLOPs only, counted as 2*m*n*k per matmul: the encoder's dense layers (QKV, attention output, FFN "
    "in and out) and attention's score (q k^T) and context (p v) matmuls over all B*T tokens; the MLM head "
    "(dense H x H and the V x H decoder) only at the labelled rows (~15% of B*T, what the step must compute); "
    "the backward counts as 2x the forward (input and weight gradients). Elementwise work, softmax, LayerNorm, "
    "dropout, embedding gathers/scatters and AdamW are not counted. The same count is used for PyTorch, whose "
    "BertForMaskedLM computes the head at all B*T positions (its executed FLOPs are in the JSON). Inference "
    "(`logits_all`) counts the head at all B*T positions, because it returns all of them.")


# --- FLOP counting -------------------------------------------------------------------------------------------

def encoder_flops(config: BertConfig, batch: int, seq: int) -> dict:
    """Forward FLOPs of the encoder over B*T tokens: dense layers and attention's two batched matmuls."""
    tokens = batch * seq
    hidden, inner = config.hidden_size, config.intermediate_size
    dense = 2 * tokens * (3 * hidden * hidden + hidden * hidden + 2 * hidden * inner)   # qkv, out, ffn in+out
    attention = 2 * (2 * batch * seq * seq * hidden)    # q k^T and p v, summed over heads (A * D = H)
    return {"dense": config.num_layers * dense, "attention": config.num_layers * attention}


def head_flops(config: BertConfig, rows: int) -> int:
    """Forward FLOPs of the MLM head on `rows` rows: dense H x H, then the tied V x H decoder."""
    hidden = config.hidden_size
    return 2 * rows * hidden * hidden + 2 * rows * hidden * config.vocab_size


def train_flops(config: BertConfig, batch: int, seq: int, labelled: int) -> dict:
    """Useful FLOPs of one training step: forward with the head at the `labelled` rows, backward = 2x forward."""
    enc = encoder_flops(config, batch, seq)
    head = head_flops(config, labelled)
    forward = enc["dense"] + enc["attention"] + head
    return {"encoder_dense_fwd": enc["dense"], "attention_fwd": enc["attention"], "head_fwd": head,
            "forward": forward, "backward": 2 * forward, "total": 3 * forward}


def inference_flops(config: BertConfig, batch: int, seq: int) -> dict:
    """FLOPs of `logits_all`: the encoder and the head at all B*T positions."""
    enc = encoder_flops(config, batch, seq)
    head = head_flops(config, batch * seq)
    return {"encoder_dense_fwd": enc["dense"], "attention_fwd": enc["attention"], "head_fwd": head,
            "total": enc["dense"] + enc["attention"] + head}


# --- the shared batch ----------------------------------------------------------------------------------------

def labelled_count(batch: int, seq: int) -> int:
    return max(1, round(LABEL_RATE * batch * seq))


def make_host_batch(config: BertConfig, batch: int, seq: int, seed: int = 0) -> dict:
    """One fixed host batch (NumPy int32): random ids, no padding, two token types, labels -100 except at
    exactly `labelled_count` random positions. Every worker builds the same one from the same seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    input_ids = rng.integers(0, config.vocab_size, (batch, seq), dtype=np.int32)
    token_type_ids = np.zeros((batch, seq), np.int32)
    token_type_ids[:, seq // 2:] = 1
    labels = np.full(batch * seq, -100, np.int32)
    chosen = rng.choice(batch * seq, labelled_count(batch, seq), replace=False)
    labels[chosen] = rng.integers(0, config.vocab_size, chosen.size)
    return {"input_ids": input_ids, "attention_mask": np.ones((batch, seq), np.int32),
            "token_type_ids": token_type_ids, "labels": labels.reshape(batch, seq)}


def model_config(preset: str, vocab: int, dropout: float) -> BertConfig:
    return BertConfig.preset(preset, vocab_size=vocab, hidden_dropout=dropout, attention_dropout=dropout)


def effective_seq_len(config: BertConfig, requested: int) -> int:
    """The sequence length a preset can take: `requested`, or max_position where that is shorter (the report
    says when it is clamped)."""
    return min(requested, config.max_position)


# --- worker side -----------------------------------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024     # Linux reports KiB


def _minor_faults() -> int:
    """Page faults of this process so far (minor: a fresh page mapped and zeroed by the kernel)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _reply(payload: dict) -> None:
    sys.stdout.write(REPLY + json.dumps(payload) + "\n")
    sys.stdout.flush()


class MinibertRunner:
    """Mini-BERT on one backend: the jitted (JAX) or eager training step from minibert.step."""

    def __init__(self, spec):
        import numpy as np

        import backends
        self.spec = spec
        self.be = be = backends.get_backend(spec["backend"])
        self._check_device()
        if spec["gpu"]:
            self._set_matmul_precision(spec["tf32"])
        self.rss_before_build = _rss_bytes()
        self.peak_before_build = _peak_rss_bytes()
        self._reset_device_peak()

        from functools import partial

        from minibert.api import compiled
        from minibert.batch import check_batch, device_batch
        from minibert.model import forward_backward, logits_all
        from minibert.optim import AdamWConfig, init_state
        from minibert.params import init_params
        from minibert.step import make_train_step

        self.config = config = model_config(spec["preset"], spec["vocab"], spec["dropout"])
        host = make_host_batch(config, spec["batch"], spec["seq"])
        self.arrays = device_batch(check_batch(host, config), be, "float32")
        self.params = init_params(config, seed=0, backend=be)
        self.state = init_state(self.params, be)
        opt = AdamWConfig(lr=1e-4, warmup_steps=0, total_steps=10**9, weight_decay=0.01, eps=1e-6, clip_norm=1.0)
        self.step_fn = make_train_step(partial(forward_backward, config=config, backend=be), opt, be)
        self.base_key = be.key(0) if spec["dropout"] > 0 else None
        self.infer_fn = compiled(logits_all, config, be)
        self.step_index = 0
        self.np = np

    def _check_device(self):
        be, gpu = self.be, self.spec["gpu"]
        if be.name == "jax":
            platform_ = be.device.platform
            if gpu and platform_ == "cpu":
                raise RuntimeError("--gpu: JAX sees no GPU here (jax.devices() is CPU only); install jax[cuda12]")
            if not gpu and platform_ != "cpu":
                raise RuntimeError(f"CPU run, but JAX chose {platform_}; JAX_PLATFORMS=cpu was not honoured")
        if be.name == "torch":
            is_cuda = be.device.type == "cuda"
            if gpu != is_cuda:
                raise RuntimeError(f"the torch backend is on {be.device}, but this run is {'GPU' if gpu else 'CPU'}")

    def _set_matmul_precision(self, tf32: bool):
        """--tf32 allows TF32 matmuls; by default every library computes float32 matmuls in full float32 (the JAX
        backend asks for that itself on GPUs, torch's allow_tf32 is off, CuPy needs CUPY_TF32=1 to use TF32)."""
        be = self.be
        if be.name == "jax":
            be._jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
        elif be.name == "torch":
            be._torch.backends.cuda.matmul.allow_tf32 = tf32

    def info(self) -> dict:
        be = self.be
        out = {"backend": be.name, "device": str(be.device)}
        if self.spec["gpu"]:
            out["tf32"] = self.spec["tf32"]
        if be.name == "jax":
            out["matmul_precision"] = str(be._jax.config.jax_default_matmul_precision)
        if be.name == "numpy":
            import numpy as np
            out["numpy"] = np.__version__
            try:
                blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
                out["blas"] = f"{blas.get('name')} {blas.get('version')}"
            except Exception:  # older numpy: no dict mode
                pass
        elif be.name == "jax":
            import jax
            import jaxlib
            out.update(jax=jax.__version__, jaxlib=jaxlib.__version__, device_kind=be.device.device_kind)
        elif be.name == "torch":
            out.update(_torch_info(be._torch))
        elif be.name == "cupy":
            import cupy
            out.update(cupy=cupy.__version__, cuda_runtime=cupy.cuda.runtime.runtimeGetVersion())
        return out

    def train_step(self):
        be = self.be
        i = self.step_index
        key = None if self.base_key is None else be.fold_in(self.base_key, i)
        self.params, self.state, loss, _ = self.step_fn(self.params, self.state, [self.arrays], key, i)
        be.synchronize(loss)
        self.step_index += 1
        return float(be.to_numpy(loss))

    def infer(self):
        a = self.arrays
        out = self.infer_fn(self.params, a.input_ids, a.attention_mask, a.token_type_ids)
        self.be.synchronize(out)
        del out

    def gemm(self, size, reps):
        be = self.be
        rng = self.np.random.default_rng(1)
        a = be.asarray(rng.standard_normal((size, size), dtype=self.np.float32))
        b = be.asarray(rng.standard_normal((size, size), dtype=self.np.float32))
        return _time_gemm(lambda: a @ b, be.synchronize, size, reps)

    def scatter(self, reps):
        be, xp, np = self.be, self.be.xp, self.np
        config = self.config
        ids = xp.reshape(self.arrays.input_ids, (-1,))
        rows = be.asarray(np.random.default_rng(2).standard_normal((ids.shape[0], config.hidden_size),
                                                                   dtype=np.float32))
        table = xp.zeros((config.vocab_size, config.hidden_size), dtype=rows.dtype, device=be.device)
        fn = be.jit(lambda t, i, u: be.scatter_add(t, i, u), donate_argnums=(0,))
        table = fn(table, ids, rows)               # warm-up (and compilation)
        be.synchronize(table)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            table = fn(table, ids, rows)
            be.synchronize(table)
            times.append(time.perf_counter() - t0)
        return {"times_s": times, "what": f"{be.name} backend.scatter_add([V,H] += [B*T,H] at word ids)"}

    def profile(self, steps, top):
        import cProfile
        import io
        import pstats
        if self.be.name == "jax":
            return "not profiled: the JAX step is one compiled XLA call"
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(steps):
            self.train_step()
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
        return text.getvalue()

    def _reset_device_peak(self):
        if self.be.name == "torch" and self.spec["gpu"]:
            self.be._torch.cuda.reset_peak_memory_stats()

    def device_peak(self):
        be = self.be
        if not self.spec["gpu"]:
            return None
        if be.name == "cupy":
            return {"bytes": int(be._cupy.get_default_memory_pool().total_bytes()),
                    "method": "cupy default memory pool total_bytes (pool high-water mark)"}
        if be.name == "jax":
            stats = be.device.memory_stats() or {}
            return {"bytes": int(stats.get("peak_bytes_in_use", 0)),
                    "method": "jax device memory_stats peak_bytes_in_use"}
        if be.name == "torch":
            return {"bytes": int(be._torch.cuda.max_memory_allocated()), "method": "torch.cuda.max_memory_allocated"}
        return None


def _torch_info(torch) -> dict:
    import re
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    out = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "torch_blas": blas.group(1) if blas else None}
    if torch.cuda.is_available():
        out.update(cuda_device=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return out


def _time_gemm(matmul, synchronize, size, reps):
    out = matmul()
    synchronize(out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = matmul()
        synchronize(out)
        times.append(time.perf_counter() - t0)
        del out
    flops = 2.0 * size ** 3
    return {"size": size, "times_s": times, "gflops_best": flops / min(times) / 1e9,
            "gflops_median": flops / statistics.median(times) / 1e9}


class ReferenceRunner:
    """transformers' BertForMaskedLM with torch.optim.AdamW: the PyTorch reference."""

    def __init__(self, spec):
        import numpy as np
        import torch
        import transformers

        from minibert.hf import config_to_transformers
        self.spec, self.torch, self.np = spec, torch, np
        if spec["gpu"]:
            if not torch.cuda.is_available():
                raise RuntimeError("--gpu: torch.cuda.is_available() is False; the PyTorch CUDA reference needs a "
                                   "CUDA build of torch and a visible GPU")
            self.device = torch.device("cuda")
            torch.backends.cuda.matmul.allow_tf32 = spec["tf32"]
            torch.backends.cudnn.allow_tf32 = spec["tf32"]
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(spec["threads"])
        self.rss_before_build = _rss_bytes()
        self.peak_before_build = _peak_rss_bytes()
        if spec["gpu"]:
            torch.cuda.reset_peak_memory_stats()

        self.config = config = model_config(spec["preset"], spec["vocab"], spec["dropout"])
        torch.manual_seed(0)
        hf_config = transformers.BertConfig(**config_to_transformers(config))
        model = transformers.BertForMaskedLM._from_config(hf_config, attn_implementation=spec["attn"])
        if model.config._attn_implementation != spec["attn"]:
            raise RuntimeError(f"asked for attn_implementation={spec['attn']!r}, "
                               f"transformers chose {model.config._attn_implementation!r}")
        self.model = model.to(self.device).train()
        decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
        no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=1e-4, eps=1e-6)
        host = make_host_batch(config, spec["batch"], spec["seq"])
        self.inputs = {k: torch.from_numpy(host[k].astype(np.int64)).to(self.device)
                       for k in ("input_ids", "attention_mask", "token_type_ids")}
        self.labels = torch.from_numpy(host["labels"].astype(np.int64)).to(self.device)
        flat = self.labels.reshape(-1)
        self.positions = torch.nonzero(flat != -100).reshape(-1)
        self.targets = flat[self.positions]

    def info(self) -> dict:
        import transformers
        return {**_torch_info(self.torch), "transformers": transformers.__version__, "attn": self.spec["attn"],
                "head": self.spec["head"], "device": str(self.device)}

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def train_step(self):
        torch, model = self.torch, self.model
        if self.spec["head"] == "all":
            loss = model(**self.inputs, labels=self.labels).loss
        else:   # the head at the labelled rows only, as Mini-BERT does
            hidden = model.bert(**self.inputs).last_hidden_state
            rows = hidden.reshape(-1, hidden.shape[-1])[self.positions]
            loss = torch.nn.functional.cross_entropy(model.cls(rows), self.targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        value = float(loss.detach())      # reads to host, so it waits for the device
        self._sync()
        return value

    def infer(self):
        self.model.eval()
        with self.torch.inference_mode():
            out = self.model(**self.inputs).logits
        self._sync()
        del out

    def gemm(self, size, reps):
        torch = self.torch
        gen = torch.Generator().manual_seed(1)
        a = torch.randn(size, size, generator=gen).to(self.device)
        b = torch.randn(size, size, generator=gen).to(self.device)
        return _time_gemm(lambda: a @ b, lambda _: self._sync(), size, reps)

    def scatter(self, reps):
        torch, config = self.torch, self.config
        ids = self.inputs["input_ids"].reshape(-1)
        rows = torch.randn(ids.shape[0], config.hidden_size, device=self.device)
        table = torch.zeros(config.vocab_size, config.hidden_size, device=self.device)
        table.index_add_(0, ids, rows)
        self._sync()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            table.index_add_(0, ids, rows)
            self._sync()
            times.append(time.perf_counter() - t0)
        return {"times_s": times, "what": "torch index_add_([V,H] += [B*T,H] at word ids)"}

    def profile(self, steps, top):
        return "not profiled: the reference"

    def device_peak(self):
        if self.device.type != "cuda":
            return None
        return {"bytes": int(self.torch.cuda.max_memory_allocated()), "method": "torch.cuda.max_memory_allocated"}


def _import_libraries(spec) -> None:
    """Import the worker's array library (and, for the reference, transformers) before any timing."""
    if spec["kind"] == "reference":
        import torch  # noqa: F401
        import transformers  # noqa: F401

        import minibert.hf  # noqa: F401
    else:
        import backends
        backends.get_backend(spec["backend"])
        import minibert.model  # noqa: F401
        import minibert.step  # noqa: F401


def worker_main() -> int:
    """Serve the parent: a JSON spec line (answered once the libraries are imported), then one JSON command per
    line, the first being "setup" (build the model, warm up); every answer is one REPLY line."""
    spec = json.loads(sys.stdin.readline())
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])
    try:
        t0 = time.perf_counter()
        _import_libraries(spec)
        _reply({"ok": True, "import_s": time.perf_counter() - t0})
        cmd = json.loads(sys.stdin.readline() or '{"op": "quit"}')
        if cmd["op"] != "setup":
            return 0
        started = time.perf_counter()
        runner = ReferenceRunner(spec) if spec["kind"] == "reference" else MinibertRunner(spec)
        t0 = time.perf_counter()
        first_loss = runner.train_step()          # includes compilation on JAX
        first_step_s = time.perf_counter() - t0
        losses, warm_times = [first_loss], [first_step_s]
        # at least `warmup` steps, more (up to `max_warmup`) while each step is still >10% faster than the one
        # before: NumPy's allocator takes a few steps to stop mapping fresh pages for every large array
        while len(warm_times) < spec["warmup"] or (
                2 <= len(warm_times) < spec["max_warmup"] and warm_times[-1] < 0.9 * warm_times[-2]):
            t0 = time.perf_counter()
            losses.append(runner.train_step())
            warm_times.append(time.perf_counter() - t0)
        _reply({"ok": True, "info": runner.info(), "first_step_s": first_step_s, "warmup_times_s": warm_times,
                "setup_s": time.perf_counter() - started, "warmup_losses": losses,
                "rss_before_build": runner.rss_before_build, "peak_before_build": runner.peak_before_build})
    except Exception as exc:
        _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]})
        return 1

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "quit":
                _reply({"ok": True})
                return 0
            if op in ("train", "infer"):
                fn = runner.train_step if op == "train" else runner.infer
                times, cpu, sys_cpu, faults, losses = [], [], [], [], []
                rewarm, start = [], os.times()
                for _ in range(cmd.get("skip", 0)):      # untimed: the first step after the worker sat idle
                    t0 = time.perf_counter()
                    fn()
                    rewarm.append(time.perf_counter() - t0)
                for _ in range(cmd["n"]):
                    u0, f0, t0 = os.times(), _minor_faults(), time.perf_counter()
                    value = fn()
                    times.append(time.perf_counter() - t0)
                    u1 = os.times()
                    cpu.append(u1.user + u1.system - u0.user - u0.system)
                    sys_cpu.append(u1.system - u0.system)
                    faults.append(_minor_faults() - f0)
                    if value is not None:
                        losses.append(value)
                end = os.times()
                _reply({"ok": True, "times_s": times, "cpu_s": cpu, "sys_s": sys_cpu, "page_faults": faults,
                        "losses": losses, "rewarm_s": rewarm,
                        "total_cpu_s": end.user + end.system - start.user - start.system})
            elif op == "memory":
                _reply({"ok": True, "peak_rss": _peak_rss_bytes(), "rss_now": _rss_bytes(),
                        "device_peak": runner.device_peak()})
            elif op == "gemm":
                _reply({"ok": True, **runner.gemm(cmd["size"], cmd["n"])})
            elif op == "scatter":
                _reply({"ok": True, **runner.scatter(cmd["n"])})
            elif op == "profile":
                _reply({"ok": True, "text": runner.profile(cmd["n"], cmd.get("top", 30))})
            else:
                _reply({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as exc:
            _reply({"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]})
    return 0


# --- parent side -----------------------------------------------------------------------------------------------

class WorkerError(RuntimeError):
    pass


class Worker:
    """A worker subprocess and a reader thread that queues its REPLY lines (anything else it prints goes to
    its log, so library chatter never breaks the protocol)."""

    def __init__(self, name, spec, env, timeout):
        self.name, self.timeout = name, timeout
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1)
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                self.replies.put(json.loads(line[len(REPLY):]))
            else:
                self.log.write(line)
        self.replies.put(None)

    def log_tail(self, chars=2000):
        try:
            self.log.flush()
            return Path(self.log.name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_reply(self, what):
        try:
            reply = self.replies.get(timeout=self.timeout)
        except queue.Empty:
            self.kill()
            raise WorkerError(f"no answer to {what} within {self.timeout:.0f} s (worker killed)") from None
        if reply is None:
            code = self.proc.wait()
            raise WorkerError(f"worker exited (code {code}) during {what}; log tail:\n{self.log_tail()}")
        if not reply.get("ok"):
            raise WorkerError(f"{what} failed: {reply.get('error')}\n{reply.get('traceback', '')}")
        return reply

    def ask(self, op, **kwargs):
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass   # the reader will report the exit
        return self.wait_reply(op)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.ask("quit")
            except WorkerError:
                pass
        self.kill()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def machine_info(args) -> dict:
    model, physical = None, set()
    try:
        block = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            if ":" in line:
                key, value = (s.strip() for s in line.split(":", 1))
                block[key] = value
                model = model or (value if key == "model name" else None)
            elif block:
                physical.add((block.get("physical id"), block.get("core id")))
                block = {}
    except OSError:
        pass
    versions = {}
    for package in ("numpy", "jax", "jaxlib", "torch", "transformers", "array-api-compat", "cupy-cuda12x",
                    "cupy-cuda13x", "cupy", "scipy-openblas64", "scipy-openblas32"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        mem_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        mem_total = None
    info = {
        "cpu_model": model or platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "physical_cores": len(physical) if physical and None not in next(iter(physical)) else None,
        "memory_bytes": mem_total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        # settings inherited by every worker that change speed (thread pools, XLA, glibc malloc, NumPy hugepages)
        "env": {k: v for k, v in os.environ.items()
                if k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "GLIBC_TUNABLES",
                         "NUMPY_MADVISE_HUGEPAGE", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
                or k.startswith(("MALLOC_", "JAX_"))},
        "loadavg_start": os.getloadavg(),
    }
    if args.gpu:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["gpus"] = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired) as exc:
            info["gpus"] = [f"nvidia-smi unavailable: {exc}"]
    return info


def worker_env(args, threads) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    env.pop("MINIBERT_BACKEND", None)
    if args.gpu:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"    # JAX would grab 75% of the GPU and starve the others
        if args.tf32:
            env["CUPY_TF32"] = "1"
            env.pop("JAX_DEFAULT_MATMUL_PRECISION", None)
        else:
            env.pop("CUPY_TF32", None)
            env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    else:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
        if threads == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                                " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
    return env


def cpu_busy_seconds() -> tuple[float, float]:
    """(busy, steal) CPU-seconds of the whole machine since boot, from /proc/stat ((0, 0) where unreadable)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def cpu_pressure_seconds() -> float | None:
    """Seconds (since boot) during which some runnable task waited for a CPU: Linux PSI, /proc/pressure/cpu
    ("some ... total=" in microseconds); None where the kernel has no PSI."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        return None


def wait_quiet(max_wait: float, threshold: float, window: float = 0.5) -> tuple[float, float]:
    """Before a burst (every worker idle): wait, up to `max_wait` seconds, until the machine's other processes
    use fewer than `threshold` cores over a `window`. Returns (seconds waited, busy cores in the last window)."""
    if max_wait <= 0:
        return 0.0, None
    started = time.perf_counter()
    while True:
        before = cpu_busy_seconds()[0]
        time.sleep(window)
        busy = (cpu_busy_seconds()[0] - before) / window
        waited = time.perf_counter() - started
        if busy < threshold or waited >= max_wait:
            return waited, busy


def _stats_ms(times):
    ms = sorted(1000.0 * t for t in times)
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1], "p25_ms": q[0], "p75_ms": q[2],
            "n": len(ms)}


def _entries(args) -> list[dict]:
    entries = [{"name": b, "kind": "minibert", "backend": b} for b in args.backends]
    for variant in args.reference_variants:
        attn, _, head = variant.partition(":")
        head = head or "all"
        if attn not in ("eager", "sdpa") or head not in ("all", "labelled"):
            raise SystemExit(f"--reference-variants: bad {variant!r}; allowed: eager or sdpa, optionally "
                             "followed by :labelled (head at the labelled rows only), e.g. eager,sdpa,sdpa:labelled")
        name = f"{REFERENCE_PREFIX}-{attn}" + ("" if head == "all" else "-labelled")
        entries.append({"name": name, "kind": "reference", "attn": attn, "head": head})
    return entries


def run_preset(preset, args, threads, cpus, log) -> dict:
    requested_seq = args.seq_len
    config = model_config(preset, args.vocab, args.dropout)
    seq = effective_seq_len(config, requested_seq)
    labelled = labelled_count(args.batch_size, seq)
    result = {
        "config": config.to_dict(), "batch": args.batch_size, "seq_len": seq, "seq_len_requested": requested_seq,
        "seq_len_clamped": seq != requested_seq, "tokens": args.batch_size * seq, "labelled_rows": labelled,
        "flops": {"train": train_flops(config, args.batch_size, seq, labelled),
                  "inference": inference_flops(config, args.batch_size, seq),
                  "pytorch_train_executed": train_flops(config, args.batch_size, seq, args.batch_size * seq)},
        "libraries": {}, "errors": [], "rounds": [], "threads": threads, "quiet_threshold": args.quiet_threshold,
        "quiet_pressure": args.quiet_pressure,
    }
    env = worker_env(args, threads)
    workers: dict[str, Worker] = {}
    libs = result["libraries"]

    def fail(name, exc):
        message = str(exc) or repr(exc)
        log(f"  !! {name}: {message.splitlines()[0]}")
        result["errors"].append({"library": name, "error": message})
        if name in workers:
            workers.pop(name).kill()

    try:
        # Imports run in every worker at once (nothing is timed yet); building, compiling and warming up then
        # go one worker at a time, so compile times and first steps are not slowed by each other.
        entries = _entries(args)
        log("  importing in " + ", ".join(e["name"] for e in entries) + " ...")
        imported = {}
        for entry in entries:
            spec = {**entry, "preset": preset, "vocab": args.vocab, "dropout": args.dropout, "batch": args.batch_size,
                    "seq": seq, "threads": threads, "cpus": cpus, "gpu": args.gpu, "tf32": args.tf32,
                    "warmup": max(1, args.warmup), "max_warmup": max(args.warmup, args.max_warmup)}
            workers[entry["name"]] = Worker(entry["name"], spec, env, args.timeout)
        for entry in entries:
            name = entry["name"]
            try:
                imported[name] = workers[name].wait_reply("import")["import_s"]
            except WorkerError as exc:
                fail(name, exc)
        for entry in entries:
            name = entry["name"]
            if name not in workers:
                continue
            try:
                ready = workers[name].ask("setup")
            except WorkerError as exc:
                fail(name, exc)
                continue
            libs[name] = {"kind": entry["kind"], "info": ready["info"], "import_s": imported[name],
                          "setup_s": ready["setup_s"], "first_step_s": ready["first_step_s"],
                          "warmup_times_s": ready["warmup_times_s"],
                          "warmup_losses": ready["warmup_losses"],
                          "train": {"times_s": [], "cpu_s": [], "losses": [], "bursts": []},
                          "memory": {"rss_before_build": ready["rss_before_build"],
                                     "peak_before_build": ready["peak_before_build"]}}
            log(f"  {name}: ready in {ready['setup_s']:.1f} s (first step {ready['first_step_s']:.2f} s, "
                f"loss {ready['warmup_losses'][0]:.3f})")

        def rounds(op, repeats, store):
            count = math.ceil(repeats / args.burst) if repeats > 0 and workers else 0
            for r in range(count):
                names = list(workers)
                names = names[r % len(names):] + names[:r % len(names)] if names else names
                record = {"op": op, "round": r, "order": names, "loadavg": os.getloadavg()[0]}
                result["rounds"].append(record)
                for name in names:
                    if name not in workers:
                        continue
                    n = min(args.burst, repeats - r * args.burst)
                    time.sleep(args.pause)
                    waited, idle_cores = wait_quiet(args.quiet_wait, args.quiet_threshold)
                    before, psi0, t0 = cpu_busy_seconds(), cpu_pressure_seconds(), time.perf_counter()
                    try:
                        reply = workers[name].ask(op, n=n, skip=args.burst_warmup)
                    except WorkerError as exc:
                        fail(name, exc)
                        continue
                    wall = time.perf_counter() - t0
                    after, psi1 = cpu_busy_seconds(), cpu_pressure_seconds()
                    slot = libs[name].setdefault(store, {"times_s": [], "cpu_s": [], "losses": [], "bursts": []})
                    slot["times_s"] += reply["times_s"]
                    slot["cpu_s"] += reply["cpu_s"]
                    slot.setdefault("sys_s", []).extend(reply["sys_s"])
                    slot.setdefault("page_faults", []).extend(reply["page_faults"])
                    slot.setdefault("rewarm_s", []).extend(reply["rewarm_s"])
                    slot["losses"] += reply["losses"]
                    slot["bursts"].append({
                        "round": r, "times_s": reply["times_s"], "median_s": statistics.median(reply["times_s"]),
                        # CPU the rest of the machine used while this burst ran, in cores (the worker's own
                        # process CPU time subtracted); steal = time the hypervisor gave to other VMs
                        "foreign_cores": max(0.0, (after[0] - before[0] - reply["total_cpu_s"]) / wall),
                        "steal_cores": (after[1] - before[1]) / wall,
                        # fraction of the burst during which some runnable thread (ours or not) waited for a CPU
                        "cpu_pressure": None if psi0 is None or psi1 is None else (psi1 - psi0) / wall,
                        "waited_for_quiet_s": waited, "busy_cores_before": idle_cores})
                log(f"  {op} round {r + 1}/{count} (load {record['loadavg']:.1f}): " + ", ".join(
                    f"{name} {1000 * libs[name][store]['bursts'][-1]['median_s']:.0f} ms"
                    f" (others {libs[name][store]['bursts'][-1]['foreign_cores']:.1f} cores,"
                    f" psi {_fmt(libs[name][store]['bursts'][-1]['cpu_pressure'], '.2f')})"
                    for name in names if name in workers and libs[name].get(store, {}).get("bursts")))

        rounds("train", args.repeats, "train")
        for name in list(workers):
            try:
                mem = workers[name].ask("memory")
            except WorkerError as exc:
                fail(name, exc)
                continue
            m = libs[name]["memory"]
            m.update(peak_rss=mem["peak_rss"], rss_after_train=mem["rss_now"],
                     peak_delta=mem["peak_rss"] - m["rss_before_build"],
                     steady_delta=mem["rss_now"] - m["rss_before_build"], device_peak=mem["device_peak"])
        if args.infer_repeats > 0:
            for name in list(workers):
                try:      # the first forward compiles on JAX; timed here, and never counted
                    libs[name]["infer_first_s"] = workers[name].ask("infer", n=1, skip=0)["times_s"][0]
                except WorkerError as exc:
                    fail(name, exc)
            rounds("infer", args.infer_repeats, "inference")
        # the GEMM peak and the scatter-add, in two rotated rounds (one with --quick; a peak is a best case:
        # a busy moment in one round does not lower it)
        for r in range(1 if args.quick else 2):
            for op, kwargs in (("gemm", {"size": args.gemm_size, "n": args.gemm_repeats}),
                               ("scatter", {"n": args.scatter_repeats})):
                names = list(workers)
                for name in names[r % max(1, len(names)):] + names[:r % max(1, len(names))]:
                    time.sleep(args.pause)
                    try:
                        reply = workers[name].ask(op, **kwargs)
                    except WorkerError as exc:
                        fail(name, exc)
                        continue
                    reply.pop("ok")
                    if op in libs[name]:
                        libs[name][op]["times_s"] += reply["times_s"]
                    else:
                        libs[name][op] = reply
        if args.profile:
            for name in list(workers):
                if libs[name]["kind"] == "minibert":
                    try:
                        libs[name]["profile"] = workers[name].ask("profile", n=args.profile, top=30)["text"]
                    except WorkerError as exc:
                        fail(name, exc)
    finally:
        for worker in workers.values():
            worker.close()
    summarize(result)
    return result


def _noisy(burst, result) -> bool:
    """A burst during which the machine was not ours: CPU pressure (PSI: some runnable thread waited for a CPU)
    for at least --quiet-pressure of its time, or, without PSI, other processes using --quiet-threshold cores."""
    if burst.get("cpu_pressure") is not None:
        return burst["cpu_pressure"] >= result["quiet_pressure"]
    return burst["foreign_cores"] >= result["quiet_threshold"]


def summarize(result) -> None:
    """Medians, rates, fractions of peak and ratios against the reference, in place."""
    libs = result["libraries"]
    flops = result["flops"]
    tokens = result["tokens"]
    for name, lib in libs.items():
        if lib.get("gemm"):
            g = lib["gemm"]
            g.update(_stats_ms(g["times_s"]))
            g["gflops_best"] = 2.0 * g["size"] ** 3 / (g["min_ms"] / 1000) / 1e9
            g["gflops_median"] = 2.0 * g["size"] ** 3 / (g["median_ms"] / 1000) / 1e9
        for store, total in (("train", flops["train"]["total"]), ("inference", flops["inference"]["total"])):
            slot = lib.get(store)
            if not slot or not slot.get("times_s"):
                continue
            slot.update(_stats_ms(slot["times_s"]))
            seconds = slot["median_ms"] / 1000.0
            slot["tokens_per_s"] = tokens / seconds
            slot["gflops"] = total / seconds / 1e9
            if lib.get("gemm"):
                slot["fraction_of_gemm_peak"] = slot["gflops"] / lib["gemm"]["gflops_best"]
            cores = max(1, result.get("threads") or 1)
            slot["cpu_utilisation"] = statistics.median(
                c / (t * cores) for c, t in zip(slot["cpu_s"], slot["times_s"]) if t > 0)
            if slot.get("sys_s"):
                slot["sys_fraction_of_cpu"] = sum(slot["sys_s"]) / max(sum(slot["cpu_s"]), 1e-9)
                slot["page_faults_median"] = statistics.median(slot["page_faults"])
            quiet = [b for b in slot["bursts"] if not _noisy(b, result)]
            slot["foreign_cores_median"] = statistics.median(b["foreign_cores"] for b in slot["bursts"])
            psi = [b["cpu_pressure"] for b in slot["bursts"] if b.get("cpu_pressure") is not None]
            slot["cpu_pressure_median"] = statistics.median(psi) if psi else None
            slot["noisy_bursts"] = len(slot["bursts"]) - len(quiet)
            slot["quiet_median_ms"] = (1000 * statistics.median(t for b in quiet for t in b["times_s"])
                                       if quiet else None)
            if slot["quiet_median_ms"]:
                slot["gflops_quiet"] = total / (slot["quiet_median_ms"] / 1000) / 1e9
        if lib.get("scatter") and lib.get("train", {}).get("median_ms"):
            sc, train = lib["scatter"], lib["train"]
            sc.update(_stats_ms(sc["times_s"]))
            sc["share_of_step"] = sc["median_ms"] / (train.get("quiet_median_ms") or train["median_ms"])
        if lib["kind"] == "reference" and lib.get("train", {}).get("median_ms"):
            lib["train"]["gflops_executed"] = (flops["pytorch_train_executed"]["total"]
                                               / (lib["train"]["median_ms"] / 1000) / 1e9)
    candidates = [n for n, lib in libs.items() if lib["kind"] == "reference" and "-labelled" not in n
                  and lib.get("train", {}).get("median_ms")]
    # the faster PyTorch attention; judged on quiet bursts where every candidate has some
    key = ("quiet_median_ms" if all(libs[n]["train"].get("quiet_median_ms") for n in candidates)
           else "median_ms")
    reference = min(candidates, key=lambda n: libs[n]["train"][key]) if candidates else None
    result["reference_chosen_by"] = key
    result["reference"] = reference
    if reference is None:
        return
    ref = libs[reference]
    ref_bursts = {b["round"]: b["median_s"] for b in ref["train"]["bursts"]}
    for name, lib in libs.items():
        ratios = {}
        for store in ("train", "inference"):
            if lib.get(store, {}).get("median_ms") and ref.get(store, {}).get("median_ms"):
                ratios[f"{store}_time"] = lib[store]["median_ms"] / ref[store]["median_ms"]
        paired = [b["median_s"] / ref_bursts[b["round"]] for b in lib.get("train", {}).get("bursts", [])
                  if b["round"] in ref_bursts]
        if paired:
            ratios["train_time_paired_median"] = statistics.median(paired)
            ratios["train_time_paired_min"], ratios["train_time_paired_max"] = min(paired), max(paired)
        ref_quiet = {b["round"]: b["median_s"] for b in ref["train"]["bursts"] if not _noisy(b, result)}
        paired = [b["median_s"] / ref_quiet[b["round"]] for b in lib.get("train", {}).get("bursts", [])
                  if b["round"] in ref_quiet and not _noisy(b, result)]
        ratios["train_time_paired_quiet_median"] = statistics.median(paired) if paired else None
        ratios["train_time_paired_quiet_rounds"] = len(paired)
        if lib.get("train", {}).get("quiet_median_ms") and ref["train"].get("quiet_median_ms"):
            ratios["train_time_quiet"] = lib["train"]["quiet_median_ms"] / ref["train"]["quiet_median_ms"]
        ref_ib = {b["round"]: b["median_s"] for b in ref.get("inference", {}).get("bursts", [])}
        paired = [b["median_s"] / ref_ib[b["round"]] for b in lib.get("inference", {}).get("bursts", [])
                  if b["round"] in ref_ib]
        if paired:
            ratios["inference_time_paired_median"] = statistics.median(paired)
        mem, ref_mem = lib.get("memory", {}), ref.get("memory", {})
        if mem.get("peak_delta") and ref_mem.get("peak_delta"):
            ratios["memory_peak_delta"] = mem["peak_delta"] / ref_mem["peak_delta"]
        if (mem.get("device_peak") or {}).get("bytes") and (ref_mem.get("device_peak") or {}).get("bytes"):
            ratios["device_memory_peak"] = mem["device_peak"]["bytes"] / ref_mem["device_peak"]["bytes"]
        if lib.get("gemm") and ref.get("gemm"):
            ratios["gemm_peak"] = lib["gemm"]["gflops_best"] / ref["gemm"]["gflops_best"]
        lib["vs_reference"] = ratios


# --- report ------------------------------------------------------------------------------------------------

def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def _range(t):
    return f"[{t['min_ms']:.0f}..{t['max_ms']:.0f}]"


def format_report(report) -> str:
    m, s = report["machine"], report["settings"]
    lines = []
    where = (f"GPU: {'; '.join(m.get('gpus', [])) or 'unknown'}" if s["gpu"] else
             f"CPU: {m['cpu_model']}, {m['usable_cpus']} usable cores, {s['threads']} threads per library")
    lines.append(f"Mini-BERT vs PyTorch  |  {where}  |  load avg {m['loadavg_start'][0]:.1f} at start, "
                 f"{m.get('loadavg_end', [float('nan')])[0]:.1f} at end")
    lines.append(f"batch {s['batch_size']}, dropout {s['dropout']}, vocab {s['vocab']}, float32; {s['repeats']} timed "
                 f"steps per library in rounds of {s['burst']} (each after {s['burst_warmup']} untimed), after "
                 f">= {s['warmup']} warm-up; "
                 f"OPENBLAS_CORETYPE={m['OPENBLAS_CORETYPE'] or 'unset'}")
    for preset, res in report["results"].items():
        c, f, libs = res["config"], res["flops"], res["libraries"]
        clamp = (f" (asked {res['seq_len_requested']}: clamped to max_position)" if res["seq_len_clamped"] else "")
        lines.append("")
        lines.append(f"== {preset}: L={c['num_layers']} H={c['hidden_size']} A={c['num_heads']} "
                     f"I={c['intermediate_size']} V={c['vocab_size']}  |  B={res['batch']} T={res['seq_len']}{clamp}"
                     f"  |  {res['tokens']} tokens, {res['labelled_rows']} labelled")
        lines.append(f"   useful GFLOP: train step {f['train']['total'] / 1e9:.2f} (encoder dense "
                     f"{3 * f['train']['encoder_dense_fwd'] / 1e9:.2f}, attention "
                     f"{3 * f['train']['attention_fwd'] / 1e9:.2f}, head {3 * f['train']['head_fwd'] / 1e9:.2f}), "
                     f"inference {f['inference']['total'] / 1e9:.2f}; reference (*) = {res.get('reference') or 'none'}")
        trained = [(n, lib) for n, lib in libs.items() if lib.get("train", {}).get("median_ms")]
        if trained:
            lines.append(f"   {'TRAIN STEP':<24}{'ms/step':>9} {'[min..max]':>14}{'tok/s':>7}{'GFLOP/s':>8}"
                         f"{'%peak':>6}{'x torch':>8}{'paired [range]':>20}{'quiet x':>8}{'others':>7}{'psi':>5}"
                         f"{'noisy':>6}")
            for name, lib in trained:
                t, r = lib["train"], lib.get("vs_reference", {})
                paired = (f"{r['train_time_paired_median']:.2f} [{r['train_time_paired_min']:.2f}.."
                          f"{r['train_time_paired_max']:.2f}]" if "train_time_paired_median" in r else "-")
                peak = 100 * t["fraction_of_gemm_peak"] if "fraction_of_gemm_peak" in t else None
                lines.append(
                    f"   {name + (' *' if name == res.get('reference') else ''):<24}{t['median_ms']:>9.1f} "
                    f"{_range(t):>14}{t['tokens_per_s']:>7.0f}{t['gflops']:>8.1f}{_fmt(peak, '.0f'):>5}%"
                    f"{_fmt(r.get('train_time'), '.2f'):>8}{paired:>20}"
                    f"{_fmt(r.get('train_time_paired_quiet_median'), '.2f'):>8}{t['foreign_cores_median']:>7.2f}"
                    f"{_fmt(t['cpu_pressure_median'], '.2f'):>5}"
                    f"{str(t['noisy_bursts']) + '/' + str(len(t['bursts'])):>6}")
            mem_label = "dev MB" if s["gpu"] else "mem MB"
            lines.append(f"   {'RESOURCES':<24}{'GEMM GF/s':>10}{'cpu%':>6}{'sys%':>5}{'faults':>8}{mem_label:>8}"
                         f"{'x torch':>8}{'1st step s':>11}{'scatter ms':>11}{'% of step':>10}")
            for name, lib in trained:
                t, r, mem = lib["train"], lib.get("vs_reference", {}), lib.get("memory", {})
                mem_b = (mem.get("device_peak") or {}).get("bytes") if s["gpu"] else mem.get("peak_delta")
                mem_r = r.get("device_memory_peak") if s["gpu"] else r.get("memory_peak_delta")
                sc = lib.get("scatter", {})
                lines.append(
                    f"   {name:<24}{_fmt(lib.get('gemm', {}).get('gflops_best'), '.0f'):>10}"
                    f"{100 * t['cpu_utilisation']:>5.0f}%"
                    f"{_fmt(100 * t['sys_fraction_of_cpu'] if 'sys_fraction_of_cpu' in t else None, '.0f'):>4}%"
                    f"{_fmt(t.get('page_faults_median'), '.0f'):>8}{_fmt(mem_b / 2**20 if mem_b else None, '.0f'):>8}"
                    f"{_fmt(mem_r, '.2f'):>8}{lib['first_step_s']:>11.2f}"
                    f"{_fmt(sc.get('median_ms'), '.2f'):>11}"
                    f"{_fmt(100 * sc['share_of_step'] if 'share_of_step' in sc else None, '.1f'):>9}%")
        inferred = [(n, lib) for n, lib in libs.items() if lib.get("inference", {}).get("median_ms")]
        if inferred:
            lines.append(f"   {'INFERENCE (B*T logits)':<24}{'ms':>9} {'[min..max]':>14}{'tok/s':>7}{'GFLOP/s':>8}"
                         f"{'%peak':>6}{'x torch':>8}{'paired':>20}{'':>8}{'others':>7}")
            for name, lib in inferred:
                t, r = lib["inference"], lib.get("vs_reference", {})
                peak = 100 * t["fraction_of_gemm_peak"] if "fraction_of_gemm_peak" in t else None
                lines.append(
                    f"   {name:<24}{t['median_ms']:>9.1f} {_range(t):>14}{t['tokens_per_s']:>7.0f}{t['gflops']:>8.1f}"
                    f"{_fmt(peak, '.0f'):>5}%{_fmt(r.get('inference_time'), '.2f'):>8}"
                    f"{_fmt(r.get('inference_time_paired_median'), '.2f'):>20}{'':>8}{t['foreign_cores_median']:>7.2f}")
        losses = [f"{name} {lib['warmup_losses'][0]:.3f}" for name, lib in libs.items()]
        if losses:
            lines.append(f"   first-step loss (sanity, ~ln V = {math.log(c['vocab_size']):.2f}): {', '.join(losses)}")
        noisy = [n for n, lib in trained if lib["train"]["noisy_bursts"] > len(lib["train"]["bursts"]) / 2]
        if noisy:
            lines.append(f"   !! the machine was busy during most bursts of {', '.join(noisy)} (threads waited for a "
                         "CPU; see psi and others): treat these times as upper bounds, compare the paired "
                         "and quiet ratios, or rerun when the machine is idle")
        for err in res["errors"]:
            lines.append(f"   !! {err['library']}: {err['error'].splitlines()[0] if err['error'] else ''}")
    lines.append("")
    lines.append(
        "Columns: ms/step = median of the timed steps [min..max]; GFLOP/s = useful FLOPs / median; %peak = GFLOP/s "
        f"/ GEMM GF/s, the best float32 {s['gemm_size']}^3 matmul in the same worker (same library and threads); "
        "x torch = median / reference median (< 1 = faster than PyTorch); paired = median [range] over rounds of "
        "(burst median / the reference's burst median in the same round); quiet x = the same over rounds where "
        "neither burst was noisy; others = median cores used by other processes during its bursts (from "
        "/proc/stat minus the worker's own CPU time); psi = median fraction of its bursts during which some "
        "runnable thread waited for a CPU (/proc/pressure/cpu); noisy = bursts with psi >= "
        f"{s['quiet_pressure']} (without PSI: others >= {s['quiet_threshold']} cores); cpu% = worker CPU time / "
        "(wall x threads) during the steps; sys% = the kernel's share of that CPU time; "
        "faults = page faults per step (fresh pages the kernel maps and zeroes); "
        f"{'dev MB = device peak' if s['gpu'] else 'mem MB = peak RSS growth'} (x torch = its ratio); 1st step = "
        "the first step (JAX: compilation); scatter = the word-embedding gradient scatter-add [V,H] += [B*T,H] "
        "alone, and its share of the median step.")
    lines.append("FLOPs: " + FLOP_METHOD)
    lines.append("Memory: " + MEMORY_METHOD)
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", type=lambda s: [x for x in s.split(",") if x],
                   help="comma-separated Mini-BERT backends (default: numpy,jax on CPU; cupy,jax with --gpu; "
                        "those not installed are skipped)")
    p.add_argument("--presets", nargs="+", choices=list(PRESETS),
                   help=f"model presets (default: {' '.join(CPU_PRESETS)}; with --gpu {' '.join(GPU_PRESETS)})")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128,
                   help="tokens per sequence; a preset with a smaller max_position uses that (said in the table)")
    p.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout (default 0.1)")
    p.add_argument("--vocab", type=int, default=8192, help="vocabulary size for every preset (default 8192)")
    p.add_argument("--threads", type=int, help="threads per library (default: all usable cores); with fewer "
                   "than all cores every worker is also pinned to the first N cores, which bounds JAX too")
    p.add_argument("--repeats", type=int, help="timed training steps per library (default 10; --quick 4)")
    p.add_argument("--infer-repeats", type=int, help="timed inference forwards per library (default 6; --quick 2; "
                   "0 skips inference)")
    p.add_argument("--burst", type=int, default=2, help="timed steps per library per round (default 2)")
    p.add_argument("--burst-warmup", type=int, default=1,
                   help="untimed steps at the start of every burst (default 1): on this kind of VM the first step "
                        "after a worker sat idle for seconds pays much more for its page faults (measured: NumPy "
                        "mini 1.3-2.0 s instead of 1.15 s), while a training loop runs its steps back to back")
    p.add_argument("--warmup", type=int, help="untimed steps after building the model, the first compiles on "
                   "JAX (default 2; --quick 1)")
    p.add_argument("--max-warmup", type=int, default=6, help="warm-up continues past --warmup, up to this many "
                   "steps, while each step is still >10%% faster than the one before (default 6)")
    p.add_argument("--gemm-size", type=int, help="n for the n x n x n float32 GEMM peak (default 2048; 8192 --gpu)")
    p.add_argument("--gemm-repeats", type=int, default=3)
    p.add_argument("--scatter-repeats", type=int, default=5)
    p.add_argument("--reference-variants", type=lambda s: [x for x in s.split(",") if x],
                   help="PyTorch references: eager, sdpa, each optionally :labelled (head at the labelled rows "
                        "only, like Mini-BERT; shown but never the reference). Default eager,sdpa")
    p.add_argument("--pause", type=float, default=0.2, help="seconds between bursts, so spinning thread pools "
                   "of the previous library go idle (default 0.2)")
    p.add_argument("--quiet-wait", type=float, help="before each burst, wait up to this many seconds for the "
                   "other processes on the machine to use fewer than --quiet-threshold cores ("
                   "0, the default, measures at once)")
    p.add_argument("--quiet-threshold", type=float, default=0.3,
                   help="cores of other processes' CPU use below which the machine counts as quiet (default 0.3); "
                        "without PSI, bursts during which others used more are flagged as noisy")
    p.add_argument("--quiet-pressure", type=float, default=0.1,
                   help="a burst is noisy when some runnable thread waited for a CPU (Linux PSI, /proc/pressure/cpu) "
                        "during at least this fraction of it (default 0.1)")
    p.add_argument("--timeout", type=float, default=900, help="seconds one worker command may take (default 900)")
    p.add_argument("--quick", action="store_true", help="fewer repeats: under 2 minutes on 2 cores")
    p.add_argument("--gpu", action="store_true", help="GPU run: backends cupy,jax against PyTorch CUDA")
    p.add_argument("--tf32", action="store_true", help="with --gpu: allow TF32 matmuls in every library "
                   "(default: full float32 everywhere: torch allow_tf32 off, JAX precision highest, CuPy default)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also cProfile STEPS training steps of each eager backend and print the top functions")
    p.add_argument("--json", default="benchmark.json", help="where to write the JSON report (default benchmark.json)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    if args.backends is None:
        wanted = ("cupy", "jax") if args.gpu else ("numpy", "jax")
        args.backends = [b for b in wanted if importlib.util.find_spec(b) is not None]
        args.skipped_backends = [b for b in wanted if b not in args.backends]
    else:
        args.skipped_backends = []
        for b in args.backends:
            if b not in MINIBERT_BACKENDS:
                p.error(f"--backends: unknown {b!r}; allowed: {', '.join(MINIBERT_BACKENDS)}")
    args.presets = args.presets or list(GPU_PRESETS if args.gpu else CPU_PRESETS)
    args.repeats = args.repeats if args.repeats is not None else (4 if quick else 10)
    args.infer_repeats = args.infer_repeats if args.infer_repeats is not None else (2 if quick else 6)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.quiet_wait = args.quiet_wait or 0.0
    args.gemm_size = args.gemm_size or (8192 if args.gpu else 2048)
    if args.reference_variants is None:
        args.reference_variants = ["eager", "sdpa"]
    if args.quick and args.gemm_repeats == 3:
        args.gemm_repeats = 2
    for name in ("batch_size", "seq_len", "vocab", "burst", "gemm_size", "gemm_repeats", "scatter_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.burst_warmup < 0 or args.warmup < 1:
        p.error("--burst-warmup must be >= 0 and --warmup >= 1")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    if args.tf32 and not args.gpu:
        p.error("--tf32 needs --gpu")
    return args


def main(argv=None) -> int:
    if argv is None and "--worker" in sys.argv[1:]:
        return worker_main()
    args = parse_args(argv)
    usable = sorted(os.sched_getaffinity(0))
    threads = args.threads or len(usable)
    if threads < 1:
        raise SystemExit("--threads must be >= 1")
    cpus = usable[:threads] if threads < len(usable) else None
    started = time.perf_counter()

    def log(message):
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    report = {"schema": 1, "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "argv": sys.argv[1:] if argv is None else list(argv),
              "settings": {"backends": args.backends, "skipped_backends": args.skipped_backends,
                           "presets": args.presets, "batch_size": args.batch_size, "seq_len": args.seq_len,
                           "dropout": args.dropout, "vocab": args.vocab, "threads": threads, "pinned_cpus": cpus,
                           "repeats": args.repeats, "infer_repeats": args.infer_repeats, "burst": args.burst,
                           "burst_warmup": args.burst_warmup,
                           "warmup": args.warmup, "quiet_wait": args.quiet_wait,
                           "quiet_threshold": args.quiet_threshold, "quiet_pressure": args.quiet_pressure,
                           "gemm_size": args.gemm_size, "quick": args.quick, "gpu": args.gpu,
                           "tf32": args.tf32, "reference_variants": args.reference_variants,
                           "label_rate": LABEL_RATE, "dtype": "float32",
                           "optimizer": {"lr": 1e-4, "weight_decay": 0.01, "eps": 1e-6, "betas": [0.9, 0.999],
                                         "clip_norm": 1.0, "no_decay": "biases and LayerNorm"}},
              "machine": machine_info(args),
              "method": {"flops": FLOP_METHOD, "memory": MEMORY_METHOD,
                         "timing": "perf_counter around each step, after backend.synchronize(loss) and reading the "
                                   "loss to the host; libraries alternate in rounds (see the module docstring)",
                         "inference": "Mini-BERT: minibert.model.logits_all at all B*T positions (compiled); PyTorch: "
                                      "BertForMaskedLM(...).logits (all positions) under inference_mode"},
              "results": {}}
    for b in args.skipped_backends:
        log(f"backend {b} not installed: skipped")
    try:
        for preset in args.presets:
            log(f"preset {preset}")
            report["results"][preset] = run_preset(preset, args, threads, cpus, log)
            Path(args.json).write_text(json.dumps({**report, "partial": preset != args.presets[-1]}, indent=1))
    except KeyboardInterrupt:
        # e.g. `timeout -s INT` from scripts/gpu_check.sh: report the presets that finished
        log("interrupted: reporting the presets that finished")
        report["interrupted"] = True
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["wall_s"] = time.perf_counter() - started
    text = format_report(report)
    print(text)
    if args.profile:
        for preset, res in report["results"].items():
            for name, lib in res["libraries"].items():
                if lib.get("profile"):
                    print(f"\n--- cProfile, {preset} / {name}, {args.profile} training steps ---\n{lib['profile']}")
    Path(args.json).write_text(json.dumps(report, indent=1))
    log(f"wrote {args.json}")
    failed = [e for res in report["results"].values() for e in res["errors"]]
    return 130 if report.get("interrupted") else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
