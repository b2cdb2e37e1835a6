"""Flax linen integration: LutDense, quantize_params, intercept_dense, LoRA.

Tolerance: a converted model is compared with the *same* model run on the dequantized dense
kernels (``dequantize_params``). With ``mode="exact"`` the only difference is float32
accumulation order inside ``lut_gemm`` vs XLA's dot: max |y - ref| <= 1e-5 * max |ref| (RTOL).
The library's default mode may be the CPU kernel's approximate ``"fast"`` mode (int8 lookup
tables, ~5e-3 of max |y|); it is checked against FAST_RTOL = 3e-2.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lutgemm_jax as lj
from lutgemm_jax.format import BCQWeight, bcq_leaves, to_layout
from lutgemm_jax.linen import (
    LutDense,
    dequantize_params,
    intercept_dense,
    merge_params,
    quantize_params,
    split_params,
)

RTOL = 1e-5
FAST_RTOL = 3e-2
FAST = dict(bits=3, group_size=32, method="greedy")  # one quantizer compile per kernel shape


def rel_err(y, ref) -> float:
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))


class MLP(nn.Module):
    hidden: int = 96
    out: int = 40

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(self.hidden)(x))
        x = nn.gelu(nn.Dense(self.hidden, use_bias=False)(x))
        return nn.Dense(self.out, name="head")(x)


class Block(nn.Module):
    """A pre-norm transformer block; its Dense layers are created in setup."""

    dim: int = 64
    heads: int = 4

    def setup(self):
        self.qkv = nn.Dense(3 * self.dim)
        self.proj = nn.Dense(self.dim)
        self.fc1 = nn.Dense(4 * self.dim)
        self.fc2 = nn.Dense(self.dim)
        self.ln1 = nn.LayerNorm()
        self.ln2 = nn.LayerNorm()

    def __call__(self, x):
        *lead, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
        split = lambda a: a.reshape(*lead, t, self.heads, d // self.heads)  # noqa: E731
        att = jnp.einsum("...qhd,...khd->...hqk", split(q), split(k)) / np.sqrt(d // self.heads)
        o = jnp.einsum("...hqk,...khd->...qhd", nn.softmax(att, axis=-1), split(v))
        x = x + self.proj(o.reshape(*lead, t, d))
        return x + self.fc2(nn.gelu(self.fc1(self.ln2(x))))


class ScanStack(nn.Module):
    """Three residual Dense layers under nn.scan (stacked [3, K, N] kernels)."""

    @nn.compact
    def __call__(self, x):
        class Layer(nn.Module):
            @nn.compact
            def __call__(self, h, _):
                return h + nn.tanh(nn.Dense(h.shape[-1])(h)), None

        scan = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        return scan()(x, None)[0]


def _init(model, shape, seed=0):
    """``(params, x)`` with random numpy values (no compiled initializers: fast)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    fill = lambda s: rng.normal(size=s.shape) / np.sqrt(s.shape[-2] if s.ndim > 1 else 4)  # noqa: E731
    return jax.tree.map(lambda s: fill(s).astype(s.dtype), abstract), x


@pytest.mark.parametrize(
    ("model", "shape", "kwargs"),
    [
        (MLP(), (5, 64), dict(bits=3, group_size=32, rounds=3)),
        (MLP(), (2, 3, 64), dict(bits=4, group_size=64, method="rtn")),
        (Block(), (2, 6, 64), dict(FAST, fit_offset=True)),
        (MLP(), (3, 64), dict(bits=4, group_size=16, method="rtn")),  # uniform, g = 16
        (Block(), (2, 3, 64), dict(bits=3, group_size=16, rounds=3)),
    ],
)
def test_intercepted_model_matches_dequantized(model, shape, kwargs):
    params, x = _init(model, shape)
    qparams = quantize_params(params, **kwargs)
    ref = jax.jit(model.apply)({"params": dequantize_params(qparams)}, x)
    with intercept_dense(mode="exact"):
        eager = model.apply({"params": qparams}, x)
        jitted = jax.jit(model.apply)({"params": qparams}, x)
        mapped = jax.jit(jax.vmap(lambda xi: model.apply({"params": qparams}, xi)))(x)
    for y in (eager, jitted, mapped):
        assert y.shape == ref.shape and y.dtype == ref.dtype
        assert rel_err(y, ref) <= RTOL
    # The quantized model is close to the original (3-4 bits: a few percent).
    assert rel_err(eager, jax.jit(model.apply)({"params": params}, x)) < 0.35


def test_intercept_inside_jitted_function_and_without_it():
    model = MLP()
    params, x = _init(model, (4, 64))
    qparams = quantize_params(params, **FAST)

    @jax.jit
    def forward(p, x):
        with intercept_dense(mode="exact"):
            return model.apply({"params": p}, x)

    ref = jax.jit(model.apply)({"params": dequantize_params(qparams)}, x)
    assert rel_err(forward(qparams, x), ref) <= RTOL
    # Dense params still run the ordinary way, inside or outside the context.
    with intercept_dense(mode="exact"):
        assert rel_err(model.apply({"params": params}, x), forward(params, x)) <= 1e-6
    # Outside the context, nn.Dense cannot consume a BCQWeight.
    with pytest.raises(Exception):  # noqa: B017 - flax/jax raise various types here
        model.apply({"params": qparams}, x)


def test_default_mode_is_close():
    model = MLP()
    params, x = _init(model, (4, 64))
    qparams = quantize_params(params, **FAST)
    ref = jax.jit(model.apply)({"params": dequantize_params(qparams)}, x)
    with intercept_dense():
        y = jax.jit(model.apply)({"params": qparams}, x)
    assert rel_err(y, ref) <= FAST_RTOL
    h = jnp.asarray(np.random.default_rng(2).normal(size=(2, 96)), jnp.float32)
    ys = {
        mode: LutDense(40, group_size=32, mode=mode).apply({"params": qparams["head"]}, h)
        for mode in ("fast", "exact")
    }
    assert rel_err(ys["fast"], ys["exact"]) <= FAST_RTOL


def test_intercept_under_nn_scan_with_stacked_kernels():
    model = ScanStack()
    params, x = _init(model, (3, 64))
    kernel = params["ScanLayer_0"]["Dense_0"]["kernel"]
    assert kernel.shape == (3, 64, 64)
    assert quantize_params(params, **FAST) == params  # 3-D: skipped by default
    qparams = quantize_params(params, **FAST, stacked=True)
    w = qparams["ScanLayer_0"]["Dense_0"]["kernel"]
    assert isinstance(w, BCQWeight) and w.batch_shape == (3,)
    ref = jax.jit(model.apply)({"params": dequantize_params(qparams)}, x)
    with intercept_dense(mode="exact"):
        y = jax.jit(model.apply)({"params": qparams}, x)
    assert rel_err(y, ref) <= RTOL


def test_include_exclude_and_summary():
    model = MLP()
    params, x = _init(model, (2, 64))
    q, summary = quantize_params(
        params, bits=2, group_size=32, method="greedy", exclude=r"head", return_summary=True
    )
    assert isinstance(q["Dense_0"]["kernel"], BCQWeight)
    assert isinstance(q["Dense_1"]["kernel"], BCQWeight)
    assert q["head"]["kernel"] is params["head"]["kernel"]
    assert q["Dense_0"]["bias"] is params["Dense_0"]["bias"]
    assert summary.layers_converted == 2
    assert [s.path for s in summary.layers] == ["Dense_0/kernel", "Dense_1/kernel"]
    dense_bytes = 4 * (64 * 96 + 96 * 96)
    assert summary.bytes_before == dense_bytes
    # q=2, g=32, float32 alpha: 2 bits + 2*32/32 bits = 4 bits per weight -> 8x.
    assert summary.compression_ratio == pytest.approx(8.0)
    assert summary.total_bytes_before > summary.total_bytes_after
    assert "Dense_0/kernel" in str(summary) and "8.00x" in str(summary)
    only = quantize_params(params, **FAST, include=lambda p: p.startswith("Dense_1"))
    assert isinstance(only["Dense_1"]["kernel"], BCQWeight)
    assert not isinstance(only["Dense_0"]["kernel"], BCQWeight)
    # A FrozenDict and a {'params': ...} wrapper keep their structure.
    frozen = quantize_params(nn.FrozenDict({"params": params}), **FAST)
    assert isinstance(frozen, nn.FrozenDict)
    assert isinstance(frozen["params"]["head"]["kernel"], BCQWeight)


def test_progress_bar(capsys):
    params, _ = _init(MLP(), (2, 64))
    quantize_params(params, **FAST, progress=True)
    assert "3/3" in capsys.readouterr().err


def test_lutdense_is_a_drop_in_for_dense():
    dense = nn.Dense(48)
    params, x = _init(dense, (2, 3, 5, 64))
    qparams = quantize_params(params, **FAST)
    lut = LutDense(48, bits=3, group_size=32, init_method="zeros", mode="exact")
    init = lut.init(jax.random.key(0), x)["params"]
    assert jax.tree.structure(init) == jax.tree.structure(qparams)
    y = lut.apply({"params": qparams}, x)
    ref = dense.apply({"params": dequantize_params(qparams)}, x)
    assert y.shape == (2, 3, 5, 48) and rel_err(y, ref) <= RTOL


@pytest.mark.parametrize(
    ("dtype", "param_dtype", "x_dtype", "out_dtype"),
    [
        (None, jnp.float32, jnp.float32, jnp.float32),
        (None, jnp.float32, jnp.bfloat16, jnp.float32),
        (None, jnp.bfloat16, jnp.bfloat16, jnp.bfloat16),
        (jnp.bfloat16, jnp.float32, jnp.float32, jnp.bfloat16),
        (jnp.float16, jnp.float32, jnp.float32, jnp.float16),
    ],
)
def test_lutdense_dtypes_follow_dense(dtype, param_dtype, x_dtype, out_dtype):
    x = jnp.ones((3, 64), x_dtype)
    dense = nn.Dense(32, dtype=dtype, param_dtype=param_dtype)
    lut = LutDense(32, dtype=dtype, param_dtype=param_dtype, group_size=64)
    v = lut.init(jax.random.key(0), x)
    assert v["params"]["kernel"].dtype == jnp.dtype(param_dtype)
    y = lut.apply(v, x)
    assert y.dtype == dense.apply(dense.init(jax.random.key(0), x), x).dtype == out_dtype


def test_lutdense_init_options():
    x = jnp.ones((2, 40))
    v = LutDense(16, use_bias=False, bits=2, group_size=None, has_offset=True).init(
        jax.random.key(0), x
    )
    w = v["params"]["kernel"]
    assert set(v["params"]) == {"kernel"}
    assert (w.in_features, w.out_features, w.num_bits, w.group_size) == (40, 16, 2, 64)
    assert w.has_offset
    z = LutDense(16, init_method="zeros").init(jax.random.key(0), x)["params"]["kernel"]
    assert not np.any(np.asarray(z.alpha)) and not np.any(np.asarray(z.bits))
    rtn = LutDense(16, init_method="rtn", has_offset=True, bits=4).init(jax.random.key(0), x)
    assert rtn["params"]["kernel"].has_offset
    with pytest.raises(ValueError, match="has_offset=True"):
        LutDense(16, init_method="rtn").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="init_method"):
        LutDense(16, init_method="nope").init(jax.random.key(0), x)


def test_group_size_16_and_uniform_rtn_layers():
    """g = 16 with ragged K (72) and rtn's uniform scales: converted params, a zeros-initialised
    LutDense of the same config (same tree and shapes, for loading), a fitted init, and the
    summary's bits per weight."""
    dense = nn.Dense(48)
    params, x = _init(dense, (2, 5, 72))
    config = lj.BCQConfig(bits=4, group_size=16, method="rtn")
    qparams, summary = quantize_params(params, config, return_summary=True)
    w = qparams["kernel"]
    assert w.uniform and w.alpha.shape == (6, 1, 48) and w.offset.shape == (6, 48)
    lut = LutDense(48, config=config, init_method="zeros", mode="exact")
    init = lut.init(jax.random.key(0), x)["params"]
    shapes = lambda t: jax.tree.map(jnp.shape, t)  # noqa: E731
    assert shapes(init) == shapes(qparams)
    y = lut.apply({"params": qparams}, x)
    assert rel_err(y, dense.apply({"params": dequantize_params(qparams)}, x)) <= RTOL
    fitted = LutDense(48, config=config).init(jax.random.key(1), x)["params"]["kernel"]
    assert fitted.uniform and (fitted.group_size, fitted.num_groups) == (16, 6)
    per_plane = LutDense(48, group_size=16, init_method="zeros").init(jax.random.key(0), x)
    assert per_plane["params"]["kernel"].alpha.shape == (6, 3, 48)
    layer = summary.layers[0]
    # 4 sign bits, one float32 scale and offset per 16 rows; K padded from 72 to 96
    assert layer.uniform and layer.bits_per_weight == pytest.approx((4 + 64 / 16) * 96 / 72)
    assert layer.bits_per_weight == pytest.approx(w.bits_per_weight())
    assert "uniform" in str(summary) and f"{layer.bits_per_weight:.2f}" in str(summary)
    with pytest.raises(ValueError, match="method='rtn' always has an offset"):
        LutDense(48, config=config, init_method="zeros", has_offset=False).init(
            jax.random.key(0), x
        )


class LoraMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(
            LutDense(64, bits=3, group_size=32, lora_rank=4, lora_alpha=8.0, mode="exact")(x)
        )
        return LutDense(8, bits=3, group_size=32, lora_rank=4, lora_alpha=8.0, mode="exact")(x)


def test_lora_training_lowers_loss_and_keeps_codes():
    model = LoraMLP()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 32)), jnp.float32)
    target = jnp.sin(x[:, :8] * 2.0)
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]
    # lora_b starts at zero: the adapter is the identity at init.
    base = dequantize_params(
        {k: {n: v for n, v in p.items() if "lora" not in n} for k, p in params.items()}
    )
    ref = jax.jit(nn.Sequential([nn.Dense(64), nn.relu, nn.Dense(8)]).apply)(
        {"params": {"layers_0": base["LutDense_0"], "layers_2": base["LutDense_1"]}}, x
    )
    assert rel_err(jax.jit(model.apply)({"params": params}, x), ref) <= RTOL

    lora, frozen = split_params(params)
    assert set(lora["LutDense_0"]) == {"lora_a", "lora_b"}
    tx = optax.adam(3e-2)
    opt_state = tx.init(lora)

    def loss_fn(lora):
        y = model.apply({"params": merge_params(lora, frozen)}, x)
        return jnp.mean((y - target) ** 2)

    @jax.jit
    def step(lora, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(lora)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(lora, updates), opt_state, loss

    losses = []
    for _ in range(15):
        lora, opt_state, loss = step(lora, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]
    trained = merge_params(lora, frozen)
    for name in ("LutDense_0", "LutDense_1"):
        before, after = params[name]["kernel"], trained[name]["kernel"]
        for field in ("bits", "alpha"):
            np.testing.assert_array_equal(getattr(after, field), getattr(before, field))
        assert not np.allclose(trained[name]["lora_b"], 0)


def test_split_merge_round_trip():
    params, _ = _init(MLP(), (2, 64))
    a, b = split_params(params, r"bias")
    assert all(set(v) <= {"bias"} for v in a.values())
    assert merge_params(a, b) == params
    with pytest.raises(ValueError, match="appears twice"):
        merge_params(params, params)


# ---- sign-word layouts -----------------------------------------------------------------------


def _forward(model, mode):
    @jax.jit
    def forward(p, x):
        with intercept_dense(mode=mode):
            return model.apply({"params": p}, x)

    return forward


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_cpu_layout_gives_the_same_outputs(mode):
    """layout="cpu" reorders the sign bytes of 32-column blocks (the head's N = 40 has an
    8-column canonical tail): the same codes, and the same outputs to the bit."""
    model = MLP()
    params, x = _init(model, (3, 64))
    canonical = quantize_params(params, **FAST, layout="canonical")
    cpu = quantize_params(params, **FAST, layout="cpu")
    for name in ("Dense_0", "Dense_1", "head"):
        w, c = canonical[name]["kernel"], cpu[name]["kernel"]
        assert (w.layout, c.layout) == ("canonical", "cpu")
        np.testing.assert_array_equal(c.to_layout("canonical").bits, w.bits)
        np.testing.assert_array_equal(c.alpha, w.alpha)
    assert not np.array_equal(cpu["Dense_0"]["kernel"].bits, canonical["Dense_0"]["kernel"].bits)
    forward = _forward(model, mode)
    np.testing.assert_array_equal(forward(cpu, x), forward(canonical, x))
    np.testing.assert_array_equal(forward(to_layout(canonical, "cpu"), x), forward(canonical, x))


def test_cpu_layout_of_stacked_kernels_and_lutdense_init():
    model = ScanStack()
    params, x = _init(model, (3, 64))
    qparams = quantize_params(params, **FAST, stacked=True, layout="cpu")
    w = qparams["ScanLayer_0"]["Dense_0"]["kernel"]
    assert w.layout == "cpu" and w.batch_shape == (3,)
    ref = _forward(model, "exact")(to_layout(qparams, "canonical"), x)
    np.testing.assert_array_equal(_forward(model, "exact")(qparams, x), ref)
    x = jnp.ones((2, 64))
    for method in ("greedy", "zeros"):
        lut = LutDense(48, group_size=32, init_method=method, layout="cpu", mode="exact")
        v = lut.init(jax.random.key(0), x)
        assert v["params"]["kernel"].layout == "cpu"
        plain = LutDense(48, group_size=32, init_method=method, mode="exact", layout="canonical")
        canonical = plain.init(jax.random.key(0), x)
        assert canonical["params"]["kernel"].layout == "canonical"
        np.testing.assert_array_equal(lut.apply(v, x), plain.apply(canonical, x))


def test_bad_layout_is_refused_naming_the_argument():
    params, x = _init(MLP(), (2, 64))
    with pytest.raises(ValueError, match=r"quantize_params: layout must be one of .*'gpu'"):
        quantize_params(params, **FAST, layout="gpu")
    with pytest.raises(ValueError, match="layout must be one of"):
        LutDense(16, layout="CPU").init(jax.random.key(0), x)


def test_cpu_layout_keeps_partitioning_names_and_device_sharding():
    init = nn.with_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
    annotated = nn.Dense(64, kernel_init=init)
    params = annotated.init(jax.random.key(1), jnp.ones((1, 128)))["params"]
    w = quantize_params(params, **FAST, layout="cpu")["kernel"]
    assert w.bits.names == w.alpha.names == ("embed", None, "mlp")
    assert nn.get_partition_spec({"kernel": w})["kernel"].bits == P("embed", None, "mlp")
    assert nn.meta.unbox(w).layout == "cpu"

    # A kernel placed over 2 devices along N (32 columns, one layout block, per device): the
    # packed arrays stay placed like it.
    mesh = jax.make_mesh((2,), ("model",), devices=jax.devices()[:2])
    model = nn.Dense(64)
    params, x = _init(model, (2, 128))
    sharding = NamedSharding(mesh, P(None, "model"))
    placed = dict(params, kernel=jax.device_put(params["kernel"], sharding))
    cpu = quantize_params(placed, **FAST, layout="cpu")
    packed = NamedSharding(mesh, P(None, None, "model"))
    assert cpu["kernel"].layout == "cpu"
    assert cpu["kernel"].bits.sharding.is_equivalent_to(packed, 3)
    assert cpu["kernel"].alpha.sharding.is_equivalent_to(packed, 3)
    want = _forward(model, "exact")(quantize_params(params, **FAST), x)
    np.testing.assert_array_equal(_forward(model, "exact")(cpu, x), want)


# ---- sign-word layouts of params -------------------------------------------------------------


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


def test_auto_layout_follows_the_backend_unless_partitioned():
    """The default layout ("auto") is "cpu" on a CPU backend, "canonical" elsewhere; kernels
    annotated with partitioning names or placed over several devices stay canonical."""
    native = "cpu" if jax.default_backend() == "cpu" else "canonical"
    params, x = _init(MLP(), (2, 64))
    assert {w.layout for w in bcq_leaves(quantize_params(params, **FAST))} == {native}
    lut = LutDense(48, group_size=32, init_method="greedy")
    assert lut.init(jax.random.key(0), x)["params"]["kernel"].layout == native
    init = nn.with_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
    boxed = LutDense(64, group_size=32, kernel_init=init).init(jax.random.key(0), x)
    assert nn.meta.unbox(boxed["params"]["kernel"]).layout == "canonical"
    annotated = nn.Dense(64, kernel_init=init).init(jax.random.key(1), x)["params"]
    assert nn.meta.unbox(quantize_params(annotated, **FAST)["kernel"]).layout == "canonical"
    mesh = jax.make_mesh((2,), ("model",), devices=jax.devices()[:2])
    placed = dict(
        params["head"],
        kernel=jax.device_put(params["head"]["kernel"], NamedSharding(mesh, P(None, "model"))),
    )
    assert quantize_params(placed, **FAST)["kernel"].layout == "canonical"
