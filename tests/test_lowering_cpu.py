"""The native CPU kernel (cpu/) and its lowering: every kernel path vs a float64 reference.

The kernel is called through `lutgemm_jax.lowering.cpu_kernel` (so every mode, batch size and
path is reachable regardless of the op's crossover), with the ISA code path forced by
``LUTGEMM_CPU_ISA`` and the thread count by ``LUTGEMM_CPU_THREADS`` (both read per call).
Three kernel paths (``KERNELS``): lookup tables in "exact" and "fast" mode, and "dense" (FFI
attribute path = 1, the large-batch path the op switches to at ``lowering.CPU_CROSSOVER``:
dequantized 256 x 64 tiles and an FMA GEMM). ``LUTGEMM_CPU_POISON=1`` makes the handler fill the
output with NaN before computing, so a finite result proves that every element was written. Sign
words are passed in both layouts (``layout`` fixture): canonical, and the "cpu" byte-major layout,
produced here by an independent numpy transcription of its definition in
include/lutgemm/bcq_format.h (`lutgemm_jax.testing.cpu_layout_words`).

Tolerances (max |y - y64| over max |y64|, y64 = float64 x @ W_hat from the unpacked signs):
* exact and dense, float32: 1e-5 (the library's contract; float32 tables of 4 activations,
  float32 sums of <= 32 lookups per scale block, then FMAs into a float32 accumulator; the dense
  path: float32 FMAs over K).
* fast: the stated worst-case bound, per output element,
      |y_fast - y_exact| <= sum_{chunks c} (s_b(c) / 2) * sum_i |alpha_i[grp(c), n]|
  over the Kp/4 chunks c of 4 activations, with s_b = max_{chunks c' in b} sum_{j<4} |x[4c'+j]|
  / 127 the table step of c's scale block b (S activations: the largest of 128/96/64/32
  dividing g; 32, one sign word, for g = 16), and alpha_i the plane scales (alpha * 2^i for a
  uniform weight): each chunk is looked up once per plane and its int8 entry is off by at most
  half a step. For g >= 32 this is sum_b (S/4) (s_b/2) sum_i |alpha_i[grp(b), n]|. Uniform
  weights in fast mode combine the integer plane sums exactly (sum_i 2^i acc_i, below 2^21) and
  scale once, so the table rounding is the only error beyond float32 rounding and the same bound
  holds. Plus the exact-mode tolerance.
* bfloat16 / float16 outputs are rounded once: + 2^-8 / 2^-10 of max |y| (a half ulp at the
  largest element, with margin for rounding of the intermediate result).
"""

import dataclasses
import functools
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lutgemm_jax as lj
from lutgemm_jax import _lutgemm_cpu, _native, lowering, ops
from lutgemm_jax.format import offset_operand, padded_in_features, resolve_group_size
from lutgemm_jax.testing import cpu_layout_words, random_weight, reference, rel_err

MODES = ("exact", "fast")
# Each kernel path as (mode, path) of `lowering.cpu_kernel`; the dense path reads no mode.
KERNELS = {"exact": ("exact", "lut"), "fast": ("fast", "lut"), "dense": ("exact", "dense")}
ALL_PATHS = tuple(KERNELS)
# Every code path this CPU can take (LUTGEMM_CPU_ISA): portable, AVX2, and where the CPU has it
# AVX-512 (the fast lookup kernel and the dense micro-kernel; "avx2" keeps both on AVX2).
ISAS = ("portable",) + (("avx2",) if _lutgemm_cpu.avx2_supported() else ())
ISAS += ("avx512",) if _lutgemm_cpu.avx512_supported() else ()
OUT_TOL = {jnp.float32: 0.0, jnp.bfloat16: 2.0**-8, jnp.float16: 2.0**-10}
EXACT_TOL = 1e-5


LAYOUTS = ("canonical", "cpu")  # FFI attribute layout = index

# Weight formats (the format contract, lutgemm_jax/format.py): per-plane scales with the test's
# own group size ("bcq"), 16-row groups (two per sign word), uniform scales (alpha [G, 1, N],
# plane i scaled by 2^i), and both. Each selects its own kernel specialisation.
FORMATS = {"bcq": (False, False), "g16": (True, False), "uniform": (False, True)}
FORMATS["g16-uniform"] = (True, True)


def test_cpu_layout_words_moves_bytes_as_specified():
    # The testing module's transcription of the layout, checked byte by byte against the
    # definition.
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=(2, 3, 70), dtype=np.uint32)
    out = cpu_layout_words(bits).view(np.uint8).reshape(2, 3, 70 * 4)
    src = bits.view(np.uint8).reshape(2, 3, 70, 4)
    for col in range(70):
        for j in range(4):
            at = (col // 32 * 128 + 32 * j + col % 32) if col < 64 else 4 * col + j
            np.testing.assert_array_equal(out[..., at], src[..., col, j])


@pytest.fixture(params=LAYOUTS)
def layout(request):
    return request.param


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.setenv("LUTGEMM_CPU_ISA", request.param)
    monkeypatch.setenv("LUTGEMM_CPU_POISON", "1")
    assert _lutgemm_cpu.selected_isa() == request.param
    return request.param


def ffi_attrs(w, mode="fast", path="lut"):
    """The CPU target's attributes for weight ``w``, spelled out (the attack tests change them)."""
    return {
        "in_features": np.int64(w.in_features),
        "out_features": np.int64(w.out_features),
        "num_bits": np.int64(w.num_bits),
        "group_size": np.int64(w.group_size),
        "layout": np.int64(LAYOUTS.index(w.layout)),
        "mode": np.int64(ops.MODES.index(mode)),
        "path": np.int64(lowering.CPU_PATHS.index(path)),
    }


@functools.partial(jax.jit, static_argnames=("kernel",))
def _kernel_call(x, w, kernel):
    mode, path = KERNELS[kernel]
    return lowering.cpu_kernel(x, w, mode=mode, path=path)


def _kernel_jit(x, w, kernel, layout="canonical"):
    """Kernel path ``kernel`` (`KERNELS`) on canonical weight ``w``, its sign words passed in
    ``layout`` (converted by the testing module's transcription, not by the library)."""
    if layout == "cpu":
        w = dataclasses.replace(w, bits=jnp.asarray(cpu_layout_words(w.bits)), layout="cpu")
    return _kernel_call(x, w, kernel)


def scale_block(g):
    """Activations per fast-mode table scale (see the module docstring)."""
    return next((c for c in (128, 96, 64, 32) if g % c == 0), 32)


def plane_scales(w):
    """alpha_i [G, q, N] in float64: the stored scales, or alpha * 2^i for a uniform weight."""
    alpha = np.asarray(w.alpha.astype(jnp.float32), np.float64)
    if alpha.shape[1] != w.num_bits:
        alpha = alpha * 2.0 ** np.arange(w.num_bits)[:, None]
    return alpha


def fast_bound(x, w):
    """Per-element worst-case |y_fast - y_exact| (see the module docstring), [..., N]."""
    k, g = w.in_features, w.group_size
    kp = padded_in_features(k, g)
    s = scale_block(g)
    x2 = np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64).reshape(-1, k)
    x2 = np.pad(x2, ((0, 0), (0, kp - k)))
    chunk_abs = np.abs(x2).reshape(x2.shape[0], kp // s, s // 4, 4).sum(-1)  # [M, B, S/4]
    step = np.repeat(chunk_abs.max(-1) / 127.0, s // 4, axis=1)  # [M, Kp/4]: each chunk's step
    alpha = np.repeat(np.abs(plane_scales(w)).sum(1), g // 4, axis=0)  # [Kp/4, N]
    bound = (step / 2) @ alpha
    return bound.reshape(*np.shape(x)[:-1], w.out_features)


def check(y, x, w, w64, mode, dtype=jnp.float32):
    ref = reference(x, w64)
    y = np.asarray(jnp.asarray(y).astype(jnp.float32), np.float64)
    assert y.shape == ref.shape
    assert np.all(np.isfinite(y)), "an output element was not written (poison left)"
    scale = max(np.max(np.abs(ref)), 1e-30)
    tol = (EXACT_TOL + OUT_TOL[dtype]) * scale
    if mode in ("exact", "dense"):
        assert np.max(np.abs(y - ref)) <= tol, rel_err(y, ref)
    else:
        excess = np.abs(y - ref) - (fast_bound(x, w) * (1 + 1e-3) + tol)
        assert np.max(excess) <= 0, float(np.max(excess))


def _case(
    seed,
    k,
    n,
    q,
    g,
    has_offset=True,
    batch=(3,),
    dtype=jnp.float32,
    alpha_dtype=jnp.float32,
    fmt="bcq",
):
    """Random activations [*batch, K] and weight; ``fmt`` (`FORMATS`) may replace g by 16 and
    make the scales uniform."""
    half, uniform = FORMATS[fmt]
    rng = np.random.default_rng(seed)
    g = 16 if half else g
    w, w64 = random_weight(rng, k, n, q, g, has_offset, alpha_dtype, uniform=uniform)
    x = jnp.asarray(rng.normal(size=(*batch, k)), dtype)
    return x, w, w64


@pytest.fixture(params=list(FORMATS))
def fmt(request):
    return request.param


@pytest.mark.parametrize("mode", ALL_PATHS)
@pytest.mark.parametrize("g", [16, 32, 64, 128, None])
@pytest.mark.parametrize("uniform", [False, True], ids=["bcq", "uniform"])
def test_all_q_groups_offsets(isa, layout, mode, g, uniform):
    # K not a multiple of 32 (or of g), odd N, N not a multiple of the 32/16-column vector block
    # (N = 53: a 16-column exact-mode vector block past the last whole 32-column block). g = 16
    # with K = 100: 7 groups of real rows, the 7th partial, and an 8th of padding only.
    for q in range(1, 9):
        for (k, n), has_offset in [((100, 53), q % 2 == 0), ((257, 70), q % 2 == 1)]:
            fmt = "uniform" if uniform else "bcq"
            x, w, w64 = _case(q * 1000 + k, k, n, q, g, has_offset, batch=(3,), fmt=fmt)
            assert w.uniform == (uniform or q == 1)
            check(_kernel_jit(x, w, mode, layout), x, w, w64, mode)


@pytest.mark.parametrize("mode", ALL_PATHS)
@pytest.mark.parametrize("batch", [(), (1,), (2, 3), (9,), (17,)])
def test_batch_and_leading_dims(isa, layout, mode, batch, fmt):
    # 9 and 17 rows: blocks of 4 rows plus remainders, and column tiling for M > 4.
    x, w, w64 = _case(5, 300, 129, 3, 128, True, batch=batch, fmt=fmt)
    y = _kernel_jit(x, w, mode, layout)
    assert y.shape == (*batch, 129)
    check(y, x, w, w64, mode)


@pytest.mark.parametrize("mode", ALL_PATHS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("alpha_dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("fmt", ["bcq", "g16", "uniform"])
def test_dtypes(isa, layout, mode, dtype, alpha_dtype, fmt):
    x, w, w64 = _case(7, 200, 67, 4, 64, True, (2,), dtype, alpha_dtype, fmt)
    y = _kernel_jit(x, w, mode, layout)
    assert y.dtype == dtype
    check(y, x, w, w64, mode, dtype)


@pytest.mark.parametrize("fmt", ["bcq", "uniform"])
def test_per_column_group_long_k(isa, layout, fmt):
    # g = K rounded up to 32: 12 scale blocks of 96 share one alpha per column.
    x, w, w64 = _case(3, 1150, 45, 2, None, True, batch=(2,), fmt=fmt)
    assert w.group_size == resolve_group_size(1150, None) == 1152
    for mode in ALL_PATHS:
        check(_kernel_jit(x, w, mode, layout), x, w, w64, mode)


@pytest.mark.parametrize("mode", ALL_PATHS)
def test_nan_inf_propagate_to_their_rows_only(isa, layout, mode, fmt):
    x, w, w64 = _case(9, 256, 70, 3, 128, True, batch=(5,), fmt=fmt)
    x = x.at[1, 17].set(jnp.nan).at[3, 200].set(jnp.inf)
    y = np.asarray(_kernel_jit(x, w, mode, layout))
    assert np.all(np.isnan(y[1]))
    assert not np.any(np.isfinite(y[3]))
    good = [0, 2, 4]
    assert np.all(np.isfinite(y[good]))
    check(y[good], x[jnp.array(good)], w, w64, mode)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_modes_and_paths_agree(monkeypatch, fmt):
    # Exact: portable and AVX2 agree to float32 rounding; fast: identical int8 tables and exact
    # integer sums, so they differ only by float32 rounding of the epilogue. The two sign layouts
    # feed the same sums in the same order: bitwise equal on each path.
    x, w, _ = _case(4, 512, 96, 3, 128, True, batch=(4,), fmt=fmt)
    for mode in ALL_PATHS:
        ys = []
        for isa_name in ISAS:
            monkeypatch.setenv("LUTGEMM_CPU_ISA", isa_name)
            ys.append(np.asarray(_kernel_jit(x, w, mode)))
            np.testing.assert_array_equal(np.asarray(_kernel_jit(x, w, mode, "cpu")), ys[-1])
        scale = np.max(np.abs(ys[0]))
        assert all(np.max(np.abs(y - ys[0])) <= 1e-5 * scale for y in ys)


@pytest.mark.parametrize("mode", ALL_PATHS)
def test_deterministic_across_thread_counts(isa, layout, mode, fmt, monkeypatch):
    # 1100 columns: 1..5 column chunks depending on the thread count; results must be bitwise equal.
    x, w, _ = _case(6, 96, 1100, 3, 32, True, batch=(6,), fmt=fmt)
    outs = []
    for threads in ("1", "2", "3", "5"):
        monkeypatch.setenv("LUTGEMM_CPU_THREADS", threads)
        outs.append(np.asarray(_kernel_jit(x, w, mode, layout)))
        outs.append(np.asarray(_kernel_jit(x, w, mode, layout)))
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])


@pytest.mark.parametrize("rows", [9, 12, 13, 25, 130])
def test_dense_path_row_blocks_and_micro_kernels(rows, monkeypatch):
    # The dense path's micro-kernels take 6 rows of x and 16 columns per call (portable, AVX2) or
    # 12 rows and 32 columns (AVX-512): M here is a multiple of neither or of one only, K spans
    # three 256-row tiles with a ragged last one, and N = 100 ends in a 36-column tile whose
    # second 32-column call runs past N (N = 20: one call, past N too). Every ISA against
    # float64 at 1 and 3 threads; AVX2 and AVX-512 add each output's K products in the same
    # order with the same FMAs, so they are bitwise equal.
    monkeypatch.setenv("LUTGEMM_CPU_POISON", "1")
    cases = [
        (2, 128, "bcq", jnp.float32, 100),
        (3, 32, "uniform", jnp.float16, 20),
        (4, None, "g16-uniform", jnp.bfloat16, 100),
        (3, None, "bcq", jnp.float16, 100),
    ]
    for q, g, fmt, alpha_dtype, n in cases:
        x, w, w64 = _case(
            rows * 10 + q, 600, n, q, g, True, (rows,), alpha_dtype=alpha_dtype, fmt=fmt
        )
        ys = {}
        for isa_name in ISAS:
            monkeypatch.setenv("LUTGEMM_CPU_ISA", isa_name)
            for threads in ("1", "3"):
                monkeypatch.setenv("LUTGEMM_CPU_THREADS", threads)
                y = np.asarray(_kernel_jit(x, w, "dense", "cpu"))
                check(y, x, w, w64, "dense")
                if isa_name in ys:
                    np.testing.assert_array_equal(y, ys[isa_name])
                ys[isa_name] = y
        if "avx512" in ys:
            np.testing.assert_array_equal(ys["avx512"], ys["avx2"])


@pytest.mark.skipif("avx512" not in ISAS, reason="needs a CPU with AVX-512 VBMI + VNNI")
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("g", [32, 64, 96, 128, 256])
def test_fast_lookups_avx512_equal_avx2_bitwise(g, fmt, layout, monkeypatch):
    # The AVX-512 fast kernel (vpermb + vpdpbusd, int32 sums) and the AVX2 one (vpshufb +
    # vpmaddubsw, int16 sums widened) compute the same exact integer plane sums and then the same
    # float32 products and sums, so their outputs are equal bit for bit: for every row count of
    # a pass (1-8 rows, and a second pass), the scale-block sizes 32/64/96/128 (g = 96, 256:
    # 3 and 4 words per block), 16-row groups, uniform scales, an offset, the 32-column blocks
    # and the single-column tail (N = 75), and 16-bit scales.
    for rows, q, alpha_dtype in [
        (1, 3, jnp.float16),
        (2, 2, jnp.float32),
        (3, 4, jnp.bfloat16),
        (5, 1, jnp.float16),
        (8, 3, jnp.float32),
        (11, 4, jnp.float16),
    ]:
        x, w, _ = _case(
            rows * 31 + q + g, 2 * g + 96, 75, q, g, True, (rows,), alpha_dtype=alpha_dtype, fmt=fmt
        )
        ys = {}
        for isa_name in ("avx2", "avx512"):
            monkeypatch.setenv("LUTGEMM_CPU_ISA", isa_name)
            ys[isa_name] = np.asarray(_kernel_jit(x, w, "fast", layout))
        assert np.isfinite(ys["avx2"]).all()
        np.testing.assert_array_equal(ys["avx512"], ys["avx2"])


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_tall_skinny_split_k(isa, layout, mode, monkeypatch):
    # N < 128 (fewer than 4 whole blocks of 32 columns) with >= 256 KB of sign words: K is cut into
    # min(8, scale blocks, sign-word bytes / 128 KiB) slices of whole scale blocks, each building
    # its own tables, and their partial sums are added in slice order. Slices of unequal length
    # (313 blocks / 5, 469 / 5, 2731 / 2), K past the last whole block (read through the padded
    # copy), bfloat16 x, 6 rows, and a per-column group (g = K rounded up) whose offset term
    # spans both slices. Against float64, and bitwise equal for 1, 2, 3 and 5 threads.
    # The activations make fast mode's int8 tables exact (`_int8_exact_activations`), so both
    # modes are held to float32 rounding: a lost or doubled slice cannot hide in the fast bound.
    # g = 16 (two groups and offsets per 32-activation block) and uniform scales split the same way.
    cases = [
        (40000, 33, 4, 128, (1,), jnp.float32, "bcq"),  # 661 KB: 5 slices
        (30000, 100, 2, 64, (6,), jnp.bfloat16, "bcq"),  # 750 KB: 5 slices
        (262161, 1, 8, None, (2,), jnp.float32, "bcq"),  # 262 KB: 2 slices, S = 96
        (40000, 33, 4, 16, (3,), jnp.float32, "g16-uniform"),  # 661 KB: 5 slices, S = 32
        (30000, 100, 3, 64, (2,), jnp.float16, "uniform"),  # 1.1 MB: 8 slices
    ]
    _check_split_cases(cases, mode, layout, monkeypatch)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_one_pass_split_k(isa, layout, mode, monkeypatch):
    # One pass over a narrow weight (M <= the rows of a pass: 4, 8 on AVX-512; N <= 4096) with
    # >= 512 KiB of sign words: K is cut into 2 slices of whole scale blocks (PassSlices), and
    # with more tasks than slices each slice's columns into chunks, its tables built first.
    # Odd block counts (an unequal split), a ragged N (a single-column tail), K past the last
    # block, bfloat16 x, g = 16 and uniform scales, a per-column group whose offset term spans
    # both slices. Int8-exact activations hold both modes to float32 rounding (a lost or doubled
    # slice cannot hide in the fast bound); bitwise equal for 1, 2, 3 and 5 threads (1 and 2: one
    # chunk per slice; 3 and 5: two or three).
    cases = [
        (4000, 1100, 3, 128, (1,), jnp.float32, "bcq"),  # 32 blocks (K ragged), 1.6 MB
        (3000, 4096, 2, 64, (3,), jnp.bfloat16, "uniform"),  # 47 blocks: 24 + 23
        (1600, 2600, 4, 16, (2,), jnp.float32, "g16"),  # S = 32: 50 blocks
        (2100, 1031, 3, None, (4,), jnp.float16, "bcq"),  # per column: S = 96, 22 blocks
    ]
    assert all(k * q * n // 8 >= 512 * 1024 for k, n, q, *_ in cases)
    _check_split_cases(cases, mode, layout, monkeypatch)


def _check_split_cases(cases, mode, layout, monkeypatch):
    """Each (K, N, q, g, batch, x dtype, format) case with int8-exact activations against
    float64 at float32 rounding, and bitwise equal for 1, 2, 3 and 5 threads."""
    for k, n, q, g, batch, dtype, fmt in cases:
        _, w, w64 = _case(k + n, k, n, q, g, True, batch=batch, fmt=fmt)
        x = _int8_exact_activations(np.random.default_rng(k), batch, k, w.group_size, dtype)
        outs = []
        for threads in ("1", "2", "3", "5"):
            monkeypatch.setenv("LUTGEMM_CPU_THREADS", threads)
            outs.append(np.asarray(_kernel_jit(x, w, mode, layout).astype(jnp.float32)))
        check(outs[0], x, w, w64, "exact", dtype)
        for y in outs[1:]:
            np.testing.assert_array_equal(y, outs[0])


def _int8_exact_activations(rng, batch, k, g, dtype=jnp.float32):
    """Integer activations whose fast-mode tables are exact: every chunk of 4 has sum |x| <= 124
    except the first chunk of each scale block, [127, 0, 0, 0], so each block's table step
    (max chunk sum / 127) is 1 and every table entry an integer in [-127, 127]."""
    s = scale_block(g)
    x = rng.integers(-31, 32, size=(*batch, k)).astype(np.float32)
    x[..., ::s] = 127.0
    for j in (1, 2, 3):
        x[..., j::s] = 0.0
    return jnp.asarray(x, dtype)  # integers <= 127: exact in bfloat16 and float16


@pytest.mark.parametrize("mode", ["exact", "dense"])
@pytest.mark.parametrize("alpha_dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_uniform_equals_its_expanded_weight(isa, layout, mode, alpha_dtype):
    # Exact and dense modes scale plane i of a uniform weight by alpha * 2^i, a float32 product
    # by a power of two (exact): bitwise the result of the same weight with those q scales stored
    # (alpha [G, q, N]; exact in every alpha dtype, as alpha <= 1 and 2^i <= 128).
    for g, q, batch in [(16, 3, (1,)), (64, 4, (3,)), (128, 8, (6,))]:
        x, w, _ = _case(
            g + q, 300, 70, q, g, True, batch=batch, alpha_dtype=alpha_dtype, fmt="uniform"
        )
        scales = np.asarray(w.alpha.astype(jnp.float32)) * 2.0 ** np.arange(q)[:, None]
        expanded = dataclasses.replace(w, alpha=jnp.asarray(scales, alpha_dtype))
        assert w.uniform and not expanded.uniform
        np.testing.assert_array_equal(
            np.asarray(_kernel_jit(x, w, mode, layout)),
            np.asarray(_kernel_jit(x, expanded, mode, layout)),
        )


def test_deterministic_with_one_or_all_cpus():
    # A fresh process restricted to one CPU (XLA sizes its intra-op pool from the CPUs it may
    # use) and one with all CPUs, through the public op: bitwise equal results.
    code = (
        "import os, sys\n"
        "if sys.argv[1] == '1': os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "import numpy as np, jax, jax.numpy as jnp, lutgemm_jax as lj\n"
        "from lutgemm_jax.testing import random_packed_weight\n"
        "rng = np.random.default_rng(0)\n"
        "w = random_packed_weight(rng, 256, 1500, 3, 128, True)\n"
        "x = jnp.asarray(rng.normal(size=(3, 256)), jnp.float32)\n"
        "for mode in ('fast', 'exact'):\n"
        "    y = np.asarray(jax.jit(lambda x, w: lj.lut_gemm(x, w, mode=mode))(x, w))\n"
        "    print(mode, y.tobytes().hex())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUTGEMM_CPU")}
    outs = []
    for cpus in ("1", "all"):
        r = subprocess.run(
            [sys.executable, "-P", "-c", code, cpus],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(r.stdout)
    assert outs[0] == outs[1]


def test_op_crossover_to_dense_path(monkeypatch):
    # At M >= CPU_CROSSOVER[mode] the op lowers to the kernel's dense path (FFI path 1).
    x1, w, w64 = _case(8, 200, 40, 3, 64, True, batch=(1,))
    x6 = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 200)), jnp.float32)
    monkeypatch.setitem(lowering.CPU_CROSSOVER, "fast", 4)
    f = jax.jit(lambda x, w: lj.lut_gemm(x, w, mode="fast"))
    text1, text6 = f.lower(x1, w).as_text(), f.lower(x6, w).as_text()
    assert "custom_call @lutgemm_cpu" in text1 and "mode = 1 : i64" in text1
    assert "path = 0 : i64" in text1
    assert "custom_call @lutgemm_cpu" in text6 and "mode = 1 : i64" in text6
    assert "path = 1 : i64" in text6
    check(f(x1, w), x1, w, w64, "fast")
    check(f(x6, w), x6, w, w64, "dense")
    np.testing.assert_array_equal(np.asarray(f(x6, w)), np.asarray(_kernel_jit(x6, w, "dense")))


def test_library_default_mode_is_fast():
    # conftest.py pins the tests' default to "exact"; without the variable the default is "fast".
    env = {k: v for k, v in os.environ.items() if k != "LUTGEMM_DEFAULT_MODE"}
    code = "from lutgemm_jax import ops; print(ops.DEFAULT_MODE)"
    r = subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "fast", r.stderr[-2000:]


def test_op_default_mode_and_bad_mode():
    assert ops.DEFAULT_MODE in ops.MODES
    x, w, w64 = _case(2, 100, 37, 3, 32, True, batch=(2,))
    check(lj.lut_gemm(x, w), x, w, w64, ops.DEFAULT_MODE)
    with pytest.raises(ValueError, match="mode"):
        lj.lut_gemm(x, w, mode="bogus")


@pytest.mark.parametrize(
    "case",
    [
        "bits_shape",
        "alpha_dtype",
        "x_k",
        "num_bits",
        "group_size",
        "group_size_16",
        "alpha_planes",
        "layout",
        "mode",
        "mode_dense",
        "path",
        "out_shape",
    ],
)
def test_bad_operands_raise(case):
    x, w, _ = _case(1, 96, 40, 3, 32, True, batch=(2,))
    attrs = ffi_attrs(w, "fast")
    bits, alpha, offset = w.bits, w.alpha, offset_operand(w.offset, w.alpha)
    out = jax.ShapeDtypeStruct((2, 40), x.dtype)
    if case == "bits_shape":
        bits = bits[:, :2]
    elif case == "alpha_dtype":
        alpha = alpha.astype(jnp.int32)
    elif case == "x_k":
        x = x[:, :64]
    elif case == "num_bits":
        attrs["num_bits"] = np.int64(9)
    elif case == "group_size":
        attrs["group_size"] = np.int64(48)
    elif case == "group_size_16":  # a g = 16 weight has twice the groups of this g = 32 alpha
        attrs["group_size"] = np.int64(16)
    elif case == "alpha_planes":  # neither q planes nor uniform (1)
        alpha = alpha[:, :2]
    elif case == "layout":
        attrs["layout"] = np.int64(2)
    elif case == "mode":
        attrs["mode"] = np.int64(3)
    elif case == "mode_dense":  # the dense path has its own attribute, not mode = 2
        attrs["mode"] = np.int64(2)
    elif case == "path":
        attrs["path"] = np.int64(2)
    elif case == "out_shape":
        out = jax.ShapeDtypeStruct((2, 41), x.dtype)
    call = jax.ffi.ffi_call(_native.CPU_TARGET, out)
    with pytest.raises(Exception, match="lut_gemm"):
        jax.block_until_ready(jax.jit(lambda *a: call(*a, **attrs))(x, bits, alpha, offset))


def test_standalone_kernel_bench_builds_and_runs(tmp_path):
    # benchmarks/cpu_kernel_bench.cc (the kernel without JAX, used for BENCHMARKS.md's compute
    # ceiling) must keep compiling against the kernel's header and reject bad arguments.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = str(tmp_path / "cpu_kernel_bench")
    cmd = [
        os.environ.get("CXX", "c++"),
        "-O1",
        "-std=c++17",
        f"-I{root}/cpu",
        f"-I{root}/include",
        "-o",
        exe,
        f"{root}/benchmarks/cpu_kernel_bench.cc",
        *sorted(str(p) for p in Path(root, "cpu").glob("*.cc") if p.name != "ffi_cpu.cc"),
        "-lpthread",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    for mode, layout in [("0", "0"), ("1", "1"), ("1", "0"), ("2", "1")]:
        out = subprocess.run(
            [exe, "300", "70", "3", mode, "5", "2", "2", "3", layout],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert f"kernel={mode} M=5 threads=2 sets=2 layout={layout}" in out, out
        assert "median" in out, out
    for alpha, name in [("1", "bf16"), ("2", "f16")]:
        out = subprocess.run(
            [exe, "300", "70", "3", "1", "2", "2", "2", "3", "1", alpha],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert f"layout=1 alpha={name}" in out, out
    for mode, g in [("1", "16"), ("0", "32"), ("2", "16")]:  # uniform scales
        out = subprocess.run(
            [exe, "300", "70", "4", mode, "2", "2", "2", "3", "1", "0", g, "1"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert f"alpha=f32 g={g} uniform=1" in out, out
    bad_args = [
        ["300", "70", "9"],
        ["300", "70", "3", "1", "1", "1", "1", "3", "1", "3"],
        ["300", "70", "3", "1", "1", "1", "1", "3", "1", "0", "48"],
        ["300", "70", "3", "3", "1", "1", "1", "3", "1", "0", "32"],
    ]
    for args in bad_args:
        bad = subprocess.run([exe, *args], capture_output=True, text=True)
        assert bad.returncode == 2 and "bad arguments" in bad.stderr


def test_inner_loop_microbenchmark_builds_and_runs(tmp_path):
    # benchmarks/lut_inner_loop.cc (BENCHMARKS.md's "table work in isolation") must keep compiling
    # and reject bad arguments; a tiny `rows` run times both traversal orders.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exe = str(tmp_path / "lut_inner_loop")
    cxx = os.environ.get("CXX", "c++")
    src = f"{root}/benchmarks/lut_inner_loop.cc"
    subprocess.run([cxx, "-O1", "-std=c++17", "-mavx2", "-o", exe, src], check=True)
    if not _lutgemm_cpu.avx2_supported():
        pytest.skip("built; running it needs AVX2")
    out = subprocess.run([exe, "rows", "4096"], check=True, capture_output=True, text=True).stdout
    assert "stride 4096 block" in out and "stride 4096 rows" in out, out
    assert out.count("cycles/word") == 2, out
    for args in ([], ["rows"], ["rows", "100"], ["l2"]):
        bad = subprocess.run([exe, *args], capture_output=True, text=True)
        assert bad.returncode == 2 and "usage" in bad.stderr, (args, bad.stderr)


# ---- the CPU lowering: custom call, attributes, both sign-word layouts ----------------------


def test_cpu_lowers_to_native_custom_call():
    x, w, _ = _case(0, 100, 37, 3, 32, True)
    text = jax.jit(lj.lut_gemm).lower(x, w).as_text()
    assert "stablehlo.custom_call @lutgemm_cpu" in text


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("n", [1, 31, 33, 64, 100, 257])
@pytest.mark.parametrize("q,rows", [(1, (1,)), (3, (1,)), (3, (2, 3)), (3, (16,)), (5, (64,))])
def test_native_kernel_equal_for_both_layouts(mode, n, q, rows):
    """Through lut_gemm (LUT path at small M, dense path at M >= the crossover)."""
    rng = np.random.default_rng(n * 8 + q)
    w, w64 = random_weight(rng, 200, n, q, 64)
    x = jnp.asarray(rng.normal(size=(*rows, 200)), jnp.float32)
    f = jax.jit(partial(lj.lut_gemm, mode=mode))
    y_canonical, y_cpu = f(x, w), f(x, w.to_layout("cpu"))
    ref = reference(x, w64)
    tol = 1e-5 if mode == "exact" else 2e-2  # fast: int8 tables, about 1e-2 of max |y|
    assert rel_err(y_canonical, ref) <= tol and rel_err(y_cpu, ref) <= tol
    assert rel_err(y_cpu, np.asarray(y_canonical, np.float64)) <= 1e-6


def test_cpu_lowering_passes_the_layout_code():
    w, _ = random_weight(np.random.default_rng(3), 100, 70, 3, 32)
    x = jnp.ones((2, 100))
    for layout, code in [("canonical", 0), ("cpu", 1)]:
        text = jax.jit(lj.lut_gemm).lower(x, w.to_layout(layout)).as_text()
        call = next(ln for ln in text.splitlines() if "@lutgemm_cpu(" in ln)
        assert f"layout = {code} : i64" in call


def test_cpu_kernel_rejects_bad_mode_and_path():
    x, w, _ = _case(1, 96, 40, 3, 32, True, batch=(2,))
    with pytest.raises(ValueError, match=r"cpu_kernel: mode must be one of \('exact', 'fast'\)"):
        lowering.cpu_kernel(x, w, mode="dense", path="lut")
    with pytest.raises(ValueError, match=r"cpu_kernel: path must be one of \('lut', 'dense'\)"):
        lowering.cpu_kernel(x, w, mode="exact", path="tables")


def test_cpu_path_follows_the_crossover(monkeypatch):
    monkeypatch.setitem(lowering.CPU_CROSSOVER, "exact", (4, 3, 2, 2, 2, 2, 2, 2))
    assert [lowering.cpu_path("exact", 1, m) for m in (1, 3, 4, 100)] == ["lut"] * 2 + ["dense"] * 2
    assert [lowering.cpu_path("exact", 2, m) for m in (2, 3)] == ["lut", "dense"]
    monkeypatch.setitem(lowering.CPU_CROSSOVER, "fast", 1 << 62)
    assert lowering.cpu_path("fast", 8, 1 << 20) == "lut"
    # A dict per group size: the entry of the smallest bound >= g applies.
    monkeypatch.setitem(lowering.CPU_CROSSOVER, "fast", {16: 5, 64: (7,) * 8, 1 << 62: 9})
    for g, crossover in [(16, 5), (32, 7), (64, 7), (128, 9), (4096, 9)]:
        paths = [lowering.cpu_path("fast", 3, m, g) for m in (crossover - 1, crossover)]
        assert paths == ["lut", "dense"], g


def test_op_crossover_depends_on_the_group_size(monkeypatch):
    # The op passes the weight's group size to cpu_path: same M and q, g = 16 dense, g = 128 LUT.
    monkeypatch.setitem(lowering.CPU_CROSSOVER, "fast", {16: 2, 1 << 62: 1 << 62})
    x = jnp.ones((3, 256), jnp.float32)
    f = jax.jit(lambda x, w: lj.lut_gemm(x, w, mode="fast"))
    for g, path in [(16, 1), (128, 0)]:
        w, _ = random_weight(np.random.default_rng(g), 256, 40, 3, g)
        call = next(ln for ln in f.lower(x, w).as_text().splitlines() if "@lutgemm_cpu(" in ln)
        assert f"path = {path} : i64" in call
