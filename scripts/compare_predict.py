#!/usr/bin/env python
"""Batch-prediction throughput: Mini-BERT's `predict.py --input` path against transformers' `pipeline(...,
batch_size=32)`, on the same exported model and the same texts, side by side in one process.

By default the model is a random `mini`-sized sequence classifier (L4 H256, 2 labels) with a WordPiece trained on
the embedded corpus, exported once with `minibert.interop.hf.to_transformers` into a temporary folder that both read; the
texts are 2,000 paragraphs' first lines of the embedded corpus (held-out split). Each side runs `--repeats` times,
alternating; the medians and their ratio are printed, and the share of texts both label the same (a sanity check:
the same model must agree up to rounding).

    python scripts/compare_predict.py                       # mini, numpy backend, 2,000 texts
    python scripts/compare_predict.py --backend jax --preset seed --texts 500
    python scripts/compare_predict.py --model runs/ft-20261129-120000    # a fine-tuned run or classifier folder
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def _texts(count: int) -> list[str]:
    from minibert.data.corpus import load_default_corpus

    _, heldout = load_default_corpus()
    lines = [doc.split("\n")[0].strip() for doc in heldout]
    lines = [line for line in lines if line]
    if len(lines) < count:
        lines = (lines * (count // len(lines) + 1))
    return lines[:count]


def _random_classifier(preset: str, folder: str) -> str:
    """A random `preset` sequence classifier with the embedded corpus's WordPiece, exported into `folder`."""
    from minibert.config import BertConfig
    from minibert.data.corpus import load_default_corpus
    from minibert.interop.hf import to_transformers
    from minibert.params import init_host_params
    from minibert.data.tokenizer import train_wordpiece

    train, _ = load_default_corpus()
    tokenizer = train_wordpiece(train, 8192)
    config = BertConfig.preset(preset, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id,
                               task="sequence", num_labels=2)
    return to_transformers(init_host_params(config, seed=0), config, folder, vocab=tokenizer)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a fine-tuned run or a transformers classifier folder (default: a random "
                   "--preset classifier)")
    p.add_argument("--preset", default="mini", help="size of the random classifier (default mini)")
    p.add_argument("--backend", help="Mini-BERT's array backend (default: $MINIBERT_BACKEND, else numpy)")
    p.add_argument("--texts", type=int, default=2000, help="texts to label (default 2000)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of both sides (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes of each side, alternating (default 3)")
    args = p.parse_args(argv)
    for name in ("texts", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        import torch
        import transformers
    except ImportError as exc:
        print(f"error: the transformers side needs torch and transformers ({exc}): pip install -e '.[interop]'",
              file=sys.stderr)
        return 2
    from minibert.predict_file import load_predictor, predict_file

    transformers.logging.set_verbosity_error()
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    texts = _texts(args.texts)
    with tempfile.TemporaryDirectory() as work:
        folder = args.model
        if folder is None:
            folder = _random_classifier(args.preset, os.path.join(work, "model"))
            export = folder
        else:
            from minibert.interop.hf import to_transformers
            from minibert.inference import load_classifier_run
            _, config, params, tokenizer, backend, _ = load_classifier_run(folder, args.backend)
            export = to_transformers(params, config, os.path.join(work, "model"), vocab=tokenizer, backend=backend)
        source, output = os.path.join(work, "texts.txt"), os.path.join(work, "labels.jsonl")
        with open(source, "w", encoding="utf-8") as f:
            f.write("\n".join(texts) + "\n")
        predictor = load_predictor(export, args.backend)
        pipe = transformers.pipeline("text-classification", model=export, tokenizer=export, device="cpu",
                                     batch_size=args.batch_size, truncation=True)
        max_len = predictor.max_len
        ours, unsorted, theirs = [], [], []
        predict_file(predictor, source, output, batch_size=args.batch_size, progress=False)   # warm-up (JAX compiles)
        pipe(texts[:args.batch_size], max_length=max_len)
        for _ in range(args.repeats):
            unsorted.append(predict_file(predictor, source, output, batch_size=args.batch_size, progress=False,
                                         sort_by_length=False)["seconds"])
            ours.append(predict_file(predictor, source, output, batch_size=args.batch_size, progress=False)["seconds"])
            started = time.perf_counter()
            results = pipe(texts, max_length=max_len)
            theirs.append(time.perf_counter() - started)
        import json
        with open(output, encoding="utf-8") as f:
            our_labels = [json.loads(line)["label"] for line in f]
        agree = sum(a == b["label"] for a, b in zip(our_labels, results)) / len(texts)
    mine, same_order, ref = statistics.median(ours), statistics.median(unsorted), statistics.median(theirs)
    print(f"{len(texts)} texts, batch {args.batch_size}, {threads} threads each, model "
          f"{args.model or 'random ' + args.preset + ' classifier'}, max length {max_len}")
    for name, value, runs in (("Mini-BERT, batches sorted by length (predict.py --input)", mine, ours),
                              ("Mini-BERT, batches in input order (as the pipeline)", same_order, unsorted),
                              (f"transformers pipeline (torch {torch.__version__})", ref, theirs)):
        print(f"  {name:58} {value:6.2f} s {len(texts) / value:7.0f} texts/s  (runs: "
              f"{', '.join(f'{t:.2f}' for t in runs)})")
    print(f"  time ratio against the pipeline: {mine / ref:.2f} as shipped (sorted), {same_order / ref:.2f} with the "
          f"same batches (the same work); same label on {agree:.1%} of the texts (backend {predictor.backend.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
