"""BERT for masked-LM: embeddings, post-LN encoder layers, tied MLM head; forward and backward by hand.

    h0 = dropout(LN(word[ids] + position[t] + token_type[types]))
    for each layer:  a = LN(h + dropout(Attention(h)));  h = LN(a + dropout(GELU(a W1 + b1) W2 + b2))
    head (at the labelled positions only while training):  z = LN(GELU(h Wd + bd));  logits = z word^T + b

Every forward returns its output and a named cache of arrays; every backward has the shape of `minibert.nn.ops`:
`x_backward(d_out, cache) -> (d_in, grads)` (the encoder's also takes the config and backend its forward took),
here with grads under the full parameter names of
`minibert.nn.layout.param_shapes`. The tied word embedding gets both contributions (decoder and input gather),
summed in `forward_backward`. Arrays are from any array-API library; `backend` supplies erf, scatter-add and
random numbers. Dropout runs only when a random `key` is passed. The host-side API that checks inputs and
compiles these functions is `minibert.api`.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import array_namespace

from minibert.nn.attention import AttentionCache, attention_backward, attention_forward, mask_bias
from minibert.config import BertConfig
from minibert.nn.loss import cross_entropy_backward, cross_entropy_forward
from minibert.nn.ops import (DropoutCache, EmbeddingCache, GeluCache, LayerNormCache, LinearCache,
                          dropout_backward, dropout_forward, embedding_backward, embedding_forward,
                          gelu_backward, gelu_forward, layernorm_backward, layernorm_forward,
                          linear_backward, linear_forward, to_dtype)


class EmbeddingsCache(NamedTuple):
    word: EmbeddingCache        # the word lookup (ids [B, T]: their shape gives B and T; table [V, H])
    token_type: EmbeddingCache  # the token-type lookup (types [B, T], table [type_vocab, H])
    ln: LayerNormCache
    dropout: DropoutCache


class LayerCache(NamedTuple):
    attn: AttentionCache
    attn_dropout: DropoutCache
    attn_ln: LayerNormCache
    ffn_in: LinearCache
    act: GeluCache
    ffn_out: LinearCache
    ffn_dropout: DropoutCache
    ffn_ln: LayerNormCache


class EncoderCache(NamedTuple):
    embeddings: EmbeddingsCache
    layers: tuple               # one LayerCache per layer, first layer first


class MLMHeadCache(NamedTuple):
    dense: LinearCache
    act: GeluCache
    ln: LayerNormCache
    z: Any                      # LN output [N, H], in the decoder's dtype
    word: Any                   # the tied word embedding [V, H] (the decoder weight, transposed), in that dtype


def _site_key(key, site, backend):
    """An independent random key for each dropout site (None stays None: no dropout)."""
    return None if key is None else backend.fold_in(key, site)


def _add_grads(grads, prefix, named):
    """grads[prefix + name] = value for each entry of `named` (a sub-layer's gradients under their full names)."""
    for name, value in named.items():
        grads[prefix + name] = value


# --- encoder ---------------------------------------------------------------------------------------------

def encoder_forward(params, input_ids, token_type_ids, attention_mask, config: BertConfig, backend, key=None):
    """Token ids [B, T] -> final hidden states [B*T, H], and the `EncoderCache` for `encoder_backward`.

        e = word[ids] + position[t] + token_type[types];  h = dropout(LN(e))
        layer i:  a = LN(h + dropout(Attention(h)));  h = LN(a + dropout(GELU(a W1 + b1) W2 + b2))

    Dropout sites draw from fold_in(key, site): 0 for the embeddings, 3i+1 (attention probabilities),
    3i+2 (attention output) and 3i+3 (feed-forward output) for layer i.
    """
    xp = array_namespace(params["embeddings.word"])
    batch, seq = input_ids.shape
    hidden = config.hidden_size
    eps = config.layer_norm_eps
    word, word_cache = embedding_forward(input_ids, params["embeddings.word"])                 # [B*T, H]
    token_type, type_cache = embedding_forward(token_type_ids, params["embeddings.token_type"])  # [B*T, H]
    position = params["embeddings.position"][:seq, :]                   # [T, H], broadcast over the batch
    # [B*T, H] -> [B, T, H] (+ position [T, H]) -> [B*T, H]
    summed = xp.reshape(xp.reshape(word + token_type, (batch, seq, hidden)) + position, (batch * seq, hidden))
    h, ln_cache = layernorm_forward(summed, params["embeddings.ln.weight"], params["embeddings.ln.bias"], eps)
    h, drop_cache = dropout_forward(h, config.hidden_dropout, _site_key(key, 0, backend), backend)
    embeddings = EmbeddingsCache(word=word_cache, token_type=type_cache, ln=ln_cache, dropout=drop_cache)
    bias = mask_bias(attention_mask, h.dtype)
    approximate = config.hidden_act == "gelu_tanh"
    layers = []
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
        layers.append(LayerCache(attn=attn_cache, attn_dropout=attn_drop, attn_ln=attn_ln, ffn_in=in_cache,
                                 act=act_cache, ffn_out=out_cache, ffn_dropout=out_drop, ffn_ln=ffn_ln))
    return h, EncoderCache(embeddings=embeddings, layers=tuple(layers))


def encoder_backward(d_hidden, cache: EncoderCache, config: BertConfig, backend):
    """dL/d(final hidden) [B*T, H] -> (None (the inputs are token ids), every encoder and embedding gradient
    under its full name). `config` and `backend` are those the forward ran with.

    Each layer in reverse: LayerNorm backward, the residual adds the gradient of its input to both branches
    (d_a = d(FFN input) + d_sum; dh = d(attention input) + d_sum). Embeddings: d e = LN backward of dh;
    d position[t] = sum over the batch of d e[b, t] (rows t >= T get 0); d token_type = scatter-add of d e at
    the type ids; d word = scatter-add of d e at the token ids, except at the [PAD] row (`config.pad_token_id`),
    which the lookup never trains (transformers' padding_idx). `grads["embeddings.word"]` is the input
    gather's share only: a tied decoder adds its own (see `forward_backward`).
    """
    xp = array_namespace(d_hidden)
    grads = {}
    dh = d_hidden
    for i in reversed(range(len(cache.layers))):
        p = f"layers.{i}."
        layer = cache.layers[i]
        d_sum, ln_grads = layernorm_backward(dh, layer.ffn_ln)
        _add_grads(grads, p + "ffn.ln.", ln_grads)
        d_out, _ = dropout_backward(d_sum, layer.ffn_dropout)
        d_act, out_grads = linear_backward(d_out, layer.ffn_out)
        _add_grads(grads, p + "ffn.out.", out_grads)
        d_inner, _ = gelu_backward(d_act, layer.act)
        d_a, in_grads = linear_backward(d_inner, layer.ffn_in)
        _add_grads(grads, p + "ffn.in.", in_grads)
        d_a = d_a + d_sum                                      # residual: a feeds both the FFN and the sum
        d_sum, ln_grads = layernorm_backward(d_a, layer.attn_ln)
        _add_grads(grads, p + "attn.ln.", ln_grads)
        d_attn, _ = dropout_backward(d_sum, layer.attn_dropout)
        dh, attn_grads = attention_backward(d_attn, layer.attn)
        _add_grads(grads, p + "attn.", attn_grads)
        dh = dh + d_sum                                        # residual: h feeds attention and the sum
    emb = cache.embeddings
    d_h0, _ = dropout_backward(dh, emb.dropout)
    d_summed, ln_grads = layernorm_backward(d_h0, emb.ln)
    _add_grads(grads, "embeddings.ln.", ln_grads)
    batch, seq = emb.word.ids.shape
    hidden = d_summed.shape[1]
    # [B*T, H] -> [B, T, H], summed over the batch -> [T, H]
    d_position = xp.sum(xp.reshape(d_summed, (batch, seq, hidden)), axis=0)
    unused = xp.zeros((config.max_position - seq, hidden), dtype=d_summed.dtype, device=backend.device)
    grads["embeddings.position"] = xp.concat([d_position, unused])     # [T, H] + [P - T, H] -> [P, H]
    _, type_grads = embedding_backward(d_summed, emb.token_type, backend)
    grads["embeddings.token_type"] = type_grads["weight"]
    # as nn.Embedding(padding_idx=pad_token_id) in BERT: the [PAD] row gets no gradient from the lookup
    not_pad = xp.reshape(xp.astype(emb.word.ids != config.pad_token_id, d_summed.dtype), (-1, 1))  # [B, T] -> [B*T, 1]
    _, word_grads = embedding_backward(d_summed * not_pad, emb.word, backend)
    grads["embeddings.word"] = word_grads["weight"]
    return None, grads


# --- MLM head --------------------------------------------------------------------------------------------

def mlm_head_forward(params, rows, config: BertConfig, backend):
    """Hidden rows [N, H] -> logits [N, V]:  z = LN(GELU(rows Wd + bd));  logits = z word^T + decoder_bias.
    The decoder multiplies in the head's dense dtype (bfloat16/float16 under a mixed-precision policy, which casts
    every linear weight but leaves the word table, also the input lookup, in float32): z and word cast to it."""
    compute = params["head.dense.weight"].dtype
    word = to_dtype(params["embeddings.word"], compute)
    dense, dense_cache = linear_forward(rows, params["head.dense.weight"], params["head.dense.bias"])
    act, act_cache = gelu_forward(dense, backend, config.hidden_act == "gelu_tanh")
    z, ln_cache = layernorm_forward(act, params["head.ln.weight"], params["head.ln.bias"], config.layer_norm_eps)
    z = to_dtype(z, compute)
    logits = z @ word.T                                                 # word^T [H, V]
    logits += to_dtype(params["head.decoder_bias"], compute)            # in place where writeable (as linear)
    return logits, MLMHeadCache(dense=dense_cache, act=act_cache, ln=ln_cache, z=z, word=word)


def mlm_head_backward(d_logits, cache: MLMHeadCache):
    """d logits [N, V] -> (d rows [N, H], the head's gradients under full names). The decoder's share of the
    tied word-embedding gradient is d_logits^T z [V, H] (returned as "embeddings.word"), and d decoder_bias =
    sum_rows d_logits. Then dz = d_logits word [N, H], back through LayerNorm, GELU and the dense layer
    (dWd = rows^T d_dense, dbd = sum_rows d_dense, d rows = d_dense Wd^T)."""
    xp = array_namespace(d_logits)
    d_logits_w = to_dtype(d_logits, cache.word.dtype)                    # the products in the decoder's dtype
    # d_logits^T [V, N] @ z [N, H] -> [V, H]
    grads = {"embeddings.word": d_logits_w.T @ cache.z, "head.decoder_bias": xp.sum(d_logits, axis=0)}
    d_z = d_logits_w @ cache.word
    d_act, ln_grads = layernorm_backward(d_z, cache.ln)
    _add_grads(grads, "head.ln.", ln_grads)
    d_dense, _ = gelu_backward(d_act, cache.act)
    d_rows, dense_grads = linear_backward(d_dense, cache.dense)
    _add_grads(grads, "head.dense.", dense_grads)
    return d_rows, grads


# --- whole model on device arrays ---------------------------------------------------------------------------

def forward_backward(params, arrays, key=None, normaliser=None, *, config: BertConfig, backend):
    """Loss and every gradient for one `minibert.data.batch.DeviceBatch` (made by `minibert.data.batch.device_batch`).

    loss = sum over labelled rows of w_n * nll_n / D, with D = `normaliser` (a 0-d array: the labelled tokens
    of the whole training step, see `minibert.nn.step`), or this batch's own count sum_n w_n when None (the mean).
    The MLM head runs only on the labelled rows (`positions`): logits [N, V] with N ~ 15% of B*T. In the
    backward, d rows [N, H] goes back to d hidden [B*T, H] by a scatter-add at `positions` (0 elsewhere).
    The tied word embedding's gradient is the decoder's share plus the input gather's.
    Returns (loss as a 0-d array, dict of gradients named like `params`).
    """
    xp = array_namespace(params["embeddings.word"])
    hidden, encoder_cache = encoder_forward(params, arrays.input_ids, arrays.token_type_ids,
                                            arrays.attention_mask, config, backend, key)
    rows = xp.take(hidden, arrays.positions, axis=0)
    logits, head_cache = mlm_head_forward(params, rows, config, backend)
    loss, loss_cache = cross_entropy_forward(logits, arrays.targets, arrays.weights, normaliser)
    d_logits, _ = cross_entropy_backward(1.0, loss_cache, backend)
    d_rows, grads = mlm_head_backward(d_logits, head_cache)
    d_hidden = backend.scatter_add(xp.zeros(hidden.shape, dtype=hidden.dtype, device=backend.device),
                                   arrays.positions, to_dtype(d_rows, hidden.dtype))
    _, encoder_grads = encoder_backward(d_hidden, encoder_cache, config, backend)
    decoder_share = grads["embeddings.word"]
    grads.update(encoder_grads)
    grads["embeddings.word"] = decoder_share + encoder_grads["embeddings.word"]
    return loss, grads


def label_count(arrays):
    """The labelled tokens of a `DeviceBatch`, sum_n w_n (a 0-d float array): the batch's share of the step's
    loss normaliser (`minibert.nn.step`); padding rows (weight 0) do not count."""
    xp = array_namespace(arrays.weights)
    return xp.sum(arrays.weights)


def masked_lm_metrics(params, arrays, *, config: BertConfig, backend):
    """Evaluation at the labelled rows (no dropout): (summed negative log-likelihood, number of correct
    argmax predictions), both 0-d arrays; padding rows (weight 0) count for neither."""
    xp = array_namespace(params["embeddings.word"])
    hidden, _ = encoder_forward(params, arrays.input_ids, arrays.token_type_ids, arrays.attention_mask,
                                config, backend)
    logits, _ = mlm_head_forward(params, xp.take(hidden, arrays.positions, axis=0), config, backend)
    mean_nll, _ = cross_entropy_forward(logits, arrays.targets, arrays.weights)
    correct = xp.astype(xp.argmax(logits, axis=-1) == arrays.targets, arrays.weights.dtype)
    return mean_nll * xp.sum(arrays.weights), xp.sum(correct * arrays.weights)


def logits_all(params, input_ids, attention_mask, token_type_ids, *, config: BertConfig, backend):
    """Logits at every position, [B, T, V] (inference: no dropout)."""
    xp = array_namespace(params["embeddings.word"])
    hidden, _ = encoder_forward(params, input_ids, token_type_ids, attention_mask, config, backend)
    logits, _ = mlm_head_forward(params, hidden, config, backend)
    return xp.reshape(logits, (*input_ids.shape, config.vocab_size))   # [B*T, V] -> [B, T, V]
