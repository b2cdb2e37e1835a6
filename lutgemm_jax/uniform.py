"""Uniform integer-code weights as exact BCQ weights.

Uniform quantization is a special case of BCQ (the LUT-GEMM paper's point). Inside one group
(``g`` consecutive k of one column n) a uniform weight is ``W = D*c + B`` with an integer code
``c`` in ``[0, 2**q)``. Writing ``c = sum_i 2**i * b_i`` and ``s_i = 2*b_i - 1``::

    D*c + B = sum_i (D * 2**(i-1)) * s_i + (D * (2**q - 1)/2 + B)

so the sign planes are the bits of ``c``, plane ``i``'s scale is ``alpha_i = (D/2) * 2**i`` and
the offset is ``D*(2**q - 1)/2 + B``, exactly. The format stores such a weight *uniformly*:
``alpha: [G, 1, N] = D/2`` (one scale per group; `lutgemm_jax.format.BCQWeight.uniform`).

This is how round-to-nearest weights and every imported GGUF, GPTQ and AWQ tensor enter the
format. The conversion runs on the host in float64 and rounds once to the storage dtype, so a
float32 result is bit-exact whenever ``D/2`` and the offset are float32 numbers (always for
power-of-two multiples of a float16 ``D``; see ``docs/`` on imports for which source types
that covers).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from lutgemm_jax.format import (
    LAYOUTS,
    MAX_BITS,
    WORD_BITS,
    BCQWeight,
    convert_bits,
    expand_alpha,
    is_float_dtype,
    padded_in_features,
    resolve_group_size,
)


def pack_codes(codes: np.ndarray, num_bits: int, padded_k: int) -> np.ndarray:
    """Integer codes ``[K, N]`` -> canonical sign words uint32 ``[Kp/32, q, N]``.

    Bit ``i`` of ``codes[k, n]`` becomes bit ``k % 32`` of word ``[k // 32, i, n]``; rows
    ``K <= k < Kp`` are zero (s = -1, the format's padding).
    """
    k, n = codes.shape
    # Packed along K as the contiguous axis ([N, Kp]): packbits runs over contiguous bytes and
    # four little-endian bytes are one word (a packbits over a strided axis is ~5x slower).
    rows = np.zeros((n, padded_k), np.uint8)
    rows[:, :k] = np.asarray(codes).T
    words = np.empty((padded_k // WORD_BITS, num_bits, n), np.uint32)
    for i in range(num_bits):
        plane = np.packbits((rows >> np.uint8(i)) & np.uint8(1), axis=-1, bitorder="little")
        words[:, i, :] = plane.view("<u4").T
    return words


def uniform_scales(step: Any, bias: Any, num_bits: int) -> tuple[Any, Any]:
    """The stored scale and offset of the uniform grid ``W = step * c + bias``, ``c`` in
    ``[0, 2**num_bits)``: ``(alpha = step / 2, offset = step * (2**q - 1) / 2 + bias)``.

    Plane ``i``'s scale is then ``alpha * 2**i`` (`lutgemm_jax.format.expand_alpha`). Plain
    arithmetic on numpy or jax arrays of any matching shapes, in their precision (the one rule
    shared by `from_uniform_codes` and the RTN quantizer).
    """
    return step / 2, step * ((2**num_bits - 1) / 2) + bias


def _group_rows(name: str, array: Any, groups: int, padded_groups: int, n: int) -> np.ndarray:
    """``array`` as float64 ``[padded_groups, N]``: ``[groups, N]`` inputs get zero rows appended
    for the groups that hold only padding."""
    a = np.asarray(array, np.float64)
    if a.shape not in ((groups, n), (padded_groups, n)):
        raise ValueError(
            f"from_uniform_codes: {name} has shape {a.shape}, expected [G, N] = {(groups, n)}"
            + (f" or {(padded_groups, n)}" if padded_groups != groups else "")
        )
    if a.shape[0] < padded_groups:
        a = np.concatenate([a, np.zeros((padded_groups - a.shape[0], n))], axis=0)
    return a


def from_uniform_codes(
    codes: Any,
    scale: Any,
    bias: Any = None,
    *,
    num_bits: int,
    group_size: int | None,
    dtype: Any = jnp.float32,
    layout: str = "canonical",
    uniform: bool = True,
) -> BCQWeight:
    """The exact BCQ weight of ``W[k, n] = scale[k // g, n] * codes[k, n] + bias[k // g, n]``.

    Args:
      codes: integers ``[K, N]`` in ``[0, 2**num_bits)``.
      scale: ``D: [ceil(K/g), N]`` (or ``[G, N]`` with the format's padded group count); any
        real dtype, may be negative.
      bias: ``B``, same shape as ``scale``, or None for ``B = 0``.
      num_bits: q, 1..8.
      group_size: g (16 or a multiple of 32), or None / -1 for one group per column.
      dtype: storage dtype of alpha and offset (float32 is exact for power-of-two multiples of
        float16 scales; float16 halves their bytes and is exact only for some sources).
      layout: sign-word layout of the result (`lutgemm_jax.format.LAYOUTS`).
      uniform: store one scale per group (``alpha: [G, 1, N]``, the default) or all ``q``
        plane scales (``[G, q, N]``).

    Returns:
      A `BCQWeight` of jax arrays with an offset (``D*(2**q - 1)/2 + B``).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(
            f"from_uniform_codes: codes must be an integer [K, N] array, got {codes.dtype} "
            f"{codes.shape}"
        )
    if not 1 <= num_bits <= MAX_BITS:
        raise ValueError(f"from_uniform_codes: num_bits must be in 1..{MAX_BITS}, got {num_bits}")
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << num_bits):
        raise ValueError(
            f"from_uniform_codes: codes must lie in [0, {1 << num_bits}) for num_bits="
            f"{num_bits}, got [{codes.min()}, {codes.max()}]"
        )
    if not is_float_dtype(dtype):
        raise ValueError(
            f"from_uniform_codes: dtype must be float32, bfloat16 or float16, got {dtype}"
        )
    if layout not in LAYOUTS:
        raise ValueError(f"from_uniform_codes: layout must be one of {LAYOUTS}, got {layout!r}")
    k, n = codes.shape
    g = resolve_group_size(k, group_size)
    kp = padded_in_features(k, g)
    groups, padded_groups = -(-k // g), kp // g
    d = _group_rows("scale", scale, groups, padded_groups, n)
    b = np.zeros_like(d) if bias is None else _group_rows("bias", bias, groups, padded_groups, n)

    alpha, offset = uniform_scales(d, b, num_bits)
    alpha = alpha[:, None, :]  # [G, 1, N]: plane i's scale is (D/2) * 2**i
    if not uniform:
        alpha = expand_alpha(alpha, num_bits)
    bits = convert_bits(pack_codes(codes, num_bits, kp), "canonical", layout)
    np_dtype = jnp.dtype(dtype)
    w = BCQWeight(
        bits=jnp.asarray(bits),
        alpha=jnp.asarray(alpha.astype(np_dtype)),
        offset=jnp.asarray(offset.astype(np_dtype)),
        in_features=k,
        out_features=n,
        num_bits=num_bits,
        group_size=g,
        layout=layout,
    )
    w.validate()
    return w
