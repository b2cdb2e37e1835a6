"""The ``lut_gemm`` primitive: ``y = x @ W_hat`` for a packed `BCQWeight`.

This module holds the primitive and its rules: the public `lut_gemm`, abstract evaluation,
batching, JVP and transpose. How the primitive becomes code lives elsewhere:

* `lutgemm_jax.sharding`: ``lut_gemm_p`` lowers through custom_partitioning to the per-device
  primitive `lut_gemm_kernel_p` (XLA's SPMD partitioner splits the call);
* `lutgemm_jax.lowering`: the platform lowerings of `lut_gemm_kernel_p` (the native CPU and CUDA
  FFI handlers, and the pure-jnp lowering used on every other platform).

Sign-word layouts (``BCQWeight.layout``, see `lutgemm_jax.format`) travel as the static
primitive parameter ``layout``.

Differentiation: ``y`` is bilinear in ``x`` and in ``(alpha, offset)``; both have JVP and
transpose rules, so ``jax.grad`` flows into activations (LoRA on a frozen quantized base) and into
the scales. The packed sign bits are integers and get no gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from lutgemm_jax._explicit import auto_axes_like
from lutgemm_jax.format import (
    WORD_BITS,
    BCQWeight,
    check_layout_split,
    convert_bits,
    dequantize,
    is_float_dtype,
    offset_operand,
    resolve_group_size,
    sign_planes,
)

lut_gemm_p = Primitive("lut_gemm")
"""The primitive `lut_gemm` binds: operands ``(x, bits, alpha, offset)`` (offset ``[0, N]`` when
the weight has none, see `lutgemm_jax.format.offset_operand`), static parameters
`weight_params` plus ``mode``."""
lut_gemm_kernel_p = Primitive("lut_gemm_kernel")
"""The per-device kernel call that ``lut_gemm_p`` lowers to (`lutgemm_jax.sharding`); same
operands and parameters, with local shapes. Its platform lowerings are in `lutgemm_jax.lowering`."""

MODES = ("exact", "fast")
"""Accuracy modes of the native CPU kernel (a static primitive parameter ``mode``)."""
DEFAULT_MODE = os.environ.get("LUTGEMM_DEFAULT_MODE", "fast")
"""The mode `lut_gemm` uses when none is given: ``"fast"`` unless the environment variable
``LUTGEMM_DEFAULT_MODE`` (read at import) says ``"exact"``. Fast is the default because at batch 1
it is several times faster than exact while its error (with a stated worst-case bound, see
``cpu/lut_gemm_cpu.h``) is of the order of rounding the activations to bfloat16 and far below the
error of 2-4-bit weight quantization itself. Measurements: BENCHMARKS.md."""
if DEFAULT_MODE not in MODES:
    raise ValueError(f"LUTGEMM_DEFAULT_MODE must be one of {MODES}, got {DEFAULT_MODE!r}")


def lut_gemm(x: jax.Array, w: BCQWeight, *, mode: str | None = None) -> jax.Array:
    """Computes ``x @ W_hat`` with lookup tables over the packed weight ``w``.

    Args:
      x: activations ``[..., K]``, float32, bfloat16 or float16.
      w: a `BCQWeight` for a ``[K, N]`` kernel.
      mode: accuracy mode of the native CPU kernel (other lowerings ignore it): ``"exact"``
        (float32 lookup tables) or ``"fast"`` (int8 lookup tables with one scale per block of up
        to 128 activations; see ``cpu/lut_gemm_cpu.h`` and BENCHMARKS.md for its error bound).
        ``None`` means `DEFAULT_MODE`.

    Returns:
      ``[..., N]`` in ``x.dtype``; products are accumulated in float32.

    Raises:
      TypeError / ValueError: naming the argument, if dtypes or shapes do not match ``w``.
    """
    x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
    w = _shard_view(w)
    w.validate()
    _check_x(x.shape, x.dtype, w.in_features)
    if w.batch_shape:
        raise ValueError(
            f"lut_gemm: w is a stack of weights with leading axes {w.batch_shape}; map over "
            "them with jax.vmap (or lax.map) and pass one weight per call"
        )
    mode = DEFAULT_MODE if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"lut_gemm: mode must be one of {MODES} or None, got {mode!r}")
    operands = _match_varying(x, w.bits, w.alpha, offset_operand(w.offset, w.alpha))
    return lut_gemm_p.bind(*operands, **weight_params(w), mode=mode)


def _shard_view(w: BCQWeight) -> BCQWeight:
    """The weight of the shard that ``w``'s arrays hold, e.g. inside ``shard_map``.

    There the arrays are one device's block ``[K/s, N/t]`` while the static metadata still
    describes the whole matrix; a K block must be whole groups and whole sign words (pairs of
    groups for g = 16), and an N block of a ``"cpu"`` layout weight whole 32-column blocks.
    Unsharded weights pass through.
    """
    resolve_group_size(w.in_features, w.group_size)  # metadata errors first
    if w.alpha.ndim != 3:  # stacked weights: validate() reports them
        return w
    groups, n = w.alpha.shape[0], w.alpha.shape[-1]
    if (groups, n) == (w.num_groups, w.out_features):
        return w
    k = w.in_features
    if groups != w.num_groups:
        per_unit = max(1, WORD_BITS // w.group_size)  # groups per K unit: 2 for g = 16
        if w.num_groups % groups or groups % per_unit or w.in_features != w.padded_in_features:
            raise ValueError(
                f"lut_gemm: w.alpha has {groups} groups, not a block of whole groups and whole "
                f"32-bit sign words of the {w.num_groups} groups of K = {w.in_features} "
                f"(g = {w.group_size})"
            )
        k = groups * w.group_size
    if 0 < n < w.out_features:  # N split into out_features / n shards
        check_layout_split(w.layout, w.out_features, w.out_features // n)
    return dataclasses.replace(w, in_features=k, out_features=n)


def _varying_axes(a) -> frozenset:
    """The shard_map mesh axes ``a`` varies over (jax >= 0.10 spells it two ways)."""
    aval = jax.typeof(a)
    manual = getattr(aval, "manual_axis_type", None)
    return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def _match_varying(*arrays):
    """Makes all operands vary over the same shard_map axes (a no-op outside shard_map).

    The result's type is derived from x; if x were invariant over an axis the weights vary
    over, the transpose would miss the psum over that axis and gradients would be silently
    wrong.
    """
    vmas = [_varying_axes(a) for a in arrays]
    union = frozenset().union(*vmas)
    return [
        a if vma == union else jax.lax.pcast(a, tuple(union - vma), to="varying")
        for a, vma in zip(arrays, vmas, strict=True)
    ]


def weight_params(w: BCQWeight) -> dict[str, int | str]:
    """The primitives' static weight parameters: K, N, q, g and the layout (``in_features``,
    ``out_features``, ``num_bits``, ``group_size``, ``layout``); `lut_gemm` adds ``mode``."""
    return dict(
        in_features=w.in_features,
        out_features=w.out_features,
        num_bits=w.num_bits,
        group_size=w.group_size,
        layout=w.layout,
    )


def operand_weight(
    bits, alpha, offset, *, in_features, out_features, num_bits, group_size, layout, mode=None
) -> BCQWeight:
    """The `BCQWeight` that a primitive's operands and parameters describe (inverse of
    `lut_gemm`'s packing: an empty ``[0, N]`` offset becomes None; ``mode`` is ignored)."""
    del mode  # a kernel option, not part of the weight
    return BCQWeight(
        bits=bits,
        alpha=alpha,
        offset=offset if offset.shape[-2] else None,
        in_features=in_features,
        out_features=out_features,
        num_bits=num_bits,
        group_size=group_size,
        layout=layout,
    )


def _check_x(shape, dtype, in_features: int) -> None:
    if not is_float_dtype(dtype):
        raise TypeError(f"lut_gemm: x must be float32, bfloat16 or float16, got dtype {dtype}")
    if len(shape) < 1 or shape[-1] != in_features:
        raise ValueError(
            f"lut_gemm: x has shape {tuple(shape)}, expected [..., K] with K = {in_features} "
            "(the weight's in_features)"
        )


# ---- abstract evaluation -------------------------------------------------------------------


def _axes(entry) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry."""
    return () if entry is None else entry if isinstance(entry, tuple) else (entry,)


def _result_sharding(x, bits):
    """The sharding type of ``y [..., N]`` (explicit mesh axes; all-None otherwise): x's leading
    dims, and N split like the weight's N (``bits [Kp/32, q, N]``). A split of K is summed away
    by the partitioning rule (sharding.py), so it does not carry over."""
    spec = tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
    lead = spec[:-1]
    n = tuple(bits.sharding.spec)[2] if len(bits.sharding.spec) > 2 else None
    if set(_axes(n)) & {a for e in lead for a in _axes(e)}:
        n = None  # an axis already splits the batch: N stays whole
    # x may carry no mesh at all (created outside it) while the weight does.
    base = x.sharding if x.sharding.mesh.axis_names or n is None else bits.sharding
    return base.update(spec=jax.sharding.PartitionSpec(*lead, n))


def _abstract_eval(x, bits, alpha, offset, **params):
    w = operand_weight(bits, alpha, offset, **params)
    _check_x(x.shape, x.dtype, params["in_features"])
    w.validate()
    # Derived from x's aval so that shard_map's varying manual axes carry over to the result.
    return x.update(
        shape=(*x.shape[:-1], params["out_features"]),
        dtype=x.dtype,
        sharding=_result_sharding(x, bits),
    )


lut_gemm_p.def_abstract_eval(_abstract_eval)
lut_gemm_kernel_p.def_abstract_eval(_abstract_eval)


@functools.cache
def _jitted_bind(**params):
    return jax.jit(functools.partial(lut_gemm_p.bind, **params))


def _impl(*args, **params):
    return _jitted_bind(**params)(*args)


lut_gemm_p.def_impl(_impl)


# ---- batching ------------------------------------------------------------------------------


def _batch(args, dims, **params):
    x, bits, alpha, offset = args
    xd, bd, ad_, od = dims
    if bd is None and ad_ is None and od is None:
        # Only x is batched: one more leading axis of x.
        x = jnp.moveaxis(x, xd, 0)
        return lut_gemm_p.bind(x, bits, alpha, offset, **params), 0
    # Stacked weights: one native call per weight, in sequence.
    size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
    x, bits, alpha, offset = (
        jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
        for a, d in zip(args, dims, strict=True)
    )
    y = jax.lax.map(lambda a: lut_gemm_p.bind(*a, **params), (x, bits, alpha, offset))
    return y, 0


batching.primitive_batchers[lut_gemm_p] = _batch


# ---- differentiation -----------------------------------------------------------------------


def _jvp(primals, tangents, **params):
    x, bits, alpha, offset = primals
    tx, _, talpha, toffset = tangents
    y = lut_gemm_p.bind(x, bits, alpha, offset, **params)
    ty = None
    if type(tx) is not ad.Zero:
        ty = lut_gemm_p.bind(tx, bits, alpha, offset, **params)
    if type(talpha) is not ad.Zero or type(toffset) is not ad.Zero:
        talpha = ad.instantiate_zeros(talpha)
        toffset = ad.instantiate_zeros(toffset)
        term = lut_gemm_p.bind(x, bits, talpha, toffset, **params)
        ty = term if ty is None else ty + term
    return y, jnp.zeros_like(y) if ty is None else ty


def _transpose(ct, x, bits, alpha, offset, **params):
    if type(ct) is ad.Zero:
        return None, None, None, None
    ct_x = ct_alpha = ct_offset = None
    if ad.is_undefined_primal(x):

        def x_cotangent(ct, bits, alpha, offset):
            dense = dequantize(operand_weight(bits, alpha, offset, **params), jnp.float32)
            y = jnp.matmul(ct.astype(jnp.float32), dense.T, precision=jax.lax.Precision.HIGHEST)
            return y.astype(x.aval.dtype)

        avals = [jax.typeof(a) for a in (ct, bits, alpha, offset)]
        ct_x = auto_axes_like(x_cotangent, [x.aval], avals)(ct, bits, alpha, offset)
    if ad.is_undefined_primal(alpha) or ad.is_undefined_primal(offset):
        alpha_aval = alpha.aval if ad.is_undefined_primal(alpha) else jax.typeof(alpha)
        offset_aval = offset.aval if ad.is_undefined_primal(offset) else jax.typeof(offset)
        scales = functools.partial(
            _scale_cotangents, alpha_aval=alpha_aval, offset_aval=offset_aval, params=params
        )
        avals = [jax.typeof(a) for a in (x, bits, ct)]
        ct_alpha, ct_offset = auto_axes_like(scales, [alpha_aval, offset_aval], avals)(x, bits, ct)
        ct_alpha = ct_alpha if ad.is_undefined_primal(alpha) else None
        ct_offset = ct_offset if ad.is_undefined_primal(offset) else None
    return ct_x, None, ct_alpha, ct_offset


def _scale_cotangents(x, bits, ct, alpha_aval, offset_aval, params):
    """Cotangents of alpha ``[G, q, N]`` (uniform: ``[G, 1, N]``) and offset ``[G, N]`` of
    ``y = x @ W_hat``."""
    k, n, g = params["in_features"], params["out_features"], params["group_size"]
    kp = bits.shape[0] * WORD_BITS
    x2 = jnp.pad(x.reshape(-1, k).astype(jnp.float32), ((0, 0), (0, kp - k)))
    ct2 = ct.reshape(-1, n).astype(jnp.float32)
    # outer[G, g, N] = sum_m x[m, k] ct[m, n]: the cotangent of the dense weight.
    outer = jnp.matmul(x2.T, ct2, precision=jax.lax.Precision.HIGHEST).reshape(kp // g, g, n)
    planes = sign_planes(convert_bits(bits, params["layout"], "canonical"))
    signs = planes.reshape(kp // g, g, *bits.shape[1:]).astype(jnp.float32) * 2.0 - 1.0
    if alpha_aval.shape[-2] != signs.shape[-2]:
        # Uniform: plane i's scale is alpha * 2^i, so alpha multiplies sum_i 2^i s_i.
        powers = 2.0 ** jnp.arange(signs.shape[-2], dtype=jnp.float32)
        signs = jnp.sum(signs * powers[:, None], axis=-2, keepdims=True)
    ct_alpha = jnp.einsum("gkn,gkqn->gqn", outer, signs, precision=jax.lax.Precision.HIGHEST)
    ct_offset = jnp.sum(outer, axis=1)
    if offset_aval.shape[0] == 0:
        ct_offset = jnp.zeros(offset_aval.shape, offset_aval.dtype)
    return ct_alpha.astype(alpha_aval.dtype), ct_offset.astype(offset_aval.dtype)


ad.primitive_jvps[lut_gemm_p] = _jvp
ad.primitive_transposes[lut_gemm_p] = _transpose
