#!/usr/bin/env python
"""Evaluate a run. A pretrained (masked-LM) run: held-out masked-LM loss, perplexity and accuracy beside the
most-frequent-token baseline. A fine-tuned run: its metrics (accuracy, macro-F1, majority-class baseline; token
accuracy and span F1; Pearson and Spearman for regression) on its own held-out file, or on --eval FILE (with the
columns it was fine-tuned with).

    python scripts/evaluate.py runs/20261127-120000 [--backend jax] [--json out.json]
    python scripts/evaluate.py runs/ft-20261129-120000 --eval test.tsv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minibert.checkpoint import run_model_config
from minibert.fileio import atomic_write_json
from minibert.inference import load_run
from minibert.pretrain import evaluate, load_data
from minibert.settings import resume_settings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a directory written by scripts/train.py or scripts/finetune.py")
    p.add_argument("--eval", metavar="FILE", help="fine-tuned run: the labelled file to evaluate on (default: the "
                   "run's own held-out examples)")
    p.add_argument("--backend", help="array backend (default: $MINIBERT_BACKEND, else numpy)")
    p.add_argument("--eval-batches", type=int, default=0, help="held-out batches to use (default 0 = all)")
    p.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
    args = p.parse_args(argv)
    if args.eval_batches < 0:
        p.error(f"--eval-batches must be >= 0 (0 = all), got {args.eval_batches}")
    try:
        if run_model_config(args.run_dir).task != "mlm":
            return _evaluate_classifier(args)
        if args.eval is not None:
            raise ValueError(f"--eval applies to fine-tuned runs; {args.run_dir} is a masked-LM run (evaluated "
                             "on its corpus's held-out split)")
        config, params, tokenizer, backend = load_run(args.run_dir, args.backend)
        settings = resume_settings(args.run_dir, backend=backend.name)
        data = load_data(settings, Path(args.run_dir) / "vocab.txt")
        metrics = evaluate(params, data, config, backend, args.eval_batches)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:   # CheckpointError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    baseline_token = tokenizer.id_to_token(data.baseline_token)
    print(f"run:                    {args.run_dir}  (backend {backend.name})")
    print(f"held-out masked tokens: {metrics['eval_tokens']}")
    print(f"{'':24}{'model':>10}{'most-frequent token':>22}")
    print(f"{'masked-token accuracy':24}{metrics['eval_accuracy']:>10.4f}{metrics['baseline_accuracy']:>15.4f} "
          f"({baseline_token!r})")
    print(f"{'loss (nats/token)':24}{metrics['eval_loss']:>10.4f}")
    print(f"{'perplexity':24}{metrics['eval_perplexity']:>10.2f}")
    print(f"accuracy / baseline:    {metrics['eval_accuracy'] / max(metrics['baseline_accuracy'], 1e-12):.2f}x")
    if args.json:
        atomic_write_json(args.json, {**metrics, "baseline_token": baseline_token})
    return 0


def _evaluate_classifier(args) -> int:
    from minibert.finetune import encode, load_task
    from minibert.inference import evaluate_classifier, load_classifier_run, summarize

    settings, config, params, tokenizer, backend, max_len = load_classifier_run(args.run_dir, args.backend)
    data = load_task(settings, args.eval)
    if (data.num_labels, None if data.regression else data.id2label) != (
            config.num_labels, None if data.regression else config.id2label):
        raise ValueError(f"{args.run_dir}: its training data now gives labels {list(data.id2label.values())}, but "
                         f"the run was fine-tuned with {list(config.id2label.values())}")
    encoded = encode(data, data.eval, tokenizer, max_len)
    if encoded.num_truncated:
        print(f"truncated {encoded.num_truncated} of {len(encoded)} examples to {max_len} tokens")
    baseline = None if data.regression else data.majority_baseline()
    metrics = evaluate_classifier(params, encoded, config, backend, settings.batch_size, baseline)
    print(f"run:  {args.run_dir}  (backend {backend.name})")
    print(f"data: {args.eval or settings.eval or 'the built-in task held-out split'} ({len(encoded)} examples)")
    for name, value in metrics.items():
        print(f"  {name:18} {value:.4f}" if isinstance(value, float) else f"  {name:18} {value}")
    print(summarize(metrics))
    if args.json:
        atomic_write_json(args.json, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
