"""Test-side writers of GPTQ and AWQ tensors, written from the published layouts (AutoGPTQ's
``QuantLinear.pack``, AutoAWQ's GEMM ``pack``; checkpoint-formats.md sections 2.3, 2.4, 3), bit
by bit and independently of the importer's unpackers, plus random codes / scales / zeros."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lutgemm_jax.models import HFCheckpointError
from lutgemm_jax.models.gptq import GPTQScheme, unpack_stream
from lutgemm_jax.models.uniform_linear import to_bcq
from lutgemm_jax.testing import weight_float64

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def pack_gptq_stream(values: np.ndarray, bits: int) -> np.ndarray:
    """int ``[R, M]`` -> int32 ``[R*bits/32, M]``: each column one little-endian bit stream,
    value ``r`` at stream bits ``bits*r ..``, word ``w`` = stream bits ``32w .. 32w+31``."""
    r, m = values.shape
    assert (r * bits) % 32 == 0
    words = np.zeros((r * bits // 32, m), np.uint64)
    for row in range(r):
        for j in range(bits):
            pos = bits * row + j
            bit = (values[row].astype(np.uint64) >> np.uint64(j)) & np.uint64(1)
            words[pos // 32] |= bit << np.uint64(pos % 32)
    return words.astype(np.uint32).view(np.int32)


def pack_autogptq_v1_zeros(zeros: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ's own v1 qzeros packing for bits in (2, 4, 8): stores ``zeros - 1`` as uint32 and
    ORs it in shifted, without masking (so a zero point of 0 sets every higher field)."""
    g, n = zeros.shape
    per = 32 // bits
    stored = (zeros.astype(np.int64) - 1).astype(np.uint32)
    out = np.zeros((g, n // per), np.uint32)
    for col in range(n // per):
        for j in range(per):
            out[:, col] |= stored[:, col * per + j] << np.uint32(bits * j)
    return out.view(np.int32)


def pack_awq_gemm(values: np.ndarray) -> np.ndarray:
    """4-bit int ``[R, N]`` -> int32 ``[R, N/8]``: nibble ``i`` of word ``[r, c]`` holds column
    ``8c + AWQ_ORDER[i]``."""
    r, n = values.shape
    words = np.zeros((r, n // 8), np.uint32)
    for c in range(n // 8):
        for i in range(8):
            words[:, c] |= values[:, 8 * c + AWQ_ORDER[i]].astype(np.uint32) << np.uint32(4 * i)
    return words.view(np.int32)


def random_scales(rng: np.random.Generator, shape: tuple[int, int], bits: int) -> np.ndarray:
    """float16 scales around ``0.04 / 2**bits`` (weights of std ~0.02) with varied exponents and
    full 11-bit significands, a few negative; at least 2**-13, so that scale/2 is a normal
    float16 (a subnormal one would lose its last bit in float16 storage)."""
    mag = np.maximum(0.04 / 2**bits * np.exp2(rng.uniform(-2, 2, shape)), 2.0**-13)
    sign = np.where(rng.random(shape) < 0.1, -1.0, 1.0)
    return (sign * mag).astype(np.float16)


def random_gptq(
    rng: np.random.Generator,
    k: int,
    n: int,
    *,
    bits: int,
    group_size: int,
    sym: bool,
    v1: bool,
    act_order: bool,
) -> dict:
    """Random GPTQ content of one ``[K, N]`` Linear: ``codes``, ``scales``, ``zeros`` (as the
    formula uses them), ``g_idx`` and the reference ``W`` (float64, published formula)."""
    g = k if group_size == -1 else group_size
    groups = -(-k // g)
    codes = rng.integers(0, 2**bits, (k, n))
    if sym:
        zeros = np.full((groups, n), 2 ** (bits - 1))
    else:  # v1 cannot store z = 0 (its stored value is z - 1)
        zeros = rng.integers(1 if v1 else 0, 2**bits, (groups, n))
    scales = random_scales(rng, (groups, n), bits)
    if act_order:
        order = rng.permutation(k)  # the quantization order; groups form along it
        g_idx = np.empty(k, np.int32)
        g_idx[order] = np.arange(k) // g
    else:
        g_idx = (np.arange(k) // g).astype(np.int32)
    w = scales.astype(np.float64)[g_idx] * (codes - zeros[g_idx])
    return dict(codes=codes, scales=scales, zeros=zeros, g_idx=g_idx, w=w)


def gptq_tensors(prefix: str, q: dict, *, bits: int, v1: bool) -> dict[str, np.ndarray]:
    """The safetensors entries of one GPTQ Linear from `random_gptq` content."""
    stored = q["zeros"] - 1 if v1 else q["zeros"]
    return {
        f"{prefix}.qweight": pack_gptq_stream(q["codes"], bits),
        f"{prefix}.qzeros": pack_gptq_stream(stored.T, bits).T.copy(),
        f"{prefix}.scales": q["scales"],
        f"{prefix}.g_idx": q["g_idx"],
    }


def random_awq(rng: np.random.Generator, k: int, n: int, *, group_size: int) -> dict:
    """Random AWQ-GEMM content of one Linear (4-bit, zero points in [0, 16))."""
    groups = k // group_size
    codes = rng.integers(0, 16, (k, n))
    zeros = rng.integers(0, 16, (groups, n))
    scales = random_scales(rng, (groups, n), 4)
    grp = np.arange(k) // group_size
    w = scales.astype(np.float64)[grp] * (codes - zeros[grp])
    return dict(codes=codes, scales=scales, zeros=zeros, w=w)


def awq_tensors(prefix: str, q: dict) -> dict[str, np.ndarray]:
    return {
        f"{prefix}.qweight": pack_awq_gemm(q["codes"]),
        f"{prefix}.qzeros": pack_awq_gemm(q["zeros"]),
        f"{prefix}.scales": q["scales"],
    }


# ---- one Linear: every imported weight equals the published formula ------------------------


def _reader(tensors: dict[str, np.ndarray]):
    def get(name):
        return tensors[name]

    return get, lambda name: "mem.safetensors"


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [-1, 32, 128])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_linear_is_exact(bits, fmt, sym, group_size, act_order):
    rng = np.random.default_rng([bits, len(fmt), sym, group_size + 1, act_order])
    k, n = 256, 96
    q = random_gptq(
        rng, k, n, bits=bits, group_size=group_size, sym=sym, v1=fmt == "gptq",
        act_order=act_order,
    )  # fmt: skip
    scheme = GPTQScheme(bits, group_size, fmt, sym)
    get, where = _reader(gptq_tensors("p", q, bits=bits, v1=fmt == "gptq"))
    u = scheme.read_linear(get, where, "p", k, n)
    np.testing.assert_array_equal(u.dequantize(), q["w"])
    # act-order with real groups needs a permutation; one group (-1) never does
    assert (u.perm is not None) == (act_order and group_size != -1)
    rows = u.perm if u.perm is not None else np.arange(k)

    w32 = to_bcq(u, dtype=jnp.float32, layout="canonical")
    assert w32.uniform and w32.num_bits == bits and w32.alpha.dtype == jnp.float32
    np.testing.assert_array_equal(weight_float64(w32), q["w"][rows])  # bit-exact

    w16 = to_bcq(u, dtype=jnp.float16, layout="cpu")
    np.testing.assert_array_equal(  # float16 alpha = scale / 2 exactly
        np.asarray(w16.alpha, np.float64)[: u.scale.shape[0], 0] * 2, q["scales"]
    )
    err = np.abs(weight_float64(w16) - q["w"][rows])
    if sym:  # offset -scale/2: exact in float16 as well
        assert err.max() == 0
    else:  # one float16 rounding of the offset |scale * ((2^b - 1)/2 - z)|
        grp = np.arange(k) // (k if group_size == -1 else group_size)
        off = np.abs(q["scales"].astype(np.float64) * ((2**bits - 1) / 2 - q["zeros"]))
        assert np.all(err <= off[grp] * 2.0**-11 + 1e-30)


def test_unpack_stream_three_bit_straddles_words():
    # 32 three-bit values span 3 words; values 10 and 21 cross word boundaries
    values = np.arange(32)[:, None] % 8
    values[10], values[21] = 7, 5
    words = pack_gptq_stream(values, 3).view(np.uint32)[:, 0].astype(int)
    assert len(words) == 3
    np.testing.assert_array_equal(unpack_stream(words[:, None].astype(np.uint32), 3, 32), values)
    # AutoGPTQ's pack: value 10 = bits 30-31 of word 0 (low two) + bit 0 of word 1 (high one);
    # value 21 = bit 31 of word 1 (low one) + bits 0-1 of word 2 (high two)
    assert (words[0] >> 30) | ((words[1] & 1) << 2) == 7
    assert (words[1] >> 31) | ((words[2] & 3) << 1) == 5


def test_v1_symmetric_qzeros_are_0x77777777():
    q = random_gptq(
        np.random.default_rng(0), 64, 32, bits=4, group_size=32, sym=True, v1=True,
        act_order=False,
    )  # fmt: skip
    t = gptq_tensors("p", q, bits=4, v1=True)
    assert np.all(t["p.qzeros"].view(np.uint32) == 0x77777777)
    np.testing.assert_array_equal(t["p.qzeros"], pack_autogptq_v1_zeros(q["zeros"], 4))


def test_corrupt_v1_zero_point_is_refused():
    q = random_gptq(
        np.random.default_rng(1), 64, 32, bits=4, group_size=32, sym=False, v1=True,
        act_order=False,
    )  # fmt: skip
    q["zeros"][1, 9] = 0  # AutoGPTQ stores -1: fields 9..15 of word 1 read 15
    t = gptq_tensors("p", q, bits=4, v1=True)
    t["p.qzeros"] = pack_autogptq_v1_zeros(q["zeros"], 4)
    get, where = _reader(t)
    with pytest.raises(HFCheckpointError, match=r"p\.qzeros is corrupt.*z = 16.*gptq_v2"):
        GPTQScheme(4, 32, "gptq", False).read_linear(get, where, "p", 64, 32)
    # the same zeros are fine in v2, which stores z itself
    t2 = gptq_tensors("p", q, bits=4, v1=False)
    u = GPTQScheme(4, 32, "gptq_v2", False).read_linear(*_reader(t2), "p", 64, 32)
    grp = q["g_idx"]
    np.testing.assert_array_equal(
        u.dequantize(), q["scales"].astype(np.float64)[grp] * (q["codes"] - q["zeros"][grp])
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t.pop("p.qzeros"), r"'p\.qzeros'"),
        (lambda t: t.update({"p.qweight": t["p.qweight"][:-1]}), r"'p\.qweight' has shape"),
        (lambda t: t.update({"p.scales": t["p.scales"].astype(np.int16)}), r"is int16, expected"),
        (lambda t: t["p.scales"].__setitem__((0, 0), np.nan), r"p\.scales has NaN"),
        (lambda t: t.update({"p.g_idx": np.full(64, 2, np.int32)}), r"outside \[0, 2\)"),
        (
            lambda t: t.update({"p.g_idx": np.r_[[0] * 40, [1] * 24].astype(np.int32)}),
            r"does not split the 64 rows into groups of 32",
        ),  # fmt: skip
    ],
)
def test_bad_tensors_name_file_and_tensor(change, match):
    q = random_gptq(
        np.random.default_rng(2), 64, 32, bits=4, group_size=32, sym=True, v1=False,
        act_order=False,
    )  # fmt: skip
    t = gptq_tensors("p", q, bits=4, v1=False)
    change(t)
    with pytest.raises((HFCheckpointError, KeyError), match=match):
        GPTQScheme(4, 32, "gptq_v2", True).read_linear(*_reader(t), "p", 64, 32)


@pytest.mark.parametrize("bits", [3, 4])
def test_ragged_last_group_with_act_order(bits):
    # K = 160, g = 64: groups of 64, 64 and 32 rows, formed along a random order
    rng = np.random.default_rng(bits)
    q = random_gptq(rng, 160, 64, bits=bits, group_size=64, sym=False, v1=False, act_order=True)
    u = GPTQScheme(bits, 64, "gptq_v2", False).read_linear(
        *_reader(gptq_tensors("p", q, bits=bits, v1=False)), "p", 160, 64
    )
    assert u.perm is not None
    w = to_bcq(u, dtype=jnp.float32, layout="canonical")
    assert w.alpha.shape == (3, 1, 64)  # Kp = 192: the last group holds 32 rows of padding
    np.testing.assert_array_equal(weight_float64(w), q["w"][u.perm])


def test_bfloat16_scales_are_exact_in_float32():
    rng = np.random.default_rng(7)
    q = random_gptq(rng, 64, 32, bits=4, group_size=32, sym=False, v1=False, act_order=False)
    q["scales"] = q["scales"].astype(jnp.bfloat16)
    q["w"] = q["scales"].astype(np.float64)[q["g_idx"]] * (q["codes"] - q["zeros"][q["g_idx"]])
    u = GPTQScheme(4, 32, "gptq_v2", False).read_linear(
        *_reader(gptq_tensors("p", q, bits=4, v1=False)), "p", 64, 32
    )
    np.testing.assert_array_equal(
        weight_float64(to_bcq(u, dtype=jnp.float32, layout="cpu")), q["w"]
    )


def test_conversion_in_column_slices(monkeypatch):
    """`to_bcq` converts slices of whole columns and joins them: with 32-column slices, act-order
    rows, a column permutation and the cpu layout, the result is the same exact weight."""
    from lutgemm_jax.models import uniform_linear

    rng = np.random.default_rng(8)
    k, n = 256, 104  # 3 full slices of 32 columns and one of 8
    q = random_gptq(rng, k, n, bits=4, group_size=64, sym=False, v1=True, act_order=True)
    u = GPTQScheme(4, 64, "gptq", False).read_linear(
        *_reader(gptq_tensors("p", q, bits=4, v1=True)), "p", k, n
    )
    cols = rng.permutation(n)
    whole = to_bcq(u, dtype=jnp.float32, layout="cpu", columns=cols)
    monkeypatch.setattr(uniform_linear, "CHUNK_WEIGHTS", k * 32)
    sliced = to_bcq(u, dtype=jnp.float32, layout="cpu", columns=cols)
    sliced.validate()
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(sliced), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(weight_float64(sliced), q["w"][u.perm][:, cols])
