"""Parameter initialisation (host side: weights are drawn with NumPy, then moved to the backend). The layout
(names, shapes) is `minibert.nn.layout`, documented in docs/PARAMS.md."""
from __future__ import annotations

import numpy as np

from minibert.config import BertConfig
from minibert.nn.layout import param_shapes, head_shapes, is_layernorm_weight


def init_host_params(config: BertConfig, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """BERT's initialisation on the host: weights and embeddings ~ N(0, initializer_range^2) (the pooler and
    classifier of a classification config too), biases 0, LayerNorm weights 1, the [PAD] word embedding 0. Drawn in float64 from one seeded generator in `param_shapes` order, then cast,
    so a seed gives the same weights on every backend and in every dtype."""
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(config).items():
        if is_layernorm_weight(name):
            value = np.ones(shape)
        elif name.endswith("bias"):
            value = np.zeros(shape)
        else:
            value = rng.normal(0.0, config.initializer_range, size=shape)
        params[name] = value.astype(dtype)
    params["embeddings.word"][config.pad_token_id] = 0.0   # the [PAD] embedding starts at 0, as in BERT
    return params


def init_classifier_from(encoder_params, config: BertConfig, seed: int = 0,
                         dtype: str = "float32") -> tuple[dict[str, np.ndarray], list[str]]:
    """Host params for the classification `config` that start from a pretrained encoder: (params in
    `param_shapes(config)` order, the names initialised fresh).

    `encoder_params`: host arrays named as Mini-BERT params (a pretrained masked-LM run's, or
    `minibert.interop.hf.encoder_from_transformers`'s); the embeddings and every layer must be there with this config's
    shapes. Head parameters the source has with the right shape (a pooler from BertModel / BertForPreTraining,
    a classifier of the same num_labels) are kept, as transformers' `from_pretrained` keeps them; those it lacks
    (the pooler of a masked LM, which has none; a new classifier) or has with another shape (a classifier for
    another num_labels, as transformers' `ignore_mismatched_sizes=True`) are drawn as
    `init_host_params(config, seed)` draws them (N(0, initializer_range^2), biases 0). Source tensors the config
    has no use for (the MLM head) are dropped. An encoder tensor of another shape is an error.
    """
    if config.task == "mlm":
        raise ValueError("init_classifier_from needs a classification config (task 'sequence' or 'token'), "
                         "got task 'mlm'")
    head = head_shapes(config)
    fresh_values = init_host_params(config, seed, dtype)
    params, fresh = {}, []
    for name, shape in param_shapes(config).items():
        if name not in encoder_params:
            if name not in head:
                raise ValueError(f"encoder_params lacks {name}, which the encoder of this config needs "
                                 f"({config.num_layers} layers, hidden_size={config.hidden_size})")
            params[name] = fresh_values[name]
            fresh.append(name)
            continue
        value = np.asarray(encoder_params[name])
        if value.shape != shape and name in head:
            params[name] = fresh_values[name]
            fresh.append(name)
            continue
        if value.shape != shape:
            raise ValueError(f"encoder_params: {name} has shape {value.shape}, this config needs {shape} "
                             f"(num_labels={config.num_labels}, hidden_size={config.hidden_size})")
        params[name] = np.ascontiguousarray(value.astype(dtype, copy=False))
    return params, fresh


def init_params(config: BertConfig, seed: int = 0, backend=None, dtype: str = "float32") -> dict:
    """`init_host_params`, moved to `backend` (default: backends.get_backend())."""
    import backends

    backend = backend if backend is not None else backends.get_backend()
    backend.dtype(dtype)  # a clear error for float64 where the backend has none, before any work
    return {name: backend.asarray(value, dtype=dtype)
            for name, value in init_host_params(config, seed, dtype).items()}
