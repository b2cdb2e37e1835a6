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
