"""Mini-BERT: a BERT masked-LM with every forward and backward pass written by hand, on the array API.

    minibert/nn/        the model math: array-API forward/backward pairs, the step, AdamW (no array library)
    minibert/data/      host-side data: corpus, tokenizer, masking and packing, batches, fine-tuning examples
    minibert/training/  runs: flags, run directory, the loop, pretraining and fine-tuning tasks
    minibert/storage/   checkpoints and the atomic writer
    minibert/interop/   transformers folders in and out
    api, config, params, inference, metrics, predict_file, report, attention_maps: the top-level API

The public names below are imported on first use (PEP 562), so `import minibert.nn.ops` loads the math alone,
without the host side's NumPy (tests/test_model.py checks it)."""
from __future__ import annotations

import importlib

_PUBLIC = {"BertConfig": "minibert.config", "init_params": "minibert.params", "param_shapes": "minibert.nn.layout",
           "mlm_logits": "minibert.api", "loss_and_grads": "minibert.api", "classify_logits": "minibert.api",
           "classify_loss_and_grads": "minibert.api", "forward_backward": "minibert.nn.model",
           "classify_forward_backward": "minibert.nn.classify", "classify_metrics": "minibert.nn.classify"}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'minibert' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
