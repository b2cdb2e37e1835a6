"""Partitioning annotations of the Flax layers and the converters: packed weights follow the
sharding of the dense kernel they replace (K and N keep their axes; the plane axis is
replicated). Uses the 8 host CPU devices of conftest.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lutgemm_jax as lj
from lutgemm_jax.sharding import packed_specs

K, N = 256, 64


def _mesh():
    return jax.make_mesh((4,), ("model",), devices=jax.devices()[:4])


def test_packed_specs_map_k_and_n_axes():
    specs = packed_specs(P("data", "model"), has_offset=True)
    assert specs == {
        "bits": P("data", None, "model"),
        "alpha": P("data", None, "model"),
        "offset": P("data", "model"),
    }
    assert "offset" not in packed_specs(P(None, "model"), has_offset=False)


@pytest.mark.parametrize("g", [64, 16])
def test_lut_dense_with_partitioning_boxes_each_packed_array(g):
    layer = lj.linen.LutDense(
        N,
        kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
        bits=2,
        group_size=g,
        has_offset=True,
        init_method="rtn",
    )
    x = jnp.ones((2, K))
    params = layer.init(jax.random.key(0), x)["params"]
    kernel = params["kernel"]
    assert isinstance(kernel, lj.BCQWeight)
    assert kernel.bits.names == ("embed", None, "mlp")
    assert kernel.alpha.names == ("embed", None, "mlp")
    assert kernel.offset.names == ("embed", "mlp")
    assert kernel.alpha.value.shape == (K // g, 1, N)  # rtn: uniform scales, boxed alike
    specs = nn.get_partition_spec(params)["kernel"]
    assert specs.bits == P("embed", None, "mlp") and specs.offset == P("embed", "mlp")
    y = layer.apply({"params": params}, x, mutable=False)
    unboxed = nn.meta.unbox(params)
    want = x @ lj.dequantize(unboxed["kernel"]) + unboxed["bias"]
    np.testing.assert_allclose(y, want, rtol=3e-2, atol=3e-2 * float(jnp.abs(want).max()))


def test_quantize_params_keeps_partitioning_boxes():
    model = nn.Dense(
        N, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(), (None, "mlp"))
    )
    params = model.init(jax.random.key(1), jnp.ones((1, K)))["params"]
    qparams = lj.linen.quantize_params(params, bits=3, group_size=64, method="greedy")
    assert qparams["kernel"].bits.names == (None, None, "mlp")
    assert nn.get_partition_spec(qparams)["kernel"].alpha == P(None, None, "mlp")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, K)), jnp.float32)
    with lj.linen.intercept_dense(mode="exact"):
        y = model.apply({"params": qparams}, x)
    plain = nn.meta.unbox(qparams)
    np.testing.assert_allclose(
        y, x @ lj.dequantize(plain["kernel"]) + plain["bias"], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("method,g", [("greedy", 64), ("rtn", 16)])
def test_linen_converter_keeps_device_sharding(method, g):
    mesh = _mesh()
    model = nn.Dense(N)
    params = model.init(jax.random.key(2), jnp.ones((1, K)))["params"]
    sharded = dict(
        params, kernel=jax.device_put(params["kernel"], NamedSharding(mesh, P(None, "model")))
    )
    qparams = lj.linen.quantize_params(sharded, bits=3, group_size=g, method=method)
    kernel = qparams["kernel"]
    assert kernel.bits.sharding.is_equivalent_to(NamedSharding(mesh, P(None, None, "model")), 3)
    assert kernel.alpha.sharding.is_equivalent_to(NamedSharding(mesh, P(None, None, "model")), 3)
    x = jnp.ones((2, K))
    with lj.linen.intercept_dense(mode="exact"):
        f = jax.jit(lambda p, x: model.apply({"params": p}, x))
        y = f(qparams, x)
        hlo = f.lower(qparams, x).compile().as_text()
    assert "all-gather" not in hlo  # column-parallel: no collective on the packed weights
    np.testing.assert_allclose(y, x @ lj.dequantize(kernel) + params["bias"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,g", [("greedy", 64), ("rtn", 16)])
def test_nnx_converter_keeps_device_sharding(method, g):
    """Row-parallel: K over 4 devices; g = 16 gets 2 of its 8 sign words (4 groups) each."""
    mesh = _mesh()
    linear = nnx.Linear(K, N, rngs=nnx.Rngs(0))
    linear.kernel.set_value(
        jax.device_put(linear.kernel.get_value(), NamedSharding(mesh, P("model", None)))
    )
    layer = lj.nnx.LutLinear.from_linear(linear, bits=2, group_size=g, method=method)
    packed = layer.kernel.get_value()
    assert packed.bits.sharding.is_equivalent_to(NamedSharding(mesh, P("model", None, None)), 3)
    assert packed.alpha.sharding.is_equivalent_to(NamedSharding(mesh, P("model", None, None)), 3)
    x = jnp.ones((2, K))
    want = x @ lj.dequantize(packed) + linear.bias.get_value()
    np.testing.assert_allclose(layer(x), want, rtol=3e-2, atol=3e-2 * float(jnp.abs(want).max()))
