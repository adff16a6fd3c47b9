#!/usr/bin/env python
"""Evaluate a run. A pretrained (masked-LM) run: held-out masked-LM loss, perplexity and accuracy beside the
most-frequent-token baseline. A fine-tuned run: its metrics (accuracy, macro-F1, majority-class baseline; token
accuracy and span F1; Pearson and Spearman for regression) on its own held-out file, or on --eval FILE (with the
columns it was fine-tuned with).

    python scripts/evaluate.py runs/20261127-120000 [--backend jax] [--json out.json]
    python scripts/evaluate.py runs/ft-20261129-120000 --eval test.tsv
    python scripts/evaluate.py runs/ft-20261129-120000 --eval test.tsv --report report/   # per class, confusion, errors
    python scripts/evaluate.py path/to/bert-base-uncased [--corpus FILES...] [--seq-len 128]

A transformers masked LM (BertForMaskedLM, BertForPreTraining) is evaluated the same way, with its own tokenizer,
on the held-out split of --corpus (default: the embedded corpus).
"""
from __future__ import annotations

import argparse
import sys
from minibert.storage.fileio import atomic_write_json
from minibert.inference import is_run_dir, load_run, model_config
from minibert.training.pretrain import evaluate, load_data
from minibert.training.settings import TrainSettings


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a directory written by scripts/train.py or scripts/finetune.py, or a "
                   "transformers BERT masked-LM folder")
    p.add_argument("--eval", metavar="FILE", help="fine-tuned run: the labelled file to evaluate on (default: the "
                   "run's own held-out examples)")
    p.add_argument("--backend", help="array backend (default: $MINIBERT_BACKEND, else numpy)")
    p.add_argument("--eval-batches", type=int, default=0, help="held-out batches to use (default 0 = all)")
    p.add_argument("--json", metavar="PATH", help="also write the metrics as JSON")
    p.add_argument("--report", metavar="DIR", help="fine-tuned run: write report.json (per-class precision, recall, "
                   "F1, support; per-type span F1 for BIO tags), confusion.png and errors.csv into DIR")
    p.add_argument("--corpus", nargs="+", metavar="FILE", help="transformers folder: text files to take the "
                   "held-out split from (default: the embedded corpus); a run uses its own corpus")
    p.add_argument("--seq-len", type=int, default=128, help="transformers folder: sequence length (default 128)")
    args = p.parse_args(argv)
    if args.eval_batches < 0:
        p.error(f"--eval-batches must be >= 0 (0 = all), got {args.eval_batches}")
    try:
        run = is_run_dir(args.run_dir)
        if model_config(args.run_dir).task != "mlm":
            if not run:
                raise ValueError(f"{args.run_dir} is a transformers classifier; evaluate.py evaluates fine-tuned "
                                 "runs (its columns and label map come from the run): fine-tune from it with "
                                 "scripts/finetune.py --init-from, or use predict.py on texts")
            return _evaluate_classifier(args)
        for flag, value in (("--eval", args.eval), ("--report", args.report)):
            if value is not None:
                raise ValueError(f"{flag} applies to fine-tuned runs; {args.run_dir} is a masked LM (evaluated "
                                 "on a corpus's held-out split)")
        if run and args.corpus:
            raise ValueError(f"--corpus applies to transformers folders; the run {args.run_dir} is evaluated on "
                             "its own corpus")
        config, params, tokenizer, backend = load_run(args.run_dir, args.backend)
        if run:
            settings = TrainSettings.resumed(args.run_dir, backend=backend.name)
        else:
            settings = TrainSettings(corpus=tuple(args.corpus or ()), seq_len=args.seq_len, batch_size=1,
                                     backend=backend.name)     # batch_size: training batches are not drawn
            settings.validate()
            if settings.seq_len > config.max_position:
                raise ValueError(f"--seq-len={settings.seq_len} is longer than the model's max_position="
                                 f"{config.max_position}")
        data = load_data(settings, tokenizer)
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
    from minibert.training.finetune import encode, load_task
    from minibert.inference import load_classifier_run
    from minibert.evaluation import classifier_metrics, classifier_outputs, summarize
    from minibert.report import table_lines, write_report

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
    loss, logits, targets = classifier_outputs(params, encoded, config, backend, settings.batch_size)
    metrics = classifier_metrics(loss, logits, targets, config, len(encoded), baseline)
    print(f"run:  {args.run_dir}  (backend {backend.name})")
    print(f"data: {args.eval or settings.eval or 'the built-in task held-out split'} ({len(encoded)} examples)")
    for name, value in metrics.items():
        print(f"  {name:18} {value:.4f}" if isinstance(value, float) else f"  {name:18} {value}")
    print(summarize(metrics))
    if args.json:
        atomic_write_json(args.json, metrics)
    if args.report:
        report = write_report(args.report, data.eval, encoded, logits, targets, config, metrics)
        print("")
        print("\n".join(table_lines(report)).rstrip())
        print(f"report: {args.report}/report.json, errors.csv ({report['errors']} rows)"
              + ("" if config.problem_type == "regression" else ", confusion.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
