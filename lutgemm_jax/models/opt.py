"""OPT (Zhang et al., 2022) as a Flax linen decoder, ready for LUT-GEMM: the architecture only.

* `OPTConfig`: the Hugging Face ``config.json`` fields, ``from_json`` and presets
  (``OPTConfig.preset("1.3b")``).
* `OPT`: the decoder + tied lm_head. Learned positional embeddings with OPT's offset of 2, pre- and
  post-layer-norm variants (350M is post-LN), ReLU FFN, ``project_in``/``project_out`` when
  ``word_embed_proj_dim != hidden_size`` (350M), attention through
  `jax.nn.dot_product_attention` with the shared KV cache (`lutgemm_jax.models.kv_cache`).
  Every Linear is a plain ``nn.Dense`` named like its Hugging Face twin, so
  `lutgemm_jax.linen.quantize_params` quantizes it and `lutgemm_jax.linen.intercept_dense` runs
  it through `lut_gemm` with no edit to the model.
* `init_params` (random weights), `hf_names` (the Hugging Face parameter-name map), the
  tensor-parallel layer lists and `FAMILY`, the record the shared machinery dispatches on.

Decoding, checkpoints, tokenizers, quantization and measurements are family-agnostic modules of
`lutgemm_jax.models`; their public functions are re-exported here so ``opt.generate(...)``,
``opt.load_hf_checkpoint(path)`` and friends keep working.

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

import dataclasses
import functools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lutgemm_jax.models import hf_checkpoint, kv_cache
from lutgemm_jax.models.decode_bench import benchmark_decode, bytes_read_per_token, param_bytes
from lutgemm_jax.models.family import Family, param_shapes, random_params
from lutgemm_jax.models.generation import (
    DecodeState,
    Generation,
    apply,
    decode,
    forward,
    forward_jit,
    generate,
    has_bcq,
    pad_batch,
    prefill,
)
from lutgemm_jax.models.hf_checkpoint import HFCheckpointError
from lutgemm_jax.models.hf_config import read_config_json
from lutgemm_jax.models.kv_cache import init_cache, position_ids_from_mask
from lutgemm_jax.models.perplexity import perplexity, teacher_forced_agreement
from lutgemm_jax.models.quantize_decoder import quantize_model, untie_lm_head
from lutgemm_jax.models.sampling import Sampling, sample_token
from lutgemm_jax.models.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

POSITION_OFFSET = 2
"""OPT's learned positional embedding table has 2 extra rows: position p uses row p + 2."""

LAYER_NORM_EPS = 1e-5

DEFAULT_QUANTIZE_INCLUDE = (
    r"(^|/)layers_\d+/(self_attn/(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)/kernel$"
)
"""OPT's decoder Linears: q, k, v, out, fc1, fc2 of every layer (what
`quantize_decoder.DECODER_LINEARS` selects in an OPT tree)."""

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "fc1")
ROW_PARALLEL = ("out_proj", "fc2")


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
    def num_key_value_heads(self) -> int:
        """OPT attention has one key/value head per query head."""
        return self.num_attention_heads

    @property
    def add_bos_token(self) -> bool:
        """OPT's tokenizer starts every sequence with ``</s>`` (the bos id, 2)."""
        return True

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
        return cls.from_dict(read_config_json(path))

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
        k, v, cache = kv_cache.update(cache, k, v, cache_index)
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
    * ``cache``: a `kv_cache.KVCache` from `kv_cache.init_cache` or ``None``; the new
      keys/values are written at slots ``cache_index .. cache_index + T - 1``.

    Returns ``(logits [B, T, vocab] float32, new cache or None)``. Query slot ``i`` attends to key
    slots ``j <= i`` with ``key_mask`` set (and always to itself, so padded rows stay finite).

    The lm_head is tied to ``embed_tokens`` unless the params hold ``lm_head/kernel`` (see
    `quantize_decoder.untie_lm_head`), which is then used as an ``nn.Dense`` (and can be quantized).
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

        mask = kv_cache.attention_mask(key_mask, cache_index, t)

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


# ---- random weights --------------------------------------------------------------------------


def init_params(config: OPTConfig, seed: int = 0, *, logit_std: float = 4.0, dtype=jnp.float32):
    """Deterministic random parameters with non-degenerate logits.

    Linears get OPT's init (normal, std 0.02), biases zero, layer norms one. With the tied
    lm_head a 0.02-std embedding alone would give logits of std ~0.5 (near-uniform softmax over
    50k tokens); the final layer norm (or, without one, the embedding) is scaled so the logits'
    std is about ``logit_std``, so that top-1 agreement between two models means something.
    """
    natural = 0.02 * math.sqrt(config.word_embed_proj_dim)
    scale_final_ln = config.has_final_layer_norm and config.layer_norm_elementwise_affine

    def leaf(name, rng, shape):
        kind = name.rsplit("/", 1)[-1]
        if kind in ("kernel", "embedding"):
            std = 0.02
            if name == "params/embed_tokens/embedding" and not scale_final_ln:
                std *= math.sqrt(logit_std / natural)
            return rng.standard_normal(shape, np.float32) * np.float32(std)
        if kind == "scale":
            gain = logit_std / natural if name == "params/final_layer_norm/scale" else 1.0
            return np.full(shape, gain, np.float32)
        return np.zeros(shape, np.float32)

    return random_params(OPT(config), seed, leaf, dtype)


# ---- Hugging Face names and checkpoints ------------------------------------------------------


def hf_names(config: OPTConfig) -> hf_checkpoint.NameMap:
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
    Linear weights ``[out, in]``) to this module's params (kernels ``[in, out]``). An
    ``lm_head.weight`` equal to the embedding (every OPT checkpoint) is dropped; an untied one
    is kept."""
    shapes = param_shapes(OPT(config))
    return hf_checkpoint.params_from_state(state, hf_names(config), shapes, dtype=dtype)


def params_to_hf(params, config: OPTConfig, *, prefix: str = "model.", dtype=np.float32) -> dict:
    """The inverse of `params_from_hf`: a Hugging Face style state dict of numpy arrays."""
    return hf_checkpoint.params_to_state(params, hf_names(config), prefix=prefix, dtype=dtype)


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
    state = params_to_hf(params, config, prefix=prefix, dtype=dtype)
    hf_checkpoint.write_checkpoint(path, state, config.to_dict(), num_shards=num_shards)


def load_hf_checkpoint(path: str | os.PathLike, dtype=jnp.float32) -> tuple[OPTConfig, dict]:
    """Reads a local Hugging Face OPT checkpoint directory: ``(config, params)``
    (`lutgemm_jax.models.load_hf_checkpoint` restricted to ``model_type: opt``)."""
    from lutgemm_jax.models.registry import load_hf_checkpoint as load

    return load(path, dtype=dtype, model_types=FAMILY.model_types)


FAMILY = Family(
    name="opt",
    model_types=("opt",),
    config_cls=OPTConfig,
    model_cls=OPT,
    hf_names=hf_names,
    init_params=init_params,
    presets=PRESETS,
    column_parallel=COLUMN_PARALLEL,
    row_parallel=ROW_PARALLEL,
)


__all__ = [
    "COLUMN_PARALLEL",
    "DEFAULT_QUANTIZE_INCLUDE",
    "FAMILY",
    "OPT",
    "PRESETS",
    "ROW_PARALLEL",
    "ByteTokenizer",
    "DecodeState",
    "Generation",
    "HFCheckpointError",
    "HFTokenizer",
    "OPTConfig",
    "Sampling",
    "apply",
    "benchmark_decode",
    "bytes_read_per_token",
    "decode",
    "forward",
    "forward_jit",
    "generate",
    "has_bcq",
    "hf_names",
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
