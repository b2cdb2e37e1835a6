"""NNX sharding metadata of the packed weights: `LutLinear` takes
``nnx.with_partitioning`` / ``kernel_metadata`` names of the dense kernel ``(k, n)``, and its
`QuantizedWeight` maps them onto bits/alpha ``(k, None, n)`` and offset ``(k, n)`` for
``nnx.get_partition_spec``, eager sharding under ``jax.set_mesh``, the ``nnx.jit`` +
``with_sharding_constraint`` + ``nnx.update`` recipe and ``nnx.eval_shape``; the converters carry
an ``nnx.Linear``'s names over. Uses the 8 host CPU devices of conftest.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.core import spmd as core_spmd
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import lutgemm_jax as lj
from lutgemm_jax.nnx import LutLinear, QuantizedWeight, quantize_model

K, N, G = 256, 64, 64  # 4 groups: a K sharding over 2 or 4 devices hands out whole groups
LAYOUTS = {"column": (None, "model"), "row": ("model", None)}


def _init(names):
    return nnx.with_partitioning(nnx.initializers.lecun_normal(), names)


def _layer(names, *, bits=2, seed=0, group_size=G, **kwargs):
    """A LutLinear [K, N] with uniform scales (rtn) and an offset whose dense kernel is annotated
    with ``names``."""
    return LutLinear(
        K,
        N,
        kernel_init=_init(names),
        bits=bits,
        group_size=group_size,
        has_offset=True,
        init_method="rtn",
        rngs=nnx.Rngs(seed),
        **kwargs,
    )


def _mesh(size, axis_type=AxisType.Auto):
    return jax.make_mesh((size,), ("model",), axis_types=(axis_type,), devices=jax.devices()[:size])


def _spec(array) -> tuple:
    spec = tuple(array.sharding.spec)
    return spec + (None,) * (array.ndim - len(spec))


def _x(m=5):
    return jnp.asarray(np.random.default_rng(0).normal(size=(m, K)), jnp.float32)


def _assert_packed_sharding(w, names, size):
    """bits/alpha sharded as (k, None, n), offset as (k, n), shard shapes split along K or N."""
    k, n = names
    assert _spec(w.bits) == (k, None, n) and _spec(w.alpha) == (k, None, n)
    assert _spec(w.offset) == (k, n)
    for name in ("bits", "alpha", "offset"):
        array = getattr(w, name)
        shard = array.addressable_shards[0].data.shape
        want = list(array.shape)
        want[0 if k else -1] //= size
        assert shard == tuple(want), (name, shard, want)
        assert len(array.sharding.device_set) == size


def _assert_same_output_as_unsharded(model, x, mesh):
    """The sharded model under jit vs the same weights on one device (eager, outside the mesh)."""
    with jax.set_mesh(mesh):
        y = nnx.jit(lambda m, x: m(x))(model, x)
    single = nnx.clone(model)
    one_device = lambda a: jax.device_put(np.asarray(a), jax.devices()[0])  # noqa: E731
    nnx.update(single, jax.tree.map(one_device, nnx.state(model)))
    assert len(single.kernel.get_value().bits.devices()) == 1
    want = single(x)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    return y


@pytest.mark.parametrize("init_method", ["rtn", "zeros"])
def test_with_partitioning_gives_packed_partition_specs(init_method):
    with nnx.use_eager_sharding(False):  # logical names, no mesh
        layer = LutLinear(
            K,
            N,
            kernel_init=_init(("embed", "mlp")),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("mlp",)),
            bits=2,
            group_size=G,
            has_offset=True,
            init_method=init_method,
            lora_rank=4,
            rngs=nnx.Rngs(0),
        )
    assert layer.kernel.get_metadata("out_sharding") == ("embed", "mlp")
    specs = nnx.get_partition_spec(nnx.state(layer))
    kernel = specs["kernel"]
    assert isinstance(kernel, QuantizedWeight)
    packed = kernel.get_value()
    assert isinstance(packed, lj.BCQWeight)
    assert packed.bits == P("embed", None, "mlp") and packed.alpha == P("embed", None, "mlp")
    assert packed.offset == P("embed", "mlp")
    assert specs["bias"].get_value() == P("mlp")
    assert specs["lora_a"].get_value() == P("embed", None)
    assert specs["lora_b"].get_value() == P(None, "mlp")

    # Logical names through flax's axis rules, onto a 2-D mesh.
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    with core_spmd.logical_axis_rules((("embed", "data"), ("mlp", "model"))):
        shardings = nnx.get_named_sharding(nnx.state(layer), mesh)
    assert shardings["kernel"].get_value().bits.spec == P("data", None, "model")
    assert shardings["kernel"].get_value().offset.spec == P("data", "model")
    state = jax.device_put(nnx.state(layer), shardings)
    assert _spec(state["kernel"].get_value().alpha) == ("data", None, "model")
    assert _spec(state["kernel"].get_value().offset) == ("data", "model")

    # The metadata does not change the weights: same values as an unannotated layer. (It keeps
    # the default "auto" layout canonical: a "cpu"-layout weight splits along N only in whole
    # 32-column blocks.)
    assert layer.kernel.get_value().layout == "canonical"
    plain = LutLinear(
        K,
        N,
        bits=2,
        group_size=G,
        has_offset=True,
        init_method=init_method,
        layout="canonical",
        rngs=nnx.Rngs(0),
    )
    for name in ("bits", "alpha", "offset"):
        np.testing.assert_array_equal(
            getattr(layer.kernel.get_value(), name), getattr(plain.kernel.get_value(), name)
        )


def test_kernel_metadata_argument_and_unannotated_layer():
    with nnx.use_eager_sharding(False):
        layer = LutLinear(
            K,
            N,
            bits=2,
            group_size=G,
            kernel_metadata={"out_sharding": (None, "mlp")},
            bias_metadata={"out_sharding": ("mlp",)},
            rngs=nnx.Rngs(0),
        )
    specs = nnx.get_partition_spec(nnx.state(layer))
    assert specs["kernel"].get_value().bits == P(None, None, "mlp")
    assert specs["kernel"].get_value().offset is None  # no offset array, no spec
    assert specs["bias"].get_value() == P("mlp")
    # Without metadata: every packed array replicated, still one spec per array.
    plain = LutLinear(K, N, bits=2, group_size=G, has_offset=True, rngs=nnx.Rngs(0))
    packed = nnx.get_partition_spec(nnx.state(plain))["kernel"].get_value()
    assert isinstance(packed, lj.BCQWeight)
    assert packed.bits == P(None, None, None) and packed.offset == P(None, None)


@pytest.mark.parametrize("g", [G, 16])  # g = 16: 8 sign words of two groups along K
@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize("layout", ["column", "row"])
def test_sharded_init_recipe(layout, size, g):
    """The nnx recipe: nnx.jit + get_partition_spec + with_sharding_constraint + nnx.update."""
    names = LAYOUTS[layout]

    @nnx.jit
    def create():
        with nnx.use_eager_sharding(False):  # the recipe shards; no eager sharding
            m = _layer(names, bits=3, seed=1, group_size=g)
        state = nnx.state(m)
        pspecs = nnx.get_partition_spec(state)
        state = jax.lax.with_sharding_constraint(state, pspecs)
        nnx.update(m, state)
        return m

    mesh = _mesh(size)
    x = _x()
    with jax.set_mesh(mesh):
        model = create()
        assert model.kernel.get_value().alpha.shape == (K // g, 1, N)
        _assert_packed_sharding(model.kernel.get_value(), names, size)
        hlo = nnx.jit(lambda m, x: m(x)).lower(model, x).compile().as_text()
    _assert_same_output_as_unsharded(model, x, mesh)
    assert "all-gather" not in hlo  # the packed weights stay where they are
    assert ("all-reduce" in hlo) == (layout == "row")  # row-parallel: one psum


@pytest.mark.parametrize("g", [G, 16])
@pytest.mark.parametrize("layout", ["column", "row"])
def test_eager_sharding_under_set_mesh(layout, g):
    """flax >= 0.12 eager sharding: creating the layer under jax.set_mesh places it (the default
    jax.make_mesh axes, explicit in this JAX)."""
    names = LAYOUTS[layout]
    mesh = jax.make_mesh((4,), ("model",), devices=jax.devices()[:4])
    with jax.set_mesh(mesh):
        model = _layer(names, seed=2, lora_rank=2, group_size=g)
        _assert_packed_sharding(model.kernel.get_value(), names, 4)
        k, n = names
        assert _spec(model.lora_a.get_value()) == (k, None)
        assert _spec(model.lora_b.get_value()) == (None, n)
    _assert_same_output_as_unsharded(model, _x(), mesh)


def test_row_parallel_splitting_a_group_raises():
    """K = 256 with g = 128 is 2 groups: 4 K-shards would split them; the op says so."""

    @nnx.jit
    def run(x):
        with nnx.use_eager_sharding(False):
            m = LutLinear(
                K, N, kernel_init=_init(("model", None)), bits=2, group_size=128, rngs=nnx.Rngs(0)
            )
        state = nnx.state(m)
        nnx.update(m, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
        return m(x)

    with jax.set_mesh(_mesh(4)):
        with pytest.raises(Exception, match="would split a quantization group"):
            run(_x(2))


def test_converters_carry_partitioning_names():
    class Mlp(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(
                K,
                N,
                kernel_init=_init((None, "model")),
                bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("model",)),
                rngs=rngs,
            )
            self.fc2 = nnx.Linear(N, K, kernel_init=_init(("model", None)), rngs=rngs)

        def __call__(self, x):
            return self.fc2(jax.nn.relu(self.fc1(x)))

    with nnx.use_eager_sharding(False):  # annotated, not placed
        model = Mlp(nnx.Rngs(3))
    model = quantize_model(model, bits=3, group_size=G // 2, method="greedy", lora_rank=2)
    assert isinstance(model.fc1, LutLinear) and isinstance(model.fc2, LutLinear)
    assert model.fc1.kernel.get_metadata("out_sharding") == (None, "model")
    assert model.fc2.kernel.get_metadata("out_sharding") == ("model", None)
    specs = nnx.get_partition_spec(nnx.state(model))
    assert specs["fc1"]["kernel"].get_value().bits == P(None, None, "model")
    assert specs["fc2"]["kernel"].get_value().alpha == P("model", None, None)
    assert specs["fc1"]["bias"].get_value() == P("model")
    assert specs["fc1"]["lora_b"].get_value() == P(None, "model")
    assert specs["fc2"]["lora_a"].get_value() == P("model", None)

    # The recipe shards the converted model (Megatron MLP: fc1 by N, fc2 by K: 2 groups of 32
    # per device for N = 64 over 2 devices).
    @nnx.jit
    def shard(m):
        state = nnx.state(m)
        nnx.update(m, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
        return m

    x = _x()
    want = model(x)
    with jax.set_mesh(_mesh(2)):
        sharded = shard(model)
        assert _spec(sharded.fc1.kernel.get_value().bits) == (None, None, "model")
        assert _spec(sharded.fc2.kernel.get_value().alpha) == ("model", None, None)
        y = nnx.jit(lambda m, x: m(x))(sharded, x)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_from_linear_of_placed_linear_keeps_sharding_and_names():
    """An eagerly sharded nnx.Linear: the packed arrays keep its device placement and its names,
    and converting outside the mesh context needs no mesh."""
    mesh = jax.make_mesh((4,), ("model",), devices=jax.devices()[:4])
    with jax.set_mesh(mesh):
        linear = nnx.Linear(K, N, kernel_init=_init((None, "model")), rngs=nnx.Rngs(4))
    layer = LutLinear.from_linear(linear, bits=2, group_size=G, method="greedy")
    assert layer.kernel.get_metadata("out_sharding") == (None, "model")
    packed = layer.kernel.get_value()
    assert _spec(packed.bits) == (None, None, "model") and _spec(packed.alpha) == (
        None,
        None,
        "model",
    )
    assert packed.bits.addressable_shards[0].data.shape == (K // 32, 2, N // 4)
    spec = nnx.get_partition_spec(nnx.state(layer))["kernel"].get_value()
    assert spec.bits == P(None, None, "model")
    x = _x()
    want = x @ lj.dequantize(packed) + linear.bias.get_value()
    np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_eval_shape_and_abstract_model_give_packed_shardings():
    mesh = _mesh(4)

    def create():
        return LutLinear(
            K, N, kernel_init=_init((None, "model")), bits=2, group_size=G, rngs=nnx.Rngs(0)
        )

    with jax.set_mesh(mesh):
        abstract = nnx.eval_shape(create)
    packed = abstract.kernel.get_value()
    assert isinstance(packed, lj.BCQWeight)  # not a dense [K, N] ShapeDtypeStruct
    assert packed.bits.shape == (K // 32, 2, N) and packed.bits.sharding.spec == P(
        None, None, "model"
    )
    with jax.set_mesh(mesh):
        bits = nnx.as_abstract(abstract).kernel.get_value().bits
    assert bits.shape == (K // 32, 2, N) and bits.sharding.spec == P(None, None, "model")
    _, state = nnx.get_abstract_model(create, mesh)
    alpha = state["kernel"].get_value().alpha
    assert alpha.shape == (K // G, 2, N)
    assert alpha.sharding == NamedSharding(mesh, P(None, None, "model"))


def test_stacked_layers_get_the_stack_axis_name():
    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(rngs):
        return LutLinear(K, N, kernel_init=_init((None, "model")), bits=2, group_size=G, rngs=rngs)

    with nnx.use_eager_sharding(False):
        stacked = create(nnx.Rngs(0))
    assert stacked.kernel.get_value().bits.shape == (3, K // 32, 2, N)
    spec = nnx.get_partition_spec(nnx.state(stacked))["kernel"].get_value()
    assert spec.bits == P("layers", None, None, "model")
    assert spec.alpha == P("layers", None, None, "model")
