"""GGUF quantized tensors as exact uniform BCQ weights.

Every llama.cpp block type below stores, inside sub-blocks of ``g`` consecutive weights along
K, integer codes ``c`` in ``[0, 2**q)`` and one affine map ``W = D*c + B`` per sub-block
(checkpoint-formats.md 1.3, 1.4, 4.1). `decode_blocks` unpacks a tensor's raw block bytes into
``(codes, D, B)`` with vectorised numpy; `to_bcq` turns them into the exact uniform
`BCQWeight` through `lutgemm_jax.uniform.from_uniform_codes` (``alpha = D/2`` per group,
``offset = D*(2**q - 1)/2 + B``).

======  ==  ==  ====================  ==============================
type    q   g   D                     B
======  ==  ==  ====================  ==============================
Q4_0    4   32  d                     -8 d
Q4_1    4   32  d                     m
Q5_0    5   32  d                     -16 d
Q5_1    5   32  d                     m
Q8_0    8   32  d                     -128 d    (c = int8 + 128)
Q2_K    2   16  d * sc_j              -dmin * m_j
Q3_K    3   16  d * (sc_j - 32)       -4 D
Q4_K    4   32  d * sc_j              -dmin * m_j
Q5_K    5   32  d * sc_j              -dmin * m_j
Q6_K    6   16  d * sc_j (int8)       -32 D
======  ==  ==  ====================  ==============================

``d``, ``m``, ``dmin`` are float16; ``sc_j``, ``m_j`` small integers. ``D`` and ``B`` are
computed in float64 (exact) and rounded once to the storage dtype, so:

* float32 scales: ``alpha = D/2`` is always exact (an 11-bit ``d`` times an at most 8-bit
  integer); the offset is exact for the symmetric types (Q4_0, Q5_0, Q8_0, Q3_K, Q6_K:
  ``offset = -D/2``) and, for types with a min (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K), whenever
  ``D*(2**q - 1)/2`` and ``B`` are within a few binades of each other (always on quantizer
  output; otherwise it is rounded once, half an ulp of float32). Exact scales make the
  dequantized weight bit-identical to ``gguf.quants.dequantize``: both are the float32
  rounding of the same real number.
* float16 scales (the compact choice: 1 bit per weight for ``g = 32``, 2 for ``g = 16``) are
  exact for Q4_0/Q5_0/Q8_0 barring float16 overflow and round the K-quants' ``D`` (up to 19
  significant bits) to 11 bits; docs/gguf.md gives the measured errors.

Only these ten types convert exactly; the rest (IQ*, TQ*, MXFP4, ...) are lattice, ternary or
non-uniform codebooks (`SUPPORTED_TYPES` is the list).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from lutgemm_jax.format import LAYOUTS, BCQWeight, convert_bits
from lutgemm_jax.uniform import from_uniform_codes

Q = GGMLQuantizationType
CHUNK_WEIGHTS = 1 << 22
"""Weights decoded at a time by `to_bcq` (rows of the source tensor = BCQ columns): the
intermediates (codes, sign planes) stay a few tens of MB whatever the tensor's size."""


@dataclasses.dataclass(frozen=True)
class UniformCodes:
    """One tensor's rows as integer codes and per-group affine maps: ``W[r, k] =
    scale[r, k // g] * codes[r, k] + bias[r, k // g]`` (``R`` rows of the GGUF numpy view,
    i.e. output features, by ``K`` inputs).

    Attributes:
      codes: uint8 ``[R, K]`` in ``[0, 2**num_bits)``.
      scale: float64 ``[R, K/g]`` (``D``; may be negative).
      bias: float64 ``[R, K/g]`` (``B``).
      num_bits: q.
      group_size: g.
    """

    codes: np.ndarray
    scale: np.ndarray
    bias: np.ndarray
    num_bits: int
    group_size: int


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte ``start`` of every block ``[R, nb, type_size]`` as float64
    ``[R, nb, 1]`` (little-endian, as GGUF stores it)."""
    raw = np.ascontiguousarray(blocks[..., start : start + 2])
    return raw.view("<f2").astype(np.float64)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """``[..., n]`` bytes -> ``[..., 2n]`` codes: the low nibbles of all bytes, then the high
    nibbles (the order of Q4_0/Q4_1/Q5_0/Q5_1 and of each 32-byte run of Q4_K/Q5_K)."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _bits_by_position(h: np.ndarray, planes: int) -> np.ndarray:
    """``[..., 32]`` bytes -> ``[..., 32*planes]``: element ``e`` is bit ``e // 32`` of byte
    ``e % 32`` (the high-bit masks of Q3_K and Q5_K)."""
    shifts = np.arange(planes, dtype=np.uint8)[:, None]
    return ((h[..., None, :] >> shifts) & 1).reshape(*h.shape[:-1], 32 * planes)


def _crumbs(qs: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K low bits: ``[..., 64]`` bytes -> ``[..., 256]`` 2-bit codes; element
    ``128h + 32t + l`` is bits ``2t .. 2t+1`` of byte ``32h + l``."""
    lead = qs.shape[:-1]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    return ((qs.reshape(*lead, 2, 1, 32) >> shifts) & 3).reshape(*lead, 256)


def _k_scale_min(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 scale bytes ``[..., 12]`` -> 6-bit ``(sc, m) [..., 8]``."""
    lo, mid, hi = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = np.concatenate([lo & 63, (hi & 15) | ((lo >> 6) << 4)], axis=-1)
    m = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return sc, m


def _q4_0(b):
    d = _f16(b, 0)
    return _nibbles(b[..., 2:18]), d, -8 * d


def _q4_1(b):
    return _nibbles(b[..., 4:20]), _f16(b, 0), _f16(b, 2)


def _q5(b, start):
    """Q5_0 / Q5_1 codes: nibble | (bit e of the little-endian u32 qh at ``start``) << 4."""
    high = np.unpackbits(b[..., start : start + 4], axis=-1, bitorder="little")
    return _nibbles(b[..., start + 4 : start + 20]) | (high << 4)


def _q5_0(b):
    d = _f16(b, 0)
    return _q5(b, 2), d, -16 * d


def _q5_1(b):
    return _q5(b, 4), _f16(b, 0), _f16(b, 2)


def _q8_0(b):
    d = _f16(b, 0)
    return b[..., 2:34] ^ np.uint8(0x80), d, -128 * d  # int8 + 128 = byte with its top bit flipped


def _q2_k(b):
    scales, d, dmin = b[..., 0:16], _f16(b, 80), _f16(b, 82)
    return _crumbs(b[..., 16:80]), d * (scales & 15), -dmin * (scales >> 4)


def _q3_k(b):
    codes = _crumbs(b[..., 32:96]) | (_bits_by_position(b[..., 0:32], 8) << 2)
    s = b[..., 96:108]
    low = np.concatenate([s[..., 0:8] & 15, s[..., 0:8] >> 4], axis=-1)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    high = ((s[..., None, 8:12] >> shifts) & 3).reshape(*s.shape[:-1], 16)
    scale = _f16(b, 108) * ((low | (high << 4)).astype(np.float64) - 32)
    return codes, scale, -4 * scale


def _q45_k(b, qs_start, high):
    sc, m = _k_scale_min(b[..., 4:16])
    lead = b.shape[:-1]
    codes = _nibbles(b[..., qs_start : qs_start + 128].reshape(*lead, 4, 32)).reshape(*lead, 256)
    if high is not None:
        codes = codes | (high << 4)
    return codes, _f16(b, 0) * sc, -_f16(b, 2) * m


def _q4_k(b):
    return _q45_k(b, 16, None)


def _q5_k(b):
    return _q45_k(b, 48, _bits_by_position(b[..., 16:48], 8))


def _q6_k(b):
    lead = b.shape[:-1]
    ql = b[..., 0:128].reshape(*lead, 2, 1, 2, 32)  # [h, ., t % 2, l]
    low = (ql >> np.array([0, 4], dtype=np.uint8)[:, None, None]) & 15  # [h, t // 2, t % 2, l]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    high = (b[..., 128:192].reshape(*lead, 2, 1, 32) >> shifts) & 3  # [h, t, l]
    codes = low.reshape(*lead, 256) | (high.reshape(*lead, 256) << 4)
    scale = _f16(b, 208) * b[..., 192:208].view(np.int8)
    return codes, scale, -32 * scale


_Decoder = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
_TYPES: dict[int, tuple[int, int, _Decoder]] = {
    Q.Q4_0: (4, 32, _q4_0),
    Q.Q4_1: (4, 32, _q4_1),
    Q.Q5_0: (5, 32, _q5_0),
    Q.Q5_1: (5, 32, _q5_1),
    Q.Q8_0: (8, 32, _q8_0),
    Q.Q2_K: (2, 16, _q2_k),
    Q.Q3_K: (3, 16, _q3_k),
    Q.Q4_K: (4, 32, _q4_k),
    Q.Q5_K: (5, 32, _q5_k),
    Q.Q6_K: (6, 16, _q6_k),
}
SUPPORTED_TYPES: tuple[GGMLQuantizationType, ...] = tuple(Q(t) for t in _TYPES)
"""The GGUF quantized types converted exactly (q, g per the module docstring)."""


def bits_and_group(qtype: Any) -> tuple[int, int]:
    """``(q, g)`` of a supported quantized type."""
    q, g, _ = _TYPES[_check_type(qtype)]
    return q, g


def _check_type(qtype: Any) -> int:
    if int(qtype) not in _TYPES:
        name = Q(qtype).name if int(qtype) in Q._value2member_map_ else str(int(qtype))
        raise ValueError(
            f"GGUF type {name} has no exact uniform form; supported: "
            f"{', '.join(t.name for t in SUPPORTED_TYPES)}"
        )
    return int(qtype)


def decode_blocks(data: Any, qtype: Any) -> UniformCodes:
    """Unpacks raw GGUF blocks of a supported type into codes and per-group affine maps.

    Args:
      data: uint8 ``[R, K/block * type_size]`` (the ``GGUFReader`` view of a quantized
        ``[R, K]`` tensor; a memmap slice is read, never copied whole).
      qtype: a type of `SUPPORTED_TYPES` (``GGMLQuantizationType`` or its int).

    Returns:
      `UniformCodes` with ``codes [R, K]``, ``scale``/``bias [R, K/g]``.
    """
    q, g, decoder = _TYPES[_check_type(qtype)]
    block, type_size = GGML_QUANT_SIZES[Q(qtype)]
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] % type_size:
        raise ValueError(
            f"decode_blocks: {Q(qtype).name} data must be uint8 [R, multiple of {type_size}], "
            f"got {data.dtype} {list(data.shape)}"
        )
    r, nb = data.shape[0], data.shape[1] // type_size
    codes, scale, bias = decoder(data.reshape(r, nb, type_size))
    k = nb * block
    return UniformCodes(
        codes=codes.reshape(r, k),
        scale=np.broadcast_to(scale, (r, nb, block // g)).reshape(r, k // g),
        bias=np.broadcast_to(bias, (r, nb, block // g)).reshape(r, k // g),
        num_bits=q,
        group_size=g,
    )


def to_bcq(
    data: Any,
    qtype: Any,
    *,
    dtype: Any = jnp.float32,
    layout: str = "canonical",
    chunk_weights: int = CHUNK_WEIGHTS,
) -> BCQWeight:
    """The exact uniform `BCQWeight` ``[K, N]`` of a quantized GGUF tensor ``[N, K]``.

    Args:
      data: uint8 ``[N, K/block * type_size]`` raw blocks (``ReaderTensor.data``, memmapped).
      qtype: a type of `SUPPORTED_TYPES`.
      dtype: storage dtype of alpha and offset (float32: exact, see the module docstring;
        float16: compact).
      layout: sign layout of the result (`lutgemm_jax.format.LAYOUTS`).
      chunk_weights: rows are decoded ``chunk_weights // K`` at a time, so the memory beyond the
        packed result is a few bytes per weight of one chunk.

    Returns:
      A uniform `BCQWeight` (``alpha [K/g, 1, N]``, ``offset [K/g, N]``) whose dequantized
      values are ``gguf.quants.dequantize(data, qtype).T`` (exactly, with exact scales).
    """
    q, g = bits_and_group(qtype)
    if layout not in LAYOUTS:
        raise ValueError(f"to_bcq: layout must be one of {LAYOUTS}, got {layout!r}")
    data = np.asarray(data)
    block, type_size = GGML_QUANT_SIZES[Q(qtype)]
    n, k = data.shape[0], data.shape[1] // type_size * block
    rows = max(1, chunk_weights // max(k, 1))
    bits = np.empty((k // 32, q, n), np.uint32)
    alpha = np.empty((k // g, 1, n), jnp.dtype(dtype))
    offset = np.empty((k // g, n), jnp.dtype(dtype))
    for start in range(0, n, rows):
        part = decode_blocks(data[start : start + rows], qtype)
        w = from_uniform_codes(
            part.codes.T, part.scale.T, part.bias.T, num_bits=q, group_size=g, dtype=dtype
        )
        stop = start + part.codes.shape[0]
        bits[..., start:stop] = np.asarray(w.bits)
        alpha[..., start:stop] = np.asarray(w.alpha)
        offset[..., start:stop] = np.asarray(w.offset)
    w = BCQWeight(
        bits=jnp.asarray(convert_bits(bits, "canonical", layout)),
        alpha=jnp.asarray(alpha),
        offset=jnp.asarray(offset),
        in_features=k,
        out_features=n,
        num_bits=q,
        group_size=g,
        layout=layout,
    )
    w.validate()
    return w


__all__ = [
    "CHUNK_WEIGHTS",
    "SUPPORTED_TYPES",
    "UniformCodes",
    "bits_and_group",
    "decode_blocks",
    "to_bcq",
]
