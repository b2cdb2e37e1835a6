"""Sign-word layouts of ``BCQWeight.bits`` ("canonical", "cpu"): the byte permutation against an
independent numpy transcription of its definition, and every consumer (dequantize, the pure-jnp
path, the native CPU kernel, grad, vmap, jax.export, nnx/linen trees, sharding, the CUDA
lowering's operands) giving the same results for both layouts."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bcq_testing import random_weight, reference, rel_err
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lutgemm_jax as lj
from lutgemm_jax import format as fmt
from lutgemm_jax import ops
from lutgemm_jax.nnx import LutLinear

WIDTHS = [1, 31, 32, 33, 64, 100, 4096 + 17]


def cpu_layout_np(bits: np.ndarray) -> np.ndarray:
    """The "cpu" layout of canonical ``bits [..., Kp/32, q, N]``, from its definition: in every
    row, each block of 32 columns stores its ``[32 columns][4 bytes]`` little-endian bytes as
    ``[4 bytes][32 columns]``; the last N % 32 columns stay canonical."""
    bits = np.ascontiguousarray(bits, np.dtype("<u4"))
    *lead, n = bits.shape
    n32 = n - n % 32
    blocks = bits[..., :n32].view(np.uint8).reshape(*lead, n32 // 32, 32, 4)
    moved = np.ascontiguousarray(blocks.swapaxes(-1, -2)).reshape(*lead, n32 * 4).view("<u4")
    return np.concatenate([moved, bits[..., n32:]], axis=-1)


def random_bits(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**32, shape, dtype=np.uint32)


def _offset(w):
    return w.offset if w.has_offset else jnp.zeros((0, w.out_features), w.alpha.dtype)


def _reference_path(x, w):
    return ops.lut_gemm_reference(x, w.bits, w.alpha, _offset(w), **ops._params(w))


# ---- the permutation -----------------------------------------------------------------------


@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("q", [1, 2, 3, 4])
@pytest.mark.parametrize("lead", [(), (2, 3)])
def test_conversion_matches_definition_and_round_trips(n, q, lead):
    bits = random_bits(n * 10 + q, (*lead, 2, q, n))
    want = cpu_layout_np(bits)
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
    np.testing.assert_array_equal(np.asarray(got), cpu_layout_np(bits))
    np.testing.assert_array_equal(np.asarray(fmt.convert_bits(got, "cpu", "canonical")), bits)


def test_to_layout_method_and_validation():
    w, _ = random_weight(np.random.default_rng(0), 100, 70, 3, 32)
    assert w.layout == "canonical" and w.to_layout("canonical") is w
    c = jax.jit(lambda w: w.to_layout("cpu"))(w)
    assert c.layout == "cpu" and c.alpha is not None
    np.testing.assert_array_equal(np.asarray(c.bits), cpu_layout_np(np.asarray(w.bits)))
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


# ---- consumers of the bits: results equal for both layouts ---------------------------------


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


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("n", [1, 31, 33, 64, 100, 257])
@pytest.mark.parametrize("q,rows", [(1, (1,)), (3, (1,)), (3, (2, 3)), (3, (16,)), (5, (64,))])
def test_native_kernel_equal_for_both_layouts(mode, n, q, rows):
    """Through lut_gemm (LUT path at small M, dense path at M >= the crossover)."""
    rng = np.random.default_rng(n * 8 + q)
    w, w64 = random_weight(rng, 200, n, q, 64)
    x = jnp.asarray(rng.normal(size=(*rows, 200)), jnp.float32)
    f = jax.jit(partial(lj.lut_gemm, mode=mode))
    y_canonical, y_cpu = f(x, w), f(x, w.to_layout("cpu"))
    ref = reference(x, w64)
    tol = 1e-5 if mode == "exact" else 2e-2  # fast: int8 tables, about 1e-2 of max |y|
    assert rel_err(y_canonical, ref) <= tol and rel_err(y_cpu, ref) <= tol
    assert rel_err(y_cpu, np.asarray(y_canonical, np.float64)) <= 1e-6


def test_cpu_lowering_passes_the_layout_code():
    w, _ = random_weight(np.random.default_rng(3), 100, 70, 3, 32)
    x = jnp.ones((2, 100))
    for layout, code in [("canonical", 0), ("cpu", 1)]:
        text = jax.jit(lj.lut_gemm).lower(x, w.to_layout(layout)).as_text()
        call = next(ln for ln in text.splitlines() if "@lutgemm_cpu(" in ln)
        assert f"layout = {code} : i64" in call


@pytest.mark.parametrize("has_offset", [False, True])
def test_grads_equal_for_both_layouts(has_offset):
    rng = np.random.default_rng(4)
    w, _ = random_weight(rng, 150, 45, 3, 64, has_offset)
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


def test_export_reads_metadata_from_before_layouts():
    assert fmt._deserialize_meta(b"[64, 48, 2, 32]") == (64, 48, 2, 32, "canonical")
    meta = (64, 48, 2, 32, "cpu")
    assert fmt._deserialize_meta(fmt._serialize_meta(meta)) == meta


# ---- Flax trees ----------------------------------------------------------------------------


def test_nnx_update_with_to_layout_round_trips():
    model = LutLinear(64, 40, bits=3, group_size=32, layout="canonical", rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 64)), jnp.float32)
    bits, y = np.asarray(model.kernel.get_value().bits), model(x)
    nnx.update(model, lj.to_layout(nnx.state(model), "cpu"))
    assert isinstance(model.kernel, lj.nnx.QuantizedWeight)
    assert model.kernel.get_value().layout == "cpu"
    assert rel_err(model(x), np.asarray(y, np.float64)) <= 1e-6
    nnx.update(model, lj.to_layout(nnx.state(model), "canonical"))
    assert model.kernel.get_value().layout == "canonical"
    np.testing.assert_array_equal(np.asarray(model.kernel.get_value().bits), bits)


def test_linen_params_with_to_layout():
    import flax.linen as nn

    from lutgemm_jax.linen import intercept_dense, quantize_params

    model = nn.Sequential([nn.Dense(40), nn.relu, nn.Dense(33)])
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 64)), jnp.float32)
    params = quantize_params(model.init(jax.random.key(0), x)["params"], bits=3, progress=False)

    @jax.jit
    def forward(p, x):
        with intercept_dense():
            return model.apply({"params": p}, x)

    cpu = lj.to_layout(params, "cpu")
    leaves = jax.tree.leaves(cpu, is_leaf=lambda v: isinstance(v, lj.BCQWeight))
    assert {w.layout for w in leaves if isinstance(w, lj.BCQWeight)} == {"cpu"}
    want = np.asarray(forward(params, x), np.float64)
    assert rel_err(forward(cpu, x), want) <= 1e-6


# ---- sharding ------------------------------------------------------------------------------


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


# ---- CUDA lowering: the handlers receive canonical bits, and no layout attribute -----------


@pytest.mark.parametrize("path", [ops._cuda_lut, ops._cuda_dequant_dot])
def test_cuda_lowering_functions_pass_canonical_bits(path, monkeypatch):
    w, _ = random_weight(np.random.default_rng(13), 100, 70, 3, 32)
    seen = {}

    def fake_ffi_call(target, result_shapes):
        def call(*operands, **attributes):
            seen.update(operands=operands, attributes=attributes)
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), result_shapes)

        return call

    monkeypatch.setattr(jax.ffi, "ffi_call", fake_ffi_call)
    c = w.to_layout("cpu")
    path(jnp.ones((2, 100)), c.bits, c.alpha, _offset(c), **ops._params(c), mode="exact")
    bits = next(a for a in seen["operands"] if a.dtype == jnp.uint32)
    np.testing.assert_array_equal(np.asarray(bits), np.asarray(w.bits))
    assert set(seen["attributes"]) == {"in_features", "out_features", "num_bits", "group_size"}
