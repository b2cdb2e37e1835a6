"""Flax linen integration: `LutDense`, `quantize_params`, `intercept_dense`.

Three ways to run a linen model on packed BCQ weights:

* write it with `LutDense` (a drop-in for `flax.linen.Dense` whose ``'kernel'`` param is a
  `BCQWeight`), optionally with a LoRA adapter (``lora_rank > 0``) for fine-tuning;
* keep an existing model written with `flax.linen.Dense` unchanged: convert its trained params
  with `quantize_params` and apply it inside ``with intercept_dense():``, which routes every
  ``nn.Dense`` whose kernel is a `BCQWeight` through `lut_gemm`;
* ``nn.Dense`` modules whose kernel is still dense (excluded from conversion) run as before.

What to quantize to (bits, groups, method, sign-word layout, ...) is a
`lutgemm_jax.config.BCQConfig`: ``config=`` on `LutDense` and `quantize_params`, or its fields
as keywords.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.core import FrozenDict
from flax.typing import DotGeneralT, Dtype, Initializer, PrecisionLike
from jax.sharding import PartitionSpec as P

from lutgemm_jax.calibrate_model import CalibrateFn, check_calibrated_options, run_stages
from lutgemm_jax.calibration import Calibration
from lutgemm_jax.config import UNSET, BCQConfig
from lutgemm_jax.flax_common import (
    ConversionSummary,
    PathFilter,
    convert_layout,
    dense_apply,
    init_bcq_weight,
    layer_config,
    layer_summary,
    path_matches,
    progress_iter,
    quantize_kernel,
)
from lutgemm_jax.format import BCQWeight, map_bcq, tree_nbytes
from lutgemm_jax.sharding import packed_specs

__all__ = [
    "ConversionSummary",
    "LutDense",
    "dequantize_params",
    "intercept_dense",
    "merge_params",
    "quantize_params",
    "split_params",
]


def _unbox(value: Any) -> tuple[Any, nn.Partitioned | None]:
    """``(array, box)`` for an ``nn.with_partitioning`` box, else ``(value, None)``."""
    if isinstance(value, nn.Partitioned):
        return value.value, value
    return value, None


def _box(w: BCQWeight, box: nn.Partitioned | None) -> BCQWeight:
    """Boxes each packed array with the partitioning of the dense kernel box it replaces.

    The kernel's ``names = (k_name, n_name)`` become ``(k_name, None, n_name)`` for bits and
    alpha and ``(k_name, n_name)`` for the offset, so ``nn.get_partition_spec`` and
    ``nn.logical_to_mesh_sharding`` work on converted params as on dense ones.
    """
    if box is None:
        return w
    specs = packed_specs(P(*box.names), w.has_offset)
    boxed = {
        name: box.replace_boxed(getattr(w, name)).replace(names=tuple(spec))
        for name, spec in specs.items()
    }
    return dataclasses.replace(w, **boxed)


class LutDense(nn.Module):
    """A drop-in for `flax.linen.Dense` whose kernel is a packed `BCQWeight`.

    Example usage::

        >>> import jax, jax.numpy as jnp
        >>> from lutgemm_jax.linen import LutDense
        >>> layer = LutDense(features=64, bits=3, group_size=32)
        >>> params = layer.init(jax.random.key(0), jnp.ones((1, 96)))["params"]
        >>> shapes = jax.tree.map(jnp.shape, params)
        >>> shapes["kernel"].bits, shapes["kernel"].alpha, shapes["bias"]
        ((3, 3, 64), (3, 3, 64), (64,))
        >>> layer.apply({"params": params}, jnp.ones((5, 96))).shape
        (5, 64)

    ``y = lut_gemm(x, kernel) + (x @ lora_a) @ lora_b * scale + bias`` for ``x: [..., K]``,
    ``y: [..., features]``. Params: ``'kernel'`` (a `BCQWeight` for ``[K, features]``: bits
    ``[Kp/32, q, features]``, alpha ``[Kp/g, q, features]``, uniform ``[Kp/g, 1, features]`` for
    ``method="rtn"``), ``'bias'`` ``[features]`` (when ``use_bias``), and with
    ``lora_rank = r > 0`` ``'lora_a'`` ``[K, r]`` and ``'lora_b'`` ``[r, features]``
    (zero-initialised, so the layer starts out equal to its quantized base).
    ``scale = lora_alpha / lora_rank`` (1 when ``lora_alpha`` is ``None``).

    Attributes:
      features, use_bias, dtype, param_dtype, precision, kernel_init, bias_init: as in
        `flax.linen.Dense`. ``precision`` applies to the LoRA products (``lut_gemm`` always
        accumulates in float32).
      dot_general: accepted for signature compatibility with `flax.linen.Dense`; the packed
        product never uses it.
      config: the `BCQConfig` of the kernel ``init`` creates (default ``BCQConfig()``);
        ``alpha_dtype=None`` stores the scales in ``param_dtype``. A kernel partitioned with
        ``nn.with_partitioning`` keeps an ``"auto"`` layout canonical. Applied params run in
        whatever format and layout they hold; ``checkpoint.load(..., like=...)`` needs the
        layout of the file.
      bits, group_size, layout: `BCQConfig` fields over ``config`` (`UNSET`: from it).
      has_offset: whether the kernel has a per-group offset (`UNSET`: ``config.has_offset``).
      init_method: the fit ``init`` applies to ``kernel_init``'s sample (``None``:
        ``config.method``), or ``"zeros"`` (no sampling: right shapes, for weights loaded
        afterwards).
      lora_rank: rank ``r`` of the LoRA adapter; 0 = none.
      lora_alpha: LoRA scale numerator (``scale = lora_alpha / r``); ``None`` = scale 1.
      lora_a_init: initializer of ``lora_a``.
      mode: accuracy mode of `lut_gemm`'s native CPU kernel (``"exact"``, ``"fast"``, or
        ``None`` for the library default).
    """

    features: int
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: PrecisionLike = None
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    dot_general: DotGeneralT | None = None
    config: BCQConfig | None = None
    bits: int = UNSET
    group_size: int | None = UNSET
    has_offset: bool = UNSET
    init_method: str | None = None
    lora_rank: int = 0
    lora_alpha: float | None = None
    lora_a_init: Initializer = nn.initializers.lecun_normal()
    mode: str | None = None
    layout: str = UNSET

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """``inputs: [..., K]`` -> ``[..., features]``."""
        k = jnp.shape(inputs)[-1]
        kernel = self.param("kernel", self._init_kernel, (k, self.features))
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        lora = None
        if self.lora_rank:
            a = self.param("lora_a", self.lora_a_init, (k, self.lora_rank), self.param_dtype)
            b = self.param(
                "lora_b",
                nn.initializers.zeros_init(),
                (self.lora_rank, self.features),
                self.param_dtype,
            )
            scale = 1.0 if self.lora_alpha is None else self.lora_alpha / self.lora_rank
            lora = (a, b, scale)
        return dense_apply(
            inputs,
            kernel,
            bias,
            dtype=self.dtype,
            precision=self.precision,
            lora=lora,
            mode=self.mode,
        )

    def _init_kernel(self, key: jax.Array, shape: tuple[int, int]) -> BCQWeight:
        """The ``'kernel'`` param: ``kernel_init``'s sample, quantized, boxed like the sample."""
        config, method = layer_config(
            self.config,
            init_method=self.init_method,
            has_offset=self.has_offset,
            bits=self.bits,
            group_size=self.group_size,
            layout=self.layout,
            where="LutDense",
        )
        boxes = []

        def sample(key: jax.Array, shape: tuple[int, int], dtype: Dtype) -> jax.Array:
            dense, box = _unbox(self.kernel_init(key, shape, dtype))
            boxes.append(box)
            return dense

        w = init_bcq_weight(
            key,
            shape,
            kernel_init=sample,
            param_dtype=self.param_dtype,
            config=config,
            init_method=method,
        )
        box = boxes[0] if boxes else None
        return _box(convert_layout(w, config.resolve_layout(partitioned=box is not None)), box)


# ---- conversion of trained params ----------------------------------------------------------


def quantize_params(
    params: Mapping[str, Any],
    config: BCQConfig | None = None,
    *,
    include: PathFilter = None,
    exclude: PathFilter = None,
    stacked: bool = False,
    progress: bool = False,
    return_summary: bool = False,
    calibrate: CalibrateFn | None = None,
    act_order: bool = False,
    damp: float = 0.01,
    **fields: Any,
) -> Any:
    """Quantizes the Dense kernels of a linen params tree; everything else is kept as is.

    A kernel is a leaf named ``'kernel'`` that is a 2-D floating array ``[K, N]`` (or, with
    ``stacked=True``, ``[..., K, N]``: the stacked kernels of ``nn.scan``/``nn.vmap``-ed layers,
    quantized slice by slice). Kernels whose ``/``-joined path (e.g. ``"Dense_0/kernel"`` or
    ``"params/decoder/layers_3/mlp/fc1/kernel"``) is selected by ``include`` and not by
    ``exclude`` become `BCQWeight` leaves; biases, embeddings, norms and unselected kernels are
    returned unchanged. Run the converted params with `LutDense` models or, for an unmodified
    ``nn.Dense`` model, inside `intercept_dense`.

    Args:
      params: a nested mapping (``dict`` or ``FrozenDict``; the ``{'params': ...}`` wrapper is
        allowed) of arrays. A kernel boxed by ``nn.with_partitioning`` (``nn.Partitioned``)
        gives a `BCQWeight` whose arrays are boxed with the matching names
        (`lutgemm_jax.sharding.packed_specs`); a kernel sharded over several devices gives
        packed arrays sharded the same way. Both keep an ``"auto"`` layout canonical.
      config: the `BCQConfig` (default ``BCQConfig()``; ``alpha_dtype=None`` keeps each
        kernel's dtype).
      include: regex (``re.search``) or predicate on the kernel's path; ``None`` = all.
      exclude: regex or predicate; matching kernels are skipped (e.g. ``r"lm_head|embed"``).
      stacked: also convert kernels with leading stack axes (``ndim > 2``). Off by default:
        ``DenseGeneral``/``Conv`` kernels also have more than two axes.
      progress: show a tqdm progress bar over the layers (with ``calibrate``: over the stages).
      return_summary: also return a `ConversionSummary`.
      calibrate: ``None`` (data-free: each kernel minimises its weight error) or a callable
        ``calibrate(params)`` that runs the model eagerly (no ``jax.jit``) on calibration
        batches with the params it receives (in the form ``params`` was given, wrapper
        included), e.g. ``lambda p: [model.apply({"params": p}, x) for x in batches]``. Each
        selected kernel is then quantized with `lutgemm_jax.calibrate.quantize_calibrated` on
        its layer's inputs, sequentially as GPTQ: decoder block by decoder block (``layers_{i}``),
        each block calibrated on the outputs of the already quantized blocks before it
        (`lutgemm_jax.calibrate_model`). Only ``nn.Dense`` layers can be calibrated; a
        selected kernel the model never reaches raises a `ValueError` naming it.
      act_order, damp: `quantize_calibrated` options (used with ``calibrate`` only).
      **fields: `BCQConfig` fields applied over ``config`` (``bits=4``, ``layout="cpu"``, ...).

    Returns:
      The converted params (same container types), or ``(params, summary)``.
    """
    config = BCQConfig.make(config, where="quantize_params", **fields)
    frozen = isinstance(params, FrozenDict)
    flat = traverse_util.flatten_dict(
        params.unfreeze() if frozen else dict(params), keep_empty_nodes=True
    )
    targets = [
        (key, box)
        for key, box in flat.items()
        if _is_kernel(key, _unbox(box)[0], stacked)
        and path_matches("/".join(map(str, key)), include, exclude)
    ]
    layers = []

    def convert(key: tuple[Any, ...], calibration: Calibration | None = None) -> None:
        value, partitioning = _unbox(flat[key])
        packed = quantize_kernel(
            value,
            config,
            partitioned=partitioning is not None,
            calibration=calibration,
            **({} if calibration is None else {"act_order": act_order, "damp": damp}),
        )
        layers.append(layer_summary("/".join(map(str, key)), value, packed))
        flat[key] = _box(packed, partitioning)

    def rebuild() -> Any:
        out = traverse_util.unflatten_dict(flat)
        return FrozenDict(out) if frozen else out

    if calibrate is None:
        check_calibrated_options("quantize_params", act_order, damp)
        for key, _ in progress_iter(targets, len(targets), progress, "quantize"):
            convert(key)
    else:
        if stacked:
            raise ValueError("quantize_params: calibrate needs [K, N] kernels, not stacked=True")
        wrapped = all(key[0] == "params" for key in flat) and len(params) == 1
        module_paths = {key: tuple(map(str, key[wrapped:-1])) for key, _ in targets}
        run_stages(
            module_paths,
            calibrate,
            rebuild,
            lambda stats: [convert(key, calib) for key, calib in stats.items()],
            progress=progress,
        )
    out = rebuild()
    if not return_summary:
        return out
    summary = ConversionSummary(
        layers=tuple(layers),
        total_bytes_before=tree_nbytes(params),
        total_bytes_after=tree_nbytes(out),
    )
    return out, summary


def dequantize_params(params: Any, dtype: Dtype = jnp.float32) -> Any:
    """``params`` with every `BCQWeight` leaf replaced by its dense ``[K, N]`` kernel."""
    return map_bcq(lambda w: w.dequantize(dtype), params)


LORA_PARAMS = r"(^|/)lora_[ab]$"
"""Selects the LoRA factors of `LutDense` layers (for `split_params`)."""


def split_params(
    params: Mapping[str, Any], select: PathFilter = LORA_PARAMS
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits a params tree into ``(selected, rest)`` by the ``/``-joined leaf path.

    For LoRA fine-tuning: ``jax.grad`` cannot differentiate the uint32 sign bits, so take the
    gradient w.r.t. the selected part only (by default the ``lora_a``/``lora_b`` leaves) and
    rebuild the full tree with `merge_params`::

        lora, frozen = split_params(params)
        grads = jax.grad(lambda lora: loss(merge_params(lora, frozen)))(lora)

    `BCQWeight` leaves are never split apart. ``select`` is a regex or a predicate (``None``
    selects everything).
    """
    flat = traverse_util.flatten_dict(
        params.unfreeze() if isinstance(params, FrozenDict) else dict(params)
    )
    selected, rest = {}, {}
    for key, value in flat.items():
        hit = path_matches("/".join(map(str, key)), select, None)
        (selected if hit else rest)[key] = value
    return traverse_util.unflatten_dict(selected), traverse_util.unflatten_dict(rest)


def merge_params(*trees: Mapping[str, Any]) -> dict[str, Any]:
    """Merges params trees with disjoint leaves (the inverse of `split_params`)."""
    flat: dict[tuple[Any, ...], Any] = {}
    for tree in trees:
        tree = tree.unfreeze() if isinstance(tree, FrozenDict) else dict(tree)
        for key, value in traverse_util.flatten_dict(tree).items():
            if key in flat:
                raise ValueError(f"merge_params: leaf {'/'.join(map(str, key))} appears twice")
            flat[key] = value
    return traverse_util.unflatten_dict(flat)


def _is_kernel(key: tuple[Any, ...], value: Any, stacked: bool) -> bool:
    if key[-1] != "kernel" or isinstance(value, BCQWeight) or not hasattr(value, "ndim"):
        return False
    if not jnp.issubdtype(value.dtype, jnp.floating):
        return False
    return value.ndim == 2 or (stacked and value.ndim > 2)


# ---- running unmodified nn.Dense models ----------------------------------------------------


def _dense_interceptor(mode: str | None) -> Any:
    def interceptor(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
        module = context.module
        if (
            context.method_name != "__call__"
            or not isinstance(module, nn.Dense)
            or type(module).__call__ is not nn.Dense.__call__
            or module.scope is None
            or not module.has_variable("params", "kernel")
        ):
            return next_fun(*args, **kwargs)
        kernel = nn.meta.unbox(module.get_variable("params", "kernel"))
        if not isinstance(kernel, BCQWeight):
            return next_fun(*args, **kwargs)
        bias = None
        if module.use_bias:
            bias = nn.meta.unbox(module.get_variable("params", "bias"))
            if bias is None:
                raise ValueError(f"nn.Dense at {'/'.join(module.path)} has use_bias=True, no bias")
        (inputs,) = args
        return dense_apply(
            inputs, kernel, bias, dtype=module.dtype, precision=module.precision, mode=mode
        )

    return interceptor


@contextlib.contextmanager
def intercept_dense(mode: str | None = None) -> Iterator[None]:
    """Routes ``flax.linen.Dense.__call__`` through `lut_gemm` when its kernel is a `BCQWeight`.

    Inside the ``with`` block, every ``nn.Dense`` (created in ``setup`` or ``@compact``, at any
    depth, also under ``jax.jit``, ``nn.scan``/``lax.scan`` and ``vmap``) whose ``'kernel'``
    param is a `BCQWeight` computes ``y = lut_gemm(x, kernel) + bias`` with Dense's dtype rules
    (``dtype``, ``use_bias``; a custom ``dot_general`` is not used for packed kernels). Dense
    layers with dense kernels, and subclasses that override ``__call__``, are left untouched.
    Only module *application* is affected; the model code needs no edit::

        qparams = quantize_params(params, bits=4, exclude=r"head")
        with intercept_dense():
            y = model.apply({"params": qparams}, x)

    Interception happens while tracing: put the ``with`` block inside the function that
    ``jax.jit`` compiles (or make the first, tracing call of a jitted function inside it).
    ``mode`` is `lut_gemm`'s accuracy mode (``"exact"``, ``"fast"``; ``None`` = the default).
    """
    with nn.intercept_methods(_dense_interceptor(mode)):
        yield
