"""The ``lut_gemm`` primitive: ``y = x @ W_hat`` for a packed `BCQWeight`.

One `jax.extend.core.Primitive` serves every platform:

* ``cpu``: the native XLA FFI handler ``lutgemm_cpu`` (lookup tables, no dequantization);
* ``cuda``: the CUDA handlers, when the CUDA extension is built (see ``cuda/``);
* any other platform (and builds without a native backend): a pure-jnp lowering that unpacks the
  bits with shifts, lets XLA fuse the dequantization, and calls ``dot``. It is also the reference
  that the native kernels are tested against.

Sign-word layouts (``BCQWeight.layout``, see `lutgemm_jax.format`) travel as the static
primitive parameter ``layout``. The CPU kernel reads both (FFI attribute ``layout``: the index
in `LAYOUTS`); the pure-jnp path, the differentiation rules and the CUDA kernels read canonical
bits, so on those a ``"cpu"``-layout weight is shuffled back on every call (a fused byte
permutation of ``bits``; keep GPU weights canonical).

Differentiation: ``y`` is bilinear in ``x`` and in ``(alpha, offset)``; both have JVP and
transpose rules, so ``jax.grad`` flows into activations (LoRA on a frozen quantized base) and into
the scales. The packed sign bits are integers and get no gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from lutgemm_jax import _native, sharding
from lutgemm_jax._explicit import auto_axes_like
from lutgemm_jax.format import (
    LAYOUTS,
    WORD_BITS,
    BCQWeight,
    convert_bits,
    dequantize,
    resolve_group_size,
)

ACTIVATION_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)

lut_gemm_p = Primitive("lut_gemm")
# The per-device kernel call that lut_gemm_p lowers to, through the partitioning layer in
# sharding.py. Its platform lowerings (CPU/CUDA FFI, pure jnp elsewhere) see local shapes only.
_kernel_p = Primitive("lut_gemm_kernel")

MODES = ("exact", "fast")
"""Accuracy modes of the native CPU kernel (a static primitive parameter ``mode``)."""
DEFAULT_MODE = os.environ.get("LUTGEMM_DEFAULT_MODE", "fast")
"""The mode `lut_gemm` uses when none is given: ``"fast"`` unless the environment variable
``LUTGEMM_DEFAULT_MODE`` (read at import) says ``"exact"``. Fast is the default because on this
project's reference CPU it is 2.5-5x faster than exact at batch 1 (the only mode near the
speed targets) while its error (about 6e-3 of max |y| for Gaussian activations, with a stated
worst-case bound) is of the order of rounding the activations to bfloat16 and far below the
error of 2-4-bit weight quantization itself. See BENCHMARKS.md."""
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
    offset = w.offset if w.has_offset else jnp.zeros((0, w.out_features), w.alpha.dtype)
    operands = _match_varying(x, w.bits, w.alpha, offset)
    return lut_gemm_p.bind(*operands, **_params(w), mode=mode)


def _shard_view(w: BCQWeight) -> BCQWeight:
    """The weight of the shard that ``w``'s arrays hold, e.g. inside ``shard_map``.

    There the arrays are one device's block ``[K/s, N/t]`` while the static metadata still
    describes the whole matrix; a K block must be whole groups, and an N block of a ``"cpu"``
    layout weight whole 32-column blocks. Unsharded weights pass through.
    """
    resolve_group_size(w.in_features, w.group_size)  # metadata errors first
    if w.alpha.ndim != 3:  # stacked weights: validate() reports them
        return w
    groups, n = w.alpha.shape[0], w.alpha.shape[-1]
    if (groups, n) == (w.num_groups, w.out_features):
        return w
    k = w.in_features
    if groups != w.num_groups:
        if w.num_groups % groups or w.in_features % w.group_size:
            raise ValueError(
                f"lut_gemm: w.alpha has {groups} groups, not a block of whole groups of the "
                f"{w.num_groups} groups of K = {w.in_features} (g = {w.group_size})"
            )
        k = groups * w.group_size
    if 0 < n < w.out_features:  # N split into out_features / n shards
        sharding.check_layout_split(w.layout, w.out_features, w.out_features // n)
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


def _params(w: BCQWeight) -> dict[str, int | str]:
    """The primitive's static weight parameters (``mode`` is added by `lut_gemm`)."""
    return dict(
        in_features=w.in_features,
        out_features=w.out_features,
        num_bits=w.num_bits,
        group_size=w.group_size,
        layout=w.layout,
    )


def _weight(
    bits, alpha, offset, *, in_features, out_features, num_bits, group_size, layout, mode=None
) -> BCQWeight:
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


def _canonical(bits, params):
    """``bits`` in the canonical layout, for consumers that unpack signs themselves."""
    return convert_bits(bits, params["layout"], "canonical")


def _check_x(shape, dtype, in_features: int) -> None:
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in ACTIVATION_DTYPES]:
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
    w = _weight(bits, alpha, offset, **params)
    _check_x(x.shape, x.dtype, params["in_features"])
    w.validate()
    # Derived from x's aval so that shard_map's varying manual axes carry over to the result.
    return x.update(
        shape=(*x.shape[:-1], params["out_features"]),
        dtype=x.dtype,
        sharding=_result_sharding(x, bits),
    )


lut_gemm_p.def_abstract_eval(_abstract_eval)
_kernel_p.def_abstract_eval(_abstract_eval)


# ---- the pure-jnp path (reference; default lowering) ---------------------------------------


def lut_gemm_reference(x, bits, alpha, offset, **params):
    """Pure-jnp ``x @ dequantize(w)`` with float32 accumulation; costs about dequantize + dot.

    ``bits`` may be in either layout (``params["layout"]``; `dequantize` reads canonical bits).
    """
    dense = dequantize(_weight(bits, alpha, offset, **params), jnp.float32)
    y = jnp.matmul(x.astype(jnp.float32), dense, precision=jax.lax.Precision.HIGHEST)
    return y.astype(x.dtype)


@functools.cache
def _jitted_bind(**params):
    return jax.jit(functools.partial(lut_gemm_p.bind, **params))


def _impl(*args, **params):
    return _jitted_bind(**params)(*args)


lut_gemm_p.def_impl(_impl)
mlir.register_lowering(_kernel_p, mlir.lower_fun(lut_gemm_reference, multiple_results=False))


def _is_spmd(ctx) -> bool:
    """Whether this lowering is for several devices under XLA's SPMD partitioner.

    Inside a fully manual ``shard_map`` and in single-device programs there is nothing to
    partition (duck-typed: the axis-context classes are not public API).
    """
    axis_context = ctx.module_context.axis_context
    manual_axes = getattr(axis_context, "manual_axes", None)
    if manual_axes is not None:
        return set(manual_axes) != set(axis_context.mesh.axis_names)
    return getattr(axis_context, "num_devices", 1) > 1


def _partitioned_lowering(ctx, x, bits, alpha, offset, **params):
    """Lowers through custom_partitioning (sharding.py) to the kernel primitive."""
    if (
        not _is_spmd(ctx)
        or getattr(ctx.module_context.axis_context, "device_assignment", 0) is None
    ):
        kernel = functools.partial(_kernel_p.bind, **params)
        return mlir.lower_fun(kernel, multiple_results=False)(ctx, x, bits, alpha, offset)
    has_offset = ctx.avals_in[3].shape[0] > 0
    call = sharding.partitioned(_kernel_p.bind, tuple(sorted(params.items())), has_offset)

    def fn(x, bits, alpha, offset):
        return call(x, bits, alpha, offset) if has_offset else call(x, bits, alpha)

    return mlir.lower_fun(fn, multiple_results=False)(ctx, x, bits, alpha, offset)


mlir.register_lowering(lut_gemm_p, _partitioned_lowering)
# custom_partitioning needs the device assignment while lowering; JAX hands it only to programs
# containing primitives in this set (its own cuDNN primitives register the same way). There is
# no public spelling; without it, sharded programs fall back to the unpartitioned kernel.
_requires_devices = getattr(
    importlib.import_module("jax._src.dispatch"), "prim_requires_devices_during_lowering", None
)
if _requires_devices is not None:
    _requires_devices.add(lut_gemm_p)


# ---- native lowerings ----------------------------------------------------------------------


_SHAPE_ATTRIBUTES = ("in_features", "out_features", "num_bits", "group_size")


def _ffi_attributes(params) -> dict[str, np.int64]:
    """The weight-shape attributes every native handler takes (K, N, q, g).

    ``mode`` and ``layout`` are not among them: the CPU lowering adds both as integers, the CUDA
    handlers take neither.
    """
    return {name: np.int64(params[name]) for name in _SHAPE_ATTRIBUTES}


_NEVER = 1 << 62
CPU_CROSSOVER: dict[str, int | tuple[int, ...]] = {
    "exact": (8, 3, 2, 2, 2, 2, 2, 2),
    "fast": (_NEVER,) * 4 + (64, 48, 48, 48),
}
"""Per mode (an int, or a tuple indexed by q - 1): the number of rows M (product of x's leading
dims) from which the CPU kernel uses its dense path (W_hat dequantized one 256 x 64 tile at a
time into L2, packed FMA GEMM; FFI mode 2) instead of lookup tables. Static at lowering. Measured
on 4096 x 4096, g = 128 with ``python -m lutgemm_jax.bench --backends lut_kernel dense``
(BENCHMARKS.md, "Crossover measurements"): the exact LUT still wins at M = 4 for q = 1 and loses
at M = 8, wins at M = 2 and loses from M = 3 for q = 2, ties (1.0x) or loses (0.8x) at M = 2 for
q = 3 and loses from M = 2 for q = 4 and 8 (q = 5-7 interpolated); the fast LUT beats the dense
path at every M <= 256 for q <= 4, ties it at M = 64 for q = 5 (loses at 128), and loses from
M = 48 for q = 6 and 8 (q = 7 interpolated)."""


def _cpu_crossover(mode: str, q: int) -> int:
    c = CPU_CROSSOVER[mode]
    return c if isinstance(c, int) else c[q - 1]


def _cpu_lowering(ctx, x, bits, alpha, offset, **params):
    mode = params.get("mode", DEFAULT_MODE)
    rows = int(np.prod(ctx.avals_in[0].shape[:-1], dtype=np.int64))
    # FFI mode attribute: 0 exact LUT, 1 fast LUT, 2 dequantized tiles + dense FMA GEMM.
    kernel_mode = 2 if rows >= _cpu_crossover(mode, params["num_bits"]) else MODES.index(mode)
    return jax.ffi.ffi_lowering(_native.CPU_TARGET)(
        ctx,
        x,
        bits,
        alpha,
        offset,
        **_ffi_attributes(params),
        mode=np.int64(kernel_mode),
        layout=np.int64(LAYOUTS.index(params["layout"])),
    )


if _native.HAS_CPU:
    mlir.register_lowering(_kernel_p, _cpu_lowering, platform="cpu")


# CUDA (cuda/): the lookup-table kernel for M <= CUDA_LUT_MAX_ROWS rows of x; above, the CUDA
# dequantization kernel writes W_hat [K, N] in x's dtype and XLA's dot (tensor cores, float32
# accumulation) does the product. The choice is static, from x's shape. See docs/cuda.md.
# Both kernels read canonical bits: a "cpu"-layout weight is shuffled back (`_canonical`) inside
# the lowered function on every call, a fused byte permutation of bits that XLA runs on the GPU.
CUDA_LUT_MAX_ROWS = 8
"""Largest M (product of x's leading dims) lowered to the CUDA LUT kernel."""
_CUDA_PLAN_SMS = 132  # the split-K rule below targets 2 blocks per SM of an H100 SXM


def _cuda_splits(m: int, n: int, num_words: int) -> int:
    """K slices of the CUDA LUT kernel's split-K (mirrors SplitsFor in cuda/lut_gemm_plan.h)."""
    rows_per_block = 1 if m <= 1 else 2 if m <= 2 else 4 if m <= 4 else 8
    blocks = -(-n // 512) * -(-m // rows_per_block)
    if blocks == 0:  # M == 0
        return 1
    want = max(1, -(-2 * _CUDA_PLAN_SMS // blocks))
    return min(want, max(1, num_words // 8))


def _cuda_lut(x, bits, alpha, offset, **params):
    m, n = int(np.prod(x.shape[:-1], dtype=np.int64)), params["out_features"]
    splits = _cuda_splits(m, n, bits.shape[0])
    # Split-K partials, allocated by XLA (no allocation in the handler): S * M * N float32.
    workspace = jax.ShapeDtypeStruct((splits * m * n if splits > 1 else 0,), jnp.float32)
    y, _ = jax.ffi.ffi_call(
        _native.CUDA_TARGET, (jax.ShapeDtypeStruct((*x.shape[:-1], n), x.dtype), workspace)
    )(x, _canonical(bits, params), alpha, offset, **_ffi_attributes(params))
    return y


def _cuda_dequant_dot(x, bits, alpha, offset, **params):
    k, n = params["in_features"], params["out_features"]
    dense = jax.ffi.ffi_call(_native.CUDA_DEQUANT_TARGET, jax.ShapeDtypeStruct((k, n), x.dtype))(
        _canonical(bits, params), alpha, offset, **_ffi_attributes(params)
    )
    precision = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else jax.lax.Precision.DEFAULT
    y = jnp.matmul(x, dense, precision=precision, preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def _cuda_lowering(ctx, x, bits, alpha, offset, **params):
    rows = int(np.prod(ctx.avals_in[0].shape[:-1], dtype=np.int64))
    path = _cuda_lut if rows <= CUDA_LUT_MAX_ROWS else _cuda_dequant_dot
    return mlir.lower_fun(path, multiple_results=False)(ctx, x, bits, alpha, offset, **params)


if _native.HAS_CUDA:
    mlir.register_lowering(_kernel_p, _cuda_lowering, platform="cuda")


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
            dense = dequantize(_weight(bits, alpha, offset, **params), jnp.float32)
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
    """Cotangents of alpha ``[G, q, N]`` and offset ``[G, N]`` of ``y = x @ W_hat``."""
    k, n, g = params["in_features"], params["out_features"], params["group_size"]
    kp = bits.shape[0] * WORD_BITS
    x2 = jnp.pad(x.reshape(-1, k).astype(jnp.float32), ((0, 0), (0, kp - k)))
    ct2 = ct.reshape(-1, n).astype(jnp.float32)
    # outer[G, g, N] = sum_m x[m, k] ct[m, n]: the cotangent of the dense weight.
    outer = jnp.matmul(x2.T, ct2, precision=jax.lax.Precision.HIGHEST).reshape(kp // g, g, n)
    shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)[:, None, None]
    planes = (_canonical(bits, params)[:, None] >> shifts) & jnp.uint32(1)
    signs = planes.reshape(kp // g, g, *bits.shape[1:]).astype(jnp.float32) * 2.0 - 1.0
    ct_alpha = jnp.einsum("gkn,gkqn->gqn", outer, signs, precision=jax.lax.Precision.HIGHEST)
    ct_offset = jnp.sum(outer, axis=1)
    if offset_aval.shape[0] == 0:
        ct_offset = jnp.zeros(offset_aval.shape, offset_aval.dtype)
    return ct_alpha.astype(alpha_aval.dtype), ct_offset.astype(offset_aval.dtype)


ad.primitive_jvps[lut_gemm_p] = _jvp
ad.primitive_transposes[lut_gemm_p] = _transpose
