"""Speed of Mini-BERT's training step and inference forward, measured side by side with PyTorch.

    python scripts/benchmark.py                        # numpy + jax vs PyTorch, presets seed and mini, B32 T128
    python scripts/benchmark.py --quick                # fewer repeats: under 2 minutes on 2 cores
    python scripts/benchmark.py --gpu                  # cupy + jax vs PyTorch CUDA, presets mini and small
    python scripts/benchmark.py --backends numpy --presets small --threads 1 --json out.json

What is timed, per library and preset, after warm-up (and compilation, for JAX):
  * the full training step: forward, hand-written backward and AdamW (global-norm clipping at 1.0, lr 1e-4,
    weight decay 0.01 off biases and LayerNorm, eps 1e-6), with dropout, on one fixed batch whose labels are
    -100 except at ~15% of the tokens; the clock stops after backend.synchronize(loss) and reading the loss
    to the host. Two PyTorch references (same shapes, GELU, dropout, tied decoder, weights and batch), with
    torch.optim.AdamW and clip_grad_norm_, in train mode, torch.set_num_threads(--threads), each the faster of
    its eager and SDPA attention:
      - all-positions (*): transformers' BertForMaskedLM as users run it, logits and loss at all B*T positions;
      - same-work (+): the same model's BertModel (`bert`) and MLM head (`cls`) applied only at the labelled
        rows, the same cross-entropy: what Mini-BERT computes, so "paired x same" compares algorithm with
        algorithm. Its worker checks, on the initial weights, that its loss equals the all-positions one;
  * with --task sequence, the sentence-classification fine-tuning step instead (classify_forward_backward +
    AdamW; pooler + classifier on [CLS], 2 classes) against BertForSequenceClassification, the same work;
  * the inference forward: Mini-BERT's `logits_all` (logits at all B*T positions, compiled), against
    BertForMaskedLM(...).logits under torch.inference_mode() (with --task sequence: the classification logits);
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
the JSON, e.g. transparent huge pages for glibc's big blocks (XLA's per-step buffer on the CPU; README, Speed):
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1

The package, one concern per module: flops (what a step computes, the shared batch), probes (memory, CPUs, load),
runners (what a worker runs), worker (the parent-worker protocol; `python -m bench.worker`), schedule (the rounds
for one preset), stats (medians, ratios), report (the text table), cli (flags, `main`).
"""
from bench.flops import (effective_seq_len, inference_flops, labelled_count, make_host_batch, model_config,
                         train_flops)

__all__ = ["effective_seq_len", "inference_flops", "labelled_count", "make_host_batch", "model_config",
           "train_flops"]
