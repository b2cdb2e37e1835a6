"""The CUDA kernels on a real GPU (skipped without one): correctness vs a float64 reference,
determinism, the large-M path, errors from the handler; every group size (16 included) and both
scale forms (per-plane alpha ``[G, q, N]`` and uniform ``[G, 1, N]``). Run on a GPU machine with
the CUDA extension built: ``pytest tests/test_gpu.py``.

Tolerances as in tests/test_cuda_emulation.py (float32 accumulation: ``2e-5 * (|x| @ |W|)``, plus
half an ulp of a 16-bit output); the large-M path rounds W_hat to x's dtype before XLA's dot, so
it adds half an ulp of that dtype times ``|x| @ |W|``.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from lutgemm_jax import _native, ops
from lutgemm_jax.format import offset_operand
from lutgemm_jax.testing import random_weight


def _has_gpu() -> bool:
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False


pytestmark = pytest.mark.skipif(
    not (_has_gpu() and _native.HAS_CUDA), reason="needs a CUDA GPU and the CUDA extension"
)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
NP = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
ULP = {"float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}


def make(rng, m, k, n, q, g, has_offset, x_dtype, a_dtype, uniform=False):
    w, w64 = random_weight(rng, k, n, q, g, has_offset, DTYPES[a_dtype], uniform=uniform)
    x = rng.normal(size=(m, k)).astype(NP[x_dtype])
    return jnp.asarray(x), w, x.astype(np.float64), w64


def check(x, w, x64, w64, dequant_path=False):
    y = np.asarray(jax.jit(ops.lut_gemm)(x, w).astype(jnp.float32), np.float64)
    ref, scale = x64 @ w64, np.abs(x64) @ np.abs(w64)
    dt = jnp.dtype(x.dtype).name
    tol = 2e-5 * scale + ULP[dt] * np.abs(ref) + (2.0**-24 if dt == "float16" else 0)
    if dequant_path:
        tol += ULP[dt] * scale
    err = np.abs(y - ref)
    assert (err <= tol).all(), f"max err {err.max()} (tol {tol.ravel()[np.argmax(err)]})"


CASES = list(itertools.product(range(1, 9), [16, 32, 128, -1], [True, False], [False, True]))


@pytest.mark.parametrize("i,case", list(enumerate(CASES)))
def test_lut_matrix(i, case):
    """q = 1..8 x g in {16, 32, 128, per-column} x offset x uniform scales, rotating M = 1..8,
    ragged K, odd N and the dtypes."""
    q, g, has_offset, uniform = case
    dts = list(DTYPES)
    m, k, n = 1 + i % 8, [100, 300, 1000, 4097, 48][i % 5], [1, 3, 67, 1024, 4100, 515][i % 6]
    rng = np.random.default_rng(i)
    check(*make(rng, m, k, n, q, g, has_offset, dts[i % 3], dts[i // 3 % 3], uniform))


@pytest.mark.parametrize("x_dtype,a_dtype", list(itertools.product(DTYPES, DTYPES)))
def test_dtypes(x_dtype, a_dtype):
    check(*make(np.random.default_rng(0), 4, 1000, 515, 3, 128, True, x_dtype, a_dtype))


@pytest.mark.parametrize("g,uniform", [(64, False), (16, False), (16, True), (128, True)])
@pytest.mark.parametrize("m", [9, 16, 64])
@pytest.mark.parametrize("x_dtype", list(DTYPES))
def test_large_m_path(m, x_dtype, g, uniform):
    rng = np.random.default_rng(m)
    w_args = (m, 700, 300, 4, g, True, x_dtype, "float32", uniform)
    check(*make(rng, *w_args), dequant_path=True)


@pytest.mark.parametrize(
    "k,q,g,has_offset,uniform",
    [
        (12288, 3, 128, False, False),
        (4096, 6, 16, True, True),
        (4096, 3, 16, True, False),
        (4096, 4, 32, True, True),
    ],
)
def test_decode_shape_split_k_deterministic(k, q, g, has_offset, uniform):
    """K x 12288, batch 1: split-K over the SMs (11 slices); bitwise repeatable. g = 16 with
    uniform scales is the shape of a Q6_K / Q3_K import, g = 32 uniform with offset a Q4_K one."""
    rng = np.random.default_rng(1)
    x, w, x64, w64 = make(rng, 1, k, 12288, q, g, has_offset, "bfloat16", "bfloat16", uniform)
    check(x, w, x64, w64)
    f = jax.jit(ops.lut_gemm)
    a, b = np.asarray(f(x, w)), np.asarray(f(x, w))
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("g,uniform", [(32, False), (16, True)])
def test_nonfinite_propagate(g, uniform):
    rng = np.random.default_rng(2)
    x, w, x64, w64 = make(rng, 2, 300, 67, 3, g, True, "float32", "float32", uniform)
    x = x.at[0, 7].set(jnp.nan).at[1, 299].set(jnp.inf)
    y = np.asarray(jax.jit(ops.lut_gemm)(x, w))
    assert np.isnan(y[0]).all() and (~np.isfinite(y[1])).all()


def test_handler_rejects_bad_operands():
    """A call whose attributes disagree with the operands fails with the handler's message."""
    x, w, _, _ = make(np.random.default_rng(3), 1, 64, 8, 2, 32, False, "float32", "float32")
    call = jax.ffi.ffi_call(
        _native.CUDA_TARGET,
        (jax.ShapeDtypeStruct((1, 8), jnp.float32), jax.ShapeDtypeStruct((0,), jnp.float32)),
    )
    offset = offset_operand(None, w.alpha)
    with pytest.raises(Exception, match="lut_gemm"):
        jax.block_until_ready(
            jax.jit(
                lambda *a: call(
                    *a,
                    in_features=np.int64(64),
                    out_features=np.int64(8),
                    num_bits=np.int64(3),  # the weight has 2 planes
                    group_size=np.int64(32),
                )
            )(x, w.bits, w.alpha, offset)
        )
