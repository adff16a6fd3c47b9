#!/usr/bin/env python
"""Fine-tune the same BERT folder on the same files with Mini-BERT and with transformers + torch.optim.AdamW, at
the same settings, over several seeds, and print the held-out metrics side by side (mean ± sd over the seeds).

    python scripts/compare_finetune.py --init-from path/to/bert --train train.tsv --eval dev.tsv \\
        [--seeds 0 1 2] [--epochs 3] [--batch-size 32] [--lr 5e-5] [--max-len 128] [--backend numpy]

Both sides start from the folder's weights (pooler kept, classifier drawn fresh from the seed), see the same
batches in the same order (Mini-BERT's seeded batcher; transformers' tokenizer must give the same ids, checked
first) and use the same recipe: AdamW (eps 1e-6, weight decay 0.01 off biases and LayerNorm), linear warm-up over
10% of the steps then linear decay to 0, gradient clipping at 1.0, dropout 0.1. Only the dropout masks and the
classifier's random start differ, so the two columns must agree within seed noise. Without --train, the built-in
task. For the step-time ratio at a given size, use scripts/benchmark.py --task sequence (same work, paired).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile

import numpy as np

from minibert.training.finetune import encode, finetune, load_task
from minibert.data.finetune_encode import FinetuneBatcher
from minibert.training.finetune_settings import FinetuneSettings
from minibert.metrics import accuracy, macro_f1
from minibert.data.tokenizer import load_tokenizer


def transformers_finetune(settings: FinetuneSettings, threads: int | None) -> dict:
    """Fine-tune settings.init_from with transformers' BertForSequenceClassification + torch.optim.AdamW on the
    batches Mini-BERT's batcher draws for settings.seed; held-out accuracy and macro-F1."""
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)
    data = load_task(settings)
    tokenizer = load_tokenizer(settings.init_from)
    hf_tokenizer = transformers.BertTokenizerFast.from_pretrained(settings.init_from)
    max_len = settings.max_len
    train, heldout = encode(data, data.train, tokenizer, max_len), encode(data, data.eval, tokenizer, max_len)
    for examples, encoded in ((data.train, train), (data.eval, heldout)):      # the same inputs on both sides
        texts = [example.text for example in examples]
        pairs = None if examples[0].text_pair is None else [example.text_pair for example in examples]
        expected = hf_tokenizer(texts, pairs, truncation=True, max_length=max_len)["input_ids"]
        if [ids.tolist() for ids in encoded.input_ids] != expected:
            raise SystemExit("transformers' tokenizer gives other ids than Mini-BERT's on these files: not the same "
                             "inputs, no comparison")
    torch.manual_seed(settings.seed)
    model = transformers.BertForSequenceClassification.from_pretrained(
        settings.init_from, num_labels=len(data.id2label), id2label=data.id2label, label2id=data.label2id,
        hidden_dropout_prob=settings.dropout, attention_probs_dropout_prob=settings.dropout,
        ignore_mismatched_sizes=True, attn_implementation="eager")
    pad_to = max(len(ids) for ids in train.input_ids)
    batcher = FinetuneBatcher(train, settings.batch_size, settings.seed, pad_to=pad_to, pad_id=tokenizer.pad_id)
    steps = settings.epochs * batcher.batches_per_epoch
    warmup = steps // 10 if settings.warmup is None else settings.warmup
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warmup if step < warmup else max(0.0, (steps - step) / (steps - warmup)))
    model.train()
    for _ in range(steps):
        batch = {name: torch.from_numpy(np.asarray(value, dtype=np.int64)) for name, value in next(batcher).items()}
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
        optimizer.step()
        schedule.step()
    model.eval()
    predictions = []
    eval_batcher = FinetuneBatcher(heldout, min(settings.batch_size, len(heldout)), 0, shuffle=False,
                                   pad_to=max(len(ids) for ids in heldout.input_ids), pad_id=tokenizer.pad_id,
                                   drop_last=False)
    labels = []
    with torch.no_grad():
        for index in range(eval_batcher.batches_per_epoch):
            batch = eval_batcher.batch(0, index)
            labels.append(batch.pop("labels"))
            inputs = {name: torch.from_numpy(np.asarray(value, dtype=np.int64)) for name, value in batch.items()}
            predictions.append(model(**inputs).logits.argmax(-1).numpy())
    predictions, labels = np.concatenate(predictions), np.concatenate(labels)
    return {"accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels)}


def minibert_finetune(settings: FinetuneSettings) -> dict:
    with tempfile.TemporaryDirectory() as out:
        metrics = finetune(dataclasses.replace(settings, out=f"{out}/run", progress=False), log=lambda *a: None)
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def _cell(values) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init-from", required=True, metavar="HF_DIR", help="a transformers BERT folder")
    p.add_argument("--train", metavar="FILE", help="training examples (default: the built-in task)")
    p.add_argument("--eval", metavar="FILE", help="held-out examples (needed with --train)")
    p.add_argument("--text-column")
    p.add_argument("--text-pair-column")
    p.add_argument("--label-column", default="label")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--backend", default="numpy", help="Mini-BERT's backend (default numpy)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = p.parse_args(argv)
    base = FinetuneSettings(backend=args.backend, init_from=args.init_from, train=args.train, eval=args.eval,
                            text_column=args.text_column, text_pair_column=args.text_pair_column,
                            label_column=args.label_column, epochs=args.epochs, batch_size=args.batch_size,
                            lr=args.lr, max_len=args.max_len)
    try:
        base.validate()
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = {"Mini-BERT": [], "transformers + torch": []}
    for seed in args.seeds:
        settings = dataclasses.replace(base, seed=seed)
        rows["Mini-BERT"].append(minibert_finetune(settings))
        rows["transformers + torch"].append(transformers_finetune(settings, args.threads))
        print(f"seed {seed}: " + "; ".join(f"{name} accuracy {runs[-1]['accuracy']:.3f} macro-F1 "
                                           f"{runs[-1]['macro_f1']:.3f}" for name, runs in rows.items()), flush=True)
    print(f"\n{len(args.seeds)} seeds, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, max-len "
          f"{args.max_len}, from {args.init_from}; Mini-BERT on {args.backend}")
    print(f"| {'':22} | {'accuracy':>13} | {'macro-F1':>13} |")
    print(f"|{'-' * 24}|{'-' * 15}|{'-' * 15}|")
    for name, runs in rows.items():
        print(f"| {name:22} | {_cell([r['accuracy'] for r in runs]):>13} | "
              f"{_cell([r['macro_f1'] for r in runs]):>13} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
