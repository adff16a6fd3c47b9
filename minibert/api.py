"""The public host-side API: host inputs in, checked before any device work, then the compiled model.

    logits = mlm_logits(params, input_ids, attention_mask, token_type_ids, config=cfg, backend=be)  # [B, T, V]
    loss, grads = loss_and_grads(params, batch, config=cfg, backend=be)

`compiled(fn, config, backend)` binds config and backend to a model function of `minibert.nn.model` (or any
function with keyword arguments `config` and `backend`) and compiles it once where the backend can (JAX).
"""
from __future__ import annotations

import weakref

import backends
from minibert.data.batch import check_batch, check_inputs, check_params, device_batch, row_blocks
from minibert.nn.classify import classify_forward_backward, classify_logits_all
from minibert.data.classify_batch import check_classify_batch, classify_device_batch, require_classifier
from minibert.config import BertConfig
from minibert.nn.model import forward_backward, logits_all
from minibert.nn.precision import precision_policy, under_precision

# backend object -> {(fn, config): compiled fn}. Keyed by the object, not its name, so a backend registered
# anew under an old name never gets the old one's compiled functions; weak, so a dropped backend frees them.
_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forget(name: str, replaced) -> None:
    """`backends.register` hook: drop what was compiled for the backend instance it replaced."""
    _compiled.pop(replaced, None)


backends.on_replace(_forget)


def compiled(fn, config: BertConfig, backend):
    """`fn` with config and backend bound, compiled once per (fn, config, backend object) where the backend can."""
    per_backend = _compiled.setdefault(backend, {})
    if (fn, config) not in per_backend:
        def bound(*args):
            return fn(*args, config=config, backend=backend)
        per_backend[(fn, config)] = backend.jit(bound)
    return per_backend[(fn, config)]


def compiled_logits(fn, config: BertConfig, backend):
    """`compiled(fn, ...)` for a logits function fn(params, input_ids, attention_mask, token_type_ids) -> logits
    [B, ...]. On a backend with `row_threads` > 1 (numpy on several cores) the B rows are split into that many
    blocks of consecutive rows, run at once (`backend.thread_map`), and their logits concatenated: every row's
    logits depend on its own row only, so the result is the same (rounding apart)."""
    run = compiled(fn, config, backend)
    if backend.row_threads == 1:
        return run

    def by_rows(params, *inputs):
        blocks = backend.thread_map(lambda rows: run(params, *(a[rows[0]:rows[1], ...] for a in inputs)),
                                    row_blocks(inputs[0].shape[0], backend.row_threads))
        return backend.xp.concat(blocks, axis=0)
    return by_rows


def logits_for_host_inputs(fn, params, input_ids, attention_mask, token_type_ids, *, config: BertConfig, backend):
    """Host inputs checked (`check_inputs`, `check_params`) before any device work, moved to the backend, then the
    compiled `fn(params, input_ids, attention_mask, token_type_ids)`: the public logits functions share this."""
    host = check_inputs(input_ids, attention_mask, token_type_ids, config, backend)
    check_params(params, config)
    input_ids, attention_mask, token_type_ids = (backend.asarray(a) for a in host)
    return compiled_logits(fn, config, backend)(params, input_ids, attention_mask, token_type_ids)


def loss_and_grads_for_host_batch(fn, params, checked, to_device, *, config: BertConfig, backend,
                                  dropout_seed: int | None, precision: str = "fp32"):
    """A checked host batch -> `to_device(checked, backend, dtype)` -> the compiled `fn(params, arrays, key)`
    under `precision` (`minibert.nn.precision`); (loss as a Python float, float32 gradients). The public
    loss-and-gradient functions share this."""
    check_params(params, config)
    fn = under_precision(fn, precision_policy(precision, backend, params["embeddings.word"].dtype))
    arrays = to_device(checked, backend, params["embeddings.word"].dtype)
    key = None if dropout_seed is None else backend.key(dropout_seed)
    loss, grads = compiled(fn, config, backend)(params, arrays, key)
    return float(backend.to_numpy(loss)), grads


def mlm_logits(params, input_ids, attention_mask=None, token_type_ids=None, *, config: BertConfig, backend):
    """Masked-LM logits at every position, [B, T, V], as a backend array (eval mode: no dropout)."""
    return logits_for_host_inputs(logits_all, params, input_ids, attention_mask, token_type_ids, config=config,
                                  backend=backend)


def loss_and_grads(params, batch, *, config: BertConfig, backend, dropout_seed: int | None = None,
                   precision: str = "fp32"):
    """(loss as a Python float, dict of gradients named like `params`) for a host batch.

    batch: dict of host int arrays input_ids, attention_mask, token_type_ids, labels (`IGNORE_LABEL` = -100:
    ignored). Dropout (config.hidden_dropout, config.attention_dropout) runs only when `dropout_seed` is given.
    precision: "fp32", or "bf16" / "fp16" (float32 params; matmuls in the narrow dtype, see `minibert.nn.precision`;
    no loss scaling here: that belongs to a training step).
    """
    return loss_and_grads_for_host_batch(forward_backward, params, check_batch(batch, config, backend), device_batch,
                                         config=config, backend=backend, dropout_seed=dropout_seed,
                                         precision=precision)


# --- public API: host inputs in, checked before any device work -------------------------------------------------

def classify_logits(params, input_ids, attention_mask=None, token_type_ids=None, *, config: BertConfig, backend):
    """Classification logits (eval mode: no dropout), a backend array: [B, num_labels] for config.task
    "sequence", [B, T, num_labels] for "token"."""
    require_classifier(config)
    return logits_for_host_inputs(classify_logits_all, params, input_ids, attention_mask, token_type_ids,
                                  config=config, backend=backend)


def classify_loss_and_grads(params, batch, *, config: BertConfig, backend, dropout_seed: int | None = None,
                            precision: str = "fp32"):
    """(loss as a Python float, dict of gradients named like `params`) for a host classification batch.

    batch: dict of host arrays input_ids [B, T] (attention_mask, token_type_ids optional) and labels: [B] int
    (task "sequence"), [B] float (regression, num_labels == 1) or [B, T] int (task "token"); -100 = ignored.
    Dropout (encoder, and config.classifier_dropout_rate before the classifier) runs only when `dropout_seed`
    is given. precision: as for `loss_and_grads`.
    """
    return loss_and_grads_for_host_batch(classify_forward_backward, params, check_classify_batch(batch, config, backend),
                                         classify_device_batch, config=config, backend=backend,
                                         dropout_seed=dropout_seed, precision=precision)
