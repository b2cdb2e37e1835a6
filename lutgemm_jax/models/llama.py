"""The Llama family as a Flax linen decoder, ready for LUT-GEMM: Llama 2, Llama 3/3.1/3.2,
TinyLlama, SmolLM, Mistral, Qwen2/2.5 and Qwen3 (``model_type`` llama, mistral, qwen2, qwen3).

Pre-RMSNorm blocks; rotary position embeddings in Hugging Face's rotate-half convention
(``default``, ``linear`` and ``llama3`` frequency scaling); grouped-query attention (any
``num_key_value_heads`` dividing ``num_attention_heads``, explicit ``head_dim``) through
`jax.nn.dot_product_attention` with the shared KV cache; SwiGLU MLP; tied or untied embeddings.
Variants are config fields: q/k/v (and o) biases (Qwen2, ``attention_bias``), per-head RMSNorm of
q and k before RoPE (Qwen3), a sliding attention window (Mistral). Every Linear is a plain
``nn.Dense`` named like its Hugging Face twin, so `lutgemm_jax.linen.quantize_params` and
`lutgemm_jax.linen.intercept_dense` work unchanged.

Parameter tree (``params`` collection)::

    embed_tokens/embedding                        [vocab, hidden]
    layers_{i}/input_layernorm/scale              [hidden]
    layers_{i}/self_attn/{q,k,v}_proj/kernel      [hidden, heads*hd] / [hidden, kv_heads*hd]
                                  (/bias with qkv biases)
    layers_{i}/self_attn/o_proj/kernel            [heads*hd, hidden]
    layers_{i}/self_attn/{q,k}_norm/scale         [hd]        (Qwen3)
    layers_{i}/post_attention_layernorm/scale     [hidden]
    layers_{i}/mlp/{gate,up}_proj/kernel          [hidden, intermediate]
    layers_{i}/mlp/down_proj/kernel               [intermediate, hidden]
    norm/scale                                    [hidden]
    lm_head/kernel                                [hidden, vocab]  (untied models, or untied
                                                                    to quantize the head)
    .../{q,k,v,o,gate,up}_proj/input_perm         int32 [in]  (act-order GPTQ imports only:
                                                  the Linear reads x[..., input_perm])
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lutgemm_jax.models import kv_cache
from lutgemm_jax.models.family import Family, random_params
from lutgemm_jax.models.hf_checkpoint import NameMap
from lutgemm_jax.models.hf_config import rope_parameters
from lutgemm_jax.models.prequantized import INPUT_PERM

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ROPE_TYPES = ("default", "linear", "llama3")
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW_PARALLEL = ("o_proj", "down_proj")


# ---- configuration ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The fields of a Llama-family ``config.json`` that define the computation (frozen and
    hashable: a static argument of ``jax.jit``)."""

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: = num_attention_heads
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0  # linear and llama3
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_original_max_position_embeddings: int = 8192  # llama3
    attention_bias: bool = False  # bias on q, k, v and o (Llama's ``attention_bias``)
    qkv_bias: bool = False  # bias on q, k, v only (Qwen2)
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3)
    sliding_window: int | None = None  # attend to the most recent positions only (Mistral)
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None

    def __post_init__(self):
        set_ = _setter(self)
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {MODEL_TYPES}")
        if self.num_key_value_heads is None:
            set_("num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                    f"{self.num_attention_heads} and head_dim is not given"
                )
            set_("head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads {self.num_key_value_heads} does not divide "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"rope_type {self.rope_type!r} is not supported (supported: {ROPE_TYPES})"
            )
        if self.hidden_act not in ("silu", "swish"):
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1 or None, got {self.sliding_window}")
        if isinstance(self.eos_token_id, list):
            set_("eos_token_id", tuple(self.eos_token_id))

    @property
    def add_bos_token(self) -> bool:
        """Llama and Mistral tokenizers start sequences with bos; Qwen's do not."""
        return self.model_type in ("llama", "mistral")

    @property
    def has_qkv_bias(self) -> bool:
        return self.attention_bias or self.qkv_bias

    def num_params(self) -> int:
        """Parameter count (a tied lm_head counted once)."""
        e, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        layer = e * (q + 2 * kv) + q * e + 3 * e * f + 2 * e
        layer += (q + 2 * kv) * self.has_qkv_bias + e * self.attention_bias
        layer += (2 * f + e) * self.mlp_bias + 2 * hd * self.qk_norm
        head = 0 if self.tie_word_embeddings else self.vocab_size * e
        return self.vocab_size * e + self.num_hidden_layers * layer + e + head

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        """Builds a config from a Hugging Face ``config.json`` dict.

        Raises:
          ValueError: a ``model_type`` or a feature this implementation does not compute
            (other rope types, partial rotary factors, per-layer sliding windows, other
            activations), naming the key. A ``quantization_config`` is checked by the loader
            (`lutgemm_jax.models.prequantized`), not here."""
        mt = d.get("model_type")
        if mt not in MODEL_TYPES:
            raise ValueError(f"model_type {mt!r} is not a Llama-family type {MODEL_TYPES}")
        _check_unsupported(d)
        rope = rope_parameters(d)
        ids = ("bos_token_id", "eos_token_id", "pad_token_id")  # null is meaningful for these
        kw: dict[str, Any] = {
            k: d[k]
            for k in (f.name for f in dataclasses.fields(cls))
            if d.get(k) is not None or (k in ids and k in d)
        }
        for k in ("rope_theta", "rope_type", "rope_factor", "sliding_window", "qkv_bias"):
            kw.pop(k, None)
        kind = rope["rope_type"]

        def scaling(key: str) -> float:
            if rope.get(key) is None:
                raise ValueError(f"rope scaling {kind!r} needs {key!r} in rope_scaling")
            return float(rope[key])

        kw["rope_theta"] = float(rope["rope_theta"])
        kw["rope_type"] = kind
        if kind in ("linear", "llama3"):
            kw["rope_factor"] = scaling("factor")
        if kind == "llama3":
            kw["rope_low_freq_factor"] = scaling("low_freq_factor")
            kw["rope_high_freq_factor"] = scaling("high_freq_factor")
            kw["rope_original_max_position_embeddings"] = int(
                scaling("original_max_position_embeddings")
            )
        if mt == "mistral":
            kw["sliding_window"] = d.get("sliding_window")
        if mt == "qwen2":
            kw["qkv_bias"] = True
            kw.pop("attention_bias", None)
        if mt == "qwen3":
            kw["qk_norm"] = True
        if mt in ("mistral", "qwen2"):
            kw.pop("mlp_bias", None)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """A Hugging Face style ``config.json`` dict (legacy ``rope_theta`` / ``rope_scaling``
        spelling, read by every transformers version)."""
        d = dataclasses.asdict(self)
        for k in list(d):
            if k.startswith("rope_") and k != "rope_theta":
                del d[k]
        for k in ("qkv_bias", "qk_norm"):
            del d[k]
        if self.model_type not in ("llama", "qwen3"):
            d.pop("attention_bias")
        if self.model_type != "llama":
            d.pop("mlp_bias")
        if self.model_type != "mistral":
            d.pop("sliding_window")
        if isinstance(d["eos_token_id"], tuple):
            d["eos_token_id"] = list(d["eos_token_id"])
        scaling = None
        if self.rope_type == "linear":
            scaling = {"rope_type": "linear", "factor": self.rope_factor}
        elif self.rope_type == "llama3":
            scaling = {
                "rope_type": "llama3",
                "factor": self.rope_factor,
                "low_freq_factor": self.rope_low_freq_factor,
                "high_freq_factor": self.rope_high_freq_factor,
                "original_max_position_embeddings": self.rope_original_max_position_embeddings,
            }
        arch = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
        d.update(
            rope_scaling=scaling,
            architectures=[f"{arch[self.model_type]}ForCausalLM"],
            torch_dtype="float32",
        )
        return d

    @classmethod
    def preset(cls, name: str, **overrides) -> LlamaConfig:
        """Published shapes: see `PRESETS` (``tinyllama-1.1b``, ``llama-3.2-1b``, ...)."""
        key = name.lower().split("/")[-1]
        if key not in PRESETS:
            raise ValueError(f"unknown Llama-family preset {name!r}; choose one of {list(PRESETS)}")
        return dataclasses.replace(PRESETS[key], **overrides)


def _setter(obj):
    """Setter for fields of a frozen dataclass during ``__post_init__``."""
    return lambda name, value: object.__setattr__(obj, name, value)


def _check_unsupported(d: dict[str, Any]) -> None:
    rope = rope_parameters(d)
    if rope["rope_type"] not in ROPE_TYPES:
        raise ValueError(
            f"rope type {rope['rope_type']!r} is not supported (supported: {ROPE_TYPES})"
        )
    if d.get("partial_rotary_factor", 1.0) not in (None, 1, 1.0):
        raise ValueError(f"partial_rotary_factor {d['partial_rotary_factor']} is not supported")
    if d.get("use_sliding_window"):
        raise ValueError("use_sliding_window: per-layer sliding windows are not supported")
    layer_types = d.get("layer_types") or []
    if d.get("model_type") != "mistral" and any(t != "full_attention" for t in layer_types):
        kinds = sorted(set(layer_types))
        raise ValueError(f"layer_types {kinds}: only full_attention is supported")
    act = d.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"hidden_act {act!r} is not supported (only 'silu')")


def _preset(mt, e, f, layers, heads, kv, vocab, theta, ctx, **kw) -> LlamaConfig:
    return LlamaConfig(
        model_type=mt, hidden_size=e, intermediate_size=f, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab, rope_theta=theta,
        max_position_embeddings=ctx, **kw,
    )  # fmt: skip


_LLAMA3 = dict(
    rope_type="llama3", rope_factor=32.0, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
    rope_original_max_position_embeddings=8192,
)  # fmt: skip
PRESETS: dict[str, LlamaConfig] = {
    "tinyllama-1.1b": _preset("llama", 2048, 5632, 22, 32, 4, 32000, 1e4, 2048, rms_norm_eps=1e-5),
    "llama-3.2-1b": _preset(
        "llama", 2048, 8192, 16, 32, 8, 128256, 5e5, 131072, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001, **_LLAMA3,
    ),
    "qwen2.5-0.5b": _preset(
        "qwen2", 896, 4864, 24, 14, 2, 151936, 1e6, 32768, qkv_bias=True,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643,
    ),
    "qwen3-0.6b": _preset(
        "qwen3", 1024, 3072, 28, 16, 8, 151936, 1e6, 40960, head_dim=128, qk_norm=True,
        tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
    ),
    "smollm2-135m": _preset(
        "llama", 576, 1536, 30, 9, 3, 49152, 1e5, 8192, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
    ),
    "llama-2-7b": _preset("llama", 4096, 11008, 32, 32, 32, 32000, 1e4, 4096, rms_norm_eps=1e-5),
    "mistral-7b": _preset(
        "mistral", 4096, 14336, 32, 32, 8, 32000, 1e4, 32768, rms_norm_eps=1e-5,
        sliding_window=4096,
    ),
}  # fmt: skip
"""Shapes of published checkpoints (checkpoint-formats.md section 5.5); weights are random."""


# ---- rotary embeddings -----------------------------------------------------------------------


def inv_frequencies(config: LlamaConfig) -> np.ndarray:
    """``[head_dim / 2]`` float32 inverse frequencies after the config's rope scaling."""
    d = config.head_dim
    inv = config.rope_theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    if config.rope_type == "linear":
        inv = inv / config.rope_factor
    elif config.rope_type == "llama3":
        factor, orig = config.rope_factor, config.rope_original_max_position_embeddings
        low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
        wavelen = 2 * math.pi / inv
        smooth = (orig / wavelen - low) / (high - low)
        mixed = (1 - smooth) * inv / factor + smooth * inv
        low_freq = np.where(wavelen > orig / low, inv / factor, mixed)
        inv = np.where(wavelen < orig / high, inv, low_freq)
    return inv.astype(np.float32)


def rotary(positions: jax.Array, config: LlamaConfig, dtype) -> tuple[jax.Array, jax.Array]:
    """``cos, sin [B, T, 1, head_dim]`` for int positions ``[B, T]`` (angles in float32)."""
    angle = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_frequencies(config))
    emb = jnp.concatenate([angle, angle], axis=-1)[:, :, None, :]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on ``x [B, T, heads, hd]``: pairs ``(i, i + hd/2)`` rotate together."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


# ---- the model -------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps)`` over the last axis, in float32, cast back to the
    activation dtype, times a learned ``scale`` (Hugging Face ``LlamaRMSNorm``'s order)."""

    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return y.astype(self.dtype) * scale.astype(self.dtype)


def linear(parent: nn.Module, features: int, name: str, bias: bool, dtype: Any):
    """The ``nn.Dense`` child ``name`` of ``parent``, preceded by the gather
    ``x[..., input_perm]`` when the params hold an ``input_perm`` for it (an act-order GPTQ
    Linear whose rows were permuted to make its groups contiguous;
    `lutgemm_jax.models.prequantized`)."""
    layer = nn.Dense(features, use_bias=bias, dtype=dtype, name=name)
    perm = parent.variables.get("params", {}).get(name, {}).get(INPUT_PERM)
    if perm is None:
        return layer
    return lambda x: layer(jnp.take(x, perm, axis=-1))


class LlamaAttention(nn.Module):
    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, mask, cache=None, cache_index=0):
        c = self.config
        b, t, _ = x.shape
        heads, kv_heads, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim

        def dense(features, name, bias):
            return linear(self, features, name, bias, self.dtype)

        q = dense(heads * hd, "q_proj", c.has_qkv_bias)(x).reshape(b, t, heads, hd)
        k = dense(kv_heads * hd, "k_proj", c.has_qkv_bias)(x).reshape(b, t, kv_heads, hd)
        v = dense(kv_heads * hd, "v_proj", c.has_qkv_bias)(x).reshape(b, t, kv_heads, hd)
        if c.qk_norm:
            q = RMSNorm(c.rms_norm_eps, self.dtype, name="q_norm")(q)
            k = RMSNorm(c.rms_norm_eps, self.dtype, name="k_norm")(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k, v, cache = kv_cache.update(cache, k, v, cache_index)
        # Query head h reads key/value head h // (heads / kv_heads), Hugging Face's repeat_kv.
        out = jax.nn.dot_product_attention(
            q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, scale=hd**-0.5
        )
        out = dense(c.hidden_size, "o_proj", c.attention_bias)(out.reshape(b, t, heads * hd))
        return out, cache


class LlamaMLP(nn.Module):
    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config

        def dense(features, name):
            return linear(self, features, name, c.mlp_bias, self.dtype)

        gate = dense(c.intermediate_size, "gate_proj")(x)
        up = dense(c.intermediate_size, "up_proj")(x)
        return dense(c.hidden_size, "down_proj")(jax.nn.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, cos, sin, mask, cache=None, cache_index=0):
        c = self.config
        x = RMSNorm(c.rms_norm_eps, self.dtype, name="input_layernorm")(h)
        x, cache = LlamaAttention(c, self.dtype, name="self_attn")(
            x, cos, sin, mask, cache, cache_index
        )
        h = h + x
        x = RMSNorm(c.rms_norm_eps, self.dtype, name="post_attention_layernorm")(h)
        return h + LlamaMLP(c, self.dtype, name="mlp")(x), cache


class Llama(nn.Module):
    """A Llama-family decoder with its language-model head (``LlamaForCausalLM`` and kin).

    ``__call__(input_ids, position_ids, key_mask, cache=None, cache_index=0)`` follows the
    shared convention (`lutgemm_jax.models.family`): ints ``[B, T]``, bool ``key_mask [B, S]``,
    an optional `kv_cache.KVCache`; returns ``(logits [B, T, vocab] float32, cache or None)``.

    The lm_head is ``lm_head/kernel`` when the config is untied or the params hold one
    (`quantize_decoder.untie_lm_head`), else the transposed token embedding.
    """

    config: LlamaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, position_ids, key_mask, cache=None, cache_index=0):
        c = self.config
        t = input_ids.shape[1]
        embed = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            dtype=self.dtype,
            embedding_init=nn.initializers.normal(0.02),
            name="embed_tokens",
        )
        h = embed(input_ids)
        mask = kv_cache.attention_mask(key_mask, cache_index, t, c.sliding_window)
        cos, sin = rotary(position_ids, c, self.dtype)
        new_cache = [] if cache is not None else None
        for i in range(c.num_hidden_layers):
            layer_cache = cache[i] if cache is not None else None
            h, layer_cache = LlamaDecoderLayer(c, self.dtype, name=f"layers_{i}")(
                h, cos, sin, mask, layer_cache, cache_index
            )
            if cache is not None:
                new_cache.append(layer_cache)
        h = RMSNorm(c.rms_norm_eps, self.dtype, name="norm")(h)
        if not c.tie_word_embeddings or "lm_head" in self.variables.get("params", {}):
            logits = linear(self, c.vocab_size, "lm_head", False, self.dtype)(h)
        else:
            logits = embed.attend(h)
        return logits.astype(jnp.float32), new_cache


# ---- random weights and Hugging Face names ---------------------------------------------------


def init_params(
    config: LlamaConfig, seed: int = 0, *, logit_std: float = 4.0, dtype=jnp.float32
) -> dict:
    """Deterministic random parameters with non-degenerate logits: Linears and embeddings
    normal with std 0.02, biases 0.02-std too (so bias paths are exercised), norms one except
    the final norm, scaled so the logits' std is about ``logit_std`` (a 0.02-std head alone
    gives near-uniform softmaxes, where top-1 agreement means nothing)."""
    gain = logit_std / (0.02 * math.sqrt(config.hidden_size))

    def leaf(name, rng, shape):
        kind = name.rsplit("/", 1)[-1]
        if kind in ("kernel", "embedding", "bias"):
            return rng.standard_normal(shape, np.float32) * np.float32(0.02)
        return np.full(shape, gain if name == "params/norm/scale" else 1.0, np.float32)

    return random_params(Llama(config), seed, leaf, dtype)


def hf_names(config: LlamaConfig) -> NameMap:
    """Hugging Face tensor name (no ``model.`` prefix) -> (param path, transpose?)."""
    names: NameMap = {
        "embed_tokens.weight": (("embed_tokens", "embedding"), False),
        "norm.weight": (("norm", "scale"), False),
    }
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = (("lm_head", "kernel"), True)

    def linear(hf, ours, bias):
        names[f"{hf}.weight"] = ((*ours, "kernel"), True)
        if bias:
            names[f"{hf}.bias"] = ((*ours, "bias"), False)

    for i in range(config.num_hidden_layers):
        hf, ours = f"layers.{i}", f"layers_{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            names[f"{hf}.{norm}.weight"] = ((ours, norm, "scale"), False)
        for proj in ("q_proj", "k_proj", "v_proj"):
            linear(f"{hf}.self_attn.{proj}", (ours, "self_attn", proj), config.has_qkv_bias)
        linear(f"{hf}.self_attn.o_proj", (ours, "self_attn", "o_proj"), config.attention_bias)
        if config.qk_norm:
            for norm in ("q_norm", "k_norm"):
                names[f"{hf}.self_attn.{norm}.weight"] = ((ours, "self_attn", norm, "scale"), False)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            linear(f"{hf}.mlp.{proj}", (ours, "mlp", proj), config.mlp_bias)
    return names


FAMILY = Family(
    name="llama",
    model_types=MODEL_TYPES,
    config_cls=LlamaConfig,
    model_cls=Llama,
    hf_names=hf_names,
    init_params=init_params,
    presets=PRESETS,
    column_parallel=COLUMN_PARALLEL,
    row_parallel=ROW_PARALLEL,
)


__all__ = [
    "COLUMN_PARALLEL",
    "FAMILY",
    "MODEL_TYPES",
    "PRESETS",
    "ROW_PARALLEL",
    "Llama",
    "LlamaConfig",
    "apply_rotary",
    "hf_names",
    "init_params",
    "inv_frequencies",
    "rotary",
]
