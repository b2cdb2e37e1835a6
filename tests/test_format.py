"""The packed format (format.py): the sign-word layout permutation against an independent numpy
transcription of its definition (`lutgemm_jax.testing.cpu_layout_words`), layout conversion of
weights and pytrees, pack / unpack, dequantize, and the export metadata."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lutgemm_jax as lj
from lutgemm_jax import format as fmt
from lutgemm_jax.testing import cpu_layout_words, random_weight

WIDTHS = [1, 31, 32, 33, 64, 100, 4096 + 17]


def random_bits(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**32, shape, dtype=np.uint32)


@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("q", [1, 2, 3, 4])
@pytest.mark.parametrize("lead", [(), (2, 3)])
def test_conversion_matches_definition_and_round_trips(n, q, lead):
    bits = random_bits(n * 10 + q, (*lead, 2, q, n))
    want = cpu_layout_words(bits)
    to_cpu = jax.jit(partial(fmt.convert_bits, source="canonical", target="cpu"))
    to_canonical = jax.jit(partial(fmt.convert_bits, source="cpu", target="canonical"))
    got = to_cpu(jnp.asarray(bits))
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(np.asarray(to_canonical(got)), bits)
    # numpy inputs are converted on the host, with the same result
    host = fmt.convert_bits(bits, "canonical", "cpu")
    assert isinstance(host, np.ndarray)
    np.testing.assert_array_equal(host, want)
    np.testing.assert_array_equal(fmt.convert_bits(host, "cpu", "canonical"), bits)


@given(
    lead=st.lists(st.integers(1, 3), max_size=2),
    kw=st.integers(1, 3),
    q=st.integers(1, 8),
    n=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_conversion_property(lead, kw, q, n, seed):
    bits = random_bits(seed, (*lead, kw, q, n))
    got = fmt.convert_bits(jnp.asarray(bits), "canonical", "cpu")
    np.testing.assert_array_equal(np.asarray(got), cpu_layout_words(bits))
    np.testing.assert_array_equal(np.asarray(fmt.convert_bits(got, "cpu", "canonical")), bits)


def test_to_layout_method_and_validation():
    w, _ = random_weight(np.random.default_rng(0), 100, 70, 3, 32)
    assert w.layout == "canonical" and w.to_layout("canonical") is w
    c = jax.jit(lambda w: w.to_layout("cpu"))(w)
    assert c.layout == "cpu" and c.alpha is not None
    np.testing.assert_array_equal(np.asarray(c.bits), cpu_layout_words(np.asarray(w.bits)))
    np.testing.assert_array_equal(np.asarray(fmt.canonical_bits(c)), np.asarray(w.bits))
    np.testing.assert_array_equal(np.asarray(c.to_layout("canonical").bits), np.asarray(w.bits))
    with pytest.raises(ValueError, match="to_layout: layout must be one of"):
        w.to_layout("gpu")
    bad = fmt.BCQWeight(w.bits, w.alpha, w.offset, 100, 70, 3, 32, layout="byte-major")
    with pytest.raises(ValueError, match=r"BCQWeight.layout must be one of \('canonical', 'cpu'\)"):
        bad.validate()
    with pytest.raises(ValueError, match="BCQWeight.layout"):
        lj.lut_gemm(jnp.ones((1, 100)), bad)


def test_to_layout_maps_every_weight_of_a_tree():
    rng = np.random.default_rng(1)
    w1, _ = random_weight(rng, 64, 40, 2, 32)
    w2, _ = random_weight(rng, 96, 33, 3, None)
    tree = {"a": {"kernel": w1, "bias": jnp.ones(40)}, "b": [w2, 3]}
    out = lj.to_layout(tree, "cpu")
    assert out["a"]["kernel"].layout == out["b"][0].layout == "cpu"
    assert out["a"]["bias"] is tree["a"]["bias"] and out["b"][1] == 3
    back = lj.to_layout(out, "canonical")
    for got, want in [(back["a"]["kernel"], w1), (back["b"][0], w2)]:
        np.testing.assert_array_equal(np.asarray(got.bits), np.asarray(want.bits))
    assert lj.LAYOUTS == ("canonical", "cpu")


@pytest.mark.parametrize("n", [33, 64, 100])
def test_stacked_weights_convert_per_weight(n):
    rng = np.random.default_rng(n)
    ws = [random_weight(rng, 80, n, 3, 32)[0] for _ in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *ws)
    cpu = stacked.to_layout("cpu")
    for i, w in enumerate(ws):
        np.testing.assert_array_equal(np.asarray(cpu.bits[i]), np.asarray(w.to_layout("cpu").bits))
    np.testing.assert_allclose(
        np.asarray(lj.dequantize(cpu)), np.asarray(lj.dequantize(stacked)), rtol=0, atol=0
    )


def test_export_reads_metadata_from_before_layouts():
    assert fmt._deserialize_meta(b"[64, 48, 2, 32]") == (64, 48, 2, 32, "canonical")
    meta = (64, 48, 2, 32, "cpu")
    assert fmt._deserialize_meta(fmt._serialize_meta(meta)) == meta


def test_dequantize_matches_float64_and_pack_round_trips():
    rng = np.random.default_rng(12)
    w, w64 = random_weight(rng, 257, 37, 5, 64, True)
    np.testing.assert_allclose(lj.dequantize(w), w64, rtol=1e-6, atol=1e-6)
    signs = lj.unpack_signs(w.bits)
    assert signs.shape == (w.padded_in_features, 5, 37)
    assert not np.asarray(signs[257:]).any()  # padded rows carry bit 0
    np.testing.assert_array_equal(lj.pack_signs(signs), w.bits)


# ---- group size 16 and uniform scales --------------------------------------------------------


@pytest.mark.parametrize("k", [16, 40, 64, 77, 250])  # K % 32 in 1..16: a group of padding only
@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("layout", lj.LAYOUTS)
def test_group_size_16_and_uniform_dequantize_match_float64(k, uniform, layout):
    """Two 16-row groups per sign word (bytes 0-1 and 2-3), and uniform scales (plane i scaled by
    alpha * 2^i): dequantize against the float64 transcription of the format."""
    rng = np.random.default_rng(k)
    w, w64 = random_weight(rng, k, 45, 4, 16, True, layout=layout, uniform=uniform)
    kp = -(-k // 32) * 32
    assert (w.group_size, w.padded_in_features, w.num_groups) == (16, kp, kp // 16)
    assert w.alpha.shape == (w.padded_in_features // 16, 1 if uniform else 4, 45)
    assert w.uniform == uniform
    # float32: at most 4 plane terms (<= 8 * alpha) and an offset per element
    np.testing.assert_allclose(np.asarray(lj.dequantize(w), np.float64), w64, rtol=1e-6, atol=1e-6)
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), w)
    np.testing.assert_array_equal(lj.dequantize(stacked)[1], lj.dequantize(w))


def test_uniform_is_read_from_alpha_and_expands_exactly():
    rng = np.random.default_rng(1)
    w, _ = random_weight(rng, 96, 8, 3, 32, uniform=True, alpha_dtype=jnp.float16)
    assert w.uniform and w.expected_shapes()["alpha"] == (3, 1, 8)
    planes = w.plane_alpha()
    assert planes.shape == (3, 3, 8) and planes.dtype == jnp.float16
    np.testing.assert_array_equal(
        np.asarray(planes, np.float64),
        np.asarray(w.alpha, np.float64) * np.array([1.0, 2.0, 4.0])[:, None],
    )
    per_plane = fmt.BCQWeight(w.bits, planes, w.offset, 96, 8, 3, 32)
    assert not per_plane.uniform
    np.testing.assert_array_equal(lj.dequantize(per_plane), lj.dequantize(w))
    # q = 1: both forms are the same array
    one, _ = random_weight(rng, 96, 8, 1, 32)
    assert one.uniform and one.plane_alpha() is one.alpha


def test_bits_per_weight_counts_signs_scales_offsets_and_padding():
    rng = np.random.default_rng(2)
    cases = [
        # (K, q, g, uniform, alpha dtype, offset): bits per weight
        ((128, 4, 32, True, jnp.float16, True), 4 + 16 / 32 + 16 / 32),
        ((128, 4, 32, False, jnp.float16, True), 4 + 4 * 16 / 32 + 16 / 32),
        ((128, 3, 16, True, jnp.float32, True), 3 + 32 / 16 + 32 / 16),
        ((128, 3, 128, False, jnp.float32, False), 3 + 3 * 32 / 128),
        ((48, 2, 16, True, jnp.float16, True), (2 + 16 / 16 + 16 / 16) * 64 / 48),  # Kp = 64
    ]
    for (k, q, g, uniform, dtype, offset), want in cases:
        w, _ = random_weight(rng, k, 24, q, g, offset, dtype, uniform=uniform)
        assert w.bits_per_weight() == pytest.approx(want), (k, q, g, uniform)
        stacked = jax.tree.map(lambda a: jnp.stack([a, a, a]), w)
        assert stacked.bits_per_weight() == pytest.approx(want)


def test_group_size_16_metadata_is_validated():
    rng = np.random.default_rng(3)
    w, _ = random_weight(rng, 64, 8, 2, 16)  # 4 groups in 2 words
    w.validate()
    with pytest.raises(ValueError, match=r"BCQWeight.alpha has shape \(4, 2, 8\).*g=32"):
        fmt.BCQWeight(w.bits, w.alpha, w.offset, 64, 8, 2, 32).validate()
    with pytest.raises(ValueError, match="group_size must be 16 or a positive multiple of 32"):
        fmt.BCQWeight(w.bits, w.alpha, w.offset, 64, 8, 2, 8).validate()
    with pytest.raises(ValueError, match=r"BCQWeight.alpha has shape \(4, 3, 8\)"):
        fmt.BCQWeight(w.bits, jnp.zeros((4, 3, 8)), w.offset, 64, 8, 2, 16).validate()
