"""Tests for lutgemm_jax.quantize: error ordering, exact RTN -> BCQ (stored uniform), padding,
group size 16, degenerate inputs."""

from __future__ import annotations

import dataclasses
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lutgemm_jax.config import METHODS
from lutgemm_jax.format import PER_COLUMN, pack_signs, unpack_signs
from lutgemm_jax.quantize import quantize
from lutgemm_jax.testing import weight_float64

Q = sys.modules["lutgemm_jax.quantize"]  # the module (lutgemm_jax.quantize is the function)


K, N, G = 256, 32, 64  # one shape and group size for most tests, so compilations are shared


def _gauss(k=K, n=N, seed=0, mean=0.0):
    return (np.random.default_rng(seed).normal(size=(k, n)) + mean).astype(np.float32)


def _sq_err(W, w, axis=None):
    d = np.asarray(W, np.float64) - np.asarray(w.dequantize(), np.float64)
    return np.sum(d * d, axis=axis)


def _rel(W, w):
    return float(np.sqrt(_sq_err(W, w)) / np.linalg.norm(np.asarray(W, np.float64)))


def _rtn_reference(W, q, g):
    """float64 numpy RTN: returns (codes [K, N], scale [G, N], lo [G, N], t = (w - lo) / s)."""
    k, n = W.shape
    kp = -(-k // max(g, 32)) * max(g, 32)
    groups = kp // g
    w = np.full((kp, n), np.nan)
    w[:k] = W
    w = w.reshape(groups, g, n)
    with warnings.catch_warnings():  # g = 16: a group of padding only has NaN scales here
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanmin(w, axis=1), np.nanmax(w, axis=1)
    scale = (hi - lo) / (2**q - 1)
    t = (w - lo[:, None]) / np.where(scale > 0, scale, 1.0)[:, None]
    codes = np.clip(np.round(t), 0, 2**q - 1)
    return codes.reshape(kp, n)[:k], scale, lo, t.reshape(kp, n)[:k]


@pytest.mark.parametrize("q", [2, 3, 4])
def test_alternating_no_worse_than_greedy_per_column(q):
    W = _gauss(seed=q)
    greedy = _sq_err(W, quantize(W, q, G, "greedy"), axis=0)
    alt = _sq_err(W, quantize(W, q, G, "alternating"), axis=0)
    assert np.all(alt <= greedy * (1 + 1e-5) + 1e-9)
    assert alt.sum() < 0.97 * greedy.sum()  # and it actually improves


@pytest.mark.parametrize("fit_offset", [False, True])
def test_error_history_non_increasing_and_matches_result(fit_offset):
    W = _gauss(seed=3, mean=0.3)
    hist = Q._error_history(W, 3, G, fit_offset=fit_offset)
    assert hist.shape == (16,)
    assert np.all(np.diff(hist) <= 0), hist
    assert hist[-1] < hist[0]
    greedy = quantize(W, 3, G, "greedy", fit_offset=fit_offset)
    alt = quantize(W, 3, G, "alternating", fit_offset=fit_offset)
    np.testing.assert_allclose(hist[0], _sq_err(W, greedy), rtol=1e-4)
    np.testing.assert_allclose(hist[-1], _sq_err(W, alt), rtol=1e-4)


def test_rounds_zero_is_greedy():
    W = _gauss()
    a, b = quantize(W, 3, G, "alternating", rounds=0), quantize(W, 3, G, "greedy")
    np.testing.assert_array_equal(a.bits, b.bits)
    np.testing.assert_array_equal(a.alpha, b.alpha)


def test_greedy_matches_definition():
    W = _gauss(seed=9)
    w = quantize(W, 3, G, "greedy", layout="canonical")  # unpacks canonical bits
    r = W.astype(np.float64).reshape(K // G, G, N)
    for i in range(3):
        s = np.where(r >= 0, 1.0, -1.0)
        a = np.abs(r).mean(axis=1)
        np.testing.assert_allclose(w.alpha[:, i], a, rtol=1e-5)
        signs = np.asarray(unpack_signs(w.bits))[:, i].reshape(K // G, G, N)
        np.testing.assert_array_equal(signs, s > 0)
        r = r - a[:, None] * s


@pytest.mark.parametrize(
    "q,g,k", [(1, 32, 96), (3, 64, 200), (4, None, 77), (8, 32, 64), (3, 16, 77), (4, 16, 40)]
)
def test_rtn_to_bcq_is_exact(q, g, k):
    W = _gauss(k, seed=q) * 3 + 1
    w = quantize(W, q, g, "rtn", layout="canonical")  # unpacks canonical bits
    assert w.has_offset
    codes, scale, lo, t = _rtn_reference(np.float64(W), q, w.group_size)
    # Uniform: one stored scale s / 2 per group; plane i's scale is s * 2^(i-1) exactly.
    assert w.uniform and w.alpha.shape == (w.num_groups, 1, W.shape[1])
    alpha = np.asarray(w.plane_alpha(), np.float64)
    np.testing.assert_array_equal(alpha, alpha[:, :1] * 2.0 ** np.arange(q)[:, None])
    real = -(-k // w.group_size)  # groups holding real rows (g = 16: the last may not)
    np.testing.assert_allclose(2 * alpha[:real, 0], scale[:real], rtol=2e-6)
    # bits are the binary digits of the uniform code c
    signs = np.asarray(unpack_signs(w.bits))[:k]
    got_codes = np.sum(signs * (2 ** np.arange(q))[:, None], axis=1)
    near_tie = np.abs(t - np.floor(t) - 0.5) < 1e-4  # float32 vs float64 may round differently
    assert near_tie.mean() < 0.01
    np.testing.assert_array_equal(got_codes[~near_tie], codes[~near_tie])
    # dequantize(BCQ) == s * (c - z) == s * c + lo, to float32 rounding
    group = np.arange(k) // w.group_size
    uniform = alpha[group, 0] * 2 * got_codes + lo[group]
    span = (scale * (2**q - 1))[group]
    np.testing.assert_allclose(
        np.asarray(w.dequantize(), np.float64), uniform, atol=1e-6 * span.max()
    )


def test_rtn_clip_search_never_worse():
    W = _gauss(seed=5)
    W[3, :] *= 8  # outliers make clipping worthwhile
    plain = _sq_err(W, quantize(W, 3, G, "rtn"), axis=0)
    clipped = _sq_err(W, quantize(W, 3, G, "rtn", clip_search=True), axis=0)
    assert np.all(clipped <= plain * (1 + 1e-5))
    assert clipped.sum() < plain.sum()


@pytest.mark.parametrize("method", METHODS)
def test_error_falls_with_bits_and_smaller_groups(method):
    W = _gauss(seed=11)
    by_bits = [_rel(W, quantize(W, q, G, method)) for q in (2, 3, 4)]
    assert by_bits[0] > by_bits[1] > by_bits[2]
    by_group = [_rel(W, quantize(W, 3, g, method)) for g in (None, G, 32, 16)]
    assert by_group[0] > by_group[1] > by_group[2] > by_group[3]


def test_per_column_groups():
    W = _gauss()
    a, b = quantize(W, 3, None), quantize(W, 3, PER_COLUMN)
    assert a.group_size == b.group_size == K and a.alpha.shape == (1, 3, N)
    np.testing.assert_array_equal(a.bits, b.bits)
    np.testing.assert_array_equal(a.alpha, b.alpha)


@pytest.mark.parametrize(
    "method,k,g",
    [
        ("greedy", 100, 64),
        ("alternating", 100, 64),
        ("rtn", 100, 64),
        ("alternating", 33, None),
        ("greedy", 77, 16),
        ("alternating", 77, 16),
        ("rtn", 50, 16),
        ("alternating", 40, 16),  # the last word's second group is all padding
    ],
)
def test_ragged_k_padding_is_ignored(method, k, g):
    W = _gauss(k, 9, seed=k)
    w = quantize(W, 3, g, method, fit_offset=method != "rtn", layout="canonical")
    assert np.asarray(unpack_signs(w.bits))[k:].sum() == 0  # padded sign bits are 0
    # The chunk function masks the padded rows: garbage there changes nothing.
    kp = w.padded_in_features
    junk = np.random.default_rng(0).normal(size=(kp - k, 9)).astype(np.float32) * 100
    cfg = dict(g=w.group_size, q=3, method=method, rounds=15, fit_offset=method != "rtn")
    cfg.update(clip_search=False, history=False)
    clean = Q._quantize_chunk(jnp.asarray(np.concatenate([W, 0 * junk])), k, **cfg)
    dirty = Q._quantize_chunk(jnp.asarray(np.concatenate([W, junk])), k, **cfg)
    for x, y in zip(clean, dirty, strict=True):
        np.testing.assert_array_equal(x, y)
    # The partial last group is fitted from its real rows only.
    last = (k - 1) // w.group_size * w.group_size
    tail = quantize(W[last:], 3, w.group_size, method, fit_offset=method != "rtn")
    np.testing.assert_allclose(w.alpha[last // w.group_size], tail.alpha[0], rtol=1e-6, atol=1e-7)
    # A group of padding only (g = 16, K % 32 in 1..16) has zero scales and offset.
    empty = slice(last // w.group_size + 1, None)
    assert not np.asarray(w.alpha[empty]).any()
    assert not w.has_offset or not np.asarray(w.offset[empty]).any()
    np.testing.assert_array_equal(np.asarray(w.dequantize())[last:], np.asarray(tail.dequantize()))


@pytest.mark.parametrize("method", ["greedy", "alternating"])
def test_fit_offset_helps_on_shifted_data(method):
    W = _gauss(seed=2, mean=2.0)
    without = quantize(W, 3, G, method)
    with_offset = quantize(W, 3, G, method, fit_offset=True)
    assert without.offset is None and with_offset.offset.shape == (K // G, N)
    assert _rel(W, with_offset) < 0.8 * _rel(W, without)


def test_pack_unpack_round_trip():
    signs = jnp.asarray(np.random.default_rng(1).random((96, 3, 7)) < 0.5)
    np.testing.assert_array_equal(unpack_signs(pack_signs(signs)), signs)
    w = quantize(_gauss(), 3, G)
    np.testing.assert_array_equal(pack_signs(unpack_signs(w.bits)), w.bits)


def test_column_chunking_does_not_change_the_result():
    W = _gauss(seed=4)
    for method in METHODS:
        a = quantize(W, 3, G, method)
        b = quantize(W, 3, G, method, column_chunk=12)  # chunks of 12, 12 and 8 (zero-padded)
        assert b.alpha.shape == a.alpha.shape  # sums may associate differently per chunk shape
        np.testing.assert_allclose(b.dequantize(), a.dequantize(), rtol=1e-5, atol=1e-5)


def test_power_of_two_scaling_is_exact():
    W = _gauss(seed=6)
    a = quantize(W, 3, G)
    b = quantize(W * np.float32(2.0**60), 3, G)
    np.testing.assert_array_equal(a.bits, b.bits)
    np.testing.assert_array_equal(np.asarray(a.alpha) * np.float32(2.0**60), b.alpha)


def _degenerate_inputs():
    rng = np.random.default_rng(0)
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    mixed = _gauss()
    mixed[:G, 0] *= 1e30
    mixed[G:, 0] *= 1e-30
    mixed[:, 1] = 0
    mixed[:G, 2] = 7.0
    return {
        "zeros": np.zeros((K, N), np.float32),
        "constant": np.full((K, N), -3.5, np.float32),
        "huge": _gauss() * 1e30,
        "1e38": np.where(rng.random((K, N)) < 0.5, 1e38, -1e38).astype(np.float32),
        "tiny": _gauss() * 1e-30,
        "denormal": rng.integers(-3, 4, (K, N)).astype(np.float32) * tiny,
        "mixed": mixed,
    }


@pytest.mark.parametrize("name", list(_degenerate_inputs()))
def test_degenerate_inputs_stay_finite(name):
    W = _degenerate_inputs()[name]
    for method in METHODS:
        for fit_offset in (False, True):
            for alpha_dtype in (jnp.float32, jnp.float16):
                w = quantize(W, 3, G, method, fit_offset=fit_offset, alpha_dtype=alpha_dtype)
                arrays = [w.alpha, w.dequantize()] + ([w.offset] if w.has_offset else [])
                for x in arrays:
                    assert np.isfinite(np.asarray(x, np.float32)).all(), (method, fit_offset)
    if name in ("zeros", "constant"):  # represented exactly
        for method in METHODS:
            w = quantize(W, 3, G, method, fit_offset=True)
            np.testing.assert_array_equal(w.dequantize(), W)
    if name in ("huge", "tiny", "mixed"):  # relative accuracy is scale-free
        assert _rel(W, quantize(W, 3, G)) < 0.25


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_rejected(bad):
    W = _gauss()
    W[5, 2] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(W, 3, G)
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(jnp.asarray(W), 3, G)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_float64_beyond_float32_range_rejected():
    with pytest.raises(ValueError, match="float32 range"):
        quantize(np.full((K, N), 1e300), 3, G)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(W=np.zeros(64, np.float32)), ValueError, "W must be 2-D"),
        (dict(W=np.zeros((64, 4), np.int32)), TypeError, "W must have a floating dtype"),
        (dict(bits=0), ValueError, "bits must be in 1..8"),
        (dict(bits=9), ValueError, "bits must be in 1..8"),
        (dict(bits=2.0), TypeError, "bits must be an int"),
        (dict(group_size=48), ValueError, "group_size must be 16 or a positive multiple of 32"),
        (dict(group_size=0), ValueError, "group_size"),
        (dict(method="kmeans"), ValueError, "method must be one of"),
        (dict(rounds=-1), ValueError, "rounds"),
        (dict(clip_search=True), ValueError, "clip_search"),
        (dict(alpha_dtype=jnp.int8), TypeError, "alpha_dtype"),
        (dict(column_chunk=0), ValueError, "column_chunk"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, exc, match):
    args = dict(W=_gauss(), bits=3, group_size=G)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        quantize(args.pop("W"), args.pop("bits"), **args)


def test_quantize_under_jit():
    W = jnp.asarray(_gauss(seed=8))
    jitted = jax.jit(lambda W: quantize(W, 3, G, fit_offset=True))(W)
    eager = quantize(W, 3, G, fit_offset=True)
    for x, y in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("alpha_dtype", [jnp.bfloat16, jnp.float16])
def test_alpha_dtype_is_honoured(alpha_dtype):
    W = _gauss()
    for method in METHODS:
        w = quantize(W, 3, G, method, fit_offset=True, alpha_dtype=alpha_dtype)
        ref = quantize(W, 3, G, method, fit_offset=True)
        assert w.alpha.dtype == w.offset.dtype == jnp.dtype(alpha_dtype)
        np.testing.assert_array_equal(w.bits, ref.bits)
        np.testing.assert_allclose(np.float32(w.alpha), ref.alpha, rtol=1e-2)


# ---- group size 16 and uniform scales --------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [16, 48, 77])
def test_group_size_16_fits_every_group_alone(method, k):
    """g = 16 (two groups per sign word), ragged K: the weight is the format's (dequantize equals
    the float64 reading of the packed arrays), padded bits are 0, and each 16-row group is the
    fit of those 16 rows quantized alone."""
    W = _gauss(k, 20, seed=k + len(method))
    w = quantize(W, 3, 16, method, layout="canonical")
    assert (w.group_size, w.padded_in_features) == (16, -(-k // 32) * 32)
    assert w.alpha.shape == (w.padded_in_features // 16, 1 if method == "rtn" else 3, 20)
    np.testing.assert_allclose(np.asarray(w.dequantize(), np.float64), weight_float64(w),
                               rtol=0, atol=1e-6)  # fmt: skip
    assert np.asarray(unpack_signs(w.bits))[k:].sum() == 0
    dense = np.asarray(w.dequantize())
    for start in range(0, k, 16):
        alone = quantize(W[start : start + 16], 3, 16, method, layout="canonical")
        np.testing.assert_allclose(w.alpha[start // 16], alone.alpha[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(dense[start : start + 16], np.asarray(alone.dequantize()),
                                   rtol=1e-6, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("alpha_dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("g", [16, 64])
def test_rtn_uniform_scales_hold_the_per_plane_weight_exactly(alpha_dtype, g):
    """The uniform form loses nothing against storing the q plane scales s * 2^(i-1): expanded
    in the storage dtype the plane scales are exact (powers of two times the stored scale), and
    the per-plane twin of the weight dequantizes bit for bit the same."""
    W = _gauss(seed=21) * 0.05 + 0.01
    w = quantize(W, 4, g, "rtn", alpha_dtype=alpha_dtype, layout="canonical")
    assert w.uniform and w.alpha.dtype == jnp.dtype(alpha_dtype)
    planes = w.plane_alpha()
    assert planes.dtype == w.alpha.dtype and planes.shape == (K // g, 4, N)
    np.testing.assert_array_equal(
        np.asarray(planes, np.float64),
        np.asarray(w.alpha, np.float64) * 2.0 ** np.arange(4)[:, None],
    )
    twin = dataclasses.replace(w, alpha=planes)
    assert not twin.uniform
    np.testing.assert_array_equal(np.asarray(twin.dequantize()), np.asarray(w.dequantize()))
    np.testing.assert_array_equal(weight_float64(twin), weight_float64(w))
    # 4 sign bits + one scale and one offset per group: 4 + 2 * 16 / g for 16-bit scales
    bits = 8 * jnp.dtype(alpha_dtype).itemsize
    assert w.bits_per_weight() == 4 + 2 * bits / g
    assert twin.bits_per_weight() == 4 + 5 * bits / g


def test_uniform_scale_saturates_with_headroom_for_every_plane():
    """float16 scales of weights beyond float16's range saturate so that the largest plane
    scale alpha * 2^(q-1) is still finite."""
    W = _gauss(seed=22) * 1e6
    w = quantize(W, 4, G, "rtn", alpha_dtype=jnp.float16)
    assert np.isfinite(np.asarray(w.plane_alpha(), np.float32)).all()
    assert np.isfinite(np.asarray(w.dequantize())).all()
    assert float(np.max(np.abs(np.asarray(w.alpha, np.float32)))) <= 65504 / 8


def test_rtn_uses_the_uniform_conversion_of_integer_codes():
    """RTN's weight is the one `from_uniform_codes` builds from its codes, step and minimum (the
    same conversion rule), up to float32 rounding of the step."""
    from lutgemm_jax.uniform import from_uniform_codes

    W = _gauss(100, 12, seed=23)
    w = quantize(W, 3, 16, "rtn", layout="canonical")
    codes, scale, lo, t = _rtn_reference(np.float64(W), 3, 16)
    near_tie = np.abs(t - np.floor(t) - 0.5) < 1e-4
    real = -(-100 // 16)  # the reference's eighth group holds only padding (NaN scale)
    ref = from_uniform_codes(
        codes.astype(np.int32), scale[:real], lo[:real], num_bits=3, group_size=16
    )
    assert ref.alpha.shape == w.alpha.shape and ref.uniform
    np.testing.assert_allclose(w.alpha, ref.alpha, rtol=2e-6)
    np.testing.assert_allclose(w.offset, ref.offset, rtol=2e-6, atol=2e-6)
    rows = ~near_tie.any(axis=1)
    got, want = (np.asarray(v.dequantize())[rows] for v in (w, ref))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
