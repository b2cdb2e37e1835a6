"""Calibrated NNX model quantization: `nnx.quantize_model(..., calibrate=...)`."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from test_calibrate_model import CONFIG, HIDDEN, OUT, K, correlated_inputs

from lutgemm_jax.calibrate import quantize_calibrated
from lutgemm_jax.calibrate_model import stage_of
from lutgemm_jax.calibration import Calibration
from lutgemm_jax.nnx import LutLinear, quantize_model


class MLP(nnx.Module):
    """``x: [B, K]`` -> ``[B, OUT]``: first -> relu -> second."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.first = nnx.Linear(K, HIDDEN, rngs=rngs)
        self.second = nnx.Linear(HIDDEN, OUT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.second(nnx.relu(self.first(x)))


def runner(batches: list[np.ndarray]):
    return lambda m: [m(x) for x in batches]


def kernel(layer: LutLinear) -> np.ndarray:
    return np.asarray(layer.kernel.get_value().dequantize())


def test_calibrated_beats_data_free_on_held_out_inputs():
    batches = [correlated_inputs(512, s) for s in range(4)]
    held_out = correlated_inputs(1024, 100)
    ref = np.asarray(MLP(nnx.Rngs(0))(held_out))
    free = quantize_model(MLP(nnx.Rngs(0)), CONFIG)
    calibrated = quantize_model(MLP(nnx.Rngs(0)), CONFIG, calibrate=runner(batches))
    assert isinstance(calibrated.first, LutLinear) and isinstance(calibrated.second, LutLinear)
    err_free = np.linalg.norm(np.asarray(free(held_out)) - ref)
    err_cal = np.linalg.norm(np.asarray(calibrated(held_out)) - ref)
    assert err_cal < 0.7 * err_free, (err_cal, err_free)


def test_first_layer_equals_manual_and_second_is_sequential():
    batches = [correlated_inputs(200, s) for s in range(3)]
    x = np.concatenate(batches)
    dense = MLP(nnx.Rngs(0))
    w1, b1 = dense.first.kernel.get_value(), dense.first.bias.get_value()
    w2 = dense.second.kernel.get_value()
    q, summary = quantize_model(
        MLP(nnx.Rngs(0)), CONFIG, calibrate=runner(batches), return_summary=True
    )
    assert [layer.path for layer in summary.layers] == ["first", "second"]
    # First layer: quantize_calibrated on its concatenated inputs.
    manual1 = quantize_calibrated(w1, Calibration.from_inputs(x), CONFIG)
    np.testing.assert_allclose(kernel(q.first), manual1.dequantize(), atol=1e-5)
    # Second layer: on the *quantized* first layer's outputs, not the float ones.
    lut1 = LutLinear.from_linear(dense.first, CONFIG)
    lut1.kernel.set_value(manual1)
    h_quant = np.asarray(nnx.relu(lut1(x)))
    h_float = np.asarray(nnx.relu(x @ w1 + b1))
    sequential = quantize_calibrated(w2, Calibration.from_inputs(h_quant), CONFIG).dequantize()
    parallel = quantize_calibrated(w2, Calibration.from_inputs(h_float), CONFIG).dequantize()
    assert float(np.max(np.abs(sequential - parallel))) > 1e-3  # the order is observable
    np.testing.assert_allclose(kernel(q.second), sequential, atol=1e-5)
    # The wrappers are gone and the model still runs.
    assert q(x[:4]).shape == (4, OUT)


def test_bad_calibrate_errors():
    x = correlated_inputs(64, 0)
    with pytest.raises(TypeError, match="callable"):
        quantize_model(MLP(nnx.Rngs(0)), CONFIG, calibrate=[x])
    with pytest.raises(ValueError, match="never called the selected layers first, second"):
        quantize_model(MLP(nnx.Rngs(0)), CONFIG, calibrate=lambda m: None)
    # Only the first layer called: the second is named in the next pass.
    with pytest.raises(ValueError, match="never called the selected layers second"):
        quantize_model(MLP(nnx.Rngs(0)), CONFIG, calibrate=lambda m: m.first(x))
    with pytest.raises(TypeError, match="eagerly"):
        quantize_model(MLP(nnx.Rngs(0)), CONFIG, calibrate=lambda m: nnx.jit(lambda m: m(x))(m))
    for options in ({"act_order": True}, {"damp": 0.1}):
        with pytest.raises(ValueError, match="calibrate= only"):
            quantize_model(MLP(nnx.Rngs(0)), CONFIG, **options)
    # A failed pass restores the float layers.
    model = MLP(nnx.Rngs(0))

    def boom(m):
        m(x)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        quantize_model(model, CONFIG, calibrate=boom)
    assert type(model.first) is nnx.Linear and type(model.second) is nnx.Linear


def test_act_order_is_passed_through():
    batches = [correlated_inputs(300, 3)]
    dense = MLP(nnx.Rngs(0))
    w1 = dense.first.kernel.get_value()
    q = quantize_model(
        MLP(nnx.Rngs(0)), CONFIG, include="first", calibrate=runner(batches), act_order=True
    )
    manual = quantize_calibrated(w1, Calibration.from_inputs(batches[0]), CONFIG, act_order=True)
    np.testing.assert_allclose(kernel(q.first), manual.dequantize(), atol=1e-5)
    plain = quantize_calibrated(w1, Calibration.from_inputs(batches[0]), CONFIG).dequantize()
    assert float(np.max(np.abs(plain - manual.dequantize()))) > 1e-4  # act_order is observable
    assert type(q.second) is nnx.Linear


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.fc1 = nnx.Linear(K, K, rngs=rngs)
        self.fc2 = nnx.Linear(K, K, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(nnx.relu(self.fc1(x)))


class Stack(nnx.Module):
    """``layers[0]``, ``layers[1]`` (an ``nnx.List`` of blocks), then a ``head``."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([Block(rngs), Block(rngs)])
        self.head = nnx.Linear(K, OUT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.layers:
            x = block(x)
        return self.head(x)


def test_one_pass_per_block_of_an_nnx_list_and_head():
    assert stage_of(("layers", 1, "fc2")) == ("layers", 1)
    assert stage_of(("layers", "fc2")) == ("layers", "fc2")
    x = correlated_inputs(128, 2)
    seen = []

    def calibrate(m):
        # Which layers run quantized in this pass.
        seen.append([type(b.fc1).__name__ for b in m.layers] + [type(m.head).__name__])
        m(x)

    model = quantize_model(Stack(nnx.Rngs(0)), CONFIG, calibrate=calibrate)
    assert len(seen) == 3, seen
    assert seen[1][0] == "LutLinear" and seen[2][:2] == ["LutLinear", "LutLinear"]
    assert all(isinstance(b.fc2, LutLinear) for b in model.layers)
    assert isinstance(model.head, LutLinear)
