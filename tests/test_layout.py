"""Sign-word layouts of ``BCQWeight.bits`` ("canonical", "cpu"): the byte permutation against an
independent numpy transcription of its definition, and every consumer (dequantize, the pure-jnp
path, the native CPU kernel, grad, vmap, jax.export, nnx/linen trees, sharding, the CUDA
lowering's operands) giving the same results for both layouts."""

import dataclasses
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bcq_testing import random_weight, reference, rel_err
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lutgemm_jax as lj
from lutgemm_jax import format as fmt
from lutgemm_jax import ops
from lutgemm_jax.format import LAYOUTS
from lutgemm_jax.nnx import LutLinear

WIDTHS = [1, 31, 32, 33, 64, 100, 4096 + 17]


def cpu_layout_np(bits: np.ndarray) -> np.ndarray:
    """The "cpu" layout of canonical ``bits [..., KW, q, N]``, from its definition (the byte
    index of each byte, as in bcq_format.h): with N32 = N - N % 32, memory holds first, for
    every block b, word kw and plane i (b slowest), the block's 128 bytes byte-major, byte j of
    column 32*b + c at byte 32*j + c; then the words of the last N % 32 columns in canonical
    order [KW][q][N % 32]."""
    bits = np.ascontiguousarray(bits, np.dtype("<u4"))
    *lead, kw, q, n = bits.shape
    n32, tail = n - n % 32, n % 32
    w, i, col, j = np.meshgrid(
        np.arange(kw), np.arange(q), np.arange(n), np.arange(4), indexing="ij"
    )  # [KW, q, N, 4]: the canonical bytes, byte j of word (w, i, col)
    block = ((col // 32) * kw + w) * q + i
    in_blocks = block * 128 + 32 * j + col % 32
    in_tail = (kw * q * n32 + (w * q + i) * tail + (col - n32)) * 4 + j
    dest = np.where(col < n32, in_blocks, in_tail).reshape(-1)
    assert np.array_equal(np.sort(dest), np.arange(dest.size))  # a permutation of the bytes
    src = bits.view(np.uint8).reshape(*lead, -1)
    out = np.empty_like(src)
    out[..., dest] = src
    return out.view("<u4").reshape(bits.shape)


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
    model = LutLinear(64, 40, bits=3, group_size=32, rngs=nnx.Rngs(0))
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


SPLIT_ERROR = (
    r"a layout='cpu' BCQWeight \(K = {k}, N = {n}\) cannot be split along K or N, but "
    r"{detail}.*to_layout\(w, 'canonical'\) before sharding it, or keep layout='cpu' weights "
    r"replicated"
)


def _split_error(k, n, detail=".*"):
    return SPLIT_ERROR.format(k=k, n=n, detail=detail)


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
@pytest.mark.parametrize("q,rows", [(1, 4), (3, 8)])
def test_data_parallel_cpu_layout_matches_one_device(axis_type, q, rows):
    """x's batch split over 4 devices, the cpu-layout weight replicated: the result equals one
    device's (q = 1, 1 row per device: the LUT path on both; q = 3, 8 rows: the dense path on
    one device, the LUT path per device), with no collective."""
    rng = np.random.default_rng(9)
    w, w64 = random_weight(rng, 256, 100, q, 64, True)  # N % 32 = 4: blocks and a tail
    c = w.to_layout("cpu")
    x = jnp.asarray(rng.normal(size=(rows, 256)), jnp.float32)
    mesh = jax.make_mesh(
        (4,), ("x",), devices=jax.devices()[:4], axis_types=(getattr(AxisType, axis_type),)
    )
    ws = _place(c, mesh, None, None)
    xs = jax.device_put(x, NamedSharding(mesh, P("x")))
    f = jax.jit(lj.lut_gemm, out_shardings=NamedSharding(mesh, P("x")))
    y = f(xs, ws)
    one = lj.lut_gemm(x, c)
    crossover = ops._cpu_crossover("exact", q)
    if (rows >= crossover) == (rows // 4 >= crossover):  # the same kernel path: the same bits
        np.testing.assert_array_equal(np.asarray(y), np.asarray(one))
    assert rel_err(y, np.asarray(one, np.float64)) <= 1e-6
    assert rel_err(y, reference(x, w64)) <= 1e-5
    hlo = f.lower(xs, ws).compile().as_text()
    assert not re.findall(r"= \S+ (all-gather|all-reduce|collective-permute|all-to-all)", hlo)
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(lj.lut_gemm(x, w) ** 2)))
    assert rel_err(grad(xs, ws), np.asarray(grad(x, c), np.float64)) <= 1e-5


def test_cpu_layout_with_k_split_activations_gathers_x():
    """x arrives split along K (as after a column-parallel canonical layer) and the cpu-layout
    weight is replicated: x is gathered, the weight stays whole (Auto axes: propagation)."""
    rng = np.random.default_rng(10)
    w, w64 = random_weight(rng, 256, 96, 3, 64, True)
    x = jnp.asarray(rng.normal(size=(4, 256)), jnp.float32)
    mesh = jax.make_mesh((4,), ("x",), devices=jax.devices()[:4], axis_types=(AxisType.Auto,))
    xs = jax.device_put(x, NamedSharding(mesh, P(None, "x")))

    @jax.jit
    def f(x, w):  # alpha computed in the program: its sharding is propagated, not given
        w = dataclasses.replace(w, alpha=w.alpha * 1.0)
        return jax.lax.with_sharding_constraint(lj.lut_gemm(x, w), NamedSharding(mesh, P()))

    assert rel_err(f(xs, _place(w.to_layout("cpu"), mesh, None, None)), reference(x, w64)) <= 1e-5


def _sharding_rule(text: str) -> tuple[list[set[str]], set[str], set[str]]:
    """(factors of each operand, of the result, that need replication) of the Shardy rule of
    the one custom-partitioned call in lowered StableHLO ``text``."""
    rule = re.search(r"op_sharding_rule<\((.*?)\)->\((.*?)\) \{[^}]*\}([^>]*)>", text)
    operands = [set(re.findall(r"\w", dims)) for dims in re.findall(r"\[(.*?)\]", rule.group(1))]
    replicated = re.search(r"need_replication=\{(.*?)\}", rule.group(3))
    return (
        operands,
        set(re.findall(r"\w", rule.group(2))),
        set(re.findall(r"\w", replicated.group(1))) if replicated else set(),
    )


def test_sharding_rule_gives_cpu_bits_their_own_replicated_factors():
    """So that no sharding of x, alpha or offset is ever propagated into opaque bits."""
    w, _ = random_weight(np.random.default_rng(11), 256, 96, 3, 64, True)
    mesh = _mesh(4)
    xs = jax.device_put(jnp.ones((8, 256)), NamedSharding(mesh, P("x")))
    for layout in LAYOUTS:
        ws = _place(w.to_layout(layout), mesh, None, None)
        operands, result, replicated = _sharding_rule(jax.jit(lj.lut_gemm).lower(xs, ws).as_text())
        bits = operands[1]  # [Kp/32, q, N]
        others = set().union(operands[0], *operands[2:], result)
        if layout == "cpu":
            assert bits <= replicated and not bits & others
        else:  # K (groups) and N shared with x, alpha, offset and the result
            assert len(bits & others) == 3 and not bits & replicated


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
@pytest.mark.parametrize(
    "k_axis,n_axis,arrays",
    [
        (None, "x", ("bits", "alpha", "offset")),
        ("x", None, ("bits", "alpha", "offset")),
        (None, "x", ("bits",)),
        (None, "x", ("alpha",)),
        ("x", None, ("offset",)),
    ],
)
def test_k_or_n_split_of_a_cpu_layout_weight_raises(axis_type, k_axis, n_axis, arrays):
    """Any K or N split (N = 128: whole 32-column blocks per shard, once allowed) is refused,
    naming the layout, the mesh axes, the shard shape and the fix; the canonical weight splits."""
    w, _ = random_weight(np.random.default_rng(12), 256, 128, 2, 64, True)
    mesh = jax.make_mesh(
        (2,), ("x",), devices=jax.devices()[:2], axis_types=(getattr(AxisType, axis_type),)
    )
    c = w.to_layout("cpu")
    split = _place(c, mesh, k_axis, n_axis)
    ws = dataclasses.replace(
        _place(c, mesh, None, None), **{name: getattr(split, name) for name in arrays}
    )
    shard = re.escape("[128, 128]" if k_axis else "[256, 64]")
    axes = rf"mesh axes {k_axis!r} \(K\) and {n_axis!r} \(N\) would give shards of {shard}"
    x = jnp.ones((2, 256))
    xs = jax.device_put(x, NamedSharding(mesh, P(None, k_axis)))
    if axis_type == "Explicit":  # the shardings are in the types: refused while tracing
        with pytest.raises(ValueError, match="^lut_gemm: " + _split_error(256, 128, axes)):
            jax.jit(lj.lut_gemm)(xs, ws)
    else:  # known only to XLA's partitioner: it fails with the same message
        with pytest.raises(Exception, match="lut_gemm: " + _split_error(256, 128, axes)):
            jax.jit(lj.lut_gemm)(xs, ws)
    with pytest.raises(ValueError, match="^lut_gemm: " + _split_error(256, 128, axes)):
        lj.lut_gemm(x, ws)  # placed arrays: refused before tracing
    canonical = _place(w, mesh, k_axis, n_axis)
    jax.jit(lj.lut_gemm)(xs, canonical).block_until_ready()


@pytest.mark.parametrize("split", [False, True])
def test_shard_map_takes_cpu_layout_weights_whole(split):
    rng = np.random.default_rng(13)
    w, w64 = random_weight(rng, 128, 96, 2, 64)
    c = w.to_layout("cpu")
    x = jnp.asarray(rng.normal(size=(4, 128)), jnp.float32)
    # Auto axes: with Explicit ones, shard_map refuses to pcast the invariant weights to x's
    # varying axes (a JAX limitation, canonical weights alike).
    mesh = jax.make_mesh((2,), ("x",), devices=jax.devices()[:2], axis_types=(AxisType.Auto,))
    n_axis = "x" if split else None
    spec = P(None, None, n_axis)
    specs = fmt.BCQWeight(spec, spec, P(None, n_axis), 128, 96, 2, 64, "cpu")

    @partial(jax.shard_map, mesh=mesh, in_specs=(P("x"), specs), out_specs=P("x", n_axis))
    def local(x, w):
        return lj.lut_gemm(x, w)

    xs = jax.device_put(x, NamedSharding(mesh, P("x")))
    if not split:  # data parallel: each device has its rows and the whole weight
        assert rel_err(jax.jit(local)(xs, _place(c, mesh, None, None)), reference(x, w64)) <= 1e-5
        return
    got = re.escape(
        "it got shards bits (4, 2, 48) of (4, 2, 96), alpha (2, 2, 48) of (2, 2, 96), "
        "offset (2, 48) of (2, 96) (in jax.shard_map, pass it with the spec P())"
    )
    with pytest.raises(ValueError, match="^lut_gemm: " + _split_error(128, 96, got)):
        jax.jit(local)(xs, _place(c, mesh, None, "x"))


def test_placement_helpers_refuse_splitting_cpu_layout_weights():
    """to_layout of a split weight, and shard_like of a cpu-layout weight, name themselves and
    the mesh axes; replicated weights convert and place (keeping their placement)."""
    w, _ = random_weight(np.random.default_rng(14), 128, 64, 2, 32, True)
    mesh = _mesh(2)
    with pytest.raises(ValueError, match=r"^to_layout: " + _split_error(128, 64, ".*'x' \\(N\\)")):
        _place(w, mesh, None, "x").to_layout("cpu")
    tree = {"layer": {"kernel": _place(w, mesh, "x", None)}}
    with pytest.raises(ValueError, match=r"^to_layout: \['layer'\]\['kernel'\]: .*'x' \(K\)"):
        lj.to_layout(tree, "cpu")
    replicated = lj.to_layout(_place(w, mesh, None, None), "cpu")
    np.testing.assert_array_equal(np.asarray(replicated.bits), cpu_layout_np(np.asarray(w.bits)))
    c = w.to_layout("cpu")
    with pytest.raises(ValueError, match=r"^shard_like: " + _split_error(128, 64)):
        lj.sharding.shard_like(c, NamedSharding(mesh, P(None, "x")))
    placed = lj.sharding.shard_like(c, NamedSharding(mesh, P()))
    assert placed.layout == "cpu" and placed.bits.sharding.is_fully_replicated
    assert len(placed.bits.sharding.device_set) == 2
    # Splitting it back to canonical is fine: a canonical weight may be split.
    back = lj.sharding.shard_like(placed.to_layout("canonical"), NamedSharding(mesh, P(None, "x")))
    np.testing.assert_array_equal(np.asarray(back.bits), np.asarray(w.bits))


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
