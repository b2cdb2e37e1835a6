"""Flax NNX integration: `LutLinear`, `QuantizedWeight`, `quantize_model`.

`LutLinear` is a drop-in for `flax.nnx.Linear` whose kernel is a packed `BCQWeight` held in a
`QuantizedWeight` variable. That type is *not* an `nnx.Param`, so ``nnx.state(model,
nnx.Param)``, ``nnx.grad`` / ``nnx.value_and_grad`` (which differentiate ``nnx.Param`` by
default) and ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` leave the packed codes alone: with
``lora_rank > 0`` only the LoRA factors (and the bias) train.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lutgemm_jax.convert import (
    ConversionSummary,
    PathFilter,
    alpha_dtype_for,
    dense_apply,
    layer_summary,
    path_matches,
    progress_iter,
    quantize_kernel,
    tree_nbytes,
)
from lutgemm_jax.format import BCQWeight
from lutgemm_jax.linen import init_bcq_weight

__all__ = ["LutLinear", "QuantizedWeight", "quantize_model", "ConversionSummary"]

_default_kernel_init = nnx.initializers.lecun_normal()
_default_bias_init = nnx.initializers.zeros_init()


class QuantizedWeight(nnx.Variable):
    """A non-trainable variable holding a packed `BCQWeight` (sign bits, alpha, offset)."""


def _value(variable: nnx.Variable) -> Any:
    getter = getattr(variable, "get_value", None)
    return getter() if getter is not None else variable.value


class LutLinear(nnx.Module):
    """``y = lut_gemm(x, kernel) + (x @ lora_a) @ lora_b * scale + bias``, ``x: [..., K]``.

    Attributes (after construction):
      kernel: `QuantizedWeight` holding a `BCQWeight` for ``[in_features, out_features]``.
      bias: `nnx.Param` ``[out_features]``, or ``None``.
      lora_a, lora_b: `nnx.Param` ``[in_features, r]`` and ``[r, out_features]`` (``lora_b``
        zero-initialised), or ``None`` when ``lora_rank == 0``.

    Args:
      in_features, out_features, use_bias, dtype, param_dtype, precision, kernel_init,
        bias_init, rngs: as in `flax.nnx.Linear` (``precision`` applies to the LoRA products;
        ``lut_gemm`` accumulates in float32; alpha is stored in ``param_dtype``).
      bits, group_size, has_offset: the packed format of a freshly initialised kernel.
      init_method: ``"greedy"`` / ``"alternating"`` / ``"rtn"`` quantize ``kernel_init``'s
        sample; ``"zeros"`` gives zero arrays of the right shapes.
      lora_rank: LoRA rank ``r`` (0 = no adapter); lora_alpha: ``scale = lora_alpha / r``
        (``None`` = 1); lora_a_init: initializer of ``lora_a``.
      kernel: an existing `BCQWeight` to use instead of initialising one (its ``q``, ``g`` and
        offset win over ``bits``/``group_size``/``has_offset``).
      mode: accuracy mode of `lut_gemm`'s native CPU kernel (``"exact"``, ``"fast"``, or
        ``None`` for the library default).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Callable[..., jax.Array] = _default_kernel_init,
        bias_init: Callable[..., jax.Array] = _default_bias_init,
        bits: int = 3,
        group_size: int | None = 128,
        has_offset: bool = False,
        init_method: str = "greedy",
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        lora_a_init: Callable[..., jax.Array] = _default_kernel_init,
        kernel: BCQWeight | None = None,
        mode: str | None = None,
        rngs: nnx.Rngs,
    ) -> None:
        if kernel is None:
            kernel = init_bcq_weight(
                rngs.params(),
                (in_features, out_features),
                kernel_init=kernel_init,
                param_dtype=param_dtype,
                bits=bits,
                group_size=group_size,
                has_offset=has_offset,
                init_method=init_method,
            )
        elif kernel.shape != (in_features, out_features):
            raise ValueError(
                f"LutLinear: kernel is {kernel.shape}, expected ({in_features}, {out_features})"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.mode = mode
        self.lora_rank = lora_rank
        self.lora_scale = 1.0 if lora_alpha is None or not lora_rank else lora_alpha / lora_rank
        self.kernel = QuantizedWeight(kernel)
        self.bias = (
            nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None
        )
        if lora_rank:
            a = lora_a_init(rngs.params(), (in_features, lora_rank), param_dtype)
            self.lora_a = nnx.Param(a)
            self.lora_b = nnx.Param(jnp.zeros((lora_rank, out_features), param_dtype))
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
        *,
        bits: int = 3,
        group_size: int | None = 128,
        method: str = "alternating",
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        mode: str | None = None,
        rngs: nnx.Rngs | None = None,
        **quantize_kwargs: Any,
    ) -> LutLinear:
        """Quantizes a trained `nnx.Linear`: same features, dtype, precision and bias.

        ``mode`` is the layer's `lut_gemm` accuracy mode. ``quantize_kwargs`` go to
        `lutgemm_jax.quantize.quantize` (``fit_offset``, ``rounds``,
        ...; ``alpha_dtype`` defaults to the kernel's dtype). ``rngs`` initialises ``lora_a``
        (default ``nnx.Rngs(0)``).
        """
        dense = _value(linear.kernel)
        kwargs = {"alpha_dtype": alpha_dtype_for(dense.dtype), **quantize_kwargs}
        packed = quantize_kernel(dense, bits=bits, group_size=group_size, method=method, **kwargs)
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
        if linear.bias is not None:
            layer.bias = nnx.Param(jnp.asarray(_value(linear.bias)))
        return layer


def quantize_model(
    model: nnx.Module,
    *,
    bits: int = 3,
    group_size: int | None = 128,
    method: str = "alternating",
    include: PathFilter = None,
    exclude: PathFilter = None,
    lora_rank: int = 0,
    lora_alpha: float | None = None,
    mode: str | None = None,
    rngs: nnx.Rngs | None = None,
    progress: bool = False,
    return_summary: bool = False,
    **quantize_kwargs: Any,
) -> Any:
    """Replaces the `nnx.Linear` layers of ``model`` by `LutLinear`, in place.

    A layer is converted when its ``/``-joined module path (e.g. ``"blocks/0/mlp/fc1"``) is
    selected by ``include`` and not by ``exclude`` (regex via ``re.search``, or a predicate;
    ``None`` = all / none). Subclasses of ``nnx.Linear`` are left alone.

    Args:
      model: an NNX module; modified in place.
      bits, group_size, method, **quantize_kwargs: passed to `LutLinear.from_linear`.
      lora_rank, lora_alpha, rngs: give every converted layer a LoRA adapter.
      mode: `lut_gemm` accuracy mode of the converted layers (``None`` = library default).
      progress: tqdm progress bar over the layers.
      return_summary: also return a `ConversionSummary`.

    Returns:
      ``model`` (or the new `LutLinear` when ``model`` itself is an ``nnx.Linear``), or
      ``(model, summary)``.
    """
    before = tree_nbytes(nnx.state(model))
    targets = [
        (path, module)
        for path, module in _iter_modules(model)
        if type(module) is nnx.Linear and path_matches(_join(path), include, exclude)
    ]
    layers = []
    for path, linear in progress_iter(targets, len(targets), progress, "quantize"):
        new = LutLinear.from_linear(
            linear,
            bits=bits,
            group_size=group_size,
            method=method,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            mode=mode,
            rngs=rngs,
            **quantize_kwargs,
        )
        layers.append(layer_summary(_join(path), _value(linear.kernel), _value(new.kernel)))
        if not path:
            model = new
        else:
            _set_child(_get_path(model, path[:-1]), path[-1], new)
    if not return_summary:
        return model
    summary = ConversionSummary(
        layers=tuple(layers),
        total_bytes_before=before,
        total_bytes_after=tree_nbytes(nnx.state(model)),
    )
    return model, summary


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
