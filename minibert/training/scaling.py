"""Data-parallel scaling of the training step: step time, tokens/s per device and efficiency against one device.

    from minibert.training.scaling import measure_scaling, format_scaling
    rows = measure_scaling(backends.get_backend("jax"), BertConfig.preset("mini", vocab_size=8192),
                           batch_size=64, seq_len=128, device_counts=(1, 2, 4, 8))
    print(format_scaling(rows))

For `scripts/benchmark.py --devices N`. Strong scaling: one process, the same global batch for every device count,
so each device gets batch_size / n rows. Meaningful on a machine with several accelerators; on CPU
with virtual devices (XLA_FLAGS=--xla_force_host_platform_device_count=N) every "device" shares the same cores,
so it is a correctness smoke test, not a speed measurement.
"""
from __future__ import annotations

import time
from functools import partial

import numpy as np

from minibert.data.batch import check_batch, device_batches
from minibert.config import IGNORE_LABEL, BertConfig
from minibert.nn.model import forward_backward, label_count
from minibert.nn.optim import AdamWConfig, init_state
from minibert.params import init_params
from minibert.nn.step import make_train_step


def host_batch(config: BertConfig, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """A fixed batch: random ids, no padding, two token types, 15% of the tokens labelled."""
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(5, config.vocab_size, (batch_size, seq_len), dtype=np.int32)
    token_types = np.zeros_like(input_ids)
    token_types[:, seq_len // 2:] = 1
    labels = np.where(rng.random((batch_size, seq_len)) < 0.15, input_ids, IGNORE_LABEL).astype(np.int32)
    labels[:, 0] = input_ids[:, 0]                       # every row labelled at least once
    return {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids), "token_type_ids": token_types,
            "labels": labels}


def measure_scaling(backend, config: BertConfig, batch_size: int, seq_len: int, device_counts=(1,),
                    steps: int = 10, warmup: int = 2) -> list[dict]:
    """One row per device count n: {"devices", "step_s" (median), "tokens_per_s", "tokens_per_s_per_device",
    "efficiency"} where efficiency = (tokens/s per device at n) / (tokens/s at the first count, per device).
    The global batch (batch_size rows, divisible by every n) is the same for every n; n = 1 runs on `backend`
    itself, n > 1 on `backend.data_parallel(n)` (JAX only; other backends raise, naming JAX)."""
    if batch_size < 1 or seq_len < 2 or steps < 1 or warmup < 0:
        raise ValueError(f"batch_size, seq_len, steps must be positive and warmup >= 0; got {batch_size}, "
                         f"{seq_len}, {steps}, {warmup}")
    bad = [n for n in device_counts if isinstance(n, bool) or not isinstance(n, int) or n < 1 or batch_size % n]
    if bad or not device_counts:
        raise ValueError(f"device_counts must be positive ints that divide batch_size={batch_size}; got "
                         f"{list(device_counts)}")
    batch = check_batch(host_batch(config, batch_size, seq_len), config)
    rows = []
    for n in device_counts:
        be = backend if n == 1 else backend.data_parallel(n)
        params = init_params(config, seed=0, backend=be)
        state = init_state(params, be)
        step = make_train_step(partial(forward_backward, config=config, backend=be), AdamWConfig(lr=1e-4),
                               be, count_fn=label_count)
        micro = device_batches([batch], be, "float32")
        times = []
        for i in range(warmup + steps):
            started = time.perf_counter()
            params, state, loss, _ = step(params, state, micro, None, i)
            be.synchronize(loss)
            float(be.to_numpy(loss))
            if i >= warmup:
                times.append(time.perf_counter() - started)
        step_s = float(np.median(times))
        tokens_per_s = batch_size * seq_len / step_s
        rows.append({"devices": n, "step_s": step_s, "tokens_per_s": tokens_per_s,
                     "tokens_per_s_per_device": tokens_per_s / n})
    base = rows[0]["tokens_per_s_per_device"]
    for row in rows:
        row["efficiency"] = row["tokens_per_s_per_device"] / base
    return rows


def format_scaling(rows: list[dict]) -> str:
    lines = [f"{'devices':>7}  {'step ms':>9}  {'tokens/s':>10}  {'tokens/s/device':>15}  {'efficiency':>10}"]
    lines += [f"{r['devices']:>7}  {1e3 * r['step_s']:>9.2f}  {r['tokens_per_s']:>10.0f}  "
              f"{r['tokens_per_s_per_device']:>15.0f}  {r['efficiency']:>10.2f}" for r in rows]
    return "\n".join(lines)
