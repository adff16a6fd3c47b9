"""BERT for masked-LM: embeddings, post-LN encoder layers, tied MLM head; forward and backward by hand.

    h0 = dropout(LN(word[ids] + position[t] + token_type[types]))
    for each layer:  a = LN(h + dropout(Attention(h)));  h = LN(a + dropout(GELU(a W1 + b1) W2 + b2))
    head (at the labelled positions only while training):  z = LN(GELU(h Wd + bd));  logits = z word^T + b

The backward functions walk the same graph in reverse and return a gradient for every parameter, under the
same name and shape as `minibert.params.param_shapes`; the tied word embedding gets both contributions
(decoder and input gather). Arrays are from any array-API library; `backend` supplies erf, scatter-add and
random numbers. Dropout runs only when a random `key` is passed.
"""
from __future__ import annotations

from array_api_compat import array_namespace

from minibert.attention import attention_backward, attention_forward, mask_bias
from minibert.batch import check_batch, check_inputs, check_params, device_batch
from minibert.config import BertConfig
from minibert.loss import cross_entropy_backward, cross_entropy_forward
from minibert.ops import (dropout_backward, dropout_forward, embedding_backward, embedding_forward,
                          gelu_backward, gelu_forward, layernorm_backward, layernorm_forward,
                          linear_backward, linear_forward)


def _site_key(key, site, backend):
    """An independent random key for each dropout site (None stays None: no dropout)."""
    return None if key is None else backend.fold_in(key, site)


def _add_grads(grads, prefix, named):
    """grads[prefix + name] = value for each entry of `named` (a sub-layer's gradients under their full names)."""
    for name, value in named.items():
        grads[prefix + name] = value


# --- encoder ---------------------------------------------------------------------------------------------

def encoder_forward(params, input_ids, token_type_ids, attention_mask, config: BertConfig, backend, key=None):
    """Token ids [B, T] -> final hidden states [B*T, H], and the cache for `encoder_backward`.

        e = word[ids] + position[t] + token_type[types];  h = dropout(LN(e))
        layer i:  a = LN(h + dropout(Attention(h)));  h = LN(a + dropout(GELU(a W1 + b1) W2 + b2))

    Dropout sites draw from fold_in(key, site): 0 for the embeddings, 3i+1 (attention probabilities),
    3i+2 (attention output) and 3i+3 (feed-forward output) for layer i.
    """
    xp = array_namespace(params["embeddings.word"])
    batch, seq = input_ids.shape
    hidden = config.hidden_size
    eps = config.layer_norm_eps
    ids = xp.reshape(input_ids, (-1,))
    types = xp.reshape(token_type_ids, (-1,))
    word, _ = embedding_forward(ids, params["embeddings.word"])
    token_type, _ = embedding_forward(types, params["embeddings.token_type"])
    position = params["embeddings.position"][:seq, :]
    summed = xp.reshape(xp.reshape(word + token_type, (batch, seq, hidden)) + position, (batch * seq, hidden))
    h, ln_cache = layernorm_forward(summed, params["embeddings.ln.weight"], params["embeddings.ln.bias"], eps)
    h, drop_mask = dropout_forward(h, config.hidden_dropout, _site_key(key, 0, backend), backend)
    caches = {"embeddings": (ids, types, ln_cache, drop_mask, batch, seq), "layers": []}
    bias = mask_bias(attention_mask, h.dtype)
    approximate = config.hidden_act == "gelu_tanh"
    for i in range(config.num_layers):
        p = f"layers.{i}."
        attn, attn_cache = attention_forward(
            h, params[p + "attn.qkv.weight"], params[p + "attn.qkv.bias"], params[p + "attn.out.weight"],
            params[p + "attn.out.bias"], bias, config.num_heads, config.attention_dropout,
            _site_key(key, 3 * i + 1, backend), backend)
        attn, attn_drop = dropout_forward(attn, config.hidden_dropout, _site_key(key, 3 * i + 2, backend), backend)
        a, attn_ln = layernorm_forward(h + attn, params[p + "attn.ln.weight"], params[p + "attn.ln.bias"], eps)
        inner, in_cache = linear_forward(a, params[p + "ffn.in.weight"], params[p + "ffn.in.bias"])
        act, act_cache = gelu_forward(inner, backend, approximate)
        out, out_cache = linear_forward(act, params[p + "ffn.out.weight"], params[p + "ffn.out.bias"])
        out, out_drop = dropout_forward(out, config.hidden_dropout, _site_key(key, 3 * i + 3, backend), backend)
        h, ffn_ln = layernorm_forward(a + out, params[p + "ffn.ln.weight"], params[p + "ffn.ln.bias"], eps)
        caches["layers"].append((attn_cache, attn_drop, attn_ln, in_cache, act_cache, out_cache, out_drop, ffn_ln))
    return h, caches


def encoder_backward(d_hidden, caches, params, config: BertConfig, backend, grads):
    """dL/d(final hidden) [B*T, H] -> adds every encoder and embedding gradient into `grads`.

    Each layer in reverse: LayerNorm backward, the residual adds the gradient of its input to both branches
    (d_a = d(FFN input) + d_sum; dh = d(attention input) + d_sum). Embeddings: d e = LN backward of dh;
    d position[t] = sum over the batch of d e[b, t] (rows t >= T get 0); d token_type = scatter-add of d e at
    the type ids; d word = scatter-add of d e at the token ids.
    `grads["embeddings.word"]` may already hold the decoder's contribution; the input gather's is added to it,
    except at the [PAD] row (`config.pad_token_id`), which the lookup never trains (transformers' padding_idx).
    """
    xp = array_namespace(d_hidden)
    dh = d_hidden
    for i in reversed(range(config.num_layers)):
        p = f"layers.{i}."
        attn_cache, attn_drop, attn_ln, in_cache, act_cache, out_cache, out_drop, ffn_ln = caches["layers"][i]
        d_sum, grads[p + "ffn.ln.weight"], grads[p + "ffn.ln.bias"] = layernorm_backward(dh, ffn_ln)
        d_act, grads[p + "ffn.out.weight"], grads[p + "ffn.out.bias"] = linear_backward(
            dropout_backward(d_sum, out_drop), out_cache, params[p + "ffn.out.weight"])
        d_a, grads[p + "ffn.in.weight"], grads[p + "ffn.in.bias"] = linear_backward(
            gelu_backward(d_act, act_cache), in_cache, params[p + "ffn.in.weight"])
        d_a = d_a + d_sum                                      # residual: a feeds both the FFN and the sum
        d_sum, grads[p + "attn.ln.weight"], grads[p + "attn.ln.bias"] = layernorm_backward(d_a, attn_ln)
        dh, attn_grads = attention_backward(dropout_backward(d_sum, attn_drop), attn_cache)
        _add_grads(grads, p + "attn.", attn_grads)
        dh = dh + d_sum                                        # residual: h feeds attention and the sum
    ids, types, ln_cache, drop_mask, batch, seq = caches["embeddings"]
    d_summed, grads["embeddings.ln.weight"], grads["embeddings.ln.bias"] = layernorm_backward(
        dropout_backward(dh, drop_mask), ln_cache)
    word = params["embeddings.word"]
    d_position = xp.sum(xp.reshape(d_summed, (batch, seq, config.hidden_size)), axis=0)
    unused = params["embeddings.position"].shape[0] - seq
    grads["embeddings.position"] = xp.concat(
        [d_position, xp.zeros((unused, config.hidden_size), dtype=word.dtype, device=backend.device)])
    grads["embeddings.token_type"] = embedding_backward(
        d_summed, types, xp.zeros(params["embeddings.token_type"].shape, dtype=word.dtype, device=backend.device),
        backend)
    if "embeddings.word" not in grads:
        grads["embeddings.word"] = xp.zeros(word.shape, dtype=word.dtype, device=backend.device)
    # as nn.Embedding(padding_idx=pad_token_id) in BERT: the [PAD] row gets no gradient from the lookup
    not_pad = xp.astype(ids != config.pad_token_id, d_summed.dtype)[:, None]
    grads["embeddings.word"] = embedding_backward(d_summed * not_pad, ids, grads["embeddings.word"], backend)
    return grads


# --- MLM head --------------------------------------------------------------------------------------------

def head_forward(params, rows, config: BertConfig, backend):
    """Hidden rows [N, H] -> logits [N, V]:  z = LN(GELU(rows Wd + bd));  logits = z word^T + decoder_bias."""
    dense, dense_cache = linear_forward(rows, params["head.dense.weight"], params["head.dense.bias"])
    act, act_cache = gelu_forward(dense, backend, config.hidden_act == "gelu_tanh")
    z, ln_cache = layernorm_forward(act, params["head.ln.weight"], params["head.ln.bias"], config.layer_norm_eps)
    logits = z @ params["embeddings.word"].T + params["head.decoder_bias"]
    return logits, (dense_cache, act_cache, ln_cache, z)


def head_backward(d_logits, cache, params, grads):
    """d logits [N, V] -> d rows [N, H]; the decoder's share of the tied word-embedding gradient is
    d_logits^T z [V, H], and d decoder_bias = sum_rows d_logits. Then dz = d_logits word [N, H], back through
    LayerNorm, GELU and the dense layer (dWd = rows^T d_dense, dbd = sum_rows d_dense, d rows = d_dense Wd^T)."""
    xp = array_namespace(d_logits)
    dense_cache, act_cache, ln_cache, z = cache
    grads["embeddings.word"] = d_logits.T @ z
    grads["head.decoder_bias"] = xp.sum(d_logits, axis=0)
    d_z = d_logits @ params["embeddings.word"]
    d_act, grads["head.ln.weight"], grads["head.ln.bias"] = layernorm_backward(d_z, ln_cache)
    d_rows, grads["head.dense.weight"], grads["head.dense.bias"] = linear_backward(
        gelu_backward(d_act, act_cache), dense_cache, params["head.dense.weight"])
    return d_rows


# --- whole model on device arrays ---------------------------------------------------------------------------

def forward_backward(params, arrays, key=None, *, config: BertConfig, backend):
    """Loss and every gradient for one batch of device arrays (see `minibert.batch.device_batch`).

    The MLM head runs only on the labelled rows (`positions`): logits [N, V] with N ~ 15% of B*T. In the
    backward, d rows [N, H] goes back to d hidden [B*T, H] by a scatter-add at `positions` (0 elsewhere).
    Returns (loss as a 0-d array, dict of gradients named like `params`).
    """
    xp = array_namespace(params["embeddings.word"])
    hidden, caches = encoder_forward(params, arrays["input_ids"], arrays["token_type_ids"],
                                     arrays["attention_mask"], config, backend, key)
    rows = xp.take(hidden, arrays["positions"], axis=0)
    logits, head_cache = head_forward(params, rows, config, backend)
    loss, loss_cache = cross_entropy_forward(logits, arrays["targets"], arrays["weights"])
    grads = {}
    d_rows = head_backward(cross_entropy_backward(loss_cache, backend), head_cache, params, grads)
    d_hidden = backend.scatter_add(xp.zeros(hidden.shape, dtype=hidden.dtype, device=backend.device),
                                   arrays["positions"], d_rows)
    encoder_backward(d_hidden, caches, params, config, backend, grads)
    return loss, grads


def masked_lm_metrics(params, arrays, *, config: BertConfig, backend):
    """Evaluation at the labelled rows (no dropout): (summed negative log-likelihood, number of correct
    argmax predictions), both 0-d arrays; padding rows (weight 0) count for neither."""
    xp = array_namespace(params["embeddings.word"])
    hidden, _ = encoder_forward(params, arrays["input_ids"], arrays["token_type_ids"], arrays["attention_mask"],
                                config, backend)
    logits, _ = head_forward(params, xp.take(hidden, arrays["positions"], axis=0), config, backend)
    mean_nll, _ = cross_entropy_forward(logits, arrays["targets"], arrays["weights"])
    correct = xp.astype(xp.argmax(logits, axis=-1) == arrays["targets"], arrays["weights"].dtype)
    return mean_nll * xp.sum(arrays["weights"]), xp.sum(correct * arrays["weights"])


def logits_all(params, input_ids, attention_mask, token_type_ids, *, config: BertConfig, backend):
    """Logits at every position, [B, T, V] (inference: no dropout)."""
    xp = array_namespace(params["embeddings.word"])
    hidden, _ = encoder_forward(params, input_ids, token_type_ids, attention_mask, config, backend)
    logits, _ = head_forward(params, hidden, config, backend)
    return xp.reshape(logits, (*input_ids.shape, config.vocab_size))


# --- public API: host inputs in, checked before any device work ----------------------------------------------

_compiled: dict = {}


def compiled(fn, config: BertConfig, backend):
    """`fn` with config and backend bound, compiled once per (fn, config, backend) where the backend can."""
    cache_key = (fn.__name__, config, backend.name)
    if cache_key not in _compiled:
        def bound(*args):
            return fn(*args, config=config, backend=backend)
        _compiled[cache_key] = backend.jit(bound)
    return _compiled[cache_key]


def mlm_logits(params, input_ids, attention_mask=None, token_type_ids=None, *, config: BertConfig, backend):
    """Masked-LM logits at every position, [B, T, V], as a backend array (eval mode: no dropout)."""
    host = check_inputs(input_ids, attention_mask, token_type_ids, config, backend)
    check_params(params, config)
    input_ids, attention_mask, token_type_ids = (backend.asarray(a) for a in host)
    return compiled(logits_all, config, backend)(params, input_ids, attention_mask, token_type_ids)


def loss_and_grads(params, batch, *, config: BertConfig, backend, dropout_seed: int | None = None):
    """(loss as a Python float, dict of gradients named like `params`) for a host batch.

    batch: dict of host int arrays input_ids, attention_mask, token_type_ids, labels (-100 = ignored).
    Dropout (config.hidden_dropout, config.attention_dropout) runs only when `dropout_seed` is given.
    """
    checked = check_batch(batch, config, backend)
    check_params(params, config)
    arrays = device_batch(checked, backend, params["embeddings.word"].dtype)
    key = None if dropout_seed is None else backend.key(dropout_seed)
    loss, grads = compiled(forward_backward, config, backend)(params, arrays, key)
    return float(backend.to_numpy(loss)), grads
