"""Flax NNX integration: LutLinear, QuantizedWeight, quantize_model, LoRA with nnx.Optimizer.

Tolerance as in test_linen: with ``mode="exact"``, a converted model vs the same model with the
dequantized dense kernels differs only by float32 accumulation order: max |y - ref| <= 1e-5 *
max |ref|. The default mode (possibly the approximate ``"fast"`` CPU kernel) gets 3e-2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lutgemm_jax as lj
from lutgemm_jax.format import BCQWeight, to_layout
from lutgemm_jax.nnx import LutLinear, QuantizedWeight, quantize_model

NATIVE_LAYOUT = "cpu" if jax.default_backend() == "cpu" else "canonical"
"""What ``layout="auto"`` (the default) gives an unpartitioned kernel on this backend."""
RTOL = 1e-5
FAST = dict(bits=3, group_size=32, method="greedy")


def np_init(key, shape, dtype=jnp.float32):
    """A numpy-based kernel initializer (nothing to compile: keeps the tests fast)."""
    seed = int(np.asarray(jax.random.key_data(key)).sum()) % 2**32
    w = np.random.default_rng(seed).normal(size=shape) / np.sqrt(shape[0])
    return jnp.asarray(w, dtype)


def rel_err(y, ref) -> float:
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, 96, kernel_init=np_init, rngs=rngs)
        self.fc2 = nnx.Linear(96, 96, use_bias=False, kernel_init=np_init, rngs=rngs)
        self.head = nnx.Linear(96, 40, kernel_init=np_init, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.gelu(self.fc2(nnx.gelu(self.fc1(x)))))


class Block(nnx.Module):
    """Pre-norm transformer block written with plain nnx.Linear."""

    def __init__(self, dim: int, heads: int, rngs: nnx.Rngs):
        self.heads = heads
        self.qkv = nnx.Linear(dim, 3 * dim, kernel_init=np_init, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, kernel_init=np_init, rngs=rngs)
        self.mlp = nnx.List(
            [
                nnx.Linear(dim, 4 * dim, kernel_init=np_init, rngs=rngs),
                nnx.Linear(4 * dim, dim, kernel_init=np_init, rngs=rngs),
            ]
        )
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)

    def __call__(self, x):
        *lead, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
        split = lambda a: a.reshape(*lead, t, self.heads, d // self.heads)  # noqa: E731
        att = jnp.einsum("...qhd,...khd->...hqk", split(q), split(k)) / np.sqrt(d // self.heads)
        o = jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(att, axis=-1), split(v))
        x = x + self.proj(o.reshape(*lead, t, d))
        return x + self.mlp[1](nnx.gelu(self.mlp[0](self.ln2(x))))


def dequantized_twin(original: nnx.Module, converted: nnx.Module) -> nnx.Module:
    """A copy of ``original`` whose Linear kernels are the converted layers' dequantized ones."""
    twin = nnx.clone(original)
    lut_layers = dict(nnx.iter_modules(converted))
    for path, module in nnx.iter_modules(twin):
        lut = lut_layers[path]
        if isinstance(lut, LutLinear):
            module.kernel = nnx.Param(lut.kernel.get_value().dequantize())
            if lut.bias is not None:
                module.bias = nnx.Param(lut.bias[...])
    return twin


@pytest.mark.parametrize(
    ("make", "shape", "kwargs"),
    [
        (lambda: MLP(nnx.Rngs(0)), (5, 64), dict(bits=3, group_size=32, rounds=3, mode="exact")),
        (lambda: Block(64, 4, nnx.Rngs(0)), (2, 6, 64), dict(FAST, fit_offset=True, mode="exact")),
        (
            lambda: MLP(nnx.Rngs(0)),
            (3, 64),
            dict(bits=4, group_size=16, method="rtn", mode="exact"),
        ),
        (lambda: Block(64, 4, nnx.Rngs(0)), (2, 3, 64), dict(bits=2, group_size=16, mode="exact")),
    ],
)
def test_converted_model_matches_dequantized(make, shape, kwargs):
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    original = make()
    y_orig = nnx.jit(lambda m, x: m(x))(original, x)
    model = quantize_model(nnx.clone(original), **kwargs)
    assert not any(type(m) is nnx.Linear for _, m in nnx.iter_modules(model))
    ref = nnx.jit(lambda m, x: m(x))(dequantized_twin(original, model), x)
    eager = model(x)
    jitted = nnx.jit(lambda m, x: m(x))(model, x)
    mapped = nnx.jit(lambda m, x: nnx.vmap(lambda m, xi: m(xi), in_axes=(None, 0))(m, x))(model, x)
    for y in (eager, jitted, mapped):
        assert y.shape == ref.shape and rel_err(y, ref) <= RTOL
    assert rel_err(eager, y_orig) < 0.35


def test_default_mode_is_close():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 64)), jnp.float32)
    original = MLP(nnx.Rngs(0))
    model = quantize_model(nnx.clone(original), **FAST)
    ref = dequantized_twin(original, model)(x)
    assert rel_err(nnx.jit(lambda m, x: m(x))(model, x), ref) <= 3e-2


def test_quantize_model_selection_and_summary():
    model = MLP(nnx.Rngs(0))
    head = model.head
    model, summary = quantize_model(model, **FAST, exclude="head", return_summary=True)
    assert isinstance(model.fc1, LutLinear) and isinstance(model.fc2, LutLinear)
    assert model.head is head
    assert model.fc2.bias is None
    assert [s.path for s in summary.layers] == ["fc1", "fc2"]
    assert summary.bytes_before == 4 * (64 * 96 + 96 * 96)
    # q=3, g=32, float32 alpha: 3 + 3 = 6 bits per weight -> 32/6 = 5.33x.
    assert summary.compression_ratio == pytest.approx(32 / 6)
    assert "fc1" in str(summary)
    only = quantize_model(Block(64, 4, nnx.Rngs(0)), **FAST, include=r"^mlp/")
    assert isinstance(only.mlp[0], LutLinear) and isinstance(only.mlp[1], LutLinear)
    assert type(only.qkv) is nnx.Linear
    # A bare Linear is returned converted.
    assert isinstance(quantize_model(nnx.Linear(32, 8, rngs=nnx.Rngs(0)), **FAST), LutLinear)


def test_lutlinear_init_and_variable_types():
    layer = LutLinear(
        40, 24, bits=2, group_size=None, has_offset=True, lora_rank=3, rngs=nnx.Rngs(0)
    )
    assert isinstance(layer.kernel, QuantizedWeight) and not isinstance(layer.kernel, nnx.Param)
    w = layer.kernel.get_value()
    assert isinstance(w, BCQWeight) and w.shape == (40, 24) and w.has_offset
    params = nnx.to_pure_dict(nnx.state(layer, nnx.Param))
    assert set(params) == {"bias", "lora_a", "lora_b"}
    assert set(nnx.to_pure_dict(nnx.state(layer, QuantizedWeight))) == {"kernel"}
    assert layer(jnp.ones((2, 3, 40))).shape == (2, 3, 24)
    with pytest.raises(ValueError, match="expected"):
        LutLinear(41, 24, kernel=w, rngs=nnx.Rngs(0))


def test_group_size_16_and_uniform_rtn_layers():
    """g = 16 with ragged K (72) and rtn's uniform scales: from_linear, a zeros-initialised
    LutLinear of the same config takes the converted state (for loading), a fitted init, and
    quantize_model's summary."""
    linear = nnx.Linear(72, 40, kernel_init=np_init, rngs=nnx.Rngs(0))
    config = lj.BCQConfig(bits=4, group_size=16, method="rtn", layout="canonical")
    lut = LutLinear.from_linear(linear, config, mode="exact")
    w = lut.kernel.get_value()
    assert w.uniform and w.alpha.shape == (6, 1, 40) and w.group_size == 16
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 72)), jnp.float32)
    twin = nnx.Linear(72, 40, rngs=nnx.Rngs(0))
    twin.kernel = nnx.Param(w.dequantize())
    twin.bias = nnx.Param(linear.bias[...])
    assert rel_err(lut(x), twin(x)) <= RTOL
    empty = LutLinear(72, 40, config=config, init_method="zeros", mode="exact", rngs=nnx.Rngs(1))
    shapes = lambda m: jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(m)))  # noqa: E731
    assert shapes(empty) == shapes(lut)
    nnx.update(empty, nnx.state(lut))
    np.testing.assert_array_equal(empty(x), lut(x))
    fitted = LutLinear(72, 40, config=config, rngs=nnx.Rngs(2)).kernel.get_value()
    assert fitted.uniform and fitted.num_groups == 6
    model, summary = quantize_model(MLP(nnx.Rngs(0)), config, return_summary=True)
    assert all(s.uniform and s.group_size == 16 for s in summary.layers)
    # 4 sign bits + a float32 scale and offset per 16 rows: 8 bits per weight (K = 64, 96)
    assert [s.bits_per_weight for s in summary.layers] == [8.0, 8.0, 8.0]
    assert isinstance(model.head, LutLinear)


def test_from_linear_keeps_bias_dtype_and_output():
    linear = nnx.Linear(64, 32, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    linear.bias = nnx.Param(jnp.arange(32, dtype=jnp.float32))
    lut = LutLinear.from_linear(linear, **FAST, mode="exact")
    np.testing.assert_array_equal(lut.bias[...], linear.bias[...])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 64)), jnp.float32)
    y = lut(x)
    assert y.dtype == linear(x).dtype == jnp.bfloat16
    twin = nnx.Linear(64, 32, rngs=nnx.Rngs(0))
    twin.kernel = nnx.Param(lut.kernel.get_value().dequantize())
    twin.bias = nnx.Param(linear.bias[...])
    assert rel_err(LutLinear.from_linear(twin, **FAST)(x), twin(x)) < 0.35
    assert lut.mode == "exact"
    assert rel_err(lut(x.astype(jnp.float32)), twin(x).astype(jnp.bfloat16)) < 1e-2


def test_lora_training_with_nnx_optimizer_keeps_codes():
    model = quantize_model(MLP(nnx.Rngs(0)), **FAST, lora_rank=4, lora_alpha=8.0, rngs=nnx.Rngs(5))
    codes = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, QuantizedWeight)))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 64)), jnp.float32)
    target = jnp.tanh(x[:, :40])
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
        assert "kernel" not in grads["fc1"]  # the packed codes get no gradient
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(15)]
    assert losses[-1] < 0.8 * losses[0]
    after = nnx.to_pure_dict(nnx.state(model, QuantizedWeight))
    jax.tree.map(np.testing.assert_array_equal, after, codes)
    assert not np.allclose(model.fc1.lora_b[...], 0)


# ---- sign-word layouts -----------------------------------------------------------------------


def _layouts(model: nnx.Module) -> set[str]:
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, LutLinear)]
    return {layer.kernel.get_value().layout for layer in layers}


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_cpu_layout_gives_the_same_outputs(mode):
    """layout="cpu" (fc1/fc2: N = 96, three 32-column blocks; head: N = 40, one block and an
    8-column tail): the same codes, and the same outputs to the bit."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 64)), jnp.float32)
    original = MLP(nnx.Rngs(0))
    canonical = quantize_model(nnx.clone(original), **FAST, mode=mode, layout="canonical")
    cpu = quantize_model(nnx.clone(original), **FAST, mode=mode, layout="cpu")
    assert _layouts(canonical) == {"canonical"} and _layouts(cpu) == {"cpu"}
    for name in ("fc1", "fc2", "head"):
        w, c = getattr(canonical, name).kernel.get_value(), getattr(cpu, name).kernel.get_value()
        np.testing.assert_array_equal(c.to_layout("canonical").bits, w.bits)
    run = nnx.jit(lambda m, x: m(x))
    np.testing.assert_array_equal(run(cpu, x), run(canonical, x))
    # Converting a model in place later gives the same model.
    nnx.update(canonical, to_layout(nnx.state(canonical), "cpu"))
    assert _layouts(canonical) == {"cpu"}
    np.testing.assert_array_equal(run(canonical, x), run(cpu, x))
    layer = LutLinear.from_linear(original.head, **FAST, mode=mode, layout="cpu")
    assert layer.kernel.get_value().layout == "cpu"
    h = jnp.asarray(np.random.default_rng(2).normal(size=(3, 96)), jnp.float32)
    np.testing.assert_array_equal(layer(h), cpu.head(h))


def test_lutlinear_init_layout_and_bad_layouts():
    for method in ("greedy", "zeros"):
        cpu = LutLinear(64, 40, group_size=32, init_method=method, layout="cpu", rngs=nnx.Rngs(0))
        plain = LutLinear(
            64, 40, group_size=32, init_method=method, layout="canonical", rngs=nnx.Rngs(0)
        )
        assert cpu.kernel.get_value().layout == "cpu"
        assert plain.kernel.get_value().layout == "canonical"
        auto = LutLinear(64, 40, group_size=32, init_method=method, rngs=nnx.Rngs(0))
        assert auto.kernel.get_value().layout == NATIVE_LAYOUT
        x = jnp.ones((2, 64))
        np.testing.assert_array_equal(cpu(x), plain(x))
    # A given kernel keeps its layout, like its q, g and offset.
    given = LutLinear(64, 40, kernel=cpu.kernel.get_value(), rngs=nnx.Rngs(0))
    assert given.kernel.get_value().layout == "cpu"
    linear = nnx.Linear(64, 32, rngs=nnx.Rngs(0))
    for call, where in (
        (lambda: quantize_model(MLP(nnx.Rngs(0)), **FAST, layout="gpu"), "quantize_model"),
        (lambda: LutLinear.from_linear(linear, **FAST, layout="gpu"), "LutLinear.from_linear"),
        (lambda: LutLinear(64, 32, layout="gpu", rngs=nnx.Rngs(0)), "LutLinear"),
    ):
        with pytest.raises(ValueError, match=rf"^{where}: layout must be one of .*'gpu'"):
            call()


def test_cpu_layout_keeps_sharding_metadata_and_placement():
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
    with nnx.use_eager_sharding(False):  # annotated, not placed
        linear = nnx.Linear(128, 64, kernel_init=init, rngs=nnx.Rngs(0))
        made = LutLinear(128, 64, kernel_init=init, group_size=64, layout="cpu", rngs=nnx.Rngs(0))
    converted = LutLinear.from_linear(linear, **FAST, layout="cpu")
    for layer in (made, converted):
        assert layer.kernel.get_value().layout == "cpu"
        assert layer.kernel.get_metadata("out_sharding") == ("embed", "mlp")
        spec = nnx.get_partition_spec(nnx.state(layer))["kernel"].get_value()
        assert spec.bits == spec.alpha == P("embed", None, "mlp")
    # to_layout on the state keeps the variable's metadata too.
    nnx.update(converted, to_layout(nnx.state(converted), "canonical"))
    assert converted.kernel.get_value().layout == "canonical"
    assert converted.kernel.get_metadata("out_sharding") == ("embed", "mlp")

    # A Linear placed over 2 devices along N (32 columns, one layout block, per device).
    mesh = jax.make_mesh((2,), ("model",), devices=jax.devices()[:2])
    placed = nnx.Linear(128, 64, kernel_init=np_init, rngs=nnx.Rngs(0))
    want = LutLinear.from_linear(placed, **FAST, mode="exact")
    placed.kernel.set_value(
        jax.device_put(placed.kernel.get_value(), NamedSharding(mesh, P(None, "model")))
    )
    layer = LutLinear.from_linear(placed, **FAST, mode="exact", layout="cpu")
    packed = layer.kernel.get_value()
    assert packed.layout == "cpu"
    assert packed.bits.sharding.is_equivalent_to(NamedSharding(mesh, P(None, None, "model")), 3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 128)), jnp.float32)
    np.testing.assert_array_equal(nnx.jit(lambda m, x: m(x))(layer, x), want(x))


# ---- sign-word layouts of a model ------------------------------------------------------------


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


def test_auto_layout_follows_the_backend_unless_partitioned():
    """The default layout ("auto") is the backend's ("cpu" on CPU); a kernel with sharding
    metadata or placed over several devices stays canonical."""
    model = quantize_model(MLP(nnx.Rngs(0)), **FAST)
    assert _layouts(model) == {NATIVE_LAYOUT}
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
    with nnx.use_eager_sharding(False):
        linear = nnx.Linear(128, 64, kernel_init=init, rngs=nnx.Rngs(0))
        made = LutLinear(128, 64, kernel_init=init, group_size=64, rngs=nnx.Rngs(0))
        zeros = LutLinear(128, 64, kernel_init=init, init_method="zeros", rngs=nnx.Rngs(0))
        named = LutLinear(
            128, 64, kernel_metadata={"out_sharding": ("embed", "mlp")}, rngs=nnx.Rngs(0)
        )
    for layer in (made, zeros, named, LutLinear.from_linear(linear, **FAST)):
        assert layer.kernel.get_value().layout == "canonical"
    mesh = jax.make_mesh((2,), ("model",), devices=jax.devices()[:2])
    placed = nnx.Linear(128, 64, kernel_init=np_init, rngs=nnx.Rngs(0))
    placed.kernel.set_value(
        jax.device_put(placed.kernel.get_value(), NamedSharding(mesh, P(None, "model")))
    )
    assert LutLinear.from_linear(placed, **FAST).kernel.get_value().layout == "canonical"
