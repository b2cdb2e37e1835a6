"""The lut_gemm primitive (ops.py) and the pure-jnp lowering (lowering.jnp_lowering) vs a
float64 reference, and the primitive's JAX transformations (jit, vmap over x and over stacked
weights, grad, export), for both sign-word layouts, group size 16 and uniform scales."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lutgemm_jax as lj
from lutgemm_jax import format as fmt
from lutgemm_jax import lowering, ops
from lutgemm_jax.format import offset_operand
from lutgemm_jax.testing import random_weight, reference, rel_err

# Tolerances (error relative to max |y|):
# - float32: K <= ~300 float32 additions in the tables and accumulators; the worst-case bound
#   K * 2^-24 ~ 2e-5 is loose in practice, the library's contract is 1e-5.
# - bfloat16 / float16 outputs are rounded once to the output dtype (inputs are read exactly):
#   2^-9 and 2^-11 relative per element, so 4e-3 and 1e-3 of max |y|.
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 4e-3, jnp.float16: 1e-3}

WIDTHS = [1, 31, 32, 33, 64, 100, 4096 + 17]  # N around the "cpu" layout's 32-column blocks
SHAPES = [(32, 1), (100, 37), (257, 64), (96, 3)]  # (K, N): K not a multiple of 32 or g, odd N
FORMATS = [(32, False), (16, False), (32, True), (16, True)]  # (g, uniform scales)


def _case(
    seed,
    k,
    n,
    q,
    g,
    has_offset,
    batch=(3,),
    dtype=jnp.float32,
    alpha_dtype=jnp.float32,
    uniform=False,
):
    rng = np.random.default_rng(seed)
    w, w64 = random_weight(rng, k, n, q, g, has_offset, alpha_dtype, uniform=uniform)
    x = jnp.asarray(rng.normal(size=(*batch, k)), dtype)
    return x, w, w64


def _reference_path(x, w):
    offset = offset_operand(w.offset, w.alpha)
    return lowering.jnp_lowering(x, w.bits, w.alpha, offset, **ops.weight_params(w))


@pytest.mark.parametrize("q", range(1, 9))
@pytest.mark.parametrize("g", [16, 32, 64, 128, None])
def test_native_matches_float64_all_q_and_groups(q, g):
    for (k, n), has_offset in itertools.product(SHAPES[1:3], [False, True]):
        x, w, w64 = _case(q * 100 + k, k, n, q, g, has_offset)
        y = jax.jit(lj.lut_gemm)(x, w)
        assert y.shape == (3, n) and y.dtype == jnp.float32
        assert rel_err(y, reference(x, w64)) <= 1e-5


@pytest.mark.parametrize("q", range(1, 9))
@pytest.mark.parametrize("g", [16, 32, 128, None])
def test_uniform_scales_match_float64(q, g):
    """alpha [G, 1, N]: plane i scaled by alpha * 2^i, on the default lowering and the jnp one;
    alpha values up to 1 and q = 8 make plane scales up to 128, summed exactly in float32."""
    for (k, n), has_offset in itertools.product(SHAPES[1:3], [False, True]):
        x, w, w64 = _case(q * 100 + k + 1, k, n, q, g, has_offset, uniform=True)
        assert w.uniform and w.alpha.shape == (w.num_groups, 1, n)
        want = reference(x, w64)
        assert rel_err(jax.jit(_reference_path)(x, w), want) <= 1e-5
        assert rel_err(jax.jit(lj.lut_gemm)(x, w), want) <= 1e-5


@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("batch", [(), (1,), (5,), (2, 3)])
def test_shapes_and_leading_dims(k, n, batch):
    x, w, w64 = _case(k + n, k, n, 3, 32, True, batch=batch)
    y = lj.lut_gemm(x, w)
    assert y.shape == (*batch, n)
    assert rel_err(y, reference(x, w64)) <= 1e-5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("alpha_dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("g,uniform", [(64, False), (16, True)])
def test_dtypes(dtype, alpha_dtype, g, uniform):
    x, w, w64 = _case(
        7, 100, 37, 4, g, True, batch=(4,), dtype=dtype, alpha_dtype=alpha_dtype, uniform=uniform
    )
    y = lj.lut_gemm(x, w)
    assert y.dtype == dtype
    assert rel_err(y, reference(x, w64)) <= TOL[dtype]


@pytest.mark.parametrize(
    "q,g,has_offset",
    [(1, 32, False), (3, None, True), (8, 64, True), (3, 16, True), (5, 16, False)],
)
def test_jnp_path_matches_float64(q, g, has_offset):
    for k in (257, 48, 16):  # K % 32 in 1..16: with g = 16 the last group holds only padding
        x, w, w64 = _case(11, k, 37, q, g, has_offset)
        assert rel_err(jax.jit(_reference_path)(x, w), reference(x, w64)) <= 1e-5


def test_jnp_path_expands_uniform_scales_inside_the_fused_loop():
    """No [G, q, N] array of plane scales is written between kernels: the expansion of a uniform
    alpha is fused into the computation that consumes it."""
    x, w, _ = _case(0, 256, 64, 4, 16, True, uniform=True)
    hlo = jax.jit(_reference_path).lower(x, w).compile().as_text()
    entry = hlo[hlo.index("ENTRY") :]  # the top-level buffers; fusion bodies come before
    assert "f32[16,1,64]" in entry and "f32[16,4,64]" not in entry


def test_pure_jnp_lowering_for_other_platforms_has_no_custom_call():
    x, w, _ = _case(0, 100, 37, 3, 32, True)
    text = jax.jit(_reference_path).lower(x, w).as_text()
    assert "custom_call" not in text
    # No [Kp, q, N]-sized float intermediate is needed: dequantize writes [K, N] once.
    assert "shift_right_logical" in text


@pytest.mark.parametrize("g,uniform", FORMATS)
def test_vmap_over_x(g, uniform):
    x, w, w64 = _case(1, 100, 37, 3, g, True, batch=(4, 2), uniform=uniform)
    y = jax.vmap(lj.lut_gemm, in_axes=(1, None))(x, w)
    assert y.shape == (2, 4, 37)
    assert rel_err(y, reference(np.swapaxes(np.asarray(x), 0, 1), w64)) <= 1e-5


@pytest.mark.parametrize("g,uniform", FORMATS)
def test_vmap_over_stacked_weights(g, uniform):
    rng = np.random.default_rng(2)
    pairs = [random_weight(rng, 100, 37, 3, g, True, uniform=uniform) for _ in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[w for w, _ in pairs])
    x = jnp.asarray(rng.normal(size=(3, 5, 100)), jnp.float32)
    y = jax.jit(jax.vmap(lj.lut_gemm))(x, stacked)
    for i, (_, w64) in enumerate(pairs):
        assert rel_err(y[i], reference(x[i], w64)) <= 1e-5
    # Shared x, stacked weights.
    y_shared = jax.vmap(lj.lut_gemm, in_axes=(None, 0))(x[0], stacked)
    assert rel_err(y_shared[2], reference(x[0], pairs[2][1])) <= 1e-5


def _cotangent(shape):
    return jnp.asarray(np.random.default_rng(99).normal(size=shape), jnp.float32)


@pytest.mark.parametrize("g,uniform", FORMATS)
def test_grad_wrt_x_matches_float64(g, uniform):
    x, w, w64 = _case(3, 100, 37, 3, g, True, batch=(2, 3), uniform=uniform)
    c = _cotangent((2, 3, 37))
    got = jax.jit(jax.grad(lambda x: jnp.sum(lj.lut_gemm(x, w) * c)))(x)
    want = np.asarray(c, np.float64) @ w64.T  # d/dx sum(c * (x @ W)) = c @ W^T
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("g,uniform", FORMATS)
def test_grad_wrt_scales_matches_dense(g, uniform):
    x, w, _ = _case(4, 100, 37, 3, g, True, batch=(4,), uniform=uniform)
    c = _cotangent((4, 37))
    got = jax.grad(lambda w: jnp.sum(lj.lut_gemm(x, w) * c), allow_int=True)(w)
    want = jax.grad(lambda w: jnp.sum((x @ lj.dequantize(w)) * c), allow_int=True)(w)
    assert got.alpha.shape == w.alpha.shape  # uniform: one cotangent per group
    # Both sides sum <= 4 * 32 float32 products per entry: 1e-5 of the largest entry.
    assert rel_err(got.alpha, np.asarray(want.alpha, np.float64)) <= 1e-5
    assert rel_err(got.offset, np.asarray(want.offset, np.float64)) <= 1e-5
    assert got.bits.dtype == jax.dtypes.float0  # the integer codes get no gradient


@pytest.mark.parametrize("g,uniform", [(64, False), *FORMATS[1:]])
def test_jvp_matches_dense(g, uniform):
    x, w, _ = _case(5, 100, 37, 2, g, True, uniform=uniform)
    tx = jnp.ones_like(x)
    _, got = jax.jvp(lambda x: lj.lut_gemm(x, w), (x,), (tx,))
    np.testing.assert_allclose(got, tx @ lj.dequantize(w), rtol=1e-5, atol=1e-4)
    # Tangent of the scales: y is linear in (alpha, offset).
    ta, to = jnp.ones_like(w.alpha), jnp.ones_like(w.offset)

    def f(alpha, offset):
        return lj.lut_gemm(x, dataclasses.replace(w, alpha=alpha, offset=offset))

    _, got = jax.jvp(f, (w.alpha, w.offset), (ta, to))
    want = x @ lj.dequantize(dataclasses.replace(w, alpha=ta, offset=to))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("g,uniform", FORMATS)
def test_export_round_trip(g, uniform):
    x, w, w64 = _case(6, 100, 37, 3, g, True, uniform=uniform)
    exported = jax.export.export(jax.jit(lj.lut_gemm), disabled_checks=lj.export_disabled_checks())(
        x, w
    )
    restored = jax.export.deserialize(exported.serialize())
    assert rel_err(restored.call(x, w), reference(x, w64)) <= 1e-5


def test_nan_in_x_poisons_only_its_row():
    x, w, _ = _case(8, 100, 37, 3, 32, True, batch=(4,))
    x = x.at[2, 50].set(jnp.nan)
    y = np.asarray(lj.lut_gemm(x, w))
    assert np.isnan(y[2]).all()
    assert np.isfinite(np.delete(y, 2, axis=0)).all()


def test_inf_in_x_makes_only_its_row_non_finite():
    x, w, _ = _case(9, 100, 37, 3, 32, True, batch=(3,))
    y = np.asarray(lj.lut_gemm(x.at[0, 7].set(jnp.inf), w))
    assert not np.isfinite(y[0]).any()
    assert np.isfinite(y[1:]).all()


def test_bad_x_shape_names_argument():
    x, w, _ = _case(0, 100, 37, 3, 32, True)
    with pytest.raises(ValueError, match=r"x has shape \(3, 99\).*K = 100"):
        lj.lut_gemm(x[:, :99], w)


def test_bad_x_dtype():
    _, w, _ = _case(0, 100, 37, 3, 32, True)
    with pytest.raises(TypeError, match="x must be float32, bfloat16 or float16"):
        lj.lut_gemm(jnp.ones((2, 100), jnp.int32), w)


def test_inconsistent_weight_rejected():
    x, w, _ = _case(0, 100, 37, 3, 32, True)
    bad = lj.BCQWeight(w.bits, w.alpha[:, :2], w.offset, 100, 37, 3, 32)
    with pytest.raises(ValueError, match=r"BCQWeight.alpha has shape"):
        lj.lut_gemm(x, bad)
    with pytest.raises(TypeError, match="bits must be uint32"):
        lj.lut_gemm(x, lj.BCQWeight(w.bits.astype(jnp.int32), w.alpha, w.offset, 100, 37, 3, 32))
    with pytest.raises(ValueError, match="group_size"):
        lj.lut_gemm(x, lj.BCQWeight(w.bits, w.alpha, w.offset, 100, 37, 3, 48))
    # g = 16 metadata on g = 32 arrays: twice the groups expected
    with pytest.raises(ValueError, match=r"w.alpha has 4 groups.*8 groups of K = 100 \(g = 16\)"):
        lj.lut_gemm(x, lj.BCQWeight(w.bits, w.alpha, w.offset, 100, 37, 3, 16))


def test_stacked_weight_without_vmap_rejected():
    rng = np.random.default_rng(0)
    w, _ = random_weight(rng, 64, 8, 2, 32, False)
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), w)
    with pytest.raises(ValueError, match="stack of weights"):
        lj.lut_gemm(jnp.ones((64,)), stacked)


def test_weight_is_a_pytree_through_jit():
    x, w, w64 = _case(10, 100, 37, 3, 32, False)
    leaves, treedef = jax.tree.flatten(w)
    assert len(leaves) == 2  # bits, alpha; offset None is not a leaf
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.shape == (100, 37) and not rebuilt.has_offset
    assert rel_err(jax.jit(lambda w: lj.lut_gemm(x, w))(rebuilt), reference(x, w64)) <= 1e-5


# ---- both sign-word layouts ----------------------------------------------------------------


@pytest.mark.parametrize("n", WIDTHS)
def test_dequantize_and_reference_path_equal_for_both_layouts(n):
    rng = np.random.default_rng(n)
    w, w64 = random_weight(rng, 100, n, 3, 32)
    c = w.to_layout("cpu")
    np.testing.assert_array_equal(np.asarray(lj.dequantize(c)), np.asarray(lj.dequantize(w)))
    x = jnp.asarray(rng.normal(size=(3, 100)), jnp.float32)
    y = jax.jit(_reference_path)(x, c)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jax.jit(_reference_path)(x, w)))
    assert rel_err(y, reference(x, w64)) <= 1e-5


def test_pure_jnp_lowering_accepts_the_cpu_layout():
    """Platforms without a native kernel lower to the pure-jnp path, no custom call."""
    w, _ = random_weight(np.random.default_rng(2), 100, 70, 3, 32)
    x = jnp.ones((2, 100))
    text = jax.jit(lj.lut_gemm).trace(x, w.to_layout("cpu")).lower(lowering_platforms=("tpu",))
    assert "custom_call" not in text.as_text()


@pytest.mark.parametrize("has_offset", [False, True])
@pytest.mark.parametrize("g,uniform", [(64, False), (16, True)])
def test_grads_equal_for_both_layouts(has_offset, g, uniform):
    rng = np.random.default_rng(4)
    w, _ = random_weight(rng, 150, 45, 3, g, has_offset, uniform=uniform)
    x = jnp.asarray(rng.normal(size=(4, 150)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(4, 45)), jnp.float32)

    def loss(x, alpha, offset, w):
        w = fmt.BCQWeight(w.bits, alpha, offset, *w.shape, w.num_bits, w.group_size, w.layout)
        return jnp.sum(lj.lut_gemm(x, w) * c)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    want = grad(x, w.alpha, w.offset, w)
    got = grad(x, w.alpha, w.offset, w.to_layout("cpu"))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert rel_err(a, np.asarray(b, np.float64)) <= 1e-6


def test_vmap_over_stacked_cpu_layout_weights():
    rng = np.random.default_rng(5)
    pairs = [random_weight(rng, 96, 40, 2, 32) for _ in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[w for w, _ in pairs]).to_layout("cpu")
    x = jnp.asarray(rng.normal(size=(3, 2, 96)), jnp.float32)
    y = jax.jit(jax.vmap(lj.lut_gemm))(x, stacked)
    for i, (_, w64) in enumerate(pairs):
        assert rel_err(y[i], reference(x[i], w64)) <= 1e-5


def test_export_round_trip_keeps_the_layout():
    rng = np.random.default_rng(6)
    w, w64 = random_weight(rng, 64, 48, 2, 32)
    c = w.to_layout("cpu")
    x = jnp.asarray(rng.normal(size=(2, 64)), jnp.float32)
    exported = jax.export.export(jax.jit(lj.lut_gemm), disabled_checks=lj.export_disabled_checks())(
        x, c
    )
    restored = jax.export.deserialize(exported.serialize())
    assert "'cpu'" in str(restored.in_tree)
    y = restored.call(x, c)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(lj.lut_gemm(x, c)))
    assert rel_err(y, reference(x, w64)) <= 1e-5
    with pytest.raises(ValueError):  # the artifact is for the cpu layout only
        restored.call(x, w)
