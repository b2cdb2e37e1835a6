"""Llama-family models from GGUF files (llama.cpp's format): ``load_gguf(path) -> (config,
params, tokenizer)``, quantized tensors converted exactly to uniform BCQ.

The file is memory-mapped (``gguf.GGUFReader``) and converted one tensor at a time, so memory
beyond the result is about one tensor's decoded chunk (`gguf_quants.to_bcq`) or float copy.
Per tensor, by its own GGML type (files mix types: a "Q4_K_M" file holds Q4_K, Q6_K and F32):

* Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K (g = 32) and Q2_K, Q3_K, Q6_K (g = 16) Linear
  weights become uniform `BCQWeight` kernels with the same values (`gguf_quants`);
* F32, F16 and BF16 Linear weights stay dense, or are quantized with ``quantize_dense``;
* other types (IQ*, TQ*, MXFP4, ...) raise `UnsupportedTensorTypeError`, or with ``requantize``
  are dequantized by ``gguf.quants.dequantize`` and quantized with this library's quantizer;
* the token embedding (a lookup table) and the norms are dequantized to float; when the file
  ties the output head to a quantized ``token_embd``, ``lm_head/kernel`` is also that tensor's
  BCQ form, so the head runs through LUT-GEMM as llama.cpp runs it on the quantized blocks
  (likewise a float ``token_embd`` with ``quantize_dense``: the head is its quantized copy).

Architectures ``llama`` (also Mistral, TinyLlama, SmolLM), ``qwen2`` and ``qwen3``. llama.cpp
rotates adjacent pairs for ``llama`` and convert_hf_to_gguf permutes its q/k rows to match;
the rows are put back here (the rotate-half convention of `lutgemm_jax.models.llama`). Qwen
files use rotate-half already and are read as they are. A ``rope_freqs`` tensor (Llama 3.1 /
3.2) becomes the ``llama3`` RoPE settings that reproduce its frequency divisors.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from gguf import GGUFEndian

from lutgemm_jax.config import BCQConfig
from lutgemm_jax.format import BCQWeight
from lutgemm_jax.models import gguf_quants, llama
from lutgemm_jax.models.family import param_shapes
from lutgemm_jax.models.gguf_tokenizer import GGUFTokenizer, build_tokenizer

ARCHITECTURES = ("llama", "qwen2", "qwen3")
"""``general.architecture`` values read (each maps to the Llama-family ``model_type`` of the
same name)."""
PERMUTED_ARCHITECTURES = ("llama",)
"""Architectures whose q/k rows convert_hf_to_gguf permuted for adjacent-pair RoPE."""
DENSE_TYPES = ("F32", "F16", "BF16")
"""Float tensor types, kept dense (or quantized with ``quantize_dense``)."""
LLAMA3_ORIGINAL_CONTEXT = 8192
"""``original_max_position_embeddings`` assumed for a ``rope_freqs`` tensor when the file has
no ``rope.scaling.original_context_length`` (every Llama 3.1/3.2 release uses 8192; only the
divisors matter for the computation, and they are checked)."""


class GGUFError(ValueError):
    """A GGUF file that cannot be loaded: unreadable, truncated or corrupt, an unsupported
    architecture, missing or wrong metadata, a missing tensor or one of the wrong shape. The
    message names the file and the key or tensor."""


class UnsupportedTensorTypeError(GGUFError):
    """A Linear weight whose GGML type has no exact conversion (IQ*, TQ*, MXFP4, ...); the
    message names the tensor and the type and how to opt in to re-quantization."""


def _open(path: str):
    from gguf import GGUFReader

    if not os.path.isfile(path):
        raise GGUFError(f"{path}: no such file")
    try:
        return GGUFReader(path, "r")
    except Exception as e:  # the reader raises ValueError, KeyError, struct and numpy errors
        raise GGUFError(
            f"{path}: not a readable GGUF file, truncated or corrupt ({type(e).__name__}: {e})"
        ) from e


class _Metadata:
    """Typed access to a reader's key-value fields, errors naming the file and the key."""

    def __init__(self, reader: Any, path: str):
        self.fields = reader.fields
        self.path = path

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        """The value of ``key`` as a ``kind`` (int, float, str; a float key may hold an int;
        a per-layer array of equal values counts as one), or ``default`` when absent (no
        default: the key is required)."""
        field = self.fields.get(key)
        if field is None:
            if default is ...:
                raise GGUFError(f"{self.path}: metadata key {key!r} is missing")
            return default
        try:
            value = field.contents()
        except Exception as e:
            raise GGUFError(f"{self.path}: metadata key {key!r} is unreadable ({e})") from e
        if isinstance(value, list) and len(value) > 0 and kind in (int, float):
            if len(set(value)) != 1:
                raise GGUFError(
                    f"{self.path}: metadata key {key!r} varies per layer ({value[:4]}...), "
                    "which this loader does not support"
                )
            value = value[0]
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise GGUFError(
                f"{self.path}: metadata key {key!r} has value {_short(value)} of type "
                f"{type(value).__name__}, expected {kind.__name__}"
            )
        return value

    def positive(self, key: str, default: Any = ...) -> int:
        value = self.get(key, int, default)
        if value is not None and value <= 0:
            raise GGUFError(f"{self.path}: metadata key {key!r} must be positive, got {value}")
        return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _decimal(x: float) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-5 rather than
    9.99999975e-06), the value the converter was given."""
    return float(str(np.float32(x)))


# ---- config ----------------------------------------------------------------------------------


def _rope_freqs_settings(divisors: np.ndarray, base: llama.LlamaConfig, original: int, where):
    """``LlamaConfig`` fields whose RoPE reproduces llama.cpp's ``rope_freqs`` divisors:
    ``inv_freq[i] = theta^(-2i/d) / divisors[i]``.

    llama3 scaling divides each frequency by 1, by ``factor``, or interpolates between them
    with a weight linear in the frequency and clipped to [0, 1]; two numbers (slope and
    intercept) set that line, so the low/high frequency factors are fitted for the given
    ``original`` context (the standard 1 and 4 when they fit)."""
    d = base.head_dim
    divisors = np.asarray(divisors, np.float64)
    if divisors.shape != (d // 2,) or not np.all(np.isfinite(divisors)) or divisors.min() <= 0:
        raise GGUFError(
            f"{where}: tensor 'rope_freqs.weight' must hold {d // 2} positive divisors (head_dim "
            f"{d} / 2), got shape {list(divisors.shape)}"
        )
    want = base.rope_theta ** (-np.arange(0, d, 2) / d) / divisors
    factor = float(divisors.max())

    def fits(**fields) -> llama.LlamaConfig | None:
        cfg = dataclasses.replace(base, **fields)
        return cfg if np.allclose(llama.inv_frequencies(cfg), want, rtol=1e-5, atol=0) else None

    if np.allclose(divisors, 1.0, rtol=1e-6):
        return base
    if np.allclose(divisors, factor, rtol=1e-6):
        return fits(rope_type="linear", rope_factor=_decimal(factor))
    llama3 = dict(
        rope_type="llama3", rope_factor=_decimal(factor),
        rope_original_max_position_embeddings=original,
    )  # fmt: skip
    found = fits(**llama3, rope_low_freq_factor=1.0, rope_high_freq_factor=4.0)
    inv = base.rope_theta ** (-np.arange(0, d, 2) / d)
    mixed = (divisors > 1 + 1e-6) & (divisors < factor * (1 - 1e-6))
    if found is None and mixed.sum() >= 2:
        smooth = (1 / divisors[mixed] - 1 / factor) / (1 - 1 / factor)
        slope, intercept = np.polyfit(inv[mixed], smooth, 1)
        width = original / (2 * math.pi * slope)  # high_freq_factor - low_freq_factor
        low = -intercept * width
        found = fits(**llama3, rope_low_freq_factor=low, rope_high_freq_factor=low + width)
    if found is None:
        raise GGUFError(
            f"{where}: tensor 'rope_freqs.weight' does not match llama3 RoPE scaling "
            f"(divisors {np.round(divisors, 4).tolist()[:8]}...); no other per-frequency "
            "scaling is supported"
        )
    return found


def config_from_gguf(reader: Any, path: str = "<gguf>") -> llama.LlamaConfig:
    """The `LlamaConfig` described by a GGUF file's metadata (and tensor shapes: vocabulary,
    tied head, biases, q/k norms).

    Raises:
      GGUFError: an unsupported architecture or RoPE scaling, or missing / ill-typed keys,
        naming the key.
    """
    meta = _Metadata(reader, path)
    if reader.endianess != GGUFEndian.LITTLE:
        raise GGUFError(f"{path}: a big-endian GGUF file; only little-endian files are read")
    shards = meta.positive("split.count", 1)
    if shards > 1:
        raise GGUFError(
            f"{path}: shard {meta.get('split.no', int, 0) + 1} of a file split in {shards}; "
            "merge the shards first (llama.cpp: llama-gguf-split --merge FIRST_SHARD OUT.gguf)"
        )
    arch = meta.get("general.architecture", str)
    if arch not in ARCHITECTURES:
        raise GGUFError(
            f"{path}: general.architecture {arch!r} is not supported (supported: "
            f"{list(ARCHITECTURES)}; Mistral files are 'llama')"
        )
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise GGUFError(f"{path}: tensor 'token_embd.weight' is missing")
    hidden = meta.positive(f"{arch}.embedding_length")
    heads = meta.positive(f"{arch}.attention.head_count")
    head_dim = meta.positive(f"{arch}.attention.key_length", None)
    value_dim = meta.positive(f"{arch}.attention.value_length", None)
    if head_dim is None:
        if hidden % heads:
            raise GGUFError(
                f"{path}: {arch}.embedding_length {hidden} is not a multiple of "
                f"{arch}.attention.head_count {heads} and no key_length is given"
            )
        head_dim = hidden // heads
    if value_dim not in (None, head_dim):
        raise GGUFError(
            f"{path}: {arch}.attention.value_length {value_dim} differs from key_length "
            f"{head_dim} (not supported)"
        )
    rope_dims = meta.positive(f"{arch}.rope.dimension_count", None)
    if rope_dims not in (None, head_dim):
        raise GGUFError(
            f"{path}: {arch}.rope.dimension_count {rope_dims} != head_dim {head_dim}: partial "
            "rotary embeddings are not supported"
        )
    embd = tensors["token_embd.weight"]
    vocab = int(embd.shape[1]) if len(embd.shape) == 2 else 0
    if vocab <= 0 or int(embd.shape[0]) != hidden:
        raise GGUFError(
            f"{path}: tensor 'token_embd.weight' has shape {[int(x) for x in embd.shape]}, "
            f"expected [{hidden}, vocab] ({arch}.embedding_length {hidden})"
        )
    fields: dict[str, Any] = dict(
        model_type=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=meta.positive(f"{arch}.feed_forward_length"),
        num_hidden_layers=meta.positive(f"{arch}.block_count"),
        num_attention_heads=heads,
        num_key_value_heads=meta.positive(f"{arch}.attention.head_count_kv", heads),
        head_dim=head_dim,
        rms_norm_eps=_decimal(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", float)),
        max_position_embeddings=meta.positive(f"{arch}.context_length"),
        rope_theta=_decimal(meta.get(f"{arch}.rope.freq_base", float, 10000.0)),
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id", int, None),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id", int, None),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id", int, None),
    )
    if arch == "qwen2":
        fields["qkv_bias"] = True
    elif arch == "qwen3":
        fields["qk_norm"] = True
    else:
        fields["attention_bias"] = "blk.0.attn_q.bias" in tensors
        fields["mlp_bias"] = "blk.0.ffn_up.bias" in tensors
    scaling = meta.get(f"{arch}.rope.scaling.type", str, "none")
    if scaling == "linear":
        fields.update(
            rope_type="linear",
            rope_factor=_decimal(meta.get(f"{arch}.rope.scaling.factor", float)),
        )
    elif scaling != "none":
        raise GGUFError(
            f"{path}: {arch}.rope.scaling.type {scaling!r} is not supported (none, linear, or "
            "llama3 through a rope_freqs tensor)"
        )
    try:
        config = llama.LlamaConfig(**fields)
    except (ValueError, TypeError) as e:
        raise GGUFError(f"{path}: inconsistent metadata: {e}") from None
    if "rope_freqs.weight" in tensors:
        if scaling != "none":
            raise GGUFError(f"{path}: both a rope_freqs tensor and rope scaling {scaling!r}")
        original = meta.positive(
            f"{arch}.rope.scaling.original_context_length", LLAMA3_ORIGINAL_CONTEXT
        )
        divisors = _dense(tensors["rope_freqs.weight"], path)
        config = _rope_freqs_settings(divisors.reshape(-1), config, original, path)
    return config


# ---- tensors ---------------------------------------------------------------------------------


def _type_name(t: Any) -> str:
    return t.tensor_type.name


def _dense(t: Any, path: str, rows: np.ndarray | None = None) -> np.ndarray:
    """float32 values of tensor ``t`` (or of ``rows``, its data re-ordered), numpy shape
    (``[N, K]`` for a matrix), by ``gguf.quants.dequantize``."""
    from gguf import quants

    try:
        return np.asarray(quants.dequantize(t.data if rows is None else rows, t.tensor_type),
                          np.float32)  # fmt: skip
    except NotImplementedError as e:
        raise UnsupportedTensorTypeError(
            f"{path}: tensor {t.name!r} of type {_type_name(t)} cannot be dequantized ({e})"
        ) from e


def _unpermute(rows: np.ndarray, heads: int, name: str, path: str) -> np.ndarray:
    """Undoes convert_hf_to_gguf's q/k row permutation on ``rows [N, ...]`` (``N = heads *
    head_dim``): GGUF row ``h*hd + 2i + j`` is Hugging Face row ``h*hd + j*hd/2 + i``. Rows are
    whole output features, so raw quant blocks move unchanged."""
    n = rows.shape[0]
    if n % (2 * heads):
        raise GGUFError(f"{path}: tensor {name!r} has {n} rows, not {heads} heads of even size")
    hd = n // heads
    tail = rows.shape[1:]
    return rows.reshape(heads, hd // 2, 2, *tail).swapaxes(1, 2).reshape(n, *tail)


@dataclasses.dataclass(frozen=True)
class _Options:
    path: str
    dtype: Any
    scale_dtype: Any
    layout: str
    quantize_dense: BCQConfig | None
    requantize: BCQConfig | None


def _kernel(t: Any, rows: np.ndarray, opts: _Options) -> BCQWeight | Any:
    """The ``[K, N]`` kernel of a Linear weight tensor (``rows``: its data ``[N, ...]``, already
    un-permuted)."""
    from lutgemm_jax.quantize import quantize

    kind = _type_name(t)
    if t.tensor_type in gguf_quants.SUPPORTED_TYPES:
        return gguf_quants.to_bcq(rows, t.tensor_type, dtype=opts.scale_dtype, layout=opts.layout)
    if kind in DENSE_TYPES:
        dense = _dense(t, opts.path, rows).T
        if opts.quantize_dense is None:
            return jnp.asarray(dense, opts.dtype)
        return quantize(dense, config=opts.quantize_dense.replace(layout=opts.layout))
    if opts.requantize is None:
        supported = ", ".join(x.name for x in gguf_quants.SUPPORTED_TYPES)
        raise UnsupportedTensorTypeError(
            f"{opts.path}: tensor {t.name!r} has type {kind}, which has no exact BCQ form "
            f"(exact: {supported}; dense: {', '.join(DENSE_TYPES)}). Pass "
            "requantize=BCQConfig(...) to dequantize it and re-quantize it with this library's "
            "quantizer (approximate)"
        )
    dense = _dense(t, opts.path, rows).T
    return quantize(dense, config=opts.requantize.replace(layout=opts.layout))


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _gguf_names(config: llama.LlamaConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """GGUF tensor name -> (param path, is a Linear weight), from the family's Hugging Face
    names through gguf's own name table."""
    import gguf

    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[config.model_type]
    table = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    out = {}
    for hf, (path, transpose) in llama.hf_names(config).items():
        key = hf if hf == "lm_head.weight" else "model." + hf
        name = table.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise AssertionError(f"gguf has no name for {key}")  # a gguf-py table change
        out[name] = (path, transpose)
    return out


def load_gguf(
    path: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    scale_dtype: Any = jnp.float32,
    layout: str = "auto",
    quantize_dense: BCQConfig | None = None,
    requantize: BCQConfig | None = None,
    tokenizer: bool = True,
    progress: bool = True,
) -> tuple[llama.LlamaConfig, dict, GGUFTokenizer | None]:
    """Loads a Llama-family GGUF file: ``(config, params, tokenizer)``.

    Args:
      path: the ``.gguf`` file (one file; split ``-00001-of-0000N`` files are not read).
      dtype: dtype of the dense params (embedding, norms, biases, dense kernels).
      scale_dtype: storage dtype of the BCQ scales and offsets: float32 (default) is exact
        for every supported type (the dequantized weights equal ``gguf.quants.dequantize``);
        float16 is the compact choice (1 bit per weight less at g = 32, 2 at g = 16) and
        rounds the K-quant scales (docs/gguf.md has the measured errors).
      layout: sign layout of the BCQ kernels: ``"auto"`` (the CPU layout on a CPU backend),
        ``"canonical"`` or ``"cpu"``.
      quantize_dense: None keeps F32/F16/BF16 Linear weights dense; a `BCQConfig` quantizes
        them with `lutgemm_jax.quantize` (and a head tied to a float embedding gets its own
        quantized ``lm_head/kernel``; the embedding lookup stays float).
      requantize: None makes Linear weights of types without an exact form (IQ*, TQ*, MXFP4,
        ...) an `UnsupportedTensorTypeError`; a `BCQConfig` dequantizes them with
        ``gguf.quants.dequantize`` and quantizes them with it (approximate).
      tokenizer: rebuild the tokenizer from the ``tokenizer.ggml.*`` metadata
        (`gguf_tokenizer`); False returns None in its place.
      progress: a tqdm progress bar over the tensors.

    Returns:
      ``(config, params, tokenizer)``: a `LlamaConfig`, the params tree of
      `lutgemm_jax.models.llama.Llama` with `BCQWeight` kernels, and a `GGUFTokenizer` (or
      None).

    Raises:
      GGUFError: the file is missing, unreadable, truncated or corrupt; an unsupported
        architecture, RoPE scaling or tokenizer; missing or ill-typed metadata; a missing
        tensor or one whose shape does not match the metadata; naming the file and the key
        or tensor.
      UnsupportedTensorTypeError: a Linear weight of a type without an exact form and no
        ``requantize``.
    """
    path = os.fspath(path)
    layout = BCQConfig(layout=layout).resolve_layout()
    reader = _open(path)
    config = config_from_gguf(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    names = _gguf_names(config)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise GGUFError(
            f"{path}: {len(missing)} tensors the metadata implies are missing, e.g. {missing[:4]}"
        )
    shapes = param_shapes(llama.Llama(config))
    opts = _Options(path, dtype, scale_dtype, layout, quantize_dense, requantize)
    permute = config.model_type in PERMUTED_ARCHITECTURES
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    params: dict = {}
    order = sorted(names, key=lambda n: tensors[n].data_offset)  # read the file front to back
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = sum(int(tensors[n].n_bytes) for n in order)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(path))
    for name in order:
        t = tensors[name]
        param_path, is_linear = names[name]
        want = tuple(shapes[param_path])
        ne = tuple(int(x) for x in t.shape)
        if ne != (want if is_linear else want[::-1]):
            expect = list(want if is_linear else want[::-1])
            raise GGUFError(
                f"{path}: tensor {name!r} has shape {list(ne)}, the metadata implies {expect}"
            )
        rows = t.data
        kind = name.split(".")[-2]
        if permute and kind in heads:
            rows = _unpermute(np.asarray(rows), heads[kind], name, path)
        if is_linear:
            value = _kernel(t, rows, opts)
        else:
            value = jnp.asarray(_dense(t, path, rows).reshape(want), dtype)
        _set(params, param_path, value)
        if (
            name == "token_embd.weight"
            and config.tie_word_embeddings
            and (
                t.tensor_type in gguf_quants.SUPPORTED_TYPES
                or (_type_name(t) in DENSE_TYPES and quantize_dense is not None)
            )
        ):
            _set(params, ("lm_head", "kernel"), _kernel(t, t.data, opts))
        if bar is not None:
            bar.update(int(t.n_bytes))
    if bar is not None:
        bar.close()
    tok = _tokenizer(reader, config, path) if tokenizer else None
    return config, params, tok


def _tokenizer(reader: Any, config: llama.LlamaConfig, path: str) -> GGUFTokenizer:
    prefix = "tokenizer.ggml."
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith(prefix):
            try:
                meta[key[len(prefix) :]] = field.contents()
            except Exception as e:
                raise GGUFError(f"{path}: metadata key {key!r} is unreadable ({e})") from e
    try:
        return build_tokenizer(meta, default_add_bos=config.add_bos_token)
    except (ValueError, TypeError) as e:
        raise GGUFError(
            f"{path}: cannot rebuild the tokenizer: {e} (tokenizer=False skips it)"
        ) from e


__all__ = [
    "ARCHITECTURES",
    "DENSE_TYPES",
    "PERMUTED_ARCHITECTURES",
    "GGUFError",
    "UnsupportedTensorTypeError",
    "config_from_gguf",
    "load_gguf",
]
