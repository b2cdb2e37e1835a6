"""Property-based tests (hypothesis): packed weight -> ``lut_gemm`` agrees with float64.

Over random shapes (K 1..300, N 1..70, zero to three batch dims, including empty ones), q 1..8,
g in {16, 32, 64, 128, per-column} with per-plane or uniform scales (alpha [G, 1, N], plane i
scaled by 2^i), offset on/off, activation and alpha dtypes in {float32, bfloat16, float16}, sign
patterns and activation scales, four implementations are checked against ``x64 @ W64``
(lutgemm_jax/testing.py: the dense matrix built in float64 from the unpacked signs, independent
of the code under test):

* the native CPU kernel through the public op, in each path (exact LUT, fast LUT, dense tiles),
  code path (portable / AVX2) and thread count, with the output poisoned beforehand;
* the CUDA kernels under the CPU emulation harness (tests/cuda_emu): the LUT kernel with its
  planned or forced split-K, and the dequantization kernel;
* the pure-jnp lowering (``lowering.jnp_lowering``);
* and quantize -> pack -> ``lut_gemm`` for the three quantizers on weights of any scale.

Tolerances (y: the result; ref = x64 @ W64; scale = |x64| @ |W64|, elementwise):
* float32 accumulation (exact, dense, jnp, quantized): ``|y - ref| <= max(1e-5 max|ref|,
  2e-5 scale)``: the kernel tests' 1e-5 contract, or the emulation tests' float32 summation bound
  (K <= 300: 300 * 2^-24 < 2e-5) where the sum cancels.
* fast: plus the stated worst-case int8-table bound of tests/test_lowering_cpu.py (fast_bound).
* CUDA emulation: tests/test_cuda_emulation.py's ``tolerance`` (2e-5 scale + output rounding).
* bfloat16 / float16 outputs: plus half an ulp of |ref| (2^-8 / 2^-11) and, for float16, the
  subnormal spacing 2^-24.

Profiles (tests/conftest.py): "ci" (default: derandomized, fixed examples; this file takes about
a minute) and "long" (``HYPOTHESIS_PROFILE=long``: 20x the examples, random).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import test_cuda_emulation as emulation
import test_lowering_cpu as cpu_tests
from hypothesis import given, note, settings
from hypothesis import strategies as st

import lutgemm_jax as lj
from lutgemm_jax import lowering, ops
from lutgemm_jax.format import (
    BCQWeight,
    offset_operand,
    padded_in_features,
    resolve_group_size,
)
from lutgemm_jax.testing import dense_float64, pack_words, weight_float64

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
HALF_ULP = {"float32": 0.0, "bfloat16": 2.0**-8, "float16": 2.0**-11}
EXAMPLES = settings.default.max_examples  # from the profile: 25 (ci) or 500 (long)


def examples(fraction: float) -> int:
    return max(2, int(EXAMPLES * fraction))


@contextlib.contextmanager
def environ(**values):
    """Sets (value) or removes (None) environment variables for the block."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- problems ------------------------------------------------------------------------------


@st.composite
def problems(draw, max_rows: int | None = None):
    """A random packed weight, its float64 twin, and activations: a dict."""
    k = draw(st.integers(1, 300))
    n = draw(st.integers(1, 70))
    q = draw(st.integers(1, 8))
    g = draw(st.sampled_from([16, 32, 64, 128, None]))
    uniform = draw(st.booleans())
    has_offset = draw(st.booleans())
    x_dtype = draw(st.sampled_from(list(DTYPES)))
    a_dtype = draw(st.sampled_from(list(DTYPES)))
    dims = st.integers(0, 5) if max_rows is None else st.integers(0, max_rows)
    batch = tuple(draw(st.lists(dims, min_size=0, max_size=3)))
    if max_rows is not None and int(np.prod(batch)) > max_rows:
        batch = (max_rows,)
    signs_kind = draw(st.sampled_from(["random", "random", "all +1", "all -1"]))
    x_scale = draw(st.sampled_from([1.0, 2.0**-8] + ([] if x_dtype == "float16" else [2.0**8])))
    zero_rows = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))

    rng = np.random.default_rng(seed)
    gg = resolve_group_size(k, g)
    kp = padded_in_features(k, gg)
    if signs_kind == "random":
        signs = rng.random((k, q, n)) < 0.5
    else:
        signs = np.full((k, q, n), signs_kind == "all +1")
    alpha = rng.uniform(0.1, 1.0, (kp // gg, 1 if uniform else q, n)).astype(DTYPES[a_dtype])
    offset = rng.normal(size=(kp // gg, n)).astype(DTYPES[a_dtype]) if has_offset else None
    w = BCQWeight(
        bits=jnp.asarray(pack_words(np.pad(signs, ((0, kp - k), (0, 0), (0, 0))))),
        alpha=jnp.asarray(alpha),
        offset=None if offset is None else jnp.asarray(offset),
        in_features=k,
        out_features=n,
        num_bits=q,
        group_size=gg,
    )
    w.validate()
    x = rng.normal(size=(*batch, k)) * x_scale
    if zero_rows and x.size:
        x.reshape(-1, k)[::2] = 0.0
    x = np.asarray(x).astype(DTYPES[x_dtype])
    note(
        f"K={k} N={n} q={q} g={g} uniform={uniform} offset={has_offset} x={x_dtype}{list(x.shape)} "
        f"alpha={a_dtype} signs={signs_kind} x_scale={x_scale} seed={seed}"
    )
    w64 = dense_float64(signs, alpha, offset, gg)
    return dict(w=w, w64=w64, x=x, x_dtype=x_dtype)


def reference(x, w64):
    """(x64 @ W64, |x64| @ |W64|) in float64."""
    x64 = np.asarray(x).astype(np.float32).astype(np.float64)  # numpy: no per-shape compiles
    return x64 @ w64, np.abs(x64) @ np.abs(w64)


def assert_close(y, x, w64, x_dtype, extra=0.0):
    """The float32-accumulation tolerance of the module docstring, plus ``extra`` (elementwise)."""
    ref, scale = reference(x, w64)
    y = np.asarray(y).astype(np.float32).astype(np.float64)
    assert y.shape == ref.shape
    assert np.isfinite(y).all(), "a non-finite output (poison left, or overflow)"
    if not ref.size:
        return
    tol = np.maximum(1e-5 * np.max(np.abs(ref)), 2e-5 * scale) + extra
    tol = tol + HALF_ULP[x_dtype] * np.abs(ref) * 1.01 + (2.0**-24 if x_dtype == "float16" else 0)
    excess = np.abs(y - ref) - tol
    assert np.max(excess) <= 0, (
        f"max error {np.max(np.abs(y - ref))} exceeds tolerance by {np.max(excess)} "
        f"at {np.unravel_index(np.argmax(excess), excess.shape)}"
    )


# ---- native CPU kernel through the public op -----------------------------------------------


@settings(max_examples=examples(2.4))
@given(
    p=problems(),
    path=st.sampled_from(["exact", "fast", "dense"]),
    isa=st.sampled_from(cpu_tests.ISAS),
    threads=st.sampled_from([None, "1", "2", "3"]),
)
def test_native_op_matches_float64(p, path, isa, threads):
    x, w = p["x"], p["w"]
    mode = "fast" if path == "fast" else "exact"
    crossover = dict(lowering.CPU_CROSSOVER)
    # The op takes the dense path from CPU_CROSSOVER rows on (static, read while lowering).
    lowering.CPU_CROSSOVER[mode] = 0 if path == "dense" else 1 << 62
    try:
        with environ(LUTGEMM_CPU_ISA=isa, LUTGEMM_CPU_THREADS=threads, LUTGEMM_CPU_POISON="1"):
            f = jax.jit(lambda x, w: lj.lut_gemm(x, w, mode=mode))
            y = f(x, w)
    finally:
        lowering.CPU_CROSSOVER.update(crossover)
    assert y.dtype == x.dtype
    extra = 0.0
    if path == "fast" and x.size:
        extra = cpu_tests.fast_bound(x, w) * (1 + 1e-3)
    assert_close(y, x, p["w64"], p["x_dtype"], extra)


# ---- pure-jnp lowering ---------------------------------------------------------------------


@settings(max_examples=examples(1.2))
@given(p=problems())
def test_reference_lowering_matches_float64(p):
    w = p["w"]
    offset = offset_operand(w.offset, w.alpha)
    f = jax.jit(lambda x, b, a, o: lowering.jnp_lowering(x, b, a, o, **ops.weight_params(w)))
    y = f(p["x"], w.bits, w.alpha, offset)
    assert y.dtype == p["x"].dtype
    assert_close(y, p["x"], p["w64"], p["x_dtype"])


# ---- CUDA kernels under the CPU emulation --------------------------------------------------


@functools.cache
def emulation_lib():
    """The emulation harness, compiled once per test session (shared by the reliability tests)."""
    if not shutil.which("g++"):
        pytest.skip("needs g++")
    out_dir = Path(tempfile.mkdtemp(prefix="lutgemm_emu_"))
    return emulation._bind(emulation._compile(out_dir, ["-O1"]))


@pytest.fixture(scope="module")
def emu():
    return emulation_lib()


def _np(a):
    a = np.asarray(a)
    return a.astype(ml_dtypes.bfloat16) if a.dtype.name == "bfloat16" else a


def emulation_problem(p):
    """The emulation harness's problem dict for a weight from `problems`."""
    w, x = p["w"], p["x"]
    k = w.in_features
    m = int(np.prod(x.shape[:-1]))
    return dict(
        x=np.ascontiguousarray(_np(x).reshape(m, k)),
        bits=np.ascontiguousarray(np.asarray(w.bits)),
        alpha=np.ascontiguousarray(_np(w.alpha)),
        offset=np.ascontiguousarray(_np(w.offset)) if w.has_offset else None,
        m=m,
        k=k,
        n=w.out_features,
        q=w.num_bits,
        g=w.group_size,
    )


@settings(max_examples=examples(2.4))
@given(
    p=problems(max_rows=lowering.CUDA_LUT_MAX_ROWS),
    splits=st.sampled_from([0, 1, 2, 3]),
)
def test_emulation_lut_kernel_matches_float64(emu, p, splits):
    """The CUDA LUT path (M <= 8 rows), with the planned split-K (0) or a forced one."""
    e = emulation_problem(p)
    y, used = emulation.run_lut(emu, e, splits=splits, num_sms=8)
    assert used >= 1
    ref, scale = reference(p["x"], p["w64"])
    ref, scale = ref.reshape(e["m"], e["n"]), scale.reshape(e["m"], e["n"])
    err = np.abs(y.astype(np.float64) - ref)
    assert (err <= emulation.tolerance(ref, scale, p["x_dtype"])).all(), np.max(err)


@settings(max_examples=examples(0.8))
@given(p=problems(max_rows=1), w_dtype=st.sampled_from(list(DTYPES)))
def test_emulation_dequant_kernel_matches_float64(emu, p, w_dtype):
    """The CUDA large-M path's dequantization kernel: W_hat in float32/bfloat16/float16."""
    e = emulation_problem(p)
    dense = emulation.run_dequant(emu, e, w_dtype).astype(np.float64)
    ref = p["w64"]
    tol = 1e-6 * np.abs(ref).max() * e["q"] + HALF_ULP[w_dtype] * 1.01 * np.abs(ref)
    assert (np.abs(dense - ref) <= tol).all()


# ---- quantize -> pack -> lut_gemm ----------------------------------------------------------


@st.composite
def weights(draw):
    """Dense float32 weights of any finite kind and scale (the quantizer's input)."""
    k = draw(st.integers(1, 300))
    n = draw(st.integers(1, 70))
    kind = draw(
        st.sampled_from(["normal", "zeros", "constant", "huge", "tiny", "denormal", "mixed groups"])
    )
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(k, n))
    if kind == "zeros":
        w = np.zeros((k, n))
    elif kind == "constant":
        w = np.full((k, n), rng.normal())
    elif kind == "huge":
        w = w * 1e30
    elif kind == "tiny":
        w = w * 1e-30
    elif kind == "denormal":
        w = rng.integers(-3, 4, (k, n)) * float(np.finfo(np.float32).smallest_subnormal)
    elif kind == "mixed groups":  # per 32-row band: scales from 1e-30 to 1e30, some all-zero
        scales = 10.0 ** rng.integers(-30, 31, (-(-k // 32), 1))
        scales[rng.random(scales.shape) < 0.2] = 0.0
        w = w * np.repeat(scales, 32, axis=0)[:k]
    note(f"W: {kind} [{k}, {n}] seed={seed}")
    return w.astype(np.float32)


@settings(max_examples=examples(0.2))
@given(
    W=weights(),
    bits=st.integers(1, 8),
    g=st.sampled_from([16, 32, 64, 128, None]),
    method=st.sampled_from(["greedy", "alternating", "rtn"]),
    fit_offset=st.booleans(),
    alpha_dtype=st.sampled_from(list(DTYPES)),
)
def test_quantize_pack_lut_gemm_matches_float64(W, bits, g, method, fit_offset, alpha_dtype):
    """Finite in, finite out, and the packed result multiplies like its float64 twin."""
    w = lj.quantize(
        W,
        bits,
        g,
        method,
        rounds=3,
        fit_offset=fit_offset and method != "rtn",
        alpha_dtype=DTYPES[alpha_dtype],
        layout="canonical",  # unpack64 reads canonical sign words
    )
    arrays = [w.alpha] + ([w.offset] if w.has_offset else [])
    assert all(np.isfinite(np.asarray(a, np.float32)).all() for a in arrays)
    w64 = weight_float64(w)
    assert np.isfinite(w64).all()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, W.shape[0])), jnp.float32)
    y = jax.jit(lambda x, w: lj.lut_gemm(x, w, mode="exact"))(x, w)
    ref, _ = reference(x, w64)
    if np.abs(ref).max() < 1e36:  # |W| near float32's max can overflow the float32 product
        assert_close(y, x, w64, "float32")
