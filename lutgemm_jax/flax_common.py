"""Code shared by the Flax integrations (`lutgemm_jax.linen`, `lutgemm_jax.nnx`).

* `dense_apply`: ``y = lut_gemm(x, W) (+ LoRA) (+ bias)`` with `flax.linen.Dense`'s dtype rules;
* `layer_config`, `init_bcq_weight`: the packed kernel a layer initialises;
* `quantize_kernel`: converts one dense kernel (quantize, lay out, place like the kernel);
* `convert_layout`: a layout change that keeps a multi-device placement;
* `path_matches`: the ``include`` / ``exclude`` layer selection;
* `ConversionSummary`: layers converted, bytes before and after, compression ratio;
* `variable_value`: the value of an ``nnx.Variable`` across flax versions.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import dtypes as flax_dtypes
from flax.typing import Dtype, Initializer, PrecisionLike
from jax.sharding import NamedSharding

from lutgemm_jax.calibrate import quantize_calibrated
from lutgemm_jax.config import METHODS, UNSET, BCQConfig
from lutgemm_jax.format import (
    WORD_BITS,
    BCQWeight,
    array_nbytes,
    convert_bits,
    format_nbytes,
    padded_in_features,
    resolve_group_size,
)
from lutgemm_jax.ops import lut_gemm
from lutgemm_jax.quantize import quantize
from lutgemm_jax.sharding import shard_like

PathFilter = str | Callable[[str], bool] | None
"""A layer selector: a regular expression (``re.search`` on the ``/``-joined path), a
predicate ``path -> bool``, or ``None`` (for ``include``: everything; for ``exclude``: nothing)."""

INIT_METHODS = (*METHODS, "zeros")
"""A layer's ``init_method``: a fitting method applied to ``kernel_init``'s sample, or
``"zeros"`` (all-zero arrays of the right shapes, for weights loaded right after init)."""


def path_matches(path: str, include: PathFilter, exclude: PathFilter) -> bool:
    """True if ``path`` is selected by ``include`` and not by ``exclude``."""

    def hit(selector: PathFilter, default: bool) -> bool:
        if selector is None:
            return default
        if isinstance(selector, str):
            return re.search(selector, path) is not None
        return bool(selector(path))

    return hit(include, True) and not hit(exclude, False)


# ---- one packed kernel -----------------------------------------------------------------------


def quantize_kernel(
    kernel: jax.Array,
    config: BCQConfig,
    *,
    partitioned: bool = False,
    calibration: Any = None,
    **calibrated: Any,
) -> BCQWeight:
    """Converts one dense kernel ``[K, N]`` (or a stack ``[..., K, N]``) to a `BCQWeight`:
    quantize with ``config``, lay out (``"auto"`` resolved once for the whole kernel), place
    like the kernel.

    A stack (e.g. the kernels of an ``nn.scan``-ned layer, ``[L, K, N]``) is quantized one
    ``[K, N]`` slice at a time; the result's arrays get the same leading axes. A ``[K, N]``
    kernel sharded over several devices (a `NamedSharding`) gives packed arrays sharded the same
    way along K and N (`lutgemm_jax.sharding.packed_specs`). ``partitioned``: the kernel will be
    split over devices later (sharding annotations); like a placed kernel, that keeps an
    ``"auto"`` layout canonical. ``calibration`` (a `lutgemm_jax.calibration.Calibration` of the
    layer's inputs, ``[K, N]`` kernels only) quantizes with `quantize_calibrated`, whose keyword
    options (``damp``, ``act_order``, ``refit``) are ``calibrated``.
    """
    if len(kernel.shape) < 2:
        raise ValueError(f"quantize_kernel: kernel must be [..., K, N], got {kernel.shape}")
    sharding = getattr(kernel, "sharding", None)
    placed = sharding is not None and sharding.num_devices > 1
    config = config.replace(
        alpha_dtype=config.resolve_alpha_dtype(kernel.dtype),
        layout=config.resolve_layout(partitioned=partitioned or placed),
    )
    lead = tuple(kernel.shape[:-2])
    if not lead:
        # A multi-device kernel is quantized on one device (the quantizer's column chunks are
        # not sharding-aware), then the packed arrays are placed like it (sharding.shard_like).
        local = np.asarray(kernel) if placed else kernel
        if calibration is None:
            packed = quantize(local, config=config)
        else:
            packed = quantize_calibrated(local, calibration, config, **calibrated)
        return shard_like(packed, sharding)
    if calibration is not None:
        raise ValueError(f"quantize_kernel: calibration needs a [K, N] kernel, got {kernel.shape}")
    parts = [quantize(kernel[index], config=config) for index in np.ndindex(*lead)]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves).reshape(*lead, *leaves[0].shape), *parts)


def layer_config(
    config: BCQConfig | None,
    *,
    init_method: str | None,
    has_offset: bool,
    **fields: Any,
) -> tuple[BCQConfig, str]:
    """``(config, init_method)`` of a layer that initialises its own kernel.

    ``fields`` (`BCQConfig` fields; `UNSET` = from ``config``) are applied over ``config``.
    ``init_method`` (``None``: ``config.method``) must be one of `INIT_METHODS`. ``has_offset``
    (`UNSET`: ``config.has_offset``) is the kernel's format; for greedy / alternating it is the
    fit's ``fit_offset``, ``"rtn"`` requires it. The returned config's ``method`` is the fit
    that init runs; ``"zeros"`` runs none and gives the shapes of ``config.method``'s weights
    (``"rtn"``: uniform scales ``[G, 1, N]``, `BCQConfig.uniform`).
    """
    config = BCQConfig.make(config, **fields)
    method = config.method if init_method is None else init_method
    if method not in INIT_METHODS:
        raise ValueError(f"init_method must be one of {INIT_METHODS}, got {method!r}")
    offset = config.has_offset if has_offset is UNSET else bool(has_offset)
    fit = config.method if method == "zeros" else method
    if fit == "rtn" and not offset:
        raise ValueError(
            f"{'method' if method == 'zeros' else 'init_method'}='rtn' always has an offset "
            "(uniform weights): set has_offset=True"
        )
    fitted = config.replace(
        method=fit,
        fit_offset=offset and fit != "rtn",
        clip_search=config.clip_search and fit == "rtn",
    )
    return fitted, method


def init_bcq_weight(
    key: jax.Array,
    shape: tuple[int, int],
    *,
    kernel_init: Initializer,
    param_dtype: Dtype,
    config: BCQConfig,
    init_method: str,
) -> BCQWeight:
    """A canonical `BCQWeight` for a ``[K, N]`` kernel: ``kernel_init``'s dense sample in
    ``param_dtype``, quantized with ``config`` (from `layer_config`).

    ``init_method="zeros"`` skips sampling and quantizing and returns all-zero arrays of the
    shapes ``config`` gives (uniform ``alpha [G, 1, N]`` when ``config.uniform``). The caller
    lays the result out (`convert_layout`) once it knows whether the layer is partitioned;
    ``kernel_init`` must return a plain array (the caller unboxes).
    """
    k, n = shape
    config = config.replace(alpha_dtype=config.resolve_alpha_dtype(param_dtype), layout="canonical")
    if init_method != "zeros":
        return quantize_kernel(kernel_init(key, shape, param_dtype), config)
    g = resolve_group_size(k, config.group_size)
    kp = padded_in_features(k, g)
    return BCQWeight(
        bits=jnp.zeros((kp // WORD_BITS, config.bits, n), jnp.uint32),
        alpha=jnp.zeros((kp // g, 1 if config.uniform else config.bits, n), config.alpha_dtype),
        offset=jnp.zeros((kp // g, n), config.alpha_dtype) if config.has_offset else None,
        in_features=k,
        out_features=n,
        num_bits=config.bits,
        group_size=g,
    )


def convert_layout(w: BCQWeight, layout: str) -> BCQWeight:
    """``w`` with its sign words ``bits [..., Kp/32, q, N]`` in ``layout``, placed as before.

    A weight sharded over several devices (the converters follow a placed dense kernel) is
    converted by a jitted program whose output has the input's sharding (on any mesh, and on
    several hosts: nothing is gathered to one).
    """
    sharding = getattr(w.bits, "sharding", None)  # None for tracers
    if layout == w.layout or not isinstance(sharding, NamedSharding) or sharding.num_devices == 1:
        return w.to_layout(layout)
    bits = _sharded_convert(sharding, w.layout, layout)(w.bits)
    return dataclasses.replace(w, bits=bits, layout=layout)


@functools.lru_cache(maxsize=64)
def _sharded_convert(sharding: NamedSharding, source: str, target: str) -> Callable:
    """`convert_bits` jitted with its output placed by ``sharding`` (one program per placement
    and pair of layouts, compiled once per shape)."""
    return jax.jit(lambda bits: convert_bits(bits, source, target), out_shardings=sharding)


# ---- the forward pass ------------------------------------------------------------------------


def dense_apply(
    inputs: jax.Array,
    kernel: BCQWeight,
    bias: jax.Array | None,
    *,
    dtype: Dtype | None = None,
    precision: PrecisionLike = None,
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
      dtype: computation dtype (one of `lutgemm_jax.format.FLOAT_DTYPES`), or ``None``.
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


def variable_value(variable: Any) -> Any:
    """The value of an ``nnx.Variable`` (``get_value()`` where flax has it, else ``.value``)."""
    getter = getattr(variable, "get_value", None)
    return getter() if getter is not None else variable.value


# ---- conversion reports ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """One converted layer: its path, dense shape, format and storage before / after."""

    path: str
    in_features: int
    out_features: int
    num_bits: int
    group_size: int
    bytes_before: int
    bytes_after: int
    uniform: bool = False
    bits_per_weight: float = 0.0
    """Stored bits per weight of the packed kernel (`BCQWeight.bits_per_weight`)."""

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
        rows = [("layer", "K x N", "q", "g", "scales", "dense", "packed", "bits/w", "ratio")]
        for s in self.layers:
            rows.append(
                (
                    s.path,
                    f"{s.in_features} x {s.out_features}",
                    str(s.num_bits),
                    str(s.group_size),
                    "uniform" if s.uniform and s.num_bits > 1 else "planes",
                    format_nbytes(s.bytes_before),
                    format_nbytes(s.bytes_after),
                    f"{s.bits_per_weight:.2f}",
                    f"{s.compression_ratio:.2f}x",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(
            f"{self.layers_converted} layers converted: kernels "
            f"{format_nbytes(self.bytes_before)} -> {format_nbytes(self.bytes_after)} "
            f"({self.compression_ratio:.2f}x); all parameters "
            f"{format_nbytes(self.total_bytes_before)} -> "
            f"{format_nbytes(self.total_bytes_after)} ({self.total_compression_ratio:.2f}x)"
        )
        return "\n".join(lines)


def layer_summary(path: str, dense: jax.Array, packed: BCQWeight) -> LayerSummary:
    """The `LayerSummary` of the kernel at ``path``: ``dense [..., K, N]`` became ``packed``."""
    return LayerSummary(
        path=path,
        in_features=packed.in_features,
        out_features=packed.out_features,
        num_bits=packed.num_bits,
        group_size=packed.group_size,
        bytes_before=array_nbytes(dense),
        bytes_after=packed.nbytes(),
        uniform=packed.uniform,
        bits_per_weight=packed.bits_per_weight(),
    )


def progress_iter(items: Iterable[Any], total: int, enabled: bool, desc: str) -> Iterator[Any]:
    """``items``, wrapped in a tqdm progress bar when ``enabled``."""
    if not enabled:
        return iter(items)
    from tqdm.auto import tqdm

    return iter(tqdm(items, total=total, desc=desc, unit="layer"))
