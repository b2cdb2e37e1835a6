"""GGUF block decoding (`models.gguf_quants`) against ``gguf.quants.dequantize``, the
package's own decoder (written from ggml-quants.c, independent of this code).

Data: Q4_0..Q8_0 quantized by ``gguf.quants.quantize`` from Gaussian weights; Q2_K..Q6_K
random blocks with float16 scales of quantizer-like magnitudes (gguf_files.k_quant_blocks),
since the package cannot quantize K-quants. Shapes: odd numbers of rows (BCQ columns, not a
multiple of the CPU layout's 32-column blocks) and several blocks along K.

Tolerances: float32 scales are bit-exact (module docstring of gguf_quants). With scale
exponents spread over many binades, the offsets with a min term can need more than 24 bits;
each is then rounded once, so the error is at most half a float32 ulp of the offset plus the
result's own rounding. float16 scales round ``D/2`` and the offset to 11 bits: per group the
error is at most ``2**-11 * (|D/2| * (2**q - 1) + |offset|)`` plus the result's rounding, plus
``2**-25`` per rounded scale where ``D/2`` falls below float16's normal range (6.1e-5: small
Q6_K and Q3_K sub-block scales).
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from gguf_files import K_QUANT_SCALES, k_quant_blocks

from lutgemm_jax.format import dequantize
from lutgemm_jax.models import gguf_quants
from lutgemm_jax.testing import weight_float64

TYPES = gguf_quants.SUPPORTED_TYPES
EXPECTED = {  # (q, g) per checkpoint-formats.md 4.1
    Q.Q4_0: (4, 32), Q.Q4_1: (4, 32), Q.Q5_0: (5, 32), Q.Q5_1: (5, 32), Q.Q8_0: (8, 32),
    Q.Q2_K: (2, 16), Q.Q3_K: (3, 16), Q.Q4_K: (4, 32), Q.Q5_K: (5, 32), Q.Q6_K: (6, 16),
}  # fmt: skip


def blocks(qtype, rows: int, k: int, seed: int = 0, spread: int = 1) -> np.ndarray:
    rng = np.random.default_rng([seed, int(qtype)])
    if qtype in K_QUANT_SCALES:
        return k_quant_blocks(qtype, rows, k, rng, spread=spread)
    return gguf.quants.quantize(rng.standard_normal((rows, k)).astype(np.float32), qtype)


def group_spans(w) -> tuple[np.ndarray, np.ndarray]:
    """Per element ``[K, N]``: ``|alpha| * (2**q - 1)`` and ``|offset|`` of its group (float64)."""
    g = w.group_size
    alpha = np.abs(np.asarray(w.alpha, np.float64)[:, 0])  # [G, N]
    offset = np.abs(np.asarray(w.offset, np.float64))
    return np.repeat(alpha, g, 0) * (2**w.num_bits - 1), np.repeat(offset, g, 0)


def test_all_ten_types_are_supported():
    assert {Q(t): gguf_quants.bits_and_group(t) for t in TYPES} == EXPECTED


@pytest.mark.parametrize("layout", ["canonical", "cpu"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_bit_exact_with_float32_scales(qtype, layout):
    k = 2 * GGML_QUANT_SIZES[qtype][0] + (256 if GGML_QUANT_SIZES[qtype][0] == 32 else 0)
    data = blocks(qtype, 37, k)
    want = gguf.quants.dequantize(data, qtype).T  # [K, N]
    w = gguf_quants.to_bcq(data, qtype, layout=layout)
    q, g = EXPECTED[qtype]
    assert (w.shape, w.num_bits, w.group_size, w.layout) == ((k, 37), q, g, layout)
    assert w.uniform and w.alpha.shape == (k // g, 1, 37)
    assert np.array_equal(weight_float64(w).astype(np.float32), want)
    assert np.array_equal(np.asarray(dequantize(w)), want)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_decode_blocks_formula(qtype):
    """codes, D and B reproduce the values in float64 (exact) and codes fit in q bits."""
    data = blocks(qtype, 5, 512, seed=1)
    u = gguf_quants.decode_blocks(data, qtype)
    g = u.group_size
    exact = np.repeat(u.scale, g, 1) * u.codes + np.repeat(u.bias, g, 1)
    assert u.codes.max() < 2**u.num_bits and u.codes.dtype == np.uint8
    assert np.array_equal(exact.astype(np.float32), gguf.quants.dequantize(data, qtype))


def test_chunks_do_not_change_the_result():
    data = blocks(Q.Q6_K, 45, 512, seed=2)
    one = gguf_quants.to_bcq(data, Q.Q6_K)
    parts = gguf_quants.to_bcq(data, Q.Q6_K, chunk_weights=512 * 4)
    for a, b in ((one.bits, parts.bits), (one.alpha, parts.alpha), (one.offset, parts.offset)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.Q4_K, Q.Q5_K], ids=lambda t: t.name)
def test_scales_from_many_binades_round_offsets_once(qtype):
    """d and dmin 24 binades apart at most: alpha stays exact, offsets may round once."""
    data = blocks(qtype, 33, 512, seed=3, spread=24)
    w = gguf_quants.to_bcq(data, qtype)
    u = gguf_quants.decode_blocks(data, qtype)
    assert np.array_equal(np.asarray(w.alpha, np.float64)[:, 0], u.scale.T / 2)
    want = gguf.quants.dequantize(data, qtype).T.astype(np.float64)
    got = weight_float64(w)
    offset_ulp = np.repeat(np.spacing(np.abs(np.asarray(w.offset))), w.group_size, 0)
    bound = offset_ulp / 2 + np.spacing(np.abs(want).astype(np.float32))
    assert np.all(np.abs(got - want) <= bound)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_float16_scales_error_bound(qtype):
    data = blocks(qtype, 37, 512, seed=4)
    want = gguf.quants.dequantize(data, qtype).T.astype(np.float64)
    exact = gguf_quants.to_bcq(data, qtype)
    w = gguf_quants.to_bcq(data, qtype, dtype=np.float16)
    assert np.array_equal(np.asarray(w.alpha), np.asarray(exact.alpha).astype(np.float16))
    assert np.array_equal(np.asarray(w.bits), np.asarray(exact.bits))
    err = np.abs(weight_float64(w) - want)
    spans, offsets = group_spans(exact)
    subnormal = 2.0**-25 * 2**w.num_bits  # half the float16 subnormal spacing, q + 1 roundings
    bound = 2.0**-11 * (spans + offsets) + subnormal + np.spacing(np.abs(want).astype(np.float32))
    assert np.all(err <= bound)
    if qtype in (Q.Q4_0, Q.Q5_0, Q.Q8_0):  # d is a float16: d/2 and -d/2 are exact
        assert np.array_equal(np.asarray(dequantize(w)), want.astype(np.float32))


def test_bad_input():
    with pytest.raises(ValueError, match="GGUF type IQ4_NL has no exact uniform form"):
        gguf_quants.decode_blocks(np.zeros((2, 18), np.uint8), Q.IQ4_NL)
    with pytest.raises(ValueError, match=r"Q4_0 data must be uint8 \[R, multiple of 18\]"):
        gguf_quants.decode_blocks(np.zeros((2, 20), np.uint8), Q.Q4_0)
    with pytest.raises(ValueError, match=r"must be uint8"):
        gguf_quants.decode_blocks(np.zeros((2, 18), np.float32), Q.Q4_0)
    with pytest.raises(ValueError, match="layout must be one of"):
        gguf_quants.to_bcq(np.zeros((2, 18), np.uint8), Q.Q4_0, layout="gpu")


@pytest.mark.parametrize("q", [1, 3, 8])
def test_pack_codes_matches_the_reference_packer(q):
    """uniform.pack_codes (used by every import) against testing.pack_words, K not a multiple
    of 32 (padding rows must be zero bits)."""
    from lutgemm_jax.testing import pack_words
    from lutgemm_jax.uniform import pack_codes

    codes = np.random.default_rng(q).integers(0, 2**q, (70, 9))
    signs = np.zeros((96, q, 9), bool)
    signs[:70] = ((codes[:, None, :] >> np.arange(q)[:, None]) & 1).astype(bool)
    assert np.array_equal(pack_codes(codes, q, 96), pack_words(signs))
