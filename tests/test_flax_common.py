"""lutgemm_jax.flax_common (code shared by linen and nnx), the pytree helpers of format.py it
uses, and the runnable examples in the LutDense / LutLinear docstrings."""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lutgemm_jax import BCQConfig, linen, quantize
from lutgemm_jax import nnx as lj_nnx
from lutgemm_jax.config import UNSET
from lutgemm_jax.flax_common import (
    ConversionSummary,
    convert_layout,
    dense_apply,
    init_bcq_weight,
    layer_config,
    layer_summary,
    path_matches,
    quantize_kernel,
    variable_value,
)
from lutgemm_jax.format import (
    FLOAT_DTYPES,
    array_nbytes,
    bcq_leaves,
    format_nbytes,
    is_bcq,
    map_bcq,
    tree_nbytes,
)

FAST = BCQConfig(bits=3, group_size=32, method="greedy", layout="canonical")


def _kernel(k=64, n=40, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(k, n)).astype(dtype)


@pytest.mark.parametrize("obj", [linen.LutDense, lj_nnx.LutLinear])
def test_docstring_examples_run(obj):
    parser = doctest.DocTestParser()
    test = parser.get_doctest(obj.__doc__, {}, obj.__name__, None, 0)
    assert "Example usage::" in obj.__doc__ and len(test.examples) >= 4
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_path_matches():
    assert path_matches("a/fc1/kernel", None, None)
    assert path_matches("a/fc1/kernel", r"fc\d", None)
    assert not path_matches("a/fc1/kernel", r"fc\d", "a/")
    assert not path_matches("head/kernel", lambda p: p.startswith("a"), None)
    assert path_matches("head/kernel", None, lambda p: p.startswith("a"))


def test_quantize_kernel_stack_matches_slices_and_layout():
    stack = np.stack([_kernel(seed=s) for s in range(3)])
    packed = quantize_kernel(jnp.asarray(stack), FAST.replace(layout="cpu"))
    assert packed.batch_shape == (3,) and packed.layout == "cpu"
    for i in range(3):
        one = quantize(stack[i], config=FAST)
        np.testing.assert_array_equal(packed.bits[i], one.to_layout("cpu").bits)
        np.testing.assert_array_equal(packed.alpha[i], one.alpha)
    with pytest.raises(ValueError, match=r"quantize_kernel: kernel must be \[\.\.\., K, N\]"):
        quantize_kernel(jnp.ones(8), FAST)


def test_quantize_kernel_alpha_dtype_and_auto_layout():
    auto = FAST.replace(layout="auto")
    native = "cpu" if jax.default_backend() == "cpu" else "canonical"
    w = quantize_kernel(jnp.asarray(_kernel(), jnp.bfloat16), auto)
    assert w.alpha.dtype == jnp.bfloat16 and w.layout == native
    assert quantize_kernel(jnp.asarray(_kernel()), auto, partitioned=True).layout == "canonical"
    w = quantize_kernel(jnp.asarray(_kernel()), auto.replace(alpha_dtype=jnp.float16))
    assert w.alpha.dtype == jnp.float16


def test_quantize_kernel_follows_a_placed_kernel():
    mesh = jax.make_mesh((2,), ("model",), devices=jax.devices()[:2])
    sharding = NamedSharding(mesh, P(None, "model"))
    placed = jax.device_put(_kernel(n=64), sharding)
    w = quantize_kernel(placed, FAST.replace(layout="auto"))
    assert w.layout == "canonical"
    assert w.bits.sharding.is_equivalent_to(NamedSharding(mesh, P(None, None, "model")), 3)
    ref = quantize(_kernel(n=64), config=FAST)
    np.testing.assert_array_equal(w.bits, ref.bits)
    # An explicit "cpu" layout of the placed weight keeps the placement (32 columns a device).
    cpu = convert_layout(w, "cpu")
    assert cpu.bits.sharding.is_equivalent_to(w.bits.sharding, 3)
    np.testing.assert_array_equal(cpu.bits, ref.to_layout("cpu").bits)


def test_layer_config_rules():
    config, method = layer_config(None, init_method=None, has_offset=UNSET)
    assert (config.method, method, config.fit_offset) == ("alternating", "alternating", False)
    config, method = layer_config(
        BCQConfig(method="rtn"), init_method=None, has_offset=UNSET, bits=4
    )
    assert (config.method, config.bits, config.has_offset) == ("rtn", 4, True)
    config, method = layer_config(None, init_method="greedy", has_offset=True)
    assert (config.method, config.fit_offset) == ("greedy", True)
    config, method = layer_config(None, init_method="zeros", has_offset=UNSET)
    assert method == "zeros" and not config.has_offset
    # zeros: the shapes of config.method's weights; rtn's are uniform, with an offset
    config, method = layer_config(BCQConfig(method="rtn"), init_method="zeros", has_offset=UNSET)
    assert method == "zeros" and config.uniform and config.has_offset
    w = init_bcq_weight(
        jax.random.key(0), (40, 24), kernel_init=None, param_dtype=jnp.float32, config=config,
        init_method=method,
    )  # fmt: skip
    assert w.alpha.shape == (1, 1, 24) and w.offset.shape == (1, 24) and w.uniform
    with pytest.raises(ValueError, match="method='rtn' always has an offset"):
        layer_config(BCQConfig(method="rtn"), init_method="zeros", has_offset=False)
    with pytest.raises(ValueError, match="init_method must be one of"):
        layer_config(None, init_method="kmeans", has_offset=UNSET)
    with pytest.raises(ValueError, match="has_offset=True"):
        layer_config(None, init_method="rtn", has_offset=False)
    with pytest.raises(ValueError, match=r"^LutDense: group_size"):
        layer_config(None, init_method=None, has_offset=UNSET, group_size=40, where="LutDense")


def test_init_bcq_weight_zeros_and_sampled():
    config, _ = layer_config(None, init_method="zeros", has_offset=True, group_size=None)
    w = init_bcq_weight(
        jax.random.key(0),
        (40, 24),
        kernel_init=jax.nn.initializers.lecun_normal(),
        param_dtype=jnp.bfloat16,
        config=config,
        init_method="zeros",
    )
    assert w.expected_shapes() == {"bits": (2, 3, 24), "alpha": (1, 3, 24), "offset": (1, 24)}
    assert w.alpha.dtype == jnp.bfloat16 and not np.any(np.asarray(w.bits))
    init = jax.nn.initializers.lecun_normal()
    sampled = init_bcq_weight(
        jax.random.key(1),
        (64, 40),
        kernel_init=init,
        param_dtype=jnp.float32,
        config=FAST.replace(layout="cpu"),
        init_method="greedy",
    )
    assert sampled.layout == "canonical"  # the caller lays it out
    want = quantize(init(jax.random.key(1), (64, 40), jnp.float32), config=FAST)
    np.testing.assert_array_equal(sampled.bits, want.bits)


def test_dense_apply_matches_dense_reference_with_lora_and_bias():
    w = quantize(_kernel(), config=FAST)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 64)).astype(np.float32)
    a, b = rng.normal(size=(64, 4)), rng.normal(size=(4, 40))
    bias = rng.normal(size=(40,)).astype(np.float32)
    y = dense_apply(x, w, bias, lora=(a, b, 0.5), mode="exact")
    ref = x @ np.asarray(w.dequantize(), np.float64) + (x @ a) @ b * 0.5 + bias
    assert y.shape == (2, 3, 40) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    assert dense_apply(x.astype(jnp.bfloat16), w, None).dtype == jnp.float32  # promoted alpha
    assert dense_apply(x, w, None, dtype=jnp.float16).dtype == jnp.float16


def test_summary_and_byte_helpers():
    dense = _kernel()
    packed = quantize(dense, config=FAST)
    layer = layer_summary("fc/kernel", dense, packed)
    assert (layer.bytes_before, layer.bytes_after) == (dense.nbytes, packed.nbytes())
    summary = ConversionSummary((layer,), dense.nbytes + 160, packed.nbytes() + 160)
    text = str(summary)
    assert "fc/kernel" in text and "64 x 40" in text and "1 layers converted" in text
    assert summary.compression_ratio == dense.nbytes / packed.nbytes()
    assert [format_nbytes(n) for n in (512, 1536, 3 << 20, 5 << 30, 3 << 40)] == [
        "512 B",
        "1.50 KiB",
        "3.00 MiB",
        "5.00 GiB",
        "3072.00 GiB",
    ]
    tree = {"a": packed, "b": {"c": jnp.ones((4, 2), jnp.bfloat16), "d": None}, "e": [packed]}
    assert tree_nbytes(tree) == 2 * packed.nbytes() + 16
    assert array_nbytes(packed) == packed.nbytes() and array_nbytes("x") == 0
    assert bcq_leaves(tree) == [packed, packed] and is_bcq(packed) and not is_bcq(dense)
    mapped = map_bcq(lambda w: w.num_bits, tree)
    assert mapped["a"] == 3 and mapped["e"] == [3] and mapped["b"]["c"].shape == (4, 2)
    assert [jnp.dtype(d).name for d in FLOAT_DTYPES] == ["float32", "bfloat16", "float16"]


def test_variable_value():
    param = nnx.Param(jnp.arange(3))
    np.testing.assert_array_equal(variable_value(param), jnp.arange(3))
