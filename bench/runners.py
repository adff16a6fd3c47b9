"""What a worker runs: Mini-BERT on one backend, or a PyTorch reference (transformers' BertForMaskedLM, its
encoder + MLM head at the labelled rows only, or BertForSequenceClassification)."""
from __future__ import annotations

import contextlib
import statistics
from functools import partial
import time

from bench.flops import make_host_batch, model_config
from bench.probes import _peak_rss_bytes, _rss_bytes


MINIBERT_MODULES = ("minibert.api", "minibert.nn.model", "minibert.nn.step")    # imported by a worker before anything is timed


def build_step_and_inference(config, be, precision="fp32"):
    """The two Mini-BERT functions a runner times: the training step (minibert.nn.step, AdamW as the reference's,
    under the `precision` policy) and the compiled inference forward (float32), for the config's task: masked LM
    (`forward_backward`, `logits_all`) or sequence classification (`classify_forward_backward`,
    `classify_logits_all`). The only place the benchmark calls into Mini-BERT's model API."""
    from minibert.api import compiled_logits
    from minibert.nn.classify import classify_forward_backward, classify_logits_all
    from minibert.nn.model import forward_backward, label_count, logits_all
    from minibert.nn.optim import AdamWConfig
    from minibert.nn.precision import precision_policy
    from minibert.nn.step import make_train_step

    loss_and_grads, forward = ((forward_backward, logits_all) if config.task == "mlm"
                               else (classify_forward_backward, classify_logits_all))
    opt = AdamWConfig(lr=1e-4, warmup_steps=0, total_steps=10**9, weight_decay=0.01, eps=1e-6, clip_norm=1.0)
    # token-weighted, as the training loop runs it (both tasks' batches carry their label weights)
    return (make_train_step(partial(loss_and_grads, config=config, backend=be), opt, be, count_fn=label_count,
                            precision=precision_policy(precision, be)),
            compiled_logits(forward, config, be))


def device_arrays(host, config, be):
    """The benchmark's host batch checked and moved to backend `be` as the task's step reads it."""
    from minibert.data.batch import check_batch, device_batch
    from minibert.data.classify_batch import check_classify_batch, classify_device_batch
    if config.task == "mlm":
        return device_batch(check_batch(host, config), be, "float32")
    return classify_device_batch(check_classify_batch(host, config), be, "float32")


class Runner:
    """What both runners share: the device-memory tracker, started before the model is built."""
    memory = None          # a backends.base.PeakMemory, started by the subclass before it builds the model

    def device_peak(self):
        """Peak device bytes in use from the model build to the end of warm-up, measured the same way for every
        GPU library (bytes held by live arrays; backends.base.PeakMemory), or None on a CPU run. The first call
        stops the tracker: the timed steps repeat the warm-up steps, and CuPy's tracker would slow them."""
        if self.memory is not None:
            peak = self.memory.stop()
            self._device_peak = None if peak is None else {"bytes": peak, "method": self.memory.method}
            self.memory = None
        return getattr(self, "_device_peak", None)


class MinibertRunner(Runner):
    """Mini-BERT on one backend: the jitted (JAX) or eager training step from minibert.nn.step."""

    def __init__(self, spec):
        import numpy as np

        import backends
        self.spec = spec
        self.be = be = backends.get_backend(spec["backend"])
        if spec["gpu"] != be.on_gpu:
            raise RuntimeError(f"backend {be.name} runs on {be.device} here, but this run is "
                               f"{'--gpu' if spec['gpu'] else 'a CPU run'}" + (
                                   f"; {be.name} sees no GPU (see its install hint for CUDA 12 or 13)"
                                   if spec["gpu"] else ""))
        if spec["gpu"]:
            # --tf32 allows TF32 matmuls; by default every library computes float32 matmuls in full float32
            be.set_matmul_precision(spec["tf32"])
        self.rss_before_build = _rss_bytes()
        self.peak_before_build = _peak_rss_bytes()
        self.memory = be.track_peak_memory()
        self.memory.start()

        from minibert.nn.optim import init_state
        from minibert.params import init_params
        from minibert.nn.precision import PRECISIONS, init_loss_scale

        self.config = config = model_config(spec["preset"], spec["vocab"], spec["dropout"], spec["task"])
        host = make_host_batch(config, spec["batch"], spec["seq"])
        self.arrays = device_arrays(host, config, be)
        self.params = init_params(config, seed=0, backend=be)
        self.state = init_state(self.params, be)
        if PRECISIONS[spec["precision"]].loss_scaling:
            self.state["loss_scale"] = init_loss_scale(be)
        self.step_fn, self.infer_fn = build_step_and_inference(config, be, spec["precision"])
        self.base_key = be.key(0) if spec["dropout"] > 0 else None
        self.step_index = 0
        self.np = np

    def info(self) -> dict:
        out = {**self.be.describe(), "precision": self.spec["precision"]}
        if self.spec["gpu"]:
            out["tf32"] = self.spec["tf32"]
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


class ReferenceRunner(Runner):
    """A PyTorch reference with torch.optim.AdamW and clip_grad_norm_, by spec["task"] and spec["head"]:
    task "mlm", head "all": transformers' BertForMaskedLM as users run it (logits and loss at all B*T
    positions; the all-positions reference); head "labelled": the same model's encoder (`model.bert`, a BertModel)
    and MLM head (`model.cls`, BertOnlyMLMHead, same weights) applied only at the labelled rows, the same
    cross-entropy (the same-work reference: what Mini-BERT computes); task "sequence":
    BertForSequenceClassification (pooler + classifier on [CLS]: the same work as Mini-BERT's)."""

    def __init__(self, spec):
        import numpy as np
        import torch
        import transformers

        from backends.torch_backend import TorchPeakMemory

        from minibert.interop.hf import config_to_transformers
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
            self.memory = TorchPeakMemory(torch)       # as the torch backend measures it
            self.memory.start()

        self.config = config = model_config(spec["preset"], spec["vocab"], spec["dropout"], spec["task"])
        torch.manual_seed(0)
        hf_config = transformers.BertConfig(**config_to_transformers(config))
        model_class = (transformers.BertForMaskedLM if spec["task"] == "mlm"
                       else transformers.BertForSequenceClassification)
        model = model_class._from_config(hf_config, attn_implementation=spec["attn"])
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
        # --precision bf16/fp16: the forward under torch.autocast, as PyTorch users train in mixed precision;
        # fp16 with GradScaler's dynamic loss scaling (bf16 needs none)
        low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec["precision"])
        self.autocast = (partial(torch.autocast, self.device.type, dtype=low) if low is not None
                         else contextlib.nullcontext)
        self.scaler = torch.amp.GradScaler(self.device.type) if spec["precision"] == "fp16" else None
        flat = self.labels.reshape(-1)
        self.positions = torch.nonzero(flat != -100).reshape(-1)
        self.targets = flat[self.positions]
        self.same_work_check = self._same_work_check() if spec["head"] == "labelled" else None

    def _labelled_loss(self):
        """The same-work loss: the encoder at all tokens, the MLM head and cross-entropy at the labelled rows."""
        model = self.model
        hidden = model.bert(**self.inputs).last_hidden_state                    # [B, T, H]
        rows = hidden.reshape(-1, hidden.shape[-1])[self.positions]             # [B*T, H] -> [labelled, H]
        return self.torch.nn.functional.cross_entropy(model.cls(rows), self.targets)

    def _same_work_check(self) -> dict:
        """Both MLM losses on the initial weights, dropout off: the head at the labelled rows only must give the
        loss BertForMaskedLM gives with logits at every position (it ignores the -100 rows)."""
        self.model.eval()
        with self.torch.no_grad():
            everywhere = float(self.model(**self.inputs, labels=self.labels).loss)
            labelled = float(self._labelled_loss())
        self.model.train()
        return {"loss_all_positions": everywhere, "loss_labelled_rows": labelled,
                "abs_diff": abs(everywhere - labelled)}

    def info(self) -> dict:
        import transformers

        from backends.torch_backend import torch_description
        return {**torch_description(self.torch), "transformers": transformers.__version__, "attn": self.spec["attn"],
                "precision": self.spec["precision"] + (" (torch.autocast)" if self.spec["precision"] != "fp32" else ""),
                "head": self.spec["head"], "model": type(self.model).__name__, "device": str(self.device),
                "same_work_check": self.same_work_check}

    def _sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def train_step(self):
        torch, model = self.torch, self.model
        with self.autocast():
            if self.spec["head"] == "all":
                loss = model(**self.inputs, labels=self.labels).loss
            else:   # the head at the labelled rows only, as Mini-BERT does
                loss = self._labelled_loss()
        if self.scaler is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            self.scaler.step(self.opt)
            self.scaler.update()
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
