#!/usr/bin/env python
"""Export a Mini-BERT run to a transformers folder: `BertForMaskedLM` (a pretrained run),
`BertForSequenceClassification` or `BertForTokenClassification` (a fine-tuned run, with its label map).

    python scripts/export_hf.py runs/my-run exported/my-bert [--verify]

Reads the run's newest verified checkpoint (minibert.storage.checkpoint.load_latest_params) and its tokenizer (vocab.txt,
and tokenizer_config.json for a run started from a downloaded BERT: its special ids, casing and options are
kept), and writes config.json, model.safetensors and the tokenizer files, so that
`transformers.pipeline("fill-mask" / "text-classification" / "token-classification", model="exported/my-bert")`
works offline. --verify loads the export back
with transformers (needs `pip install -e '.[interop]'`) and checks its logits against Mini-BERT's own.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from minibert.interop.hf import INTEROP_HINT, from_transformers, to_transformers


def verify(out_dir: str, config, params, seed: int = 0) -> tuple[float, bool]:
    """Compare transformers' model of the run's task loaded from `out_dir` with Mini-BERT (NumPy backend) on a random
    padded batch: (largest |logit difference|, whether within float32 rounding: rtol = atol = 1e-4). Exits if the
    export does not load cleanly or does not read back bit-identical."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise SystemExit(f"--verify needs torch and transformers ({exc}); install them with: {INTEROP_HINT}")
    import backends
    from minibert import classify_logits, mlm_logits
    from minibert.interop.hf import ARCHITECTURE_OF_TASK

    _, back = from_transformers(out_dir)
    changed = [name for name in params if not np.array_equal(back[name], np.asarray(params[name], np.float32))]
    if changed:
        raise SystemExit(f"export is not lossless: {changed[:5]} changed on reading it back")
    model, info = getattr(transformers, ARCHITECTURE_OF_TASK[config.task]).from_pretrained(
        out_dir, local_files_only=True, output_loading_info=True, attn_implementation="eager")
    bad = {key: sorted(value) for key, value in info.items() if value}
    if bad:
        raise SystemExit(f"transformers did not load the export cleanly: {bad}")
    model.eval()
    rng = np.random.default_rng(seed)
    seq = min(config.max_position, 32)
    ids = rng.integers(0, config.vocab_size, (2, seq))
    mask = np.ones_like(ids)
    mask[1, seq // 2:] = 0
    types = np.zeros_like(ids)
    types[:, seq // 3:] = 1 if config.type_vocab_size > 1 else 0
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    token_type_ids=torch.from_numpy(types)).logits.numpy()
    backend = backends.get_backend("numpy")
    device_params = {name: backend.asarray(value, dtype="float32") for name, value in back.items()}
    logits_fn = mlm_logits if config.task == "mlm" else classify_logits
    ours = backend.to_numpy(logits_fn(device_params, ids, mask, types, config=config, backend=backend))
    return float(np.max(np.abs(ours - ref))), bool(np.allclose(ours, ref, rtol=1e-4, atol=1e-4))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a Mini-BERT run directory (config.json, vocab.txt, checkpoints)")
    parser.add_argument("out_dir", help="folder to write the transformers checkpoint into")
    parser.add_argument("--no-vocab", action="store_true", help="write no tokenizer files (weights only)")
    parser.add_argument("--verify", action="store_true",
                        help="load the export with transformers and compare logits (needs torch, transformers)")
    args = parser.parse_args(argv)

    from minibert.storage.checkpoint import load_latest_params

    from minibert.data.tokenizer import load_tokenizer

    try:
        config, params = load_latest_params(args.run_dir)
        vocab = None
        if not args.no_vocab:
            try:
                vocab = load_tokenizer(args.run_dir)
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"{exc} (pass --no-vocab to export the weights without a tokenizer)") from None
        to_transformers(params, config, args.out_dir, vocab=vocab)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        # a missing or corrupt run, params that do not fit, an out_dir that cannot be written or that another
        # process is writing (DirectoryLockedError, a RuntimeError)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out_dir}: {config.num_layers} layers, hidden {config.hidden_size}, "
          f"vocab {config.vocab_size}" + (" (no tokenizer)" if vocab is None else
                                          f", {'lower-cased' if vocab.do_lower_case else 'cased'} tokenizer"))
    if args.verify:
        err, close = verify(args.out_dir, config, params)
        print(f"transformers loads it with no missing/unexpected keys; max |logit difference| = {err:.3g}")
        if not close:
            print("error: logits differ more than float32 rounding explains", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
