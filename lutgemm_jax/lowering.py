"""Platform lowerings of the per-device primitive `lutgemm_jax.ops.lut_gemm_kernel_p`.

* ``cpu``: the native XLA FFI handler ``lutgemm_cpu`` (`lutgemm_jax._native`). Its FFI
  attributes ``mode`` (0 exact, 1 fast lookup tables) and ``path`` (0 lookup tables, 1 W_hat
  dequantized one tile at a time + FMA GEMM) are chosen at lowering from the batch size and
  `CPU_CROSSOVER`; ``layout`` is the index of the weight's sign-word layout in `LAYOUTS`.
* ``cuda``: the CUDA handlers: lookup tables for up to `CUDA_LUT_MAX_ROWS` rows of x, above that
  a dequantization kernel followed by XLA's dot. Without the CUDA extension, lowering for a GPU
  warns once (`warnings.warn`, naming `lutgemm_jax.build_info`) and uses `jnp_lowering`, so a
  missing build never goes unnoticed.
* every other platform (TPU, ROCm, ...): `jnp_lowering`, dequantize + dot in jnp. This is the
  production path there, not only a reference.

Benchmarks and tests call the native kernels directly, bypassing the crossover, through
`cpu_kernel` and `cuda_kernel`; `cuda_splits` mirrors the CUDA kernel's split-K rule.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import mlir

from lutgemm_jax import _native
from lutgemm_jax.format import LAYOUTS, BCQWeight, convert_bits, dequantize, offset_operand
from lutgemm_jax.ops import (
    DEFAULT_MODE,
    MODES,
    lut_gemm_kernel_p,
    operand_weight,
    weight_params,
)

# ---- every platform without a native kernel ------------------------------------------------


def jnp_lowering(x, bits, alpha, offset, **params) -> jax.Array:
    """``x @ W_hat`` in jnp: `dequantize` (XLA fuses the unpacking) and one float32-accumulated
    ``matmul``. The production lowering on every platform without a native kernel (TPU, ROCm,
    ...), and the portable path the native kernels are checked against.

    Args:
      x: ``[..., K]``; bits ``[Kp/32, q, N]`` in either layout (``params["layout"]``); alpha
        ``[G, q, N]`` or uniform ``[G, 1, N]`` (expanded to plane scales inside the fused
        dequantization); offset ``[G, N]`` or ``[0, N]`` for none.
      params: `lutgemm_jax.ops.weight_params` (and ``mode``, ignored).

    Returns:
      ``[..., N]`` in x's dtype.
    """
    dense = dequantize(operand_weight(bits, alpha, offset, **params), jnp.float32)
    y = jnp.matmul(x.astype(jnp.float32), dense, precision=jax.lax.Precision.HIGHEST)
    return y.astype(x.dtype)


_jnp_rule = mlir.lower_fun(jnp_lowering, multiple_results=False)
mlir.register_lowering(lut_gemm_kernel_p, _jnp_rule)


_SHAPE_ATTRIBUTES = ("in_features", "out_features", "num_bits", "group_size")


def _shape_attributes(params) -> dict[str, np.int64]:
    """The weight-shape FFI attributes every native handler takes (K, N, q, g), as numpy int64
    scalars: the handlers declare them ``int64_t``."""
    return {name: np.int64(params[name]) for name in _SHAPE_ATTRIBUTES}


def _rows(shape) -> int:
    """M: the product of the leading dims of x ``[..., K]``."""
    return int(np.prod(shape[:-1], dtype=np.int64))


# ---- CPU -----------------------------------------------------------------------------------

CPU_PATHS = ("lut", "dense")
"""Code paths of the native CPU kernel (FFI attribute ``path``, the index here): ``"lut"``
lookup tables over the sign bits, ``"dense"`` W_hat dequantized one 256 x 64 tile at a time into
L2 and a packed FMA GEMM (the large-batch path)."""

_NEVER = 1 << 62
Crossover = int | tuple[int, ...]
CPU_CROSSOVER: dict[str, Crossover | dict[int, Crossover]] = {
    "exact": (8, 3, 2, 2, 2, 2, 2, 2),
    "fast": {
        16: (48, 24, 24, 16, 12, 12, 8, 8),
        32: (96, 48, 32, 24, 16, 16, 12, 12),
        _NEVER: (_NEVER, _NEVER, 96, 32, 24, 16, 16, 12),
    },
}
"""Per mode: the number of rows M (product of x's leading dims) from which `lut_gemm` takes the
CPU kernel's ``"dense"`` path instead of lookup tables, as an int, a tuple indexed by q - 1, or
a dict from the largest group size g an entry covers to either (the first key >= g applies).
Static at lowering. Measured with ``python -m lutgemm_jax.bench --backends lut_kernel dense`` on
4096 x 4096. Exact mode (g = 128; BENCHMARKS.md, "Crossover measurements"): the exact LUT still
wins at M = 4 for q = 1 and loses at M = 8, wins at M = 2 and loses from M = 3 for q = 2, ties or
loses at M = 2 for q = 3 and loses from M = 2 for q = 4 and 8 (q = 5-7 interpolated).
Fast mode, against the dense path with its AVX-512 kernels. g = 128: the fast LUT wins at every
M <= 2048 for q = 1 and 2 (by 1.3x at q = 2, M = 2048); for q = 3 it wins at M = 64 and loses
from M = 96; q = 4 ties at M = 24 and loses at 32; q = 5 wins at 16 and loses at 32; q = 8 loses
by 2x at M = 16 (q = 6, 7 and q = 8's step interpolated). Smaller groups cost the LUT a table
scale and alpha segment per group, the dense path nothing more (uniform float16 scales, as GGUF
imports make): g = 32: the LUT wins at M = 32 and loses at 64 for q = 2, ties at 32 for q = 3,
ties at 16 for q = 4; g = 16: wins at 16 and loses at 32 for q = 2 and 3, loses at 16 for q = 4
(q = 1 and q >= 5 extrapolated: half and about the q = 4 crossover). On CPUs without AVX-512 the
dense path's FMAs run half as wide, so there the fast-mode crossovers lie about twice as high."""


def cpu_path(mode: str, num_bits: int, rows: int, group_size: int = 128) -> str:
    """The CPU kernel path (`CPU_PATHS`) that `lut_gemm` takes for ``rows`` rows of x and a
    weight with ``num_bits`` planes and groups of ``group_size`` rows."""
    c = CPU_CROSSOVER[mode]
    if isinstance(c, dict):
        c = c[min(bound for bound in c if bound >= group_size)]
    crossover = c if isinstance(c, int) else c[num_bits - 1]
    return "dense" if rows >= crossover else "lut"


def _cpu_attributes(params, mode: str, path: str) -> dict[str, np.int64]:
    return {
        **_shape_attributes(params),
        "layout": np.int64(LAYOUTS.index(params["layout"])),
        "mode": np.int64(MODES.index(mode)),
        "path": np.int64(CPU_PATHS.index(path)),
    }


def _cpu_lowering(ctx, x, bits, alpha, offset, **params):
    mode = params.get("mode", DEFAULT_MODE)
    rows = _rows(ctx.avals_in[0].shape)
    path = cpu_path(mode, params["num_bits"], rows, params["group_size"])
    return jax.ffi.ffi_lowering(_native.CPU_TARGET)(
        ctx, x, bits, alpha, offset, **_cpu_attributes(params, mode, path)
    )


mlir.register_lowering(lut_gemm_kernel_p, _cpu_lowering, platform="cpu")


def cpu_kernel(x: jax.Array, w: BCQWeight, *, mode: str, path: str) -> jax.Array:
    """The native CPU kernel on one path, whatever the batch size (no crossover, no partitioning).

    For benchmarks and tests of the kernel itself; users call `lutgemm_jax.lut_gemm`. Jit-able;
    runs on CPU only.

    Args:
      x: ``[..., K]`` float32, bfloat16 or float16.
      w: an unstacked `BCQWeight` ``[K, N]`` in either layout.
      mode: ``"exact"`` or ``"fast"`` (`lutgemm_jax.ops.MODES`; the dense path reads neither).
      path: ``"lut"`` or ``"dense"`` (`CPU_PATHS`).

    Returns:
      ``[..., N]`` in x's dtype.
    """
    if mode not in MODES:
        raise ValueError(f"cpu_kernel: mode must be one of {MODES}, got {mode!r}")
    if path not in CPU_PATHS:
        raise ValueError(f"cpu_kernel: path must be one of {CPU_PATHS}, got {path!r}")
    call = jax.ffi.ffi_call(
        _native.CPU_TARGET, jax.ShapeDtypeStruct((*x.shape[:-1], w.out_features), x.dtype)
    )
    attributes = _cpu_attributes(weight_params(w), mode, path)
    return call(x, w.bits, w.alpha, offset_operand(w.offset, w.alpha), **attributes)


# ---- CUDA ----------------------------------------------------------------------------------
# Both CUDA kernels read canonical bits: a "cpu"-layout weight is shuffled back inside the
# lowered function on every call, a fused byte permutation of bits that XLA runs on the GPU
# (keep GPU weights canonical). See docs/cuda.md.

CUDA_LUT_MAX_ROWS = 8
"""Largest M (product of x's leading dims) lowered to the CUDA LUT kernel; above, the CUDA
dequantization kernel writes W_hat ``[K, N]`` in x's dtype and XLA's dot (tensor cores, float32
accumulation) does the product."""
CUDA_PATHS = ("lut", "dequant_dot")
"""Paths of the CUDA lowering: the lookup-table kernel, or dequantization + XLA dot."""
_CUDA_PLAN_SMS = 132  # the split-K rule targets 2 blocks per SM of an H100 SXM


def cuda_splits(m: int, n: int, num_words: int) -> int:
    """K slices of the CUDA LUT kernel's split-K for ``m`` rows, ``n`` columns and ``num_words =
    Kp / 32``: the Python twin of ``SplitsFor`` in ``cuda/lut_gemm_plan.h`` (the lowering sizes the
    kernel's float32 workspace, ``S * M * N``, from it; tests check the two agree)."""
    rows_per_block = 1 if m <= 1 else 2 if m <= 2 else 4 if m <= 4 else 8
    blocks = -(-n // 512) * -(-m // rows_per_block)
    if blocks == 0:  # M == 0
        return 1
    want = max(1, -(-2 * _CUDA_PLAN_SMS // blocks))
    return min(want, max(1, num_words // 8))


def _canonical(bits, params):
    return convert_bits(bits, params["layout"], "canonical")


def _cuda_lut(x, bits, alpha, offset, **params):
    m, n = _rows(x.shape), params["out_features"]
    splits = cuda_splits(m, n, bits.shape[0])
    # Split-K partials, allocated by XLA (no allocation in the handler): S * M * N float32.
    workspace = jax.ShapeDtypeStruct((splits * m * n if splits > 1 else 0,), jnp.float32)
    y, _ = jax.ffi.ffi_call(
        _native.CUDA_TARGET, (jax.ShapeDtypeStruct((*x.shape[:-1], n), x.dtype), workspace)
    )(x, _canonical(bits, params), alpha, offset, **_shape_attributes(params))
    return y


def _cuda_dequant_dot(x, bits, alpha, offset, **params):
    k, n = params["in_features"], params["out_features"]
    dense = jax.ffi.ffi_call(_native.CUDA_DEQUANT_TARGET, jax.ShapeDtypeStruct((k, n), x.dtype))(
        _canonical(bits, params), alpha, offset, **_shape_attributes(params)
    )
    precision = jax.lax.Precision.HIGHEST if x.dtype == jnp.float32 else jax.lax.Precision.DEFAULT
    y = jnp.matmul(x, dense, precision=precision, preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


_CUDA_FUNCTIONS = {"lut": _cuda_lut, "dequant_dot": _cuda_dequant_dot}
_warned_no_cuda = False


def _warn_no_cuda() -> None:
    global _warned_no_cuda
    if _warned_no_cuda:
        return
    _warned_no_cuda = True
    warnings.warn(
        "lutgemm_jax: lut_gemm is being compiled for a CUDA GPU, but the CUDA extension "
        f"lutgemm_jax._lutgemm_cuda is unavailable ({_native.CUDA_UNAVAILABLE}). lut_gemm falls "
        "back to dequantize + dot in jnp, which reads a dense float32 copy of every weight and "
        "is much slower than the LUT kernel. Reinstall with the CUDA toolkit (nvcc) on PATH "
        "(pip install . with LUTGEMM_CUDA=ON); lutgemm_jax.build_info() shows the paths.",
        RuntimeWarning,
        stacklevel=2,
    )


def _cuda_lowering(ctx, x, bits, alpha, offset, **params):
    if not _native.HAS_CUDA:
        _warn_no_cuda()
        return _jnp_rule(ctx, x, bits, alpha, offset, **params)
    path = "lut" if _rows(ctx.avals_in[0].shape) <= CUDA_LUT_MAX_ROWS else "dequant_dot"
    rule = mlir.lower_fun(_CUDA_FUNCTIONS[path], multiple_results=False)
    return rule(ctx, x, bits, alpha, offset, **params)


mlir.register_lowering(lut_gemm_kernel_p, _cuda_lowering, platform="cuda")


def cuda_kernel(x: jax.Array, w: BCQWeight, *, path: str) -> jax.Array:
    """The CUDA kernels on one path, whatever the batch size (no crossover, no partitioning).

    For benchmarks and tests; users call `lutgemm_jax.lut_gemm`. Jit-able; runs on a CUDA GPU
    with the CUDA extension built.

    Args:
      x: ``[..., K]`` float32, bfloat16 or float16.
      w: an unstacked `BCQWeight` ``[K, N]`` (a ``"cpu"``-layout weight is shuffled back to
        canonical first).
      path: ``"lut"`` or ``"dequant_dot"`` (`CUDA_PATHS`).

    Returns:
      ``[..., N]`` in x's dtype.
    """
    if path not in CUDA_PATHS:
        raise ValueError(f"cuda_kernel: path must be one of {CUDA_PATHS}, got {path!r}")
    if not _native.HAS_CUDA:
        raise RuntimeError(
            f"cuda_kernel: the CUDA extension is unavailable: {_native.CUDA_UNAVAILABLE}"
        )
    offset = offset_operand(w.offset, w.alpha)
    return _CUDA_FUNCTIONS[path](x, w.bits, w.alpha, offset, **weight_params(w))
