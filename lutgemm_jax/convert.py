"""Shared logic of the Flax integrations (`lutgemm_jax.linen`, `lutgemm_jax.nnx`).

* `dense_apply`: ``y = lut_gemm(x, W) (+ LoRA) (+ bias)`` with `flax.linen.Dense`'s dtype rules;
* `path_matches`: the ``include`` / ``exclude`` layer selection;
* `quantize_kernel`: quantizes one dense kernel ``[..., K, N]`` (leading axes = a stack);
* `ConversionSummary`: layers converted, bytes before and after, compression ratio.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import dtypes as flax_dtypes

from lutgemm_jax.format import BCQWeight
from lutgemm_jax.ops import lut_gemm
from lutgemm_jax.quantize import quantize
from lutgemm_jax.sharding import shard_like

PathFilter = str | Callable[[str], bool] | None
"""A layer selector: a regular expression (``re.search`` on the ``/``-joined path), a
predicate ``path -> bool``, or ``None`` (for ``include``: everything; for ``exclude``: nothing)."""


def path_matches(path: str, include: PathFilter, exclude: PathFilter) -> bool:
    """True if ``path`` is selected by ``include`` and not by ``exclude``."""

    def hit(selector: PathFilter, default: bool) -> bool:
        if selector is None:
            return default
        if isinstance(selector, str):
            return re.search(selector, path) is not None
        return bool(selector(path))

    return hit(include, True) and not hit(exclude, False)


def quantize_kernel(
    kernel: jax.Array,
    *,
    bits: int,
    group_size: int | None,
    method: str,
    alpha_dtype: Any = jnp.float32,
    **quantize_kwargs: Any,
) -> BCQWeight:
    """Quantizes a dense kernel ``[K, N]`` (or a stack ``[..., K, N]``) to a `BCQWeight`.

    A stack (e.g. the kernels of an ``nn.scan``-ned layer, ``[L, K, N]``) is quantized one
    ``[K, N]`` slice at a time; the result's arrays get the same leading axes. A ``[K, N]``
    kernel sharded over several devices (a `NamedSharding`) gives packed arrays sharded the same
    way along K and N (`lutgemm_jax.sharding.packed_specs`).
    """

    def one(w: jax.Array) -> BCQWeight:
        return quantize(w, bits, group_size, method, alpha_dtype=alpha_dtype, **quantize_kwargs)

    if len(kernel.shape) < 2:
        raise ValueError(f"quantize_kernel: kernel must be [..., K, N], got {kernel.shape}")
    lead = tuple(kernel.shape[:-2])
    if not lead:
        # A multi-device kernel is quantized on one device (the quantizer's column chunks are
        # not sharding-aware), then the packed arrays are placed like it (sharding.shard_like).
        sharding = getattr(kernel, "sharding", None)
        if sharding is not None and sharding.num_devices > 1:
            kernel = np.asarray(kernel)
        return shard_like(one(kernel), sharding)
    parts = [one(kernel[index]) for index in np.ndindex(*lead)]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves).reshape(*lead, *leaves[0].shape), *parts)


def alpha_dtype_for(param_dtype: Any) -> Any:
    """The alpha/offset storage dtype for a layer whose ``param_dtype`` is given.

    float32, bfloat16 and float16 are kept; other dtypes (e.g. float64) store float32.
    """
    dtype = jnp.dtype(param_dtype)
    if dtype in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return dtype
    return jnp.dtype(jnp.float32)


def dense_apply(
    inputs: jax.Array,
    kernel: BCQWeight,
    bias: jax.Array | None,
    *,
    dtype: Any = None,
    precision: Any = None,
    lora: tuple[jax.Array, jax.Array, float] | None = None,
    mode: str | None = None,
) -> jax.Array:
    """``y = lut_gemm(x, kernel) + (x @ A) @ B * scale + bias`` for ``x: [..., K] -> [..., N]``.

    Dtypes follow `flax.linen.Dense`: the computation dtype is ``dtype`` or, when ``None``, the
    promotion of the inputs, the scales (``alpha``) and the bias (and LoRA factors). ``lut_gemm``
    accumulates in float32 whatever the computation dtype; ``precision`` applies to the LoRA
    products.

    Args:
      inputs: ``[..., K]``.
      kernel: a `BCQWeight` for a ``[K, N]`` kernel.
      bias: ``[N]`` or ``None``.
      dtype: computation dtype (float32, bfloat16 or float16), or ``None``.
      precision: `jax.lax.Precision` of the LoRA matmuls.
      lora: ``(A [K, r], B [r, N], scale)``, or ``None``.
      mode: `lut_gemm`'s accuracy mode of the native CPU kernel (``"exact"`` or ``"fast"``;
        ``None`` = the library default).

    Returns:
      ``[..., N]`` in the computation dtype.
    """
    extra = [] if lora is None else [lora[0], lora[1]]
    if dtype is None:
        probes = [inputs, np.zeros((), kernel.dtype), *extra]
        if bias is not None:
            probes.append(bias)
        dtype = flax_dtypes.canonicalize_dtype(*probes, inexact=True)
    x = jnp.asarray(inputs, dtype)
    y = lut_gemm(x, kernel, mode=mode)
    if lora is not None:
        a, b, scale = lora
        h = jnp.matmul(x, a.astype(dtype), precision=precision)
        y = y + jnp.matmul(h, b.astype(dtype), precision=precision) * jnp.asarray(scale, dtype)
    if bias is not None:
        y = y + jnp.reshape(bias.astype(dtype), (1,) * (y.ndim - 1) + (-1,))
    return y


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """One converted layer: its path, dense shape and storage before / after."""

    path: str
    in_features: int
    out_features: int
    num_bits: int
    group_size: int
    bytes_before: int
    bytes_after: int

    @property
    def compression_ratio(self) -> float:
        return self.bytes_before / self.bytes_after


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    """What a conversion did. ``str(summary)`` is a table, one row per converted layer.

    Attributes:
      layers: the converted layers, in conversion order.
      total_bytes_before: bytes of every parameter of the model before conversion.
      total_bytes_after: the same after conversion (unconverted parameters unchanged).
    """

    layers: tuple[LayerSummary, ...]
    total_bytes_before: int
    total_bytes_after: int

    @property
    def layers_converted(self) -> int:
        return len(self.layers)

    @property
    def bytes_before(self) -> int:
        """Bytes of the converted kernels, dense."""
        return sum(layer.bytes_before for layer in self.layers)

    @property
    def bytes_after(self) -> int:
        """Bytes of the converted kernels, packed (bits + alpha + offset)."""
        return sum(layer.bytes_after for layer in self.layers)

    @property
    def compression_ratio(self) -> float:
        """Dense kernel bytes / packed kernel bytes (converted layers only)."""
        return self.bytes_before / self.bytes_after if self.bytes_after else 1.0

    @property
    def total_compression_ratio(self) -> float:
        """Whole-model ratio, counting unconverted parameters (embeddings, norms, biases)."""
        return self.total_bytes_before / self.total_bytes_after if self.total_bytes_after else 1.0

    def __str__(self) -> str:
        rows = [("layer", "K x N", "q", "g", "dense", "packed", "ratio")]
        for s in self.layers:
            rows.append(
                (
                    s.path,
                    f"{s.in_features} x {s.out_features}",
                    str(s.num_bits),
                    str(s.group_size),
                    _human(s.bytes_before),
                    _human(s.bytes_after),
                    f"{s.compression_ratio:.2f}x",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(
            f"{self.layers_converted} layers converted: kernels {_human(self.bytes_before)} -> "
            f"{_human(self.bytes_after)} ({self.compression_ratio:.2f}x); all parameters "
            f"{_human(self.total_bytes_before)} -> {_human(self.total_bytes_after)} "
            f"({self.total_compression_ratio:.2f}x)"
        )
        return "\n".join(lines)


def layer_summary(path: str, dense: jax.Array, packed: BCQWeight) -> LayerSummary:
    return LayerSummary(
        path=path,
        in_features=packed.in_features,
        out_features=packed.out_features,
        num_bits=packed.num_bits,
        group_size=packed.group_size,
        bytes_before=array_nbytes(dense),
        bytes_after=packed.nbytes(),
    )


def array_nbytes(x: Any) -> int:
    """Bytes of an array-like (a `BCQWeight` counts its packed arrays)."""
    if isinstance(x, BCQWeight):
        return x.nbytes()
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
    return 0


def tree_nbytes(tree: Any) -> int:
    """Bytes of all array leaves of ``tree`` (`BCQWeight` leaves count packed)."""
    leaves = jax.tree.leaves(tree, is_leaf=lambda v: isinstance(v, BCQWeight))
    return sum(array_nbytes(leaf) for leaf in leaves)


def progress_iter(items: Iterable[Any], total: int, enabled: bool, desc: str) -> Iterator[Any]:
    """``items``, wrapped in a tqdm progress bar when ``enabled``."""
    if not enabled:
        return iter(items)
    from tqdm.auto import tqdm

    return iter(tqdm(items, total=total, desc=desc, unit="layer"))


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
