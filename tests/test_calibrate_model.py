"""Calibrated whole-model quantization: `linen.quantize_params(..., calibrate=...)`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lutgemm_jax import models
from lutgemm_jax.calibrate import quantize_calibrated
from lutgemm_jax.calibrate_model import InputCapture, stage_of
from lutgemm_jax.calibration import Calibration
from lutgemm_jax.config import BCQConfig
from lutgemm_jax.linen import intercept_dense, quantize_params
from lutgemm_jax.models import opt

CONFIG = BCQConfig(bits=2, group_size=32, layout="canonical")
K, HIDDEN, OUT = 64, 64, 32


class MLP(nn.Module):
    """``x: [B, K]`` -> ``[B, OUT]``: first -> relu -> second."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(HIDDEN, name="first")(x))
        return nn.Dense(OUT, name="second")(h)


class Block(nn.Module):
    """Two Dense layers inside one ``layers_0`` block."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(K, name="fc2")(nn.relu(nn.Dense(K, name="fc1")(x)))


class Stack(nn.Module):
    """``layers_0`` and ``layers_1`` blocks, then a ``head`` Dense."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Block(name="layers_0")(x)
        return nn.Dense(OUT, name="head")(Block(name="layers_1")(x))


def correlated_inputs(n: int, seed: int) -> np.ndarray:
    """``[n, K]`` rows in a 6-dimensional subspace plus small noise, uneven channel scales."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(6, K)) * np.linspace(0.2, 3.0, K)
    return (rng.normal(size=(n, 6)) @ basis + 0.05 * rng.normal(size=(n, K))).astype(np.float32)


def init(module: nn.Module) -> dict:
    return module.init(jax.random.key(0), jnp.zeros((1, K)))["params"]


def runner(module: nn.Module, batches: list[np.ndarray]):
    return lambda p: [module.apply({"params": p}, x) for x in batches]


def run(module: nn.Module, params: dict, x: np.ndarray) -> np.ndarray:
    with intercept_dense():
        return np.asarray(module.apply({"params": params}, x))


def test_calibrated_beats_data_free_on_held_out_inputs():
    model, params = MLP(), init(MLP())
    batches = [correlated_inputs(512, s) for s in range(4)]
    held_out = correlated_inputs(1024, 100)
    ref = run(model, params, held_out)
    free = quantize_params(params, CONFIG)
    calibrated = quantize_params(params, CONFIG, calibrate=runner(model, batches))
    err_free = np.linalg.norm(run(model, free, held_out) - ref)
    err_cal = np.linalg.norm(run(model, calibrated, held_out) - ref)
    assert err_cal < 0.7 * err_free, (err_cal, err_free)


def test_accumulated_hessian_equals_concatenated_inputs():
    model, params = MLP(), init(MLP())
    batches = [correlated_inputs(100, s) for s in range(3)]
    capture = InputCapture({("first",): ("first",)})
    with nn.intercept_methods(capture):
        runner(model, batches)(params)
    got = capture.stats[("first",)]
    want = Calibration.from_inputs(np.concatenate(batches))
    assert got.count == want.count == 300
    np.testing.assert_allclose(got.hessian, want.hessian, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got.abs_sum, want.abs_sum, rtol=1e-12)
    # The pipeline quantizes first with exactly these statistics.
    q = quantize_params(params, CONFIG, include="first", calibrate=runner(model, batches))
    manual = quantize_calibrated(params["first"]["kernel"], want, CONFIG)
    np.testing.assert_allclose(q["first"]["kernel"].dequantize(), manual.dequantize(), atol=1e-5)


def test_second_layer_calibrates_on_quantized_first_layer():
    model, params = MLP(), init(MLP())
    x = correlated_inputs(600, 1)
    q = quantize_params(params, CONFIG, calibrate=runner(model, [x]))
    # Manual two-step GPTQ: layer 1 on x, then layer 2 on the *quantized* layer 1's outputs.
    w1 = quantize_calibrated(params["first"]["kernel"], Calibration.from_inputs(x), CONFIG)
    dense0 = {"kernel": w1, "bias": params["first"]["bias"]}
    with intercept_dense():
        h_quant = nn.relu(nn.Dense(HIDDEN).apply({"params": dense0}, x))
    h_float = nn.relu(nn.Dense(HIDDEN).apply({"params": params["first"]}, x))
    w2 = params["second"]["kernel"]
    sequential = quantize_calibrated(w2, Calibration.from_inputs(h_quant), CONFIG).dequantize()
    parallel = quantize_calibrated(w2, Calibration.from_inputs(h_float), CONFIG).dequantize()
    got = q["second"]["kernel"].dequantize()
    assert float(jnp.max(jnp.abs(sequential - parallel))) > 1e-3  # the order is observable
    np.testing.assert_allclose(got, sequential, atol=1e-5)


def test_one_pass_per_decoder_block_and_head():
    model = Stack()
    params = init(model)
    calls = []

    def calibrate(p):
        calls.append(
            sum(
                hasattr(leaf, "alpha")
                for leaf in jax.tree.leaves(p, is_leaf=lambda v: hasattr(v, "alpha"))
            )
        )
        model.apply({"params": p}, correlated_inputs(200, 0))

    q = quantize_params(params, CONFIG, calibrate=calibrate)
    # Three stages (layers_0: fc1+fc2, layers_1: fc1+fc2, head), each run on the model with the
    # earlier stages already quantized.
    assert calls == [0, 2, 4]
    assert all(
        hasattr(q[m][d]["kernel"], "alpha")
        for m in ("layers_0", "layers_1")
        for d in ("fc1", "fc2")
    )
    assert stage_of(("decoder", "layers_12", "mlp", "fc1")) == ("decoder", "layers_12")
    assert stage_of(("lm_head",)) == ("lm_head",)


def test_wrapped_params_and_summary():
    model, params = MLP(), init(MLP())
    x = correlated_inputs(300, 2)
    wrapped, summary = quantize_params(
        {"params": params},
        CONFIG,
        calibrate=lambda p: model.apply(p, x),
        return_summary=True,
    )
    assert summary.layers_converted == 2
    plain = quantize_params(params, CONFIG, calibrate=runner(model, [x]))
    np.testing.assert_array_equal(
        wrapped["params"]["second"]["kernel"].dequantize(), plain["second"]["kernel"].dequantize()
    )


def test_bad_calibrate_errors():
    model, params = MLP(), init(MLP())
    x = correlated_inputs(64, 0)
    with pytest.raises(TypeError, match="calibrate must be a callable"):
        quantize_params(params, CONFIG, calibrate=[x])
    with pytest.raises(ValueError, match="never called the selected layers first, second"):
        quantize_params(params, CONFIG, calibrate=lambda p: None)
    with pytest.raises(TypeError, match="eagerly"):
        quantize_params(
            params, CONFIG, calibrate=lambda p: jax.jit(lambda p: model.apply({"params": p}, x))(p)
        )
    with pytest.raises(ValueError, match="act_order and damp apply with calibrate= only"):
        quantize_params(params, CONFIG, act_order=True)
    with pytest.raises(ValueError, match="stacked"):
        quantize_params(params, CONFIG, stacked=True, calibrate=runner(model, [x]))


class Gated(nn.Module):
    """``layers_0`` with fc1 and, when ``use_fc2``, fc2."""

    use_fc2: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.Dense(K, name="fc1")(x)
        return nn.Dense(K, name="fc2")(h) if self.use_fc2 else h


class GatedModel(nn.Module):
    use_fc2: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return Gated(self.use_fc2, name="layers_0")(x)


def test_unreached_layer_of_a_stage_is_named():
    params = init(GatedModel())
    skipping = GatedModel(use_fc2=False)
    with pytest.raises(ValueError, match="never reached the selected layers layers_0/fc2 of"):
        quantize_params(params, CONFIG, calibrate=runner(skipping, [correlated_inputs(50, 0)]))


def test_quantize_model_calibrated_tiny_opt():
    config = opt.OPTConfig(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=2,
        ffn_dim=64,  # every Linear [64, 64]: one compiled quantizer shape
        num_attention_heads=4,
        max_position_embeddings=16,
    )
    model, params = opt.OPT(config), opt.init_params(config, 0)
    windows = np.random.default_rng(0).integers(3, 128, (8, 16))
    q = models.quantize_model(
        params,
        bits=3,
        group_size=32,
        calibrate=models.calibration_runner(model, windows, 8),
        act_order=True,
    )
    for i in range(2):
        assert hasattr(q[f"layers_{i}"]["fc1"]["kernel"], "alpha")
    logits = models.forward(model, q, windows[:2])
    assert bool(jnp.all(jnp.isfinite(logits)))
    with pytest.raises(ValueError, match="windows must be non-empty int token ids"):
        models.calibration_runner(model, np.zeros((0, 16), np.int32))
