#!/usr/bin/env python
"""Use a trained run, or a transformers BERT folder as downloaded, on a text: a masked LM (a pretrained run,
BertForMaskedLM, BertForPreTraining) fills in its [MASK] tokens (top-k tokens with their probabilities); a
classifier (a fine-tuned run, BertForSequenceClassification / BertForTokenClassification) prints its label with
the probabilities (token task: a tag per word). The text is tokenized with the model's own tokenizer.

    python scripts/predict.py runs/20261127-120000 "the [MASK] function returns a list" [--top-k 5]
    python scripts/predict.py path/to/bert-base-uncased "paris is the [MASK] of france."
    python scripts/predict.py runs/ft-20261129-120000 "Return the current event loop."
    python scripts/predict.py runs/ft-pairs "first text" --text-pair "second text"

A whole file (`.txt` one text a line, `.csv`, `.tsv`, `.jsonl`), batched by length and streamed, written in the
input's order to `.jsonl` or `.csv` with the throughput printed (minibert/predict_file.py):

    python scripts/predict.py runs/ft-20261129-120000 --input reviews.csv --text-column review --output labels.csv
    python scripts/predict.py runs/20261127-120000 --input masked.txt --output fills.jsonl --top-k 3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minibert.inference import fill_mask, load_run, model_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a directory written by scripts/train.py or scripts/finetune.py, or a "
                   "transformers BERT folder (config.json, model.safetensors, vocab.txt or tokenizer.json)")
    p.add_argument("text", nargs="?", help="text with one or more [MASK] tokens (pretrained run), or a text to "
                   "classify (or --input FILE)")
    p.add_argument("--text-pair", help="the second text, for a run fine-tuned on sentence pairs")
    p.add_argument("--top-k", type=int, default=5, help="fills to show per [MASK] (default 5)")
    p.add_argument("--backend", help="array backend (default: $MINIBERT_BACKEND, else numpy)")
    p.add_argument("--attention", metavar="PNG", help="one text: also draw every layer x head attention map over "
                   "its tokens into PNG (minibert/attention_maps.py)")
    files = p.add_argument_group("a whole file")
    files.add_argument("--input", metavar="FILE", help=".txt (one text a line), .csv, .tsv or .jsonl to predict")
    files.add_argument("--output", metavar="FILE", help="where to write the predictions: .jsonl or .csv")
    files.add_argument("--text-column", help="the text column of a .csv/.tsv/.jsonl input (default: the first of "
                       "sentence, text)")
    files.add_argument("--text-pair-column", help="the second text's column, for a model fine-tuned on pairs")
    files.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    files.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                       help="a row that cannot be predicted: report its line and skip it (default), or stop")
    files.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error(f"--top-k must be >= 1, got {args.top_k}")
    if (args.input is None) == (args.text is None):
        p.error("give a text, or --input FILE --output FILE (not both)")
    if args.input is not None:
        if args.attention:
            p.error("--attention draws the maps of one text; give a text instead of --input")
        return _predict_file(p, args)
    if args.attention and not args.attention.lower().endswith(".png"):
        p.error(f"--attention must name a .png file, got {args.attention!r}")
    try:
        if model_config(args.run_dir).task != "mlm":
            loaded = _classify(args)
        else:
            config, params, tokenizer, backend = load_run(args.run_dir, args.backend)
            fills = fill_mask(args.text, config, params, tokenizer, backend, args.top_k)
            for n, candidates in enumerate(fills, 1):
                print(f"[MASK] #{n}:")
                for token, prob in candidates:
                    print(f"  {prob:7.2%}  {token}")
            loaded = config, params, tokenizer, backend, config.max_position
        if args.attention:
            _draw_attention(args, *loaded)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:   # CheckpointError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _draw_attention(args, config, params, tokenizer, backend, max_len) -> None:
    from minibert.attention_maps import attention_maps, plot_attention

    tokens, probs = attention_maps(args.text, config, params, tokenizer, backend, args.text_pair, max_len)
    plot_attention(tokens, probs, args.attention, f"{Path(args.run_dir).name}: row = the token that attends")
    print(f"attention maps: {args.attention} ({probs.shape[0]} layers x {probs.shape[1]} heads over "
          f"{len(tokens)} tokens)")


def _predict_file(parser, args) -> int:
    from minibert.predict_file import check_paths, load_predictor, predict_file

    if args.output is None:
        parser.error("--input needs --output FILE (.jsonl or .csv)")
    if args.text_pair is not None:
        parser.error("--text-pair is for one text; with --input name the column: --text-pair-column")
    try:
        check_paths(args.input, args.output)            # before the model is loaded
        predictor = load_predictor(args.run_dir, args.backend, args.top_k)
        done = predict_file(predictor, args.input, args.output, batch_size=args.batch_size,
                            text_column=args.text_column, text_pair_column=args.text_pair_column,
                            on_error=args.on_error, progress=args.progress,
                            log=lambda message: print(message, file=sys.stderr))
    except (ValueError, TypeError, OSError, RuntimeError) as exc:   # PredictionError, DataFileError: ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"predicted {done['predicted']} of {done['rows']} rows of {args.input} into {args.output} in "
          f"{done['seconds']:.1f} s: {done['texts_per_s']:.0f} texts/s (backend {predictor.backend.name}, batch "
          f"{args.batch_size}); skipped {done['skipped']} (reported above)")
    return 0


def _classify(args) -> tuple:
    """Print the classifier's prediction for the text; return (config, params, tokenizer, backend, max_len)."""
    from minibert.inference import load_classifier_run, predict_text

    settings, config, params, tokenizer, backend, max_len = load_classifier_run(args.run_dir, args.backend)
    if settings is not None and (settings.text_pair_column is None) != (args.text_pair is None):
        raise ValueError(f"{args.run_dir} was fine-tuned on sentence pairs (column {settings.text_pair_column!r}): "
                         "pass the second text with --text-pair" if args.text_pair is None else
                         f"{args.run_dir} was fine-tuned on single texts: --text-pair does not apply")
    predictions = predict_text(args.text, config, params, tokenizer, backend, max_len, args.text_pair)
    loaded = config, params, tokenizer, backend, max_len
    if config.task == "token":
        for word, (tag, probs) in zip(args.text.split(), predictions):
            print(f"{word}\t{tag or '(truncated)'}" + (f"\t{probs[tag]:.2%}" if tag else ""))
        return loaded
    label, probs = predictions[0]
    if config.problem_type == "regression":
        print(f"predicted value: {label}")
        return loaded
    print(f"label: {label}")
    for name, prob in sorted(probs.items(), key=lambda item: -item[1])[:args.top_k]:
        print(f"  {prob:7.2%}  {name}")
    return loaded


if __name__ == "__main__":
    sys.exit(main())
