"""What one benchmark step computes: its useful FLOPs, the fixed batch every library trains on, the model."""
from __future__ import annotations

from minibert.config import BertConfig

LABEL_RATE = 0.15
FLOP_METHOD = (
    "useful FLOPs only, counted as 2*m*n*k per matmul: the encoder's dense layers (QKV, attention output, FFN "
    "in and out) and attention's score (q k^T) and context (p v) matmuls over all B*T tokens; the MLM head "
    "(dense H x H and the V x H decoder) only at the labelled rows (~15% of B*T, what the step must compute); "
    "the backward counts as 2x the forward (input and weight gradients). Elementwise work, softmax, LayerNorm, "
    "dropout, embedding gathers/scatters and AdamW are not counted. The same count is used for PyTorch, whose "
    "BertForMaskedLM computes the head at all B*T positions (its executed FLOPs are in the JSON). Inference "
    "(`logits_all`) counts the head at all B*T positions, because it returns all of them. With --task sequence "
    "the head is the pooler (H x H) and the classifier (H x C) at the B [CLS] rows, in training and inference.")

TASKS = ("mlm", "sequence")
NUM_LABELS = 2          # classes of the --task sequence benchmark


def encoder_flops(config: BertConfig, batch: int, seq: int) -> dict:
    """Forward FLOPs of the encoder over B*T tokens: dense layers and attention's two batched matmuls."""
    tokens = batch * seq
    hidden, inner = config.hidden_size, config.intermediate_size
    dense = 2 * tokens * (3 * hidden * hidden + hidden * hidden + 2 * hidden * inner)   # qkv, out, ffn in+out
    attention = 2 * (2 * batch * seq * seq * hidden)    # q k^T and p v, summed over heads (A * D = H)
    return {"dense": config.num_layers * dense, "attention": config.num_layers * attention}


def head_flops(config: BertConfig, rows: int) -> int:
    """Forward FLOPs of the head on `rows` rows: MLM: dense H x H, then the tied V x H decoder; sequence
    classification: the pooler's dense H x H, then the classifier H x C."""
    hidden = config.hidden_size
    outputs = config.vocab_size if config.task == "mlm" else config.num_labels
    return 2 * rows * hidden * hidden + 2 * rows * hidden * outputs


def head_rows(config: BertConfig, batch: int, seq: int, labelled: int) -> int:
    """Rows the head must compute in a training step: the `labelled` rows (MLM) or the B [CLS] rows (sequence)."""
    return labelled if config.task == "mlm" else batch


def train_flops(config: BertConfig, batch: int, seq: int, labelled: int) -> dict:
    """Useful FLOPs of one training step: forward with the head at the `labelled` rows (MLM) or the [CLS] rows
    (sequence), backward = 2x forward."""
    enc = encoder_flops(config, batch, seq)
    head = head_flops(config, head_rows(config, batch, seq, labelled))
    forward = enc["dense"] + enc["attention"] + head
    return {"encoder_dense_fwd": enc["dense"], "attention_fwd": enc["attention"], "head_fwd": head,
            "forward": forward, "backward": 2 * forward, "total": 3 * forward}


def inference_flops(config: BertConfig, batch: int, seq: int) -> dict:
    """FLOPs of the inference forward: the encoder and the head at all B*T positions (MLM `logits_all`) or at the
    B [CLS] rows (sequence `classify_logits_all`)."""
    enc = encoder_flops(config, batch, seq)
    head = head_flops(config, head_rows(config, batch, seq, batch * seq))
    return {"encoder_dense_fwd": enc["dense"], "attention_fwd": enc["attention"], "head_fwd": head,
            "total": enc["dense"] + enc["attention"] + head}


def labelled_count(batch: int, seq: int) -> int:
    return max(1, round(LABEL_RATE * batch * seq))


def make_host_batch(config: BertConfig, batch: int, seq: int, seed: int = 0) -> dict:
    """One fixed host batch (NumPy int32): random ids, no padding, two token types; MLM labels [B, T] are -100
    except at exactly `labelled_count` random positions, sequence labels [B] are random classes in
    [0, num_labels). Every worker builds the same one from the same seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    input_ids = rng.integers(0, config.vocab_size, (batch, seq), dtype=np.int32)
    token_type_ids = np.zeros((batch, seq), np.int32)
    token_type_ids[:, seq // 2:] = 1
    inputs = {"input_ids": input_ids, "attention_mask": np.ones((batch, seq), np.int32),
              "token_type_ids": token_type_ids}
    if config.task == "sequence":
        return {**inputs, "labels": rng.integers(0, config.num_labels, batch, dtype=np.int32)}
    labels = np.full(batch * seq, -100, np.int32)
    chosen = rng.choice(batch * seq, labelled_count(batch, seq), replace=False)
    labels[chosen] = rng.integers(0, config.vocab_size, chosen.size)
    return {**inputs, "labels": labels.reshape(batch, seq)}


def model_config(preset: str, vocab: int, dropout: float, task: str = "mlm") -> BertConfig:
    """The benchmarked model: `preset` with the vocabulary and dropout asked for; task "sequence" adds the pooler
    and a NUM_LABELS-class classifier (dropout before it = the hidden dropout, as transformers)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    heads = {} if task == "mlm" else {"task": task, "num_labels": NUM_LABELS}
    return BertConfig.preset(preset, vocab_size=vocab, hidden_dropout=dropout, attention_dropout=dropout, **heads)


def effective_seq_len(config: BertConfig, requested: int) -> int:
    """The sequence length a preset can take: `requested`, or max_position where that is shorter (the report
    says when it is clamped)."""
    return min(requested, config.max_position)
