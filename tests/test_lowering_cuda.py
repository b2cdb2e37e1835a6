"""The CUDA lowering of `lut_gemm` (no GPU needed): custom calls, attributes, path choice, export.

Needs the CUDA extension (`lutgemm_jax._lutgemm_cuda`, statically linked against cudart so it
imports without a GPU). Skipped only when the build did not compile CUDA; a build that compiled
it but cannot import it fails.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lutgemm_jax import _native, lowering
from lutgemm_jax.format import BCQWeight
from lutgemm_jax.ops import lut_gemm
from lutgemm_jax.testing import random_packed_weight, random_weight


def _cuda_compiled() -> bool:
    config = Path(_native.__file__).with_name("_build_config.json")
    if config.exists():
        return bool(json.loads(config.read_text()).get("cuda"))
    return shutil.which("nvcc") is not None


if not _native.HAS_CUDA and not _cuda_compiled():
    pytest.skip("the CUDA extension was not built (no nvcc)", allow_module_level=True)


def test_cuda_extension_registered():
    assert _native.HAS_CUDA, "CUDA was compiled but lutgemm_jax._lutgemm_cuda does not import"
    from lutgemm_jax import _lutgemm_cuda

    assert set(_lutgemm_cuda.registrations()) == {
        _native.CUDA_TARGET,
        _native.CUDA_DEQUANT_TARGET,
    }


def make_weight(k=300, n=96, q=3, g=128, has_offset=True, dtype=jnp.bfloat16) -> BCQWeight:
    return random_packed_weight(np.random.default_rng(0), k, n, q, g, has_offset, dtype)


def lower_cuda(x, w) -> str:
    return jax.jit(lut_gemm).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()


def custom_calls(text: str) -> list[str]:
    return re.findall(r"stablehlo\.custom_call @(\w+)\(", text)


def attributes(text: str, target: str) -> dict[str, int]:
    line = next(ln for ln in text.splitlines() if f"@{target}(" in ln)
    config = re.search(r"backend_config = \{([^}]*)\}", line).group(1)
    return {m[0]: int(m[1]) for m in re.findall(r"(\w+) = (-?\d+) : i64", config)}


@pytest.mark.parametrize("rows", [(1,), (8,), (2, 4), (5,)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_lut_path(rows, dtype):
    w = make_weight()
    text = lower_cuda(jnp.zeros((*rows, w.in_features), dtype), w)
    assert custom_calls(text) == [_native.CUDA_TARGET]
    assert attributes(text, _native.CUDA_TARGET) == {
        "in_features": 300,
        "out_features": 96,
        "num_bits": 3,
        "group_size": 128,
    }
    assert "mhlo.backend_config = {" in text  # typed FFI attributes (API version 4)
    assert "dot_general" not in text
    # Results: y, and the split-K workspace (none here: K = 300 is too short to split).
    el = {jnp.float32: "f32", jnp.bfloat16: "bf16", jnp.float16: "f16"}[dtype]
    assert f"-> (tensor<{'x'.join(map(str, rows))}x96x{el}>, tensor<0xf32>)" in text


@pytest.mark.parametrize(
    "m,k,n,splits",
    [(1, 12288, 12288, 11), (8, 4096, 4096, 16), (1, 49152, 12288, 11), (4, 12288, 49152, 3)],
)
def test_lut_path_split_k_workspace(m, k, n, splits):
    """Decode shapes get a static split-K workspace of S * M * N float32 (S from the planner)."""
    w = BCQWeight(
        jax.ShapeDtypeStruct((k // 32, 3, n), jnp.uint32),
        jax.ShapeDtypeStruct((k // 128, 3, n), jnp.bfloat16),
        None,
        k,
        n,
        3,
        128,
    )
    assert lowering.cuda_splits(m, n, k // 32) == splits
    text = lower_cuda(jax.ShapeDtypeStruct((m, k), jnp.bfloat16), w)
    assert f"-> (tensor<{m}x{n}xbf16>, tensor<{splits * m * n}xf32>)" in text


@pytest.mark.parametrize("rows", [1, 8, 9])
@pytest.mark.parametrize("g,uniform", [(16, False), (16, True), (64, True)])
def test_group16_and_uniform_operands(rows, g, uniform):
    """g = 16 (Kp = K rounded up to 32: 2 groups per word) and uniform scales reach both handlers
    as they are: attribute group_size = g, alpha [G, 1, N] for uniform weights (the handlers read
    the form from alpha's shape; there is no attribute for it)."""
    w = random_packed_weight(
        np.random.default_rng(1), 300, 24, 4, g, True, jnp.float16, uniform=uniform
    )
    groups = 320 // g
    text = lower_cuda(jnp.zeros((rows, 300), jnp.bfloat16), w)
    target = (
        _native.CUDA_TARGET if rows <= lowering.CUDA_LUT_MAX_ROWS else _native.CUDA_DEQUANT_TARGET
    )
    assert custom_calls(text) == [target]
    assert attributes(text, target)["group_size"] == g
    line = next(ln for ln in text.splitlines() if f"@{target}(" in ln)
    assert "tensor<10x4x24xui32>" in line
    assert f"tensor<{groups}x{1 if uniform else 4}x24xf16>" in line
    assert f"tensor<{groups}x24xf16>" in line


def test_group16_split_k_workspace():
    """The split-K rule depends on words, not groups: g = 16 gets the same workspace as g = 128."""
    k, n = 4096, 4096
    w = BCQWeight(
        jax.ShapeDtypeStruct((k // 32, 4, n), jnp.uint32),
        jax.ShapeDtypeStruct((k // 16, 1, n), jnp.float32),
        None,
        k,
        n,
        4,
        16,
    )
    splits = lowering.cuda_splits(1, n, k // 32)
    assert splits > 1
    text = lower_cuda(jax.ShapeDtypeStruct((1, k), jnp.bfloat16), w)
    assert f"-> (tensor<1x{n}xbf16>, tensor<{splits * n}xf32>)" in text


@pytest.mark.parametrize("has_offset", [True, False])
def test_lut_path_offset_operand(has_offset):
    w = make_weight(k=64, n=5, q=6, g=32, has_offset=has_offset, dtype=jnp.float32)
    text = lower_cuda(jnp.zeros((3, 64), jnp.bfloat16), w)
    line = next(ln for ln in text.splitlines() if f"@{_native.CUDA_TARGET}(" in ln)
    offset_type = "tensor<2x5xf32>" if has_offset else "tensor<0x5xf32>"
    assert offset_type in line and "tensor<3x5xbf16>" in line
    assert attributes(text, _native.CUDA_TARGET)["num_bits"] == 6


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_large_m_path(dtype):
    """M > 8: CUDA dequantization to x's dtype, then XLA's dot with float32 accumulation."""
    w = make_weight(k=200, n=40, q=4, g=64)
    text = lower_cuda(jnp.zeros((3, 3, 200), dtype), w)
    assert custom_calls(text) == [_native.CUDA_DEQUANT_TARGET]
    assert attributes(text, _native.CUDA_DEQUANT_TARGET) == {
        "in_features": 200,
        "out_features": 40,
        "num_bits": 4,
        "group_size": 64,
    }
    el = {jnp.float32: "f32", jnp.bfloat16: "bf16", jnp.float16: "f16"}[dtype]
    line = next(ln for ln in text.splitlines() if f"@{_native.CUDA_DEQUANT_TARGET}(" in ln)
    assert f"-> tensor<200x40x{el}>" in line
    dot = next(ln for ln in text.splitlines() if "stablehlo.dot_general" in ln)
    assert "-> tensor<9x40xf32>" in dot or "tensor<3x3x40xf32>" in dot


def test_zero_rows():
    w = make_weight()
    text = lower_cuda(jnp.zeros((0, 300), jnp.bfloat16), w)
    assert custom_calls(text) == [_native.CUDA_TARGET]
    assert "-> (tensor<0x96xbf16>, tensor<0xf32>)" in text


def test_crossover_constant():
    assert lowering.CUDA_LUT_MAX_ROWS == 8
    w = make_weight()
    assert custom_calls(lower_cuda(jnp.zeros((9, 300), jnp.bfloat16), w)) == [
        _native.CUDA_DEQUANT_TARGET
    ]


def test_export_cpu_and_cuda():
    w = make_weight(k=100, n=24, q=2, g=32)
    x = jnp.ones((2, 100), jnp.bfloat16)
    exported = jax.export.export(
        jax.jit(lut_gemm),
        platforms=["cpu", "cuda"],
        disabled_checks=[
            jax.export.DisabledSafetyCheck.custom_call(_native.CUDA_TARGET),
            jax.export.DisabledSafetyCheck.custom_call(_native.CUDA_DEQUANT_TARGET),
            jax.export.DisabledSafetyCheck.custom_call(_native.CPU_TARGET),
        ],
    )(x, w)
    blob = exported.serialize()
    assert isinstance(blob, (bytes, bytearray)) and len(blob) > 0
    text = exported.mlir_module()
    assert f"@{_native.CUDA_TARGET}(" in text
    # The round trip runs on this machine's CPU and agrees with a direct call.
    restored = jax.export.deserialize(blob)
    np.testing.assert_array_equal(
        np.asarray(restored.call(x, w), np.float32), np.asarray(lut_gemm(x, w), np.float32)
    )


def test_export_large_m():
    w = make_weight(k=64, n=8, q=1, g=32, has_offset=False, dtype=jnp.float32)
    x = jnp.ones((16, 64), jnp.float32)
    exported = jax.export.export(
        jax.jit(lut_gemm),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(_native.CUDA_DEQUANT_TARGET)],
    )(x, w)
    assert len(exported.serialize()) > 0
    assert f"@{_native.CUDA_DEQUANT_TARGET}(" in exported.mlir_module()


# ---- the handlers receive canonical bits, and no layout attribute ----------------------------


@pytest.mark.parametrize("path", lowering.CUDA_PATHS)
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
    lowering.cuda_kernel(jnp.ones((2, 100)), c, path=path)
    bits = next(a for a in seen["operands"] if a.dtype == jnp.uint32)
    np.testing.assert_array_equal(np.asarray(bits), np.asarray(w.bits))
    assert set(seen["attributes"]) == {"in_features", "out_features", "num_bits", "group_size"}


def test_cuda_kernel_rejects_bad_path():
    w = make_weight()
    match = r"cuda_kernel: path must be one of \('lut', 'dequant_dot'\)"
    with pytest.raises(ValueError, match=match):
        lowering.cuda_kernel(jnp.ones((1, 300), jnp.bfloat16), w, path="dense")
