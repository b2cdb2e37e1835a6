"""A float64 reference and random packed weights, shared by the tests and the benchmarks.

The reference is independent of the code it checks: it is written from the format's formula
(`lutgemm_jax.format`)::

    W_hat[k, n] = sum_{i<q} alpha[k // g, i, n] * s_i[k, n] + offset[k // g, n]

(for a uniform weight, ``alpha: [G, 1, N]``, plane ``i``'s scale is ``alpha[k // g, 0, n] * 2**i``)
with numpy in float64, from the signs (or from the packed words, unpacked and un-shuffled here
from the format's definition), and never calls `dequantize`, `convert_bits` or `lut_gemm`.

Random weights come at two levels:

* sign level (`random_weight`): random signs, packed here; returns the weight and its float64
  ``W_hat``, for tests;
* word level (`random_packed_weight`): uniformly random sign words, fast for large shapes, for
  benchmarks; `weight_float64` gives its ``W_hat``.

Both draw alpha from U(0.1, 1) and offset from N(0, 1), give the weight in either sign-word
layout, and can make uniform weights (one scale per group).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from lutgemm_jax.format import (
    CPU_BLOCK_COLUMNS,
    LAYOUTS,
    WORD_BITS,
    BCQWeight,
    padded_in_features,
    resolve_group_size,
)


def _float64(a: Any) -> np.ndarray:
    """Any float array (numpy, ml_dtypes or jax, 16-bit included) as float64, exactly."""
    return np.asarray(a).astype(np.float64)


def pack_words(signs: np.ndarray) -> np.ndarray:
    """Packs signs bool ``[Kp, q, N]`` (True = +1, ``Kp`` a multiple of 32) into canonical uint32
    words ``[Kp/32, q, N]``: bit ``t`` of word ``kw`` is the sign of row ``32 * kw + t``."""
    kp, q, n = signs.shape
    planes = np.asarray(signs, bool).reshape(kp // WORD_BITS, WORD_BITS, q, n).astype(np.uint64)
    shifts = np.arange(WORD_BITS, dtype=np.uint64)[None, :, None, None]
    return np.sum(planes << shifts, axis=1).astype(np.uint32)


def unpack_words(bits: np.ndarray) -> np.ndarray:
    """Canonical uint32 words ``[Kp/32, q, N]`` -> signs bool ``[Kp, q, N]`` (inverse of
    `pack_words`)."""
    kw, q, n = bits.shape
    shifts = np.arange(WORD_BITS, dtype=np.uint32)[None, :, None, None]
    planes = (np.asarray(bits, np.uint32)[:, None] >> shifts) & np.uint32(1)
    return planes.reshape(kw * WORD_BITS, q, n).astype(bool)


def cpu_layout_words(bits: np.ndarray) -> np.ndarray:
    """The ``"cpu"`` layout of canonical words ``[..., Kp/32, q, N]``, from its definition: in
    every row, each block of 32 columns stores its ``[32 columns][4 bytes]`` little-endian bytes
    as ``[4 bytes][32 columns]`` (byte j of block column c at byte ``32 * j + c``); the last
    ``N % 32`` columns stay canonical."""
    bits = np.ascontiguousarray(np.asarray(bits), np.dtype("<u4"))
    *lead, n = bits.shape
    n32 = n - n % CPU_BLOCK_COLUMNS
    blocks = bits[..., :n32].view(np.uint8).reshape(*lead, n32 // CPU_BLOCK_COLUMNS, 32, 4)
    moved = np.ascontiguousarray(blocks.swapaxes(-1, -2)).reshape(*lead, n32 * 4).view("<u4")
    return np.concatenate([moved, bits[..., n32:]], axis=-1).astype(np.uint32)


def canonical_words(bits: np.ndarray, layout: str) -> np.ndarray:
    """Inverse of `cpu_layout_words` for ``layout="cpu"``; ``bits`` unchanged for canonical."""
    if layout == "canonical":
        return np.asarray(bits, np.uint32)
    bits = np.ascontiguousarray(np.asarray(bits), np.dtype("<u4"))
    *lead, n = bits.shape
    n32 = n - n % CPU_BLOCK_COLUMNS
    blocks = bits[..., :n32].view(np.uint8).reshape(*lead, n32 // CPU_BLOCK_COLUMNS, 4, 32)
    moved = np.ascontiguousarray(blocks.swapaxes(-1, -2)).reshape(*lead, n32 * 4).view("<u4")
    return np.concatenate([moved, bits[..., n32:]], axis=-1).astype(np.uint32)


def dense_float64(signs: np.ndarray, alpha: Any, offset: Any, group_size: int) -> np.ndarray:
    """``W_hat`` in float64 from signs bool ``[K', q, N]`` (any number K' of rows, e.g. K or Kp)
    and scales alpha ``[G, q, N]`` (or uniform ``[G, 1, N]``), offset ``[G, N]`` or None:
    ``[K', N]``."""
    q = signs.shape[1]
    scales = _float64(alpha)
    if scales.shape[1] != q:  # uniform: plane i's scale is alpha * 2**i
        scales = scales * np.array([2.0**i for i in range(q)])[:, None]
    group = np.arange(signs.shape[0]) // group_size
    dense = np.sum(np.where(signs, 1.0, -1.0) * scales[group], axis=1)
    if offset is not None:
        dense += _float64(offset)[group]
    return dense


def weight_float64(w: BCQWeight) -> np.ndarray:
    """``W_hat [K, N]`` in float64 from the packed arrays of an unstacked `BCQWeight` in either
    layout (unpacked here with numpy, not with `lutgemm_jax.format`)."""
    signs = unpack_words(canonical_words(np.asarray(w.bits), w.layout))
    offset = w.offset if w.has_offset else None
    return dense_float64(signs, w.alpha, offset, w.group_size)[: w.in_features]


def _scales(rng, groups: int, q: int, n: int, has_offset: bool, alpha_dtype, uniform: bool):
    alpha = jnp.asarray(rng.uniform(0.1, 1.0, (groups, 1 if uniform else q, n)), alpha_dtype)
    offset = jnp.asarray(rng.normal(size=(groups, n)), alpha_dtype) if has_offset else None
    return alpha, offset


def random_weight(
    rng: np.random.Generator,
    k: int,
    n: int,
    q: int,
    group_size: int | None = 128,
    has_offset: bool = True,
    alpha_dtype=jnp.float32,
    layout: str = "canonical",
    uniform: bool = False,
) -> tuple[BCQWeight, np.ndarray]:
    """A weight with random signs and scales, and its float64 ``W_hat [K, N]``.

    Args:
      rng: the numpy generator to draw from.
      k, n, q: K, N and the number of bit-planes.
      group_size: g (None or -1: one group per column).
      has_offset: whether the weight has an offset.
      alpha_dtype: dtype of alpha and offset (``W_hat`` uses their rounded values).
      layout: the sign-word layout of the returned weight (`lutgemm_jax.format.LAYOUTS`).
      uniform: store one scale per group (``alpha: [G, 1, N]``, plane ``i`` scaled by ``2**i``).

    Returns:
      ``(w, w64)``: the `BCQWeight` and ``W_hat`` in float64. Padding rows ``K <= k < Kp`` have
      sign bits 0, as the format requires.
    """
    g = resolve_group_size(k, group_size)
    kp = padded_in_features(k, g)
    signs = np.zeros((kp, q, n), bool)
    signs[:k] = rng.random((k, q, n)) < 0.5
    alpha, offset = _scales(rng, kp // g, q, n, has_offset, alpha_dtype, uniform)
    w = _packed(pack_words(signs), alpha, offset, k, q, g, layout)
    return w, dense_float64(signs[:k], alpha, offset, g)


def random_packed_weight(
    rng: np.random.Generator,
    k: int,
    n: int,
    q: int,
    group_size: int | None = 128,
    has_offset: bool = True,
    alpha_dtype=jnp.float32,
    layout: str = "canonical",
    uniform: bool = False,
) -> BCQWeight:
    """A weight with uniformly random sign words (fast for large shapes; arguments as in
    `random_weight`); padding rows ``K <= k < Kp`` get sign bits 0. Its ``W_hat``:
    `weight_float64`."""
    g = resolve_group_size(k, group_size)
    kp = padded_in_features(k, g)
    bits = rng.integers(0, 1 << 32, size=(kp // WORD_BITS, q, n), dtype=np.uint32)
    rows = np.arange(kp).reshape(kp // WORD_BITS, WORD_BITS)
    keep = np.sum((rows < k).astype(np.uint64) << np.arange(WORD_BITS, dtype=np.uint64), axis=1)
    bits &= keep.astype(np.uint32)[:, None, None]
    alpha, offset = _scales(rng, kp // g, q, n, has_offset, alpha_dtype, uniform)
    return _packed(bits, alpha, offset, k, q, g, layout)


def _packed(bits, alpha, offset, k: int, q: int, g: int, layout: str) -> BCQWeight:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    n = alpha.shape[-1]
    return BCQWeight(
        bits=jnp.asarray(cpu_layout_words(bits) if layout == "cpu" else bits),
        alpha=alpha,
        offset=offset,
        in_features=k,
        out_features=n,
        num_bits=q,
        group_size=g,
        layout=layout,
    )


def reference(x: Any, w64: np.ndarray) -> np.ndarray:
    """float64 ``x @ W64`` for x ``[..., K]`` of any float dtype (read exactly as float64)."""
    return _float64(x) @ w64


def rel_err(y: Any, ref: np.ndarray) -> float:
    """``max |y - ref| / max |ref|``: the error relative to the output's scale."""
    return float(np.max(np.abs(_float64(y) - ref)) / max(np.max(np.abs(ref)), 1e-30))
