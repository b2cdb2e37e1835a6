"""The shared test helpers (lutgemm_jax/testing.py): their numpy transcriptions of the format agree
with the library's own implementation, so a bug in either shows up as a disagreement here."""

import jax.numpy as jnp
import numpy as np
import pytest

import lutgemm_jax as lj
from lutgemm_jax import format as fmt
from lutgemm_jax import testing


@pytest.mark.parametrize("layout", lj.LAYOUTS)
@pytest.mark.parametrize("g,has_offset", [(32, True), (None, False), (64, True)])
def test_random_weight_matches_dequantize(layout, g, has_offset):
    rng = np.random.default_rng(0)
    w, w64 = testing.random_weight(rng, 150, 70, 3, g, has_offset, jnp.bfloat16, layout)
    assert w.layout == layout and w.dtype == jnp.bfloat16 and w.has_offset == has_offset
    w.validate()
    assert w64.shape == (150, 70) and w64.dtype == np.float64
    # dequantize rounds nothing in float32 here: +-alpha sums of <= 3 bfloat16 values and offset.
    np.testing.assert_allclose(np.asarray(lj.dequantize(w), np.float64), w64, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(testing.weight_float64(w), w64)


@pytest.mark.parametrize("layout", lj.LAYOUTS)
def test_random_packed_weight_padding_and_float64(layout):
    rng = np.random.default_rng(1)
    w = testing.random_packed_weight(rng, 100, 67, 4, 64, True, jnp.float32, layout)
    signs = lj.unpack_signs(fmt.canonical_bits(w))
    assert signs.shape == (128, 4, 67)
    assert not np.asarray(signs[100:]).any()  # padding rows carry bit 0
    assert np.asarray(signs[:100]).any() and not np.asarray(signs[:100]).all()
    np.testing.assert_allclose(
        np.asarray(lj.dequantize(w), np.float64), testing.weight_float64(w), rtol=1e-6, atol=1e-6
    )


def test_word_transcriptions_match_the_library():
    rng = np.random.default_rng(2)
    signs = rng.random((96, 3, 70)) < 0.5
    words = testing.pack_words(signs)
    np.testing.assert_array_equal(words, np.asarray(lj.pack_signs(jnp.asarray(signs))))
    np.testing.assert_array_equal(testing.unpack_words(words), signs)
    cpu = testing.cpu_layout_words(words)
    np.testing.assert_array_equal(cpu, fmt.convert_bits(words, "canonical", "cpu"))
    np.testing.assert_array_equal(testing.canonical_words(cpu, "cpu"), words)
    np.testing.assert_array_equal(testing.canonical_words(words, "canonical"), words)


def test_reference_and_rel_err():
    x = jnp.asarray([[1.0, 2.0], [3.0, -1.0]], jnp.bfloat16)
    w64 = np.asarray([[0.5, 1.0], [2.0, -1.0]])
    ref = testing.reference(x, w64)
    np.testing.assert_array_equal(ref, [[4.5, -1.0], [-0.5, 4.0]])
    assert testing.rel_err(ref, ref) == 0.0
    assert testing.rel_err(ref + [[0.45, 0.0], [0.0, 0.0]], ref) == pytest.approx(0.1)


def test_bad_layout_raises():
    with pytest.raises(ValueError, match="layout must be one of"):
        testing.random_weight(np.random.default_rng(0), 64, 8, 2, 32, layout="gpu")
