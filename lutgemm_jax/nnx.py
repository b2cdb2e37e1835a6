"""Flax NNX integration: `LutLinear`, `QuantizedWeight`, `quantize_model`.

`LutLinear` is a drop-in for `flax.nnx.Linear` whose kernel is a packed `BCQWeight` held in a
`QuantizedWeight` variable. That type is *not* an `nnx.Param`, so ``nnx.state(model,
nnx.Param)``, ``nnx.grad`` / ``nnx.value_and_grad`` (which differentiate ``nnx.Param`` by
default) and ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` leave the packed codes alone: with
``lora_rank > 0`` only the LoRA factors (and the bias) train.

Sharding metadata works as on ``nnx.Linear``: ``kernel_init=nnx.with_partitioning(init, (k_name,
n_name))`` (or ``kernel_metadata={"out_sharding": ...}``) names the axes of the dense kernel the
packed one stands for, and `QuantizedWeight` maps the names onto its packed arrays
(`lutgemm_jax.sharding.packed_specs`): eager sharding under ``jax.set_mesh(mesh)``,
``nnx.get_partition_spec`` / ``nnx.get_named_sharding`` and the ``nnx.jit`` +
``jax.lax.with_sharding_constraint`` + ``nnx.update`` recipe all place bits, alpha and offset
along K and N. `LutLinear.from_linear` / `quantize_model` keep the converted layer's metadata.

What to quantize to (bits, groups, method, sign-word layout, ...) is a
`lutgemm_jax.config.BCQConfig`: ``config=`` on `LutLinear`, `LutLinear.from_linear` and
`quantize_model`, or its fields as keywords.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd as core_spmd
from flax.typing import Dtype, Initializer, PrecisionLike
from jax.sharding import NamedSharding, PartitionSpec

from lutgemm_jax.calibrate_model import StageCapture, calibrate_stages, check_calibrated_options
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
from lutgemm_jax.flax_common import variable_value as _value
from lutgemm_jax.format import BCQWeight, tree_nbytes
from lutgemm_jax.sharding import packed_specs

__all__ = ["LutLinear", "QuantizedWeight", "quantize_model", "ConversionSummary"]

_default_kernel_init = nnx.initializers.lecun_normal()
_default_bias_init = nnx.initializers.zeros_init()


_SHARDING_KEYS = ("out_sharding", "sharding", "sharding_names")  # the last two: deprecated
_REQUIRED_METADATA = ("hijax", "ref", "eager_sharding")
_NO_VALUE = object()


def _packed_shardings(sharding: Any, w: BCQWeight) -> dict[str, Any]:
    """The sharding of each packed array of ``w`` for a dense kernel sharded as ``sharding``.

    ``sharding`` names the dense axes ``(*stack, k, n)`` (a tuple or `PartitionSpec`; ``stack``
    are the leading axes that ``nnx.vmap``/``nnx.scan`` add) or is a `NamedSharding`; the packed
    arrays get ``(*stack, k, None, n)`` (bits, alpha) and ``(*stack, k, n)`` (offset), in the same
    form.
    """
    mesh = None
    if isinstance(sharding, NamedSharding):
        mesh, sharding = sharding.mesh, sharding.spec
    names = tuple(sharding)
    lead, dense = names[:-2], names[-2:]
    specs = packed_specs(PartitionSpec(*dense), w.has_offset)
    out = {name: lead + tuple(spec) for name, spec in specs.items()}
    if mesh is not None:
        return {name: NamedSharding(mesh, PartitionSpec(*spec)) for name, spec in out.items()}
    if isinstance(sharding, PartitionSpec):
        return {name: PartitionSpec(*spec) for name, spec in out.items()}
    return out


def _packed_like(w: BCQWeight, value: Any) -> Any:
    """Maps a per-variable ``value`` that flax computed for the dense ``[K, N]`` kernel onto the
    packed arrays of ``w``: a `PartitionSpec` (``nnx.get_partition_spec``) becomes a `BCQWeight` of
    PartitionSpecs, a ``jax.ShapeDtypeStruct`` of the dense shape (``nnx.as_abstract``) a
    `BCQWeight` of ShapeDtypeStructs with the packed shardings. Anything else is returned as is.
    """
    if isinstance(value, PartitionSpec):
        return dataclasses.replace(w, **{"offset": None, **_packed_shardings(value, w)})
    if (
        isinstance(value, jax.ShapeDtypeStruct)
        and tuple(value.shape[-2:]) == w.shape
        and isinstance(w.alpha, jax.Array | jax.ShapeDtypeStruct)
    ):
        sharding = value.sharding if isinstance(value.sharding, NamedSharding) else None
        specs = _packed_shardings(sharding, w) if sharding is not None else {}
        leaves = {
            name: jax.ShapeDtypeStruct(
                getattr(w, name).shape, getattr(w, name).dtype, sharding=specs.get(name)
            )
            for name in ("bits", "alpha", "offset")
            if getattr(w, name) is not None
        }
        return dataclasses.replace(w, **{"offset": None, **leaves})
    return value


def _shard_packed(w: BCQWeight, sharding: Any, rules: Any, mesh: Any) -> BCQWeight:
    """Eager sharding of the packed arrays (flax's `shard_value` per array, as for an nnx.Param)."""
    placed = {
        name: core_spmd.shard_value(getattr(w, name), spec, rules, mesh)
        for name, spec in _packed_shardings(sharding, w).items()
    }
    return dataclasses.replace(w, **placed)


def _pop_sharding(metadata: dict[str, Any], default: Any = None) -> Any:
    """Removes and returns the sharding names from ``metadata`` (``default`` if absent).

    A ``mesh=None`` entry (``nnx.with_partitioning`` always adds one) is dropped too: it means
    the context mesh, and ``nnx.as_abstract`` would build a sharding on ``None`` from it.
    """
    sharding = default
    for key in _SHARDING_KEYS:
        if key in metadata:
            sharding = metadata.pop(key)
    if "mesh" in metadata and metadata["mesh"] is None:
        del metadata["mesh"]
    return sharding


def _sharding_names(metadata: Mapping[str, Any]) -> Any:
    """The sharding names in a variable's ``metadata`` (``out_sharding`` or its older keys),
    or ``None``."""
    names = [metadata[key] for key in _SHARDING_KEYS if metadata.get(key)]
    return names[-1] if names else None


def _eager_default() -> bool:
    using = getattr(nnx, "using_eager_sharding", None)  # flax >= 0.12
    return bool(using()) if using is not None else False


class QuantizedWeight(nnx.Variable):
    """A non-trainable variable holding a packed `BCQWeight` (sign bits, alpha, offset).

    Its sharding metadata (``out_sharding``, from ``nnx.with_partitioning`` or as a keyword, with
    the optional ``mesh`` and ``sharding_rules``) names the axes of the dense kernel ``[K, N]`` it
    replaces, ``(k_name, n_name)``, exactly as on an ``nnx.Linear`` kernel. The packed arrays are
    sharded by `lutgemm_jax.sharding.packed_specs`: bits and alpha ``(k_name, None, n_name)``,
    offset ``(k_name, n_name)``. Hence

    * with eager sharding (flax >= 0.12's default) the variable, created under
      ``jax.set_mesh(mesh)``, holds arrays placed that way;
    * ``nnx.get_partition_spec`` / ``nnx.get_named_sharding`` return, for this variable, a
      `BCQWeight` of PartitionSpecs / NamedShardings (one per packed array) that
      ``jax.lax.with_sharding_constraint`` and ``jax.device_put`` take with ``nnx.state``;
    * ``nnx.eval_shape`` under ``jax.set_mesh``, ``nnx.get_abstract_model`` and
      ``nnx.as_abstract`` give a `BCQWeight` of sharded ``jax.ShapeDtypeStruct``.

    A row-parallel K sharding must give every device whole quantization groups (the mesh axis
    size must divide the number of groups); `lut_gemm` raises a ``ValueError`` otherwise.
    """

    def __init__(self, value: Any, *, eager_sharding: bool | None = None, **metadata: Any):
        sharding = _pop_sharding(metadata)
        merged = dict(metadata)
        if isinstance(value, nnx.VariableMetadata):  # from an nnx.with_partitioning initializer
            aux = dict(value.metadata)
            sharding = _pop_sharding(aux, sharding)
            merged.update(aux)
            value = dataclasses.replace(value, metadata=aux)
        eager = eager_sharding if eager_sharding is not None else merged.get("eager_sharding")
        if eager is None:
            eager = _eager_default()
        raw = value.raw_value if isinstance(value, nnx.VariableMetadata) else value
        if eager and sharding and isinstance(raw, BCQWeight):
            raw = _shard_packed(raw, sharding, merged.get("sharding_rules"), merged.get("mesh"))
            if isinstance(value, nnx.VariableMetadata):
                value = dataclasses.replace(value, raw_value=raw)
            else:
                value = raw
        # The base class would shard the whole BCQWeight with the dense kernel's names: the
        # names are set after it ran.
        if eager_sharding is not None:
            metadata["eager_sharding"] = eager_sharding
        super().__init__(value, **metadata)
        if sharding is not None:
            self.set_metadata(out_sharding=sharding)

    def copy(self, value: Any = _NO_VALUE, **updates: Any) -> Any:
        """As ``nnx.Variable.copy``; a dense-kernel `PartitionSpec` or ``ShapeDtypeStruct``
        (what ``nnx.get_partition_spec`` / ``nnx.as_abstract`` compute from ``out_sharding``)
        becomes the matching `BCQWeight`-shaped tree."""
        raw = self.get_raw_value()
        if value is not _NO_VALUE and isinstance(raw, BCQWeight):
            value = _packed_like(raw, value)
        if value is _NO_VALUE:
            return super().copy(**updates)
        return super().copy(value, **updates)

    replace = copy

    def set_value(self, value: Any, **kwargs: Any) -> None:
        """As ``nnx.Variable.set_value``; a dense-kernel ``ShapeDtypeStruct`` (what
        ``nnx.eval_shape`` sets under a mesh) becomes the matching `BCQWeight`-shaped tree."""
        raw = self.get_raw_value()
        if isinstance(raw, BCQWeight):
            value = _packed_like(raw, value)
        super().set_value(value, **kwargs)


class LutLinear(nnx.Module):
    """A drop-in for `flax.nnx.Linear` whose kernel is a packed `BCQWeight`.

    Example usage::

        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> from lutgemm_jax.nnx import LutLinear
        >>> layer = LutLinear(96, 64, bits=3, group_size=32, rngs=nnx.Rngs(0))
        >>> shapes = jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(layer)))
        >>> shapes["kernel"].bits, shapes["kernel"].alpha, shapes["bias"]
        ((3, 3, 64), (3, 3, 64), (64,))
        >>> layer(jnp.ones((5, 96))).shape
        (5, 64)

    ``y = lut_gemm(x, kernel) + (x @ lora_a) @ lora_b * scale + bias``, ``x: [..., K]``.

    Attributes (after construction):
      kernel: `QuantizedWeight` holding a `BCQWeight` for ``[in_features, out_features]``
        (bits ``[Kp/32, q, out_features]``, alpha ``[Kp/g, q, out_features]``, uniform
        ``[Kp/g, 1, out_features]`` for ``method="rtn"``).
      bias: `nnx.Param` ``[out_features]``, or ``None``.
      lora_a, lora_b: `nnx.Param` ``[in_features, r]`` and ``[r, out_features]`` (``lora_b``
        zero-initialised), or ``None`` when ``lora_rank == 0``.

    Args:
      in_features, out_features, use_bias, dtype, param_dtype, precision, kernel_init,
        bias_init, rngs: as in `flax.nnx.Linear` (``precision`` applies to the LoRA products;
        ``lut_gemm`` accumulates in float32).
      config: the `BCQConfig` of a freshly initialised kernel (default ``BCQConfig()``;
        ``alpha_dtype=None`` stores the scales in ``param_dtype``). A state loaded with
        ``checkpoint.load(..., like=nnx.state(model))`` must have the layout of the file.
      bits, group_size, layout: `BCQConfig` fields over ``config`` (`UNSET`: from it).
      has_offset: whether the kernel has a per-group offset (`UNSET`: ``config.has_offset``).
      init_method: the fit applied to ``kernel_init``'s sample (``None``: ``config.method``),
        or ``"zeros"`` (zero arrays of the right shapes).
      lora_rank: LoRA rank ``r`` (0 = no adapter); lora_alpha: ``scale = lora_alpha / r``
        (``None`` = 1); lora_a_init: initializer of ``lora_a``.
      kernel: an existing `BCQWeight` to use instead of initialising one (its format and
        layout win over ``config`` and the format keywords).
      mode: accuracy mode of `lut_gemm`'s native CPU kernel (``"exact"``, ``"fast"``, or
        ``None`` for the library default).
      kernel_metadata, bias_metadata: metadata of the kernel and bias variables, as in
        `flax.nnx.Linear` (e.g. ``{"out_sharding": ("embed", "mlp")}``). Metadata from a
        ``nnx.with_partitioning`` ``kernel_init`` / ``bias_init`` wins, as in flax. The kernel's
        names are those of the dense ``[K, N]`` kernel (see `QuantizedWeight`); with
        ``lora_rank > 0``, ``lora_a`` gets ``(k_name, None)`` and ``lora_b`` ``(None, n_name)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        precision: PrecisionLike = None,
        kernel_init: Initializer = _default_kernel_init,
        bias_init: Initializer = _default_bias_init,
        config: BCQConfig | None = None,
        bits: int = UNSET,
        group_size: int | None = UNSET,
        has_offset: bool = UNSET,
        init_method: str | None = None,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        lora_a_init: Initializer = _default_kernel_init,
        kernel: BCQWeight | None = None,
        mode: str | None = None,
        layout: str = UNSET,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
    ) -> None:
        config, init_method = layer_config(
            config,
            init_method=init_method,
            has_offset=has_offset,
            bits=bits,
            group_size=group_size,
            layout=layout,
            where="LutLinear",
        )
        init_metadata: dict[str, Any] = {}

        def dense_init(key: jax.Array, shape: tuple[int, int], dtype: Dtype) -> jax.Array:
            sample = kernel_init(key, shape, dtype)
            if isinstance(sample, nnx.VariableMetadata):  # nnx.with_partitioning
                init_metadata.update(sample.metadata)
                return sample.raw_value
            return sample

        fresh = kernel is None
        if fresh:
            kernel = init_bcq_weight(
                rngs.params(),
                (in_features, out_features),
                kernel_init=dense_init,
                param_dtype=param_dtype,
                config=config,
                init_method=init_method,
            )
        elif kernel.shape != (in_features, out_features):
            raise ValueError(
                f"LutLinear: kernel is {kernel.shape}, expected ({in_features}, {out_features})"
            )
        if not init_metadata and kernel_init is not _default_kernel_init:
            # kernel_init was not sampled (init_method="zeros" or a given kernel): trace it for
            # its metadata only.
            shape = (in_features, out_features)
            jax.eval_shape(lambda key: dense_init(key, shape, param_dtype), jax.random.key(0))
        if fresh:
            partitioned = _sharding_names({**kernel_metadata, **init_metadata}) is not None
            kernel = convert_layout(kernel, config.resolve_layout(partitioned=partitioned))
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.mode = mode
        self.lora_rank = lora_rank
        self.lora_scale = 1.0 if lora_alpha is None or not lora_rank else lora_alpha / lora_rank
        self.kernel = QuantizedWeight(kernel, **{**kernel_metadata, **init_metadata})
        self.bias = (
            nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype), **bias_metadata)
            if use_bias
            else None
        )
        if lora_rank:
            a_metadata, b_metadata = _lora_metadata(self.kernel.get_metadata())
            a = lora_a_init(rngs.params(), (in_features, lora_rank), param_dtype)
            self.lora_a = nnx.Param(a, **a_metadata)
            b = jnp.zeros((lora_rank, out_features), param_dtype)
            self.lora_b = nnx.Param(b, **b_metadata)
        else:
            self.lora_a = self.lora_b = None

    def __call__(self, inputs: jax.Array) -> jax.Array:
        """``inputs: [..., in_features]`` -> ``[..., out_features]``."""
        lora = None
        if self.lora_a is not None:
            lora = (_value(self.lora_a), _value(self.lora_b), self.lora_scale)
        bias = _value(self.bias) if self.bias is not None else None
        return dense_apply(
            inputs,
            _value(self.kernel),
            bias,
            dtype=self.dtype,
            precision=self.precision,
            lora=lora,
            mode=self.mode,
        )

    @classmethod
    def from_linear(
        cls,
        linear: nnx.Linear,
        config: BCQConfig | None = None,
        *,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        mode: str | None = None,
        rngs: nnx.Rngs | None = None,
        calibration: Calibration | None = None,
        calibrated: Mapping[str, Any] = MappingProxyType({}),
        **fields: Any,
    ) -> LutLinear:
        """Quantizes a trained `nnx.Linear`: same features, dtype, precision and bias.

        ``config`` (default ``BCQConfig()``; ``alpha_dtype=None`` keeps the kernel's dtype) with
        ``fields`` (`BCQConfig` fields: ``bits=4``, ``layout="cpu"``, ...) applied says how.
        ``mode`` is the layer's `lut_gemm` accuracy mode. ``rngs`` initialises ``lora_a``
        (default ``nnx.Rngs(0)``). ``calibration`` (a `lutgemm_jax.calibration.Calibration` of
        the layer's inputs) quantizes with `lutgemm_jax.calibrate.quantize_calibrated`, whose
        options (``act_order``, ``damp``, ``refit``) are the mapping ``calibrated``.
        """
        config = BCQConfig.make(config, where="LutLinear.from_linear", **fields)
        dense = _value(linear.kernel)
        partitioned = _sharding_names(_user_metadata(linear.kernel)) is not None
        packed = quantize_kernel(
            dense, config, partitioned=partitioned, calibration=calibration, **calibrated
        )
        layer = cls(
            linear.in_features,
            linear.out_features,
            use_bias=linear.bias is not None,
            dtype=linear.dtype,
            param_dtype=linear.param_dtype,
            precision=linear.precision,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            kernel=packed,
            mode=mode,
            rngs=rngs if rngs is not None else nnx.Rngs(0),
        )
        # The dense layer's metadata (e.g. out_sharding from nnx.with_partitioning) carries over;
        # its arrays are already placed (quantize_kernel follows a multi-device kernel's
        # sharding), so the metadata is set without resharding, also outside a mesh context.
        kernel_metadata = _user_metadata(linear.kernel)
        if kernel_metadata:
            layer.kernel.set_metadata(**kernel_metadata)
        if linear.bias is not None:
            layer.bias = nnx.Param(jnp.asarray(_value(linear.bias)))
            bias_metadata = _user_metadata(linear.bias)
            if bias_metadata:
                layer.bias.set_metadata(**bias_metadata)
        if layer.lora_a is not None:
            _carry_lora_sharding(layer, kernel_metadata, getattr(dense, "sharding", None))
        return layer


def _user_metadata(variable: nnx.Variable) -> dict[str, Any]:
    """A variable's metadata other than flax's required flags and hooks."""
    metadata = variable.get_metadata()
    return {
        k: v
        for k, v in metadata.items()
        if k not in _REQUIRED_METADATA and not k.startswith("on_") and (k, v) != ("mesh", None)
    }


def _lora_metadata(kernel_metadata: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metadata of ``lora_a [K, r]`` and ``lora_b [r, N]`` for a kernel with this metadata:
    ``(k_name, None)`` and ``(None, n_name)``, with the kernel's mesh, rules and eager flag."""
    sharding = kernel_metadata.get("out_sharding")
    if not sharding:
        return {}, {}
    extra = {
        key: kernel_metadata[key]
        for key in ("mesh", "sharding_rules", "eager_sharding")
        if key in kernel_metadata
    }
    if isinstance(sharding, NamedSharding):
        extra["mesh"], sharding = sharding.mesh, sharding.spec
    names = tuple(sharding)
    k_name, n_name = (names + (None,) * (2 - len(names)))[-2:]
    return {"out_sharding": (k_name, None), **extra}, {"out_sharding": (None, n_name), **extra}


def _carry_lora_sharding(layer: LutLinear, kernel_metadata: Mapping[str, Any], sharding: Any):
    """Gives a converted layer's LoRA factors the metadata and the device placement that
    match the dense kernel's: ``lora_a`` along K, ``lora_b`` along N."""
    a_metadata, b_metadata = _lora_metadata(kernel_metadata)
    k_axes, n_axes = None, None
    placed = isinstance(sharding, NamedSharding) and sharding.num_devices > 1
    if placed:
        k_axes, n_axes = (tuple(sharding.spec) + (None, None))[:2]
    for param, metadata, spec in (
        (layer.lora_a, a_metadata, PartitionSpec(k_axes, None)),
        (layer.lora_b, b_metadata, PartitionSpec(None, n_axes)),
    ):
        metadata = {k: v for k, v in metadata.items() if k != "eager_sharding"}
        if metadata:
            param.set_metadata(**metadata)
        if placed:
            param.set_value(jax.device_put(_value(param), NamedSharding(sharding.mesh, spec)))


def quantize_model(
    model: nnx.Module,
    config: BCQConfig | None = None,
    *,
    include: PathFilter = None,
    exclude: PathFilter = None,
    lora_rank: int = 0,
    lora_alpha: float | None = None,
    mode: str | None = None,
    rngs: nnx.Rngs | None = None,
    progress: bool = False,
    return_summary: bool = False,
    calibrate: Callable[[nnx.Module], Any] | None = None,
    act_order: bool = False,
    damp: float = 0.01,
    **fields: Any,
) -> Any:
    """Replaces the `nnx.Linear` layers of ``model`` by `LutLinear`, in place.

    A layer is converted when its ``/``-joined module path (e.g. ``"blocks/0/mlp/fc1"``) is
    selected by ``include`` and not by ``exclude`` (regex via ``re.search``, or a predicate;
    ``None`` = all / none). Subclasses of ``nnx.Linear`` are left alone.

    Args:
      model: an NNX module; modified in place.
      config, **fields: the `BCQConfig` and fields applied over it, as in
        `LutLinear.from_linear`.
      lora_rank, lora_alpha, rngs: give every converted layer a LoRA adapter.
      mode: `lut_gemm` accuracy mode of the converted layers (``None`` = library default).
      progress: tqdm progress bar over the layers (with ``calibrate``: over the stages).
      return_summary: also return a `ConversionSummary`.
      calibrate: ``None`` (data-free) or a callable ``calibrate(model)`` that runs the model it
        is given eagerly (no ``nnx.jit``) on calibration batches; each selected layer is then
        quantized with `lutgemm_jax.calibrate.quantize_calibrated` on its inputs, block by
        block (``layers_{i}``) as `lutgemm_jax.linen.quantize_params` does, the blocks done so
        far running quantized (`lutgemm_jax.calibrate_model`).
      act_order, damp: `quantize_calibrated` options (with ``calibrate`` only).

    Returns:
      ``model`` (or the new `LutLinear` when ``model`` itself is an ``nnx.Linear``), or
      ``(model, summary)``.
    """
    config = BCQConfig.make(config, where="quantize_model", **fields)
    before = tree_nbytes(nnx.state(model))
    targets = [
        (path, module)
        for path, module in _iter_modules(model)
        if type(module) is nnx.Linear and path_matches(_join(path), include, exclude)
    ]
    layers = []

    def convert(path: tuple[Any, ...], linear: nnx.Linear, **calibration: Any) -> LutLinear:
        new = LutLinear.from_linear(
            linear,
            config,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            mode=mode,
            rngs=rngs,
            **calibration,
        )
        layers.append(layer_summary(_join(path), _value(linear.kernel), _value(new.kernel)))
        if path:
            _set_child(_get_path(model, path[:-1]), path[-1], new)
        return new

    if calibrate is None:
        check_calibrated_options("quantize_model", act_order, damp)
        for path, linear in progress_iter(targets, len(targets), progress, "quantize"):
            new = convert(path, linear)
            if not path:
                model = new
    else:
        _calibrate_layers(model, dict(targets), calibrate, convert, act_order, damp, progress)
    if not return_summary:
        return model
    summary = ConversionSummary(
        layers=tuple(layers),
        total_bytes_before=before,
        total_bytes_after=tree_nbytes(nnx.state(model)),
    )
    return model, summary


class _InputRecorder(nnx.Module):
    """Stands in for a pending `nnx.Linear` during a calibration pass: offers its input to a
    `StageCapture`, then applies the layer."""

    def __init__(self, linear: nnx.Linear, path: tuple[str, ...], capture: StageCapture):
        self.linear = linear
        self.path = path
        self.capture = capture

    def __call__(self, x: jax.Array) -> jax.Array:
        self.capture.offer(self.path, x)
        return self.linear(x)


def _calibrate_layers(
    model: nnx.Module,
    targets: dict[tuple[Any, ...], nnx.Linear],
    calibrate: Any,
    convert: Callable[..., LutLinear],
    act_order: bool,
    damp: float,
    progress: bool,
) -> None:
    """`quantize_model`'s ``calibrate=`` path: `calibrate_model.calibrate_stages` with the
    pending Linears swapped for `_InputRecorder` during each pass."""
    if () in targets:
        raise ValueError("quantize_model: calibrate needs a model containing the nnx.Linear")
    module_paths = {path: tuple(map(str, path)) for path in targets}

    def run_pass(capture: StageCapture) -> None:
        pending = [path for path in targets if module_paths[path] in capture.pending]
        for path in pending:
            recorder = _InputRecorder(targets[path], module_paths[path], capture)
            _set_child(_get_path(model, path[:-1]), path[-1], recorder)
        try:
            calibrate(model)
        finally:
            for path in pending:
                _set_child(_get_path(model, path[:-1]), path[-1], targets[path])

    def quantize_stage(stats: dict[tuple[Any, ...], Calibration]) -> None:
        for path, calibration in stats.items():
            convert(
                path,
                targets[path],
                calibration=calibration,
                calibrated={"act_order": act_order, "damp": damp},
            )

    calibrate_stages(
        module_paths,
        calibrate,
        run_pass,
        quantize_stage,
        progress=progress,
        where="quantize_model",
        hint="it must call the model it is given",
    )


def _iter_modules(model: nnx.Module) -> Any:
    """``(path, module)`` pairs: ``nnx.iter_modules`` (flax >= 0.11) or the older method."""
    iterate = getattr(nnx, "iter_modules", None)
    return iterate(model) if iterate is not None else model.iter_modules()


def _join(path: tuple[Any, ...]) -> str:
    return "/".join(map(str, path))


def _get_path(node: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        node = getattr(node, key) if isinstance(key, str) and hasattr(node, key) else node[key]
    return node


def _set_child(parent: Any, key: Any, child: Any) -> None:
    if isinstance(key, str) and hasattr(parent, key):
        setattr(parent, key, child)
    else:
        parent[key] = child
