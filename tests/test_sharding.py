"""lut_gemm on several devices: column-, row- and data-parallel placements under jit, and
shard_map, against the single-device float64 reference (8 host CPU devices, see conftest.py)."""

import dataclasses
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lutgemm_jax as lj
from lutgemm_jax import format as fmt
from lutgemm_jax.testing import random_weight, reference, rel_err

K, N, Q, G = 512, 96, 3, 64  # 8 groups along K; N and the groups split over 2, 4 and 8 devices
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
# (g, uniform scales): g = 16 has 32 groups in 16 sign words along K, split in whole words.
FORMATS = {
    "g64": (G, False),
    "g16": (16, False),
    "g64-uniform": (G, True),
    "g16-uniform": (16, True),
}


def _weight_sharding(mesh, k_axis, n_axis, w):
    spec = {"bits": P(k_axis, None, n_axis), "alpha": P(k_axis, None, n_axis)}
    spec["offset"] = P(k_axis, n_axis)
    return jax.tree.map(
        lambda a, name: jax.device_put(a, NamedSharding(mesh, spec[name])),
        w,
        dataclasses.replace(w, bits="bits", alpha="alpha", offset="offset"),
    )


PLACEMENTS = {
    # name: (x spec, weight K axis, weight N axis, expected output spec)
    "column": (P(), None, "x", P(None, "x")),
    "row": (P(None, "x"), "x", None, P()),
    "data": (P("x"), None, None, P("x")),
}


def _setup(devices, placement, seed=0, form="g64"):
    rng = np.random.default_rng(seed)
    g, uniform = FORMATS[form]
    w, w64 = random_weight(rng, K, N, Q, g, True, uniform=uniform)
    x = jnp.asarray(rng.normal(size=(8, K)), jnp.float32)
    mesh = jax.make_mesh((devices,), ("x",), devices=jax.devices()[:devices])
    x_spec, k_axis, n_axis, out_spec = PLACEMENTS[placement]
    xs = jax.device_put(x, NamedSharding(mesh, x_spec))
    ws = _weight_sharding(mesh, k_axis, n_axis, w)
    return mesh, x, w, w64, xs, ws, NamedSharding(mesh, out_spec)


def _collectives(hlo: str) -> dict[str, int]:
    return {c: len(re.findall(rf"= \S+ {c}(-start)?\(", hlo)) for c in COLLECTIVES}


@pytest.mark.parametrize("form", list(FORMATS))
@pytest.mark.parametrize("devices", [2, 4, 8])
@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_sharded_matches_single_device(devices, placement, form):
    mesh, x, w, w64, xs, ws, out_sharding = _setup(devices, placement, form=form)
    f = jax.jit(lj.lut_gemm, out_shardings=out_sharding)
    y = f(xs, ws)
    assert rel_err(y, reference(x, w64)) <= 1e-5
    assert y.sharding.is_equivalent_to(out_sharding, 2)
    found = _collectives(f.lower(xs, ws).compile().as_text())
    expected = {c: 0 for c in COLLECTIVES}
    if placement == "row":
        expected["all-reduce"] = 1  # the one psum of the partial products
    assert found == expected, found


@pytest.mark.parametrize("form", list(FORMATS))
@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_sharded_grad_matches_single_device(placement, form):
    mesh, x, w, _, xs, ws, _ = _setup(4, placement, seed=1, form=form)
    c = jnp.asarray(np.random.default_rng(2).normal(size=(8, N)), jnp.float32)

    def loss(x, w):
        return jnp.sum(lj.lut_gemm(x, w) * c)

    got = jax.jit(jax.grad(loss))(xs, ws)
    want = jax.grad(loss)(x, w)
    assert rel_err(got, np.asarray(want, np.float64)) <= 1e-5


def _spec(sharding, ndim):
    spec = tuple(sharding.spec)
    return spec + (None,) * (ndim - len(spec))


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_explicit_mesh_types(placement):
    # With explicit mesh axes the shardings are part of the types: y [M, N] is split like x's
    # leading dim and like the weight's N (a K split is summed away by the rule), and grad x has
    # x's type; values equal the single-device ones.
    mesh, x, w, w64, xs, ws, out_sharding = _setup(4, placement, seed=5)
    assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
    c = jnp.asarray(np.random.default_rng(6).normal(size=(8, N)), jnp.float32)

    def loss(x, w):
        return jnp.sum(lj.lut_gemm(x, w) * c)

    with jax.set_mesh(mesh):
        y = jax.jit(lj.lut_gemm)(xs, ws)
        grad = jax.jit(jax.grad(loss))(xs, ws)
    assert _spec(jax.typeof(y).sharding, 2) == _spec(out_sharding, 2)
    assert _spec(jax.typeof(grad).sharding, 2) == _spec(xs.sharding, 2)
    assert rel_err(y, reference(x, w64)) <= 1e-5
    assert rel_err(grad, np.asarray(jax.grad(loss)(x, w), np.float64)) <= 1e-5


def _reduction_ops(hlo: str) -> list[list[str]]:
    """The instruction opcodes of each all-reduce's reduction computation in ``hlo``."""
    found = []
    for name in re.findall(r"= \S+ all-reduce(?:-start)?\(.*?to_apply=(%[\w.\-]+)", hlo):
        body = re.search(rf"^{re.escape(name)} .*?\{{\n(.*?)^\}}", hlo, re.M | re.S).group(1)
        found.append(re.findall(r"= \S+ ([\w-]+)\(", body))
    return found


def test_row_parallel_reduction_is_a_plain_add_under_explicit_set_mesh():
    # The row-parallel psum is lowered while XLA compiles the caller's program, under the
    # caller's jax.set_mesh. XLA's CPU backend runs an all-reduce only if its reduction
    # computation is one binary op of its two parameters; on a mesh with explicit axes, JAX 0.12
    # wraps that add in Sharding custom calls unless the psum is lowered without the ambient mesh
    # (sharding.py), and compiling fails ("Unsupported reduction computation"). Checked in the
    # compiled HLO, and by the values.
    mesh, x, w, w64, xs, ws, _ = _setup(4, "row", seed=9)
    assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
    with jax.set_mesh(mesh):
        f = jax.jit(lj.lut_gemm)
        hlo = f.lower(xs, ws).compile().as_text()
        y = f(xs, ws)
    assert _reduction_ops(hlo) == [["parameter", "parameter", "add"]]
    assert rel_err(y, reference(x, w64)) <= 1e-5


@pytest.mark.parametrize("form", ["g64", "g16-uniform"])
@pytest.mark.parametrize("has_offset", [True, False])
@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_explicit_mesh_scale_gradient(placement, has_offset, form):
    # jit grad w.r.t. alpha alone (offset held constant, or absent: an empty array built inside
    # lut_gemm) on an explicit mesh: alpha's type and the single-device values.
    mesh, x, w, _, xs, ws, _ = _setup(4, placement, seed=7, form=form)
    if not has_offset:
        w, ws = (dataclasses.replace(v, offset=None) for v in (w, ws))

    c = jnp.asarray(np.random.default_rng(8).normal(size=(8, N)), jnp.float32)

    def loss(alpha, x, w):  # linear in y: the cotangent is c, exactly, on every placement
        return jnp.sum(lj.lut_gemm(x, dataclasses.replace(w, alpha=alpha)) * c)

    with jax.set_mesh(mesh):
        got = jax.jit(jax.grad(loss))(ws.alpha, xs, ws)
    assert _spec(jax.typeof(got).sharding, 3) == _spec(ws.alpha.sharding, 3)
    assert rel_err(got, np.asarray(jax.grad(loss)(w.alpha, x, w), np.float64)) <= 1e-5


def test_two_dimensional_mesh_data_and_tensor_parallel():
    rng = np.random.default_rng(3)
    w, w64 = random_weight(rng, K, N, Q, G, True)
    x = jnp.asarray(rng.normal(size=(4, 2, K)), jnp.float32)
    mesh = jax.make_mesh((2, 4), ("dp", "tp"))
    ws = jax.tree.map(
        lambda a: jax.device_put(a, NamedSharding(mesh, P(*[None] * (a.ndim - 1), "tp"))), w
    )
    xs = jax.device_put(x, NamedSharding(mesh, P("dp")))
    out = NamedSharding(mesh, P("dp", None, "tp"))
    f = jax.jit(lj.lut_gemm, out_shardings=out)
    assert rel_err(f(xs, ws), reference(x, w64)) <= 1e-5
    assert sum(_collectives(f.lower(xs, ws).compile().as_text()).values()) == 0


def test_row_parallel_rejects_split_groups():
    rng = np.random.default_rng(4)
    w, _ = random_weight(rng, 384, 16, 2, 128, False)  # 3 groups cannot split over 2 devices
    mesh = jax.make_mesh((2,), ("x",), devices=jax.devices()[:2])
    # 12 words of sign bits split evenly over 2 devices, but that is 1.5 groups each.
    ws = lj.BCQWeight(
        jax.device_put(w.bits, NamedSharding(mesh, P("x"))), w.alpha, None, 384, 16, 2, 128
    )
    xs = jax.device_put(jnp.ones((2, 384)), NamedSharding(mesh, P(None, "x")))
    with pytest.raises(Exception, match="would split a quantization group"):
        jax.jit(lj.lut_gemm)(xs, ws)


@pytest.mark.parametrize("k,devices", [(96, 2), (320, 4)])
def test_row_parallel_rejects_split_sign_words_of_group_size_16(k, devices):
    """g = 16: K splits into whole sign words (pairs of groups). K = 96 has 6 groups in 3 words:
    the scales split evenly over 2 devices, but that is 1.5 words each."""
    rng = np.random.default_rng(14)
    w, _ = random_weight(rng, k, 16, 2, 16, True, uniform=True)
    mesh = _mesh(devices)
    ws = dataclasses.replace(
        w,
        alpha=jax.device_put(w.alpha, NamedSharding(mesh, P("x"))),
        offset=jax.device_put(w.offset, NamedSharding(mesh, P("x"))),
    )
    with pytest.raises(Exception, match=r"would split a quantization group or sign word.*words"):
        jax.jit(lj.lut_gemm)(jnp.ones((2, k)), ws)


@pytest.mark.parametrize("k,words", [(80, 3), (48, 2)])
def test_group_size_16_with_padded_k_shards_along_n_only(k, words):
    """K not a multiple of 32 (with K = 48, g = 16 the last group is all padding): N splits,
    K cannot (x's K is not a whole number of sign words), even over as many devices as words."""
    rng = np.random.default_rng(15)
    w, w64 = random_weight(rng, k, 64, 3, 16, True, uniform=True)
    x = jnp.asarray(rng.normal(size=(4, k)), jnp.float32)
    mesh = _mesh(4)
    f = jax.jit(lj.lut_gemm, out_shardings=NamedSharding(mesh, P(None, "x")))
    assert rel_err(f(x, _place(w, mesh, None, "x")), reference(x, w64)) <= 1e-5
    with pytest.raises(Exception, match="needs K to be a whole number of groups and of 32-bit"):
        jax.jit(lj.lut_gemm)(x, _place(w, _mesh(words), "x", None))


@pytest.mark.parametrize("form", list(FORMATS))
@pytest.mark.parametrize("placement", ["column", "row"])
def test_shard_map_forward_and_grad(placement, form):
    mesh, x, w, w64, xs, ws, _ = _setup(4, placement, seed=5, form=form)
    x_spec, k_axis, n_axis, out_spec = PLACEMENTS[placement]
    w_specs = dataclasses.replace(
        w, bits=P(k_axis, None, n_axis), alpha=P(k_axis, None, n_axis), offset=P(k_axis, n_axis)
    )

    @partial(jax.shard_map, mesh=mesh, in_specs=(x_spec, w_specs), out_specs=out_spec)
    def local(x, w):
        y = lj.lut_gemm(x, w)
        return jax.lax.psum(y, "x") if placement == "row" else y

    c = jnp.asarray(np.random.default_rng(6).normal(size=(8, N)), jnp.float32)
    assert rel_err(jax.jit(local)(xs, ws), reference(x, w64)) <= 1e-5
    got = jax.jit(jax.grad(lambda x: jnp.sum(local(x, ws) * c)))(xs)
    want = np.asarray(c, np.float64) @ w64.T
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize(
    "k,g,uniform",
    [(512, 32, False), (200, None, False), (100, 128, False), (100, 32, False), (32, 16, False),
     (20, 16, True), (100, 16, True), (200, None, True)],
)  # fmt: skip
@pytest.mark.parametrize("placement", ["column", "data"])
def test_sharded_one_word_and_single_group_weights(k, g, uniform, placement):
    """g = 32 (one word per group), a single group along K (per-column, or K <= g), and a
    single word of two 16-row groups (K <= 32, g = 16)."""
    rng = np.random.default_rng(7)
    w, w64 = random_weight(rng, k, N, Q, g, True, uniform=uniform)
    x = jnp.asarray(rng.normal(size=(8, k)), jnp.float32)
    mesh = jax.make_mesh((4,), ("x",), devices=jax.devices()[:4])
    x_spec, _, n_axis, out_spec = PLACEMENTS[placement]
    xs = jax.device_put(x, NamedSharding(mesh, x_spec))
    ws = jax.tree.map(
        lambda a: jax.device_put(a, NamedSharding(mesh, P(*[None] * (a.ndim - 1), n_axis))), w
    )
    y = jax.jit(lj.lut_gemm, out_shardings=NamedSharding(mesh, out_spec))(xs, ws)
    assert rel_err(y, reference(x, w64)) <= 1e-5


@pytest.mark.parametrize("g", [32, 16])
def test_row_parallel_with_one_word_groups(g):
    rng = np.random.default_rng(8)
    w, w64 = random_weight(rng, 256, N, Q, g, True)  # 8 words: one group each, or two of 16
    x = jnp.asarray(rng.normal(size=(8, 256)), jnp.float32)
    mesh = jax.make_mesh((4,), ("x",), devices=jax.devices()[:4])
    xs = jax.device_put(x, NamedSharding(mesh, P(None, "x")))
    ws = jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, P("x"))), w)
    f = jax.jit(lj.lut_gemm, out_shardings=NamedSharding(mesh, P()))
    assert rel_err(f(xs, ws), reference(x, w64)) <= 1e-5
    assert _collectives(f.lower(xs, ws).compile().as_text())["all-gather"] == 0


# ---- "cpu"-layout weights under sharding ----------------------------------------------------


def _mesh(devices):
    return jax.make_mesh((devices,), ("x",), devices=jax.devices()[:devices])


def _place(w, mesh, k_axis, n_axis):
    specs = fmt.BCQWeight(
        P(k_axis, None, n_axis),
        P(k_axis, None, n_axis),
        P(k_axis, n_axis),
        *w.shape,
        w.num_bits,
        w.group_size,
        w.layout,
    )
    return jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), w, specs)


@pytest.mark.parametrize("n", [64, 128])
def test_column_parallel_cpu_layout_matches_one_device(n):
    rng = np.random.default_rng(9)
    w, w64 = random_weight(rng, 256, n, 3, 64)
    x = jnp.asarray(rng.normal(size=(4, 256)), jnp.float32)
    mesh = _mesh(2)
    ws = _place(w.to_layout("cpu"), mesh, None, "x")
    f = jax.jit(lj.lut_gemm, out_shardings=NamedSharding(mesh, P(None, "x")))
    y = f(jax.device_put(x, NamedSharding(mesh, P())), ws)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(lj.lut_gemm(x, w.to_layout("cpu"))))
    assert rel_err(y, reference(x, w64)) <= 1e-5


def test_row_parallel_cpu_layout_any_n():
    """K splits do not cut column blocks: N = 100 (N % 32 = 4), K over 4 devices."""
    rng = np.random.default_rng(10)
    w, w64 = random_weight(rng, 256, 100, 3, 64)
    x = jnp.asarray(rng.normal(size=(4, 256)), jnp.float32)
    mesh = _mesh(4)
    ws = _place(w.to_layout("cpu"), mesh, "x", None)
    f = jax.jit(lj.lut_gemm, out_shardings=NamedSharding(mesh, P()))
    assert (
        rel_err(f(jax.device_put(x, NamedSharding(mesh, P(None, "x"))), ws), reference(x, w64))
        <= 1e-5
    )


@pytest.mark.parametrize("k_axis,n_axis", [(None, "x"), ("x", None)])
def test_to_layout_of_sharded_weights(k_axis, n_axis):
    # jax.make_mesh's axes are explicit: the conversion's reshapes of sharded dimensions must
    # still work, in and out of jit, and keep each array's sharding.
    w, _ = random_weight(np.random.default_rng(13), 256, 128, 3, 64)
    mesh = _mesh(2)
    assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
    ws = _place(w, mesh, k_axis, n_axis)
    want = fmt.convert_bits(np.asarray(w.bits), "canonical", "cpu")
    for convert in (lambda w: w.to_layout("cpu"), jax.jit(lambda w: lj.to_layout(w, "cpu"))):
        c = convert(ws)
        np.testing.assert_array_equal(np.asarray(c.bits), want)
        assert c.bits.sharding.spec == ws.bits.sharding.spec
        back = c.to_layout("canonical")
        np.testing.assert_array_equal(np.asarray(back.bits), np.asarray(w.bits))


@pytest.mark.parametrize("n,devices", [(96, 2), (64, 4), (100, 2)])
def test_column_split_cutting_blocks_raises(n, devices):
    w, _ = random_weight(np.random.default_rng(11), 128, n, 2, 64)
    mesh = _mesh(devices)
    ws = _place(w.to_layout("cpu"), mesh, None, "x")
    with pytest.raises(Exception, match=rf"layout='cpu' weight with N = {n} .*size {devices}"):
        jax.jit(lj.lut_gemm)(jnp.ones((2, 128)), ws)
    # the same split of the canonical weight is fine
    jax.jit(lj.lut_gemm)(jnp.ones((2, 128)), _place(w, mesh, None, "x")).block_until_ready()


@pytest.mark.parametrize("n,ok", [(128, True), (96, False)])
def test_shard_map_local_views(n, ok):
    rng = np.random.default_rng(12)
    w, w64 = random_weight(rng, 128, n, 2, 64)
    c = w.to_layout("cpu")
    x = jnp.asarray(rng.normal(size=(2, 128)), jnp.float32)
    mesh = _mesh(2)
    specs = fmt.BCQWeight(
        P(None, None, "x"), P(None, None, "x"), P(None, "x"), 128, n, 2, 64, "cpu"
    )

    @partial(jax.shard_map, mesh=mesh, in_specs=(P(), specs), out_specs=P(None, "x"))
    def local(x, w):
        return lj.lut_gemm(x, w)

    if ok:
        assert rel_err(jax.jit(local)(x, _place(c, mesh, None, "x")), reference(x, w64)) <= 1e-5
    else:
        with pytest.raises(ValueError, match=rf"layout='cpu' weight with N = {n} .*2 shards"):
            jax.jit(local)(x, _place(c, mesh, None, "x"))
