"""OPT (Zhang et al., 2022) as a Flax linen decoder, ready for LUT-GEMM.

Everything needed to run the OPT family (125M to 175B) end to end on top of `lutgemm_jax`:

* `OPTConfig`: the Hugging Face ``config.json`` fields, ``from_json`` and presets
  (``OPTConfig.preset("1.3b")``).
* `OPT`: the decoder + tied lm_head. Learned positional embeddings with OPT's offset of 2, pre- and
  post-layer-norm variants (350M is post-LN), ReLU FFN, ``project_in``/``project_out`` when
  ``word_embed_proj_dim != hidden_size`` (350M), attention through
  `jax.nn.dot_product_attention` with an explicit KV cache. Every Linear is a plain ``nn.Dense``
  named like its Hugging Face twin, so `lutgemm_jax.linen.quantize_params` quantizes it and
  `lutgemm_jax.linen.intercept_dense` runs it through `lut_gemm` with no edit to the model.
* `generate`: prefill + a `lax.scan` over the new tokens inside one ``jax.jit`` (greedy or
  temperature / top-k / top-p sampling with a seed, left-padded batches).
* `load_hf_checkpoint` / `save_hf_checkpoint`: local Hugging Face checkpoint directories
  (``config.json`` + ``*.safetensors``, single or sharded). Never touches the network.
* `quantize_model`: every decoder Linear (q, k, v, out, fc1, fc2; optionally the lm_head) to BCQ.
* `perplexity`, `benchmark_decode`: the quality and speed measurements of the CLI
  ``examples/opt_decode.py``.

Parameter tree (``params`` collection)::

    embed_tokens/embedding            [vocab, word_embed_proj_dim]
    embed_positions/embedding         [max_position_embeddings + 2, hidden]
    project_in/kernel, project_out/kernel          (only when word_embed_proj_dim != hidden)
    layers_{i}/self_attn/{q,k,v,out}_proj/{kernel [in, out], bias}
    layers_{i}/self_attn_layer_norm/{scale, bias}
    layers_{i}/fc1, layers_{i}/fc2, layers_{i}/final_layer_norm
    final_layer_norm/{scale, bias}    (pre-LN models only)
    lm_head/kernel [word_embed_proj_dim, vocab]    (optional: present only when untied, e.g. to
                                                    quantize it; otherwise tied to embed_tokens)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import statistics
import time
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

POSITION_OFFSET = 2
"""OPT's learned positional embedding table has 2 extra rows: position p uses row p + 2."""

LAYER_NORM_EPS = 1e-5

DEFAULT_QUANTIZE_INCLUDE = (
    r"(^|/)layers_\d+/(self_attn/(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)/kernel$"
)
"""The decoder Linears quantized by default: q, k, v, out, fc1, fc2 of every layer."""
LM_HEAD_INCLUDE = r"(^|/)lm_head/kernel$"


def _activation(name: str):
    table = {
        "relu": jax.nn.relu,
        "gelu": functools.partial(jax.nn.gelu, approximate=False),
        "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
    }
    if name not in table:
        raise ValueError(f"unsupported activation_function {name!r}; supported: {sorted(table)}")
    return table[name]


# ---- configuration ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OPTConfig:
    """The fields of a Hugging Face OPT ``config.json`` that define the computation."""

    vocab_size: int = 50272
    hidden_size: int = 768
    num_hidden_layers: int = 12
    ffn_dim: int = 3072
    num_attention_heads: int = 12
    max_position_embeddings: int = 2048
    word_embed_proj_dim: int | None = None
    do_layer_norm_before: bool = True
    activation_function: str = "relu"
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    remove_final_layer_norm: bool = False
    pad_token_id: int = 1
    bos_token_id: int = 2
    eos_token_id: int = 2

    def __post_init__(self):
        if self.word_embed_proj_dim is None:
            object.__setattr__(self, "word_embed_proj_dim", self.hidden_size)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )
        _activation(self.activation_function)  # validates the name

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def has_projections(self) -> bool:
        """True when the embeddings are narrower than the residual stream (OPT-350M)."""
        return self.word_embed_proj_dim != self.hidden_size

    @property
    def has_final_layer_norm(self) -> bool:
        return self.do_layer_norm_before and not self.remove_final_layer_norm

    def num_params(self) -> int:
        """Parameter count (tied lm_head counted once)."""
        d, f, dp, v = self.hidden_size, self.ffn_dim, self.word_embed_proj_dim, self.vocab_size
        b = 1 if self.enable_bias else 0
        ln = 2 * d if self.layer_norm_elementwise_affine else 0
        layer = 4 * (d * d + b * d) + d * f + b * f + f * d + b * d + 2 * ln
        total = v * dp + (self.max_position_embeddings + POSITION_OFFSET) * d
        total += self.num_hidden_layers * layer + (ln if self.has_final_layer_norm else 0)
        return total + (2 * d * dp if self.has_projections else 0)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OPTConfig:
        """Builds a config from a Hugging Face ``config.json`` dict (unknown keys are ignored)."""
        if d.get("model_type", "opt") != "opt":
            raise ValueError(f"not an OPT config: model_type = {d.get('model_type')!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if "_remove_final_layer_norm" in d:
            kwargs["remove_final_layer_norm"] = bool(d["_remove_final_layer_norm"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> OPTConfig:
        """Reads a Hugging Face ``config.json`` (a file, or a directory holding one)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        """A Hugging Face style ``config.json`` dict."""
        d = dataclasses.asdict(self)
        d["_remove_final_layer_norm"] = d.pop("remove_final_layer_norm")
        d.update(model_type="opt", architectures=["OPTForCausalLM"], torch_dtype="float32")
        return d

    @classmethod
    def preset(cls, name: str, **overrides) -> OPTConfig:
        """The published OPT shapes: '125m', '350m', '1.3b', '2.7b', '6.7b', '13b', '30b', '66b',
        '175b' (also accepted with an ``opt-`` prefix)."""
        key = name.lower().removeprefix("facebook/").removeprefix("opt-")
        if key not in PRESETS:
            raise ValueError(f"unknown OPT preset {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[key], **overrides)


def _preset(hidden, layers, heads, ffn, **kw) -> OPTConfig:
    return OPTConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=ffn, **kw
    )


PRESETS: dict[str, OPTConfig] = {
    "125m": _preset(768, 12, 12, 3072),
    "350m": _preset(1024, 24, 16, 4096, word_embed_proj_dim=512, do_layer_norm_before=False),
    "1.3b": _preset(2048, 24, 32, 8192),
    "2.7b": _preset(2560, 32, 32, 10240),
    "6.7b": _preset(4096, 32, 32, 16384),
    "13b": _preset(5120, 40, 40, 20480),
    "30b": _preset(7168, 48, 56, 28672),
    "66b": _preset(9216, 64, 72, 36864),
    "175b": _preset(12288, 96, 96, 49152),
}


# ---- the model -------------------------------------------------------------------------------

KVCache = list  # [(k, v) per layer], each [batch, cache_len, heads, head_dim]


class OPTAttention(nn.Module):
    config: OPTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask, cache=None, cache_index=0):
        c = self.config
        b, t, _ = x.shape
        heads, head_dim = c.num_attention_heads, c.head_dim

        def dense(name):
            return nn.Dense(c.hidden_size, use_bias=c.enable_bias, dtype=self.dtype, name=name)

        q = dense("q_proj")(x).reshape(b, t, heads, head_dim)
        k = dense("k_proj")(x).reshape(b, t, heads, head_dim)
        v = dense("v_proj")(x).reshape(b, t, heads, head_dim)
        if cache is not None:
            ck, cv = cache
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), start)
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), start)
            cache = (k, v)
        out = jax.nn.dot_product_attention(
            q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, scale=head_dim**-0.5
        )
        out = dense("out_proj")(out.reshape(b, t, c.hidden_size))
        return out, cache


def _layer_norm(config: OPTConfig, name: str, dtype) -> nn.LayerNorm:
    affine = config.layer_norm_elementwise_affine
    return nn.LayerNorm(
        epsilon=LAYER_NORM_EPS, use_scale=affine, use_bias=affine, dtype=dtype, name=name
    )


class OPTDecoderLayer(nn.Module):
    config: OPTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, mask, cache=None, cache_index=0):
        c = self.config
        pre = c.do_layer_norm_before
        attn_ln = _layer_norm(c, "self_attn_layer_norm", self.dtype)
        ffn_ln = _layer_norm(c, "final_layer_norm", self.dtype)

        residual = h
        if pre:
            h = attn_ln(h)
        h, cache = OPTAttention(c, self.dtype, name="self_attn")(h, mask, cache, cache_index)
        h = residual + h
        if not pre:
            h = attn_ln(h)

        residual = h
        if pre:
            h = ffn_ln(h)
        h = nn.Dense(c.ffn_dim, use_bias=c.enable_bias, dtype=self.dtype, name="fc1")(h)
        h = _activation(c.activation_function)(h)
        h = nn.Dense(c.hidden_size, use_bias=c.enable_bias, dtype=self.dtype, name="fc2")(h)
        h = residual + h
        if not pre:
            h = ffn_ln(h)
        return h, cache


class OPT(nn.Module):
    """OPT decoder with its language-model head (Hugging Face ``OPTForCausalLM``).

    ``__call__(input_ids, position_ids, key_mask, cache=None, cache_index=0)``:

    * ``input_ids``, ``position_ids``: int ``[B, T]``; positions count real tokens from 0
      (left padding gets -1, as in Hugging Face; see `position_ids_from_mask`).
    * ``key_mask``: bool ``[B, S]``, which key slots hold real tokens. ``S = T`` without a cache,
      else the cache length (the slots being written now included).
    * ``cache``: a `KVCache` from `init_cache` or ``None``; the new keys/values are written at
      slots ``cache_index .. cache_index + T - 1``.

    Returns ``(logits [B, T, vocab] float32, new cache or None)``. Query slot ``i`` attends to key
    slots ``j <= i`` with ``key_mask`` set (and always to itself, so padded rows stay finite).

    The lm_head is tied to ``embed_tokens`` unless the params hold ``lm_head/kernel`` (see
    `untie_lm_head`), which is then used as an ``nn.Dense`` (and can be quantized).
    """

    config: OPTConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, position_ids, key_mask, cache=None, cache_index=0):
        c = self.config
        b, t = input_ids.shape
        embed = nn.Embed(
            c.vocab_size,
            c.word_embed_proj_dim,
            dtype=self.dtype,
            embedding_init=nn.initializers.normal(0.02),
            name="embed_tokens",
        )
        positions = nn.Embed(
            c.max_position_embeddings + POSITION_OFFSET,
            c.hidden_size,
            dtype=self.dtype,
            embedding_init=nn.initializers.normal(0.02),
            name="embed_positions",
        )
        h = embed(input_ids)
        if c.has_projections:
            h = nn.Dense(c.hidden_size, use_bias=False, dtype=self.dtype, name="project_in")(h)
        h = h + positions(position_ids + POSITION_OFFSET)

        query_slots = cache_index + jnp.arange(t)
        key_slots = jnp.arange(key_mask.shape[-1])
        causal = key_slots[None, :] <= query_slots[:, None]
        self_slot = key_slots[None, :] == query_slots[:, None]
        mask = (key_mask[:, None, None, :] & causal[None, None]) | self_slot[None, None]

        new_cache = [] if cache is not None else None
        for i in range(c.num_hidden_layers):
            layer_cache = cache[i] if cache is not None else None
            h, layer_cache = OPTDecoderLayer(c, self.dtype, name=f"layers_{i}")(
                h, mask, layer_cache, cache_index
            )
            if cache is not None:
                new_cache.append(layer_cache)

        if c.has_final_layer_norm:
            h = _layer_norm(c, "final_layer_norm", self.dtype)(h)
        if c.has_projections:
            h = nn.Dense(
                c.word_embed_proj_dim, use_bias=False, dtype=self.dtype, name="project_out"
            )(h)
        if "lm_head" in self.variables.get("params", {}):
            logits = nn.Dense(c.vocab_size, use_bias=False, dtype=self.dtype, name="lm_head")(h)
        else:
            logits = embed.attend(h)
        return logits.astype(jnp.float32), new_cache


def position_ids_from_mask(attention_mask: jax.Array) -> jax.Array:
    """OPT's positions: 0, 1, ... over the real tokens of each row; padding gets -1."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=-1) * mask - 1


def init_cache(config: OPTConfig, batch: int, length: int, dtype=jnp.float32) -> KVCache:
    shape = (batch, length, config.num_attention_heads, config.head_dim)
    return [
        (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.num_hidden_layers)
    ]


def has_bcq(params) -> bool:
    """True if any leaf of ``params`` is a `BCQWeight`."""
    from lutgemm_jax.format import BCQWeight

    leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, BCQWeight))
    return any(isinstance(x, BCQWeight) for x in leaves)


def _context(params):
    """`lutgemm_jax.linen.intercept_dense` when ``params`` hold BCQ weights, else a no-op."""
    if has_bcq(params):
        from lutgemm_jax.linen import intercept_dense

        return intercept_dense()
    return contextlib.nullcontext()


def apply(model: OPT, params, *args, **kwargs):
    """``model.apply({"params": params}, ...)``, routed through LUT-GEMM for BCQ params."""
    with _context(params):
        return model.apply({"params": params}, *args, **kwargs)


def forward(model: OPT, params, input_ids, attention_mask=None) -> jax.Array:
    """Full-sequence logits ``[B, T, vocab]`` (no cache). ``attention_mask``: 1 = real token."""
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    positions = position_ids_from_mask(attention_mask)
    logits, _ = apply(model, params, input_ids, positions, attention_mask.astype(bool))
    return logits


@functools.partial(jax.jit, static_argnums=0)
def forward_jit(model: OPT, params, input_ids, attention_mask=None):
    """`forward` under ``jax.jit`` (compiled once per model, shapes and params structure)."""
    return forward(model, params, input_ids, attention_mask)


# ---- sampling and generation -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Token selection: ``temperature == 0`` is greedy (argmax); otherwise sample from the
    softmax at that temperature, restricted to the ``top_k`` most likely tokens (0 = all) and to
    the smallest set whose probability reaches ``top_p`` (1.0 = all)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_token(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """Picks one token per row of ``logits [B, V]``."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / sampling.temperature
    neg = jnp.finfo(jnp.float32).min
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if sampling.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each entry
        keep = before < sampling.top_p  # always keeps the first
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, neg, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


class DecodeState(NamedTuple):
    cache: KVCache
    key_mask: jax.Array  # bool [B, S]
    token: jax.Array  # int32 [B], the token to feed next
    position: jax.Array  # int32 [B], its position id
    index: jax.Array  # int32 scalar, its cache slot
    done: jax.Array  # bool [B], eos seen


def prefill(
    model: OPT,
    params,
    input_ids,
    attention_mask,
    cache_len: int,
    rng,
    sampling: Sampling,
    cache_dtype=jnp.float32,
):
    """Runs the (left-padded) prompt through the model, filling a cache of ``cache_len`` slots.

    Returns ``(state, first_logits [B, V])``; ``state.token`` is the first new token.
    """
    b, t = input_ids.shape
    if cache_len < t:
        raise ValueError(f"cache_len {cache_len} is shorter than the prompt ({t} tokens)")
    attention_mask = attention_mask.astype(bool)
    positions = position_ids_from_mask(attention_mask)
    key_mask = jnp.zeros((b, cache_len), bool).at[:, :t].set(attention_mask)
    cache = init_cache(model.config, b, cache_len, cache_dtype)
    logits, cache = apply(model, params, input_ids, positions, key_mask, cache, 0)
    last = logits[:, -1]
    token = sample_token(last, jax.random.fold_in(rng, 0), sampling)
    done = token == model.config.eos_token_id
    length = jnp.sum(attention_mask, axis=-1).astype(jnp.int32)
    state = DecodeState(cache, key_mask, token, length, jnp.int32(t), done)
    return state, last


def decode(
    model: OPT,
    params,
    state: DecodeState,
    num_steps: int,
    rng,
    sampling: Sampling,
    return_logits: bool = False,
    stop_at_eos: bool = True,
    forced_tokens=None,
):
    """``num_steps`` decode steps in one `lax.scan`: feeds ``state.token``, picks the next one.

    Returns ``(state, tokens [B, num_steps], logits [B, num_steps, V] or None)``. After a row
    has produced ``eos_token_id`` (with ``stop_at_eos``) it emits ``pad_token_id``.

    ``forced_tokens``: optional ``(tokens [B, num_steps], force: bool scalar)``; where ``force``
    is true, step ``i`` feeds ``tokens[:, i]`` onward instead of the token it picked (teacher
    forcing), while still returning the picked tokens and their logits.
    """
    config = model.config
    b = state.token.shape[0]

    def step(state: DecodeState, i):
        key_mask = jax.lax.dynamic_update_slice(
            state.key_mask, jnp.ones((b, 1), bool), (0, state.index)
        )
        logits, cache = apply(
            model,
            params,
            state.token[:, None],
            state.position[:, None],
            key_mask,
            state.cache,
            state.index,
        )
        logits = logits[:, 0]
        token = sample_token(logits, jax.random.fold_in(rng, i + 1), sampling)
        picked = token
        if forced_tokens is not None:
            token = jnp.where(forced_tokens[1], forced_tokens[0][:, i], token)
        done = state.done
        if stop_at_eos:
            token = jnp.where(done, config.pad_token_id, token)
            done = done | (token == config.eos_token_id)
            picked = jnp.where(state.done, config.pad_token_id, picked)
        new = DecodeState(cache, key_mask, token, state.position + 1, state.index + 1, done)
        return new, (picked, logits if return_logits else None)

    state, (tokens, logits) = jax.lax.scan(step, state, jnp.arange(num_steps))
    tokens = tokens.T
    if return_logits:
        logits = jnp.swapaxes(logits, 0, 1)
    return state, tokens, logits


class Generation(NamedTuple):
    tokens: jax.Array  # int32 [B, max_new_tokens]
    logits: jax.Array | None  # float32 [B, max_new_tokens, V]: the logits each token came from


@functools.partial(
    jax.jit, static_argnames=("model", "max_new_tokens", "sampling", "return_logits", "stop_at_eos")
)
def _generate(
    model,
    params,
    input_ids,
    attention_mask,
    rng,
    forced_tokens,
    force,
    *,
    max_new_tokens,
    sampling,
    return_logits,
    stop_at_eos,
):
    cache_len = input_ids.shape[1] + max_new_tokens
    state, first = prefill(model, params, input_ids, attention_mask, cache_len, rng, sampling)
    first_token = state.token
    state = state._replace(token=jnp.where(force, forced_tokens[:, 0], state.token))
    _, tokens, logits = decode(
        model,
        params,
        state,
        max_new_tokens - 1,
        rng,
        sampling,
        return_logits,
        stop_at_eos,
        (forced_tokens[:, 1:], force),
    )
    tokens = jnp.concatenate([first_token[:, None], tokens], axis=1)
    if return_logits:
        logits = jnp.concatenate([first[:, None], logits], axis=1)
    return Generation(tokens, logits)


def generate(
    model: OPT,
    params,
    input_ids,
    attention_mask=None,
    *,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    seed: int = 0,
    return_logits: bool = False,
    stop_at_eos: bool = True,
    forced_tokens=None,
) -> Generation:
    """Generates ``max_new_tokens`` tokens after each prompt row, in one compiled call.

    ``input_ids [B, T]`` must be left-padded (`pad_batch`) with ``attention_mask`` 0 on padding.
    Prefill and a `lax.scan` over the new tokens run inside one ``jax.jit``; it compiles once per
    (model, shapes, max_new_tokens, sampling) and never per token. Params holding `BCQWeight`s
    run their Dense layers through `lut_gemm`.

    ``forced_tokens [B, max_new_tokens]`` (teacher forcing): feed these tokens instead of the
    picked ones; the result still holds what the model picked (and, with ``return_logits``, its
    logits) at each step given the forced prefix. Forced or not, it is the same compiled code.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    total = input_ids.shape[1] + max_new_tokens
    if total > model.config.max_position_embeddings:
        raise ValueError(
            f"prompt + new tokens = {total} exceeds max_position_embeddings "
            f"{model.config.max_position_embeddings}"
        )
    force = forced_tokens is not None
    if forced_tokens is None:
        forced_tokens = jnp.zeros((input_ids.shape[0], max_new_tokens), jnp.int32)
    forced_tokens = jnp.asarray(forced_tokens, jnp.int32)
    if forced_tokens.shape != (input_ids.shape[0], max_new_tokens):
        raise ValueError(
            f"forced_tokens has shape {forced_tokens.shape}, expected "
            f"{(input_ids.shape[0], max_new_tokens)}"
        )
    return _generate(
        model,
        params,
        input_ids,
        jnp.asarray(attention_mask, jnp.int32),
        jax.random.PRNGKey(seed),
        forced_tokens,
        jnp.asarray(force),
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        return_logits=return_logits,
        stop_at_eos=stop_at_eos,
    )


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token id lists to ``(input_ids [B, T], attention_mask [B, T])``."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("pad_batch needs at least one non-empty sequence")
    t = max(len(s) for s in sequences)
    ids = np.full((len(sequences), t), pad_token_id, np.int32)
    mask = np.zeros((len(sequences), t), np.int32)
    for row, seq in enumerate(sequences):
        ids[row, t - len(seq) :] = seq
        mask[row, t - len(seq) :] = 1
    return ids, mask


# ---- random weights --------------------------------------------------------------------------


def init_params(config: OPTConfig, seed: int = 0, *, logit_std: float = 4.0, dtype=jnp.float32):
    """Deterministic random parameters with non-degenerate logits.

    Linears get OPT's init (normal, std 0.02), biases zero, layer norms one. With the tied
    lm_head a 0.02-std embedding alone would give logits of std ~0.5 (near-uniform softmax over
    50k tokens); the final layer norm (or, without one, the embedding) is scaled so the logits'
    std is about ``logit_std``, so that top-1 agreement between two models means something.
    """
    model = OPT(config)
    ids = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids, ids > -1))
    natural = 0.02 * math.sqrt(config.word_embed_proj_dim)
    scale_final_ln = config.has_final_layer_norm and config.layer_norm_elementwise_affine

    def make(path, leaf):
        # numpy's generator: fast on CPU, and the same weights on every machine and jax version.
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        kind = name.rsplit("/", 1)[-1]
        if kind in ("kernel", "embedding"):
            std = 0.02
            if name == "params/embed_tokens/embedding" and not scale_final_ln:
                std *= math.sqrt(logit_std / natural)
            x = rng.standard_normal(leaf.shape, np.float32) * np.float32(std)
        elif kind == "scale":
            gain = logit_std / natural if name == "params/final_layer_norm/scale" else 1.0
            x = np.full(leaf.shape, gain, np.float32)
        else:
            x = np.zeros(leaf.shape, np.float32)
        return jnp.asarray(x, dtype)

    return jax.tree_util.tree_map_with_path(make, shapes)["params"]


def untie_lm_head(params) -> dict:
    """Adds ``lm_head/kernel = embed_tokens.T`` (a copy), so the head can be quantized."""
    params = dict(params)
    params["lm_head"] = {"kernel": jnp.asarray(params["embed_tokens"]["embedding"]).T}
    return params


# ---- quantization ----------------------------------------------------------------------------


def quantize_model(
    params,
    *,
    bits: int = 3,
    group_size: int | None = 128,
    method: str = "alternating",
    quantize_lm_head: bool = False,
    layout: str = "canonical",
    progress: bool = False,
    return_summary: bool = False,
    **quantize_kwargs,
):
    """Quantizes every decoder Linear (q, k, v, out, fc1, fc2 of each layer) to BCQ.

    With ``quantize_lm_head`` the tied lm_head is untied (`untie_lm_head`) and quantized too;
    the token embedding stays in float (it is a lookup). ``layout`` is the sign-word layout of
    the packed kernels (`lutgemm_jax.format.LAYOUTS`): ``"cpu"`` for a model that will run on
    CPU (faster kernel, bitwise the same results), ``"canonical"`` (default) for GPU
    and portable artifacts; `lutgemm_jax.to_layout` converts later. Extra keywords go to
    `lutgemm_jax.quantize` (``rounds``, ``fit_offset``, ``alpha_dtype``, ...).
    """
    from lutgemm_jax.linen import quantize_params

    include = DEFAULT_QUANTIZE_INCLUDE
    if quantize_lm_head:
        params = untie_lm_head(params)
        include = f"{DEFAULT_QUANTIZE_INCLUDE}|{LM_HEAD_INCLUDE}"
    return quantize_params(
        params,
        bits=bits,
        group_size=group_size,
        method=method,
        include=include,
        layout=layout,
        progress=progress,
        return_summary=return_summary,
        **quantize_kwargs,
    )


def param_bytes(params) -> int:
    """Bytes of all parameter arrays (packed BCQ storage counted as stored)."""
    return int(
        sum(
            np.prod(x.shape) * jnp.dtype(x.dtype).itemsize
            for x in jax.tree_util.tree_leaves(params)
        )
    )


# ---- Hugging Face checkpoints ----------------------------------------------------------------


def _hf_names(config: OPTConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """HF key (without ``model.``) -> (our param path, transpose?)."""
    names: dict[str, tuple[tuple[str, ...], bool]] = {
        "decoder.embed_tokens.weight": (("embed_tokens", "embedding"), False),
        "decoder.embed_positions.weight": (("embed_positions", "embedding"), False),
    }
    affine, bias = config.layer_norm_elementwise_affine, config.enable_bias

    def linear(hf, ours, has_bias):
        names[f"{hf}.weight"] = ((*ours, "kernel"), True)
        if has_bias:
            names[f"{hf}.bias"] = ((*ours, "bias"), False)

    def norm(hf, ours):
        if affine:
            names[f"{hf}.weight"] = ((*ours, "scale"), False)
            names[f"{hf}.bias"] = ((*ours, "bias"), False)

    if config.has_projections:
        linear("decoder.project_in", ("project_in",), False)
        linear("decoder.project_out", ("project_out",), False)
    if config.has_final_layer_norm:
        norm("decoder.final_layer_norm", ("final_layer_norm",))
    for i in range(config.num_hidden_layers):
        hf, ours = f"decoder.layers.{i}", f"layers_{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(f"{hf}.self_attn.{proj}", (ours, "self_attn", proj), bias)
        norm(f"{hf}.self_attn_layer_norm", (ours, "self_attn_layer_norm"))
        linear(f"{hf}.fc1", (ours, "fc1"), bias)
        linear(f"{hf}.fc2", (ours, "fc2"), bias)
        norm(f"{hf}.final_layer_norm", (ours, "final_layer_norm"))
    return names


def params_from_hf(state: dict[str, Any], config: OPTConfig, dtype=jnp.float32) -> dict:
    """Converts a Hugging Face OPT state dict (numpy arrays, keys with or without ``model.``,
    Linear weights ``[out, in]``) to this module's params (kernels ``[in, out]``)."""
    stripped = {}
    for key, value in state.items():
        stripped[key.removeprefix("model.")] = value
    names = _hf_names(config)
    missing = [k for k in names if k not in stripped]
    if missing:
        raise KeyError(
            f"checkpoint is missing {len(missing)} OPT tensors, e.g. {missing[:4]}; is it an OPT "
            "checkpoint matching its config.json?"
        )
    params: dict = {}
    for key, (path, transpose) in names.items():
        x = np.asarray(stripped[key])
        if transpose:
            x = x.T
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.asarray(x, dtype)
    want = (config.vocab_size, config.word_embed_proj_dim)
    got = params["embed_tokens"]["embedding"].shape
    if tuple(got) != want:
        raise ValueError(f"embed_tokens has shape {got}, config.json implies {want}")
    # lm_head.weight is tied to embed_tokens in every OPT checkpoint; an untied one is kept.
    head = stripped.get("lm_head.weight")
    if head is not None and not np.array_equal(
        np.asarray(head),
        np.asarray(
            state.get("model.decoder.embed_tokens.weight", stripped["decoder.embed_tokens.weight"])
        ),
    ):
        params["lm_head"] = {"kernel": jnp.asarray(np.asarray(head).T, dtype)}
    return params


def params_to_hf(params, config: OPTConfig, *, prefix: str = "model.", dtype=np.float32) -> dict:
    """The inverse of `params_from_hf`: a Hugging Face style state dict of numpy arrays."""
    state = {}
    for key, (path, transpose) in _hf_names(config).items():
        x = params
        for p in path:
            x = x[p]
        x = np.asarray(x, dtype)
        state[prefix + key] = np.ascontiguousarray(x.T if transpose else x)
    if "lm_head" in params:
        state["lm_head.weight"] = np.ascontiguousarray(
            np.asarray(params["lm_head"]["kernel"], dtype).T
        )
    return state


def save_hf_checkpoint(
    path: str | os.PathLike,
    params,
    config: OPTConfig,
    *,
    num_shards: int = 1,
    dtype=np.float32,
    prefix: str = "model.",
) -> None:
    """Writes ``config.json`` + ``model.safetensors`` (or ``num_shards`` shards with
    ``model.safetensors.index.json``) in the Hugging Face OPT layout."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config.to_dict(), f, indent=2)
    state = params_to_hf(params, config, prefix=prefix, dtype=dtype)
    if num_shards <= 1:
        save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return
    keys = list(state)
    weight_map = {}
    for s in range(num_shards):
        name = f"model-{s + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {k: state[k] for k in keys[s::num_shards]}
        weight_map.update(dict.fromkeys(part, name))
        save_file(part, os.path.join(path, name), metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": sum(v.nbytes for v in state.values())},
        "weight_map": weight_map,
    }
    with open(os.path.join(path, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be read (missing files, PyTorch pickles, ...)."""


def _safetensors_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
        if missing:
            raise CheckpointError(f"{index} lists shards that are not there: {missing}")
        return [os.path.join(path, f) for f in files]
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if files:
        return [os.path.join(path, f) for f in files]
    torch_files = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth")))
    if torch_files:
        raise CheckpointError(
            f"{path} holds PyTorch pickle weights ({', '.join(torch_files)}) and no *.safetensors. "
            "This loader reads safetensors only (pickles can run code and need torch). Convert "
            "once on a machine with torch + transformers:\n"
            '    python -c "from transformers import OPTForCausalLM as M; '
            f"M.from_pretrained('{path}').save_pretrained('{path}', safe_serialization=True)\"\n"
            "or, with plain torch + safetensors:\n"
            '    python -c "import torch; from safetensors.torch import save_file; '
            f"sd = torch.load('{os.path.join(path, torch_files[0])}', map_location='cpu'); "
            "save_file({k: v.contiguous() for k, v in sd.items()}, "
            f"'{os.path.join(path, 'model.safetensors')}')\""
        )
    raise CheckpointError(f"no *.safetensors weights in {path}")


def load_hf_checkpoint(path: str | os.PathLike, dtype=jnp.float32) -> tuple[OPTConfig, dict]:
    """Reads a local Hugging Face OPT checkpoint directory: ``(config, params)``.

    Needs ``config.json`` and ``*.safetensors`` (one file, or shards listed in
    ``model.safetensors.index.json``). fp16/bf16 weights are converted to ``dtype``.
    No network access is attempted.
    """
    from safetensors.numpy import load_file

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is not a directory (expected a local OPT checkpoint)")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise CheckpointError(f"{path} has no config.json")
    config = OPTConfig.from_json(path)
    state: dict[str, np.ndarray] = {}
    for file in _safetensors_files(path):
        state.update(load_file(file))
    return config, params_from_hf(state, config, dtype)


class ByteTokenizer:
    """Fallback tokenizer for models without ``tokenizer.json`` (e.g. random weights): UTF-8
    bytes mapped to ids 4..259, after OPT's ``bos`` (id 2). Decoding shows other ids as ``<id>``."""

    OFFSET = 4

    def __init__(self, config: OPTConfig):
        self.config = config

    def encode(self, text: str) -> list[int]:
        ids = [b + self.OFFSET for b in text.encode("utf-8")]
        return [self.config.bos_token_id] + [i % self.config.vocab_size for i in ids]

    def decode(self, ids: Iterable[int]) -> str:
        out, pending = [], bytearray()
        for i in ids:
            i = int(i)
            if self.OFFSET <= i < self.OFFSET + 256:
                pending.append(i - self.OFFSET)
                continue
            if pending:
                out.append(pending.decode("utf-8", "replace"))
                pending = bytearray()
            if i not in (self.config.bos_token_id, self.config.pad_token_id):
                out.append(f"<{i}>")
        if pending:
            out.append(pending.decode("utf-8", "replace"))
        return "".join(out)


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json``; prepends OPT's bos (``</s>``, id 2)
    the way Hugging Face's OPT tokenizer does, when the file's post-processor does not."""

    def __init__(self, path: str, config: OPTConfig):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(path)
        self.config = config

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text).ids
        if not ids or ids[0] != self.config.bos_token_id:
            ids = [self.config.bos_token_id, *ids]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def load_tokenizer(path: str | os.PathLike | None, config: OPTConfig):
    """`HFTokenizer` from ``path/tokenizer.json`` if present, else ``None``."""
    if path is None:
        return None
    file = os.path.join(os.fspath(path), "tokenizer.json")
    if os.path.exists(file):
        return HFTokenizer(file, config)
    return None


# ---- measurements ----------------------------------------------------------------------------


def perplexity(
    model: OPT,
    params,
    token_ids: Sequence[int],
    *,
    seq_len: int = 512,
    max_windows: int | None = None,
    progress: bool = False,
) -> tuple[float, int]:
    """Perplexity over non-overlapping windows of ``seq_len`` tokens (the last one padded).

    Each window predicts its tokens 1..T-1 from the ones before (no context across windows, as
    in the OPT/GPTQ evaluations). Returns ``(perplexity, number of predicted tokens)``.
    """
    ids = np.asarray(token_ids, np.int32)
    seq_len = min(seq_len, model.config.max_position_embeddings)
    if ids.size < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    starts = list(range(0, ids.size - 1, seq_len))
    if max_windows is not None:
        starts = starts[:max_windows]

    @jax.jit
    def nll(params, window, mask):
        logits = forward(model, params, window[None], mask[None])[0]
        logp = jax.nn.log_softmax(logits[:-1], axis=-1)
        picked = jnp.take_along_axis(logp, window[1:, None], axis=-1)[:, 0]
        valid = mask[1:].astype(jnp.float32)
        return -jnp.sum(picked * valid), jnp.sum(valid)

    total, count = 0.0, 0
    iterator = starts
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(starts, desc="perplexity", unit="window", leave=False)
    for s in iterator:
        chunk = ids[s : s + seq_len]
        window = np.full(seq_len, model.config.pad_token_id, np.int32)
        mask = np.zeros(seq_len, np.int32)
        window[: chunk.size], mask[: chunk.size] = chunk, 1
        n, c = nll(params, jnp.asarray(window), jnp.asarray(mask))
        total, count = total + float(n), count + int(c)
    return math.exp(total / max(count, 1)), count


def benchmark_decode(
    model: OPT,
    params,
    *,
    batch: int = 1,
    prompt_len: int = 8,
    steps: int = 8,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Per-token greedy decode latency: the median over ``repeats`` of one jitted ``steps``-step
    `decode` scan (KV cache of ``prompt_len + steps`` slots, prefilled beforehand), divided by
    ``steps``. Returns seconds per token (``median``, ``min``), ``tokens_per_s`` (batch * 1 /
    median) and ``compile_s`` (first call)."""
    rng = jax.random.PRNGKey(seed)
    ids = jax.random.randint(rng, (batch, prompt_len), 4, model.config.vocab_size, jnp.int32)
    mask = jnp.ones_like(ids)
    sampling = Sampling()
    cache_len = prompt_len + steps

    state = jax.jit(prefill, static_argnums=(0, 4, 6))(
        model, params, ids, mask, cache_len, rng, sampling
    )[0]

    @functools.partial(jax.jit, static_argnums=0)
    def run(model, params, state):
        return decode(model, params, state, steps, rng, sampling, stop_at_eos=False)[1]

    t0 = time.perf_counter()
    jax.block_until_ready(run(model, params, state))
    compile_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        jax.block_until_ready(run(model, params, state))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(model, params, state))
        times.append((time.perf_counter() - t0) / steps)
    med = statistics.median(times)
    return {"median": med, "min": min(times), "tokens_per_s": batch / med, "compile_s": compile_s}


def teacher_forced_agreement(
    model: OPT, params_a, params_b, input_ids, attention_mask, start: int
) -> tuple[float, float]:
    """Runs both models on the same sequences; over positions ``start - 1 ..`` (those that
    predict tokens ``start ..``) returns ``(top-1 agreement, max |logit_a - logit_b|)``."""
    la = forward_jit(model, params_a, input_ids, attention_mask)[:, start - 1 : -1]
    lb = forward_jit(model, params_b, input_ids, attention_mask)[:, start - 1 : -1]
    agree = jnp.mean((jnp.argmax(la, -1) == jnp.argmax(lb, -1)).astype(jnp.float32))
    return float(agree), float(jnp.max(jnp.abs(la - lb)))


__all__ = [
    "DEFAULT_QUANTIZE_INCLUDE",
    "OPT",
    "PRESETS",
    "ByteTokenizer",
    "CheckpointError",
    "DecodeState",
    "Generation",
    "HFTokenizer",
    "OPTConfig",
    "Sampling",
    "apply",
    "benchmark_decode",
    "decode",
    "forward",
    "forward_jit",
    "generate",
    "has_bcq",
    "init_cache",
    "init_params",
    "load_hf_checkpoint",
    "load_tokenizer",
    "pad_batch",
    "param_bytes",
    "params_from_hf",
    "params_to_hf",
    "perplexity",
    "position_ids_from_mask",
    "prefill",
    "quantize_model",
    "sample_token",
    "save_hf_checkpoint",
    "teacher_forced_agreement",
    "untie_lm_head",
]
