"""The CUDA kernels (cuda/lut_gemm_kernel.cuh), run on the CPU under tests/cuda_emu/cuda_emu.h.

The unchanged kernel source, its launch glue and the FFI handler's validation are compiled with
g++ into a shared library (ctypes C ABI in tests/cuda_emu/emu_driver.cc); each thread block runs
as 128 fibers with a real __syncthreads barrier. Results are compared with the float64 reference
of `lutgemm_jax.testing` (`random_weight`'s ``W_hat``, built with numpy from the signs it drew:
independent of the code under test). Every group size (16, multiples of 32, one per column) and
both scale forms (``alpha [G, q, N]`` and uniform ``[G, 1, N]``) run through the same checks.

Tolerance: the kernel accumulates in float32 (tables of 8 signed activations, lookups, alpha
FMAs, split-K partial sums): its error is bounded by a small multiple of
``K * eps_f32 * (|x| @ |W|)``; with K <= 400 here we allow ``2e-5 * (|x| @ |W|)`` (about
0.5 * K/8 * eps_f32 plus slack). A 16-bit output adds its rounding, half an ulp: ``2**-8 |ref|``
(bfloat16) or ``2**-11 |ref|`` (float16) plus the float16 subnormal spacing. The reference reads
x, alpha and offset exactly as stored (after rounding to their dtype).
"""

from __future__ import annotations

import ctypes
import gzip
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest

from lutgemm_jax import lowering
from lutgemm_jax.testing import random_weight

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "cuda_emu"
KERNEL = ROOT / "cuda" / "lut_gemm_kernel.cuh"

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
# XLA FFI data type codes (xla/ffi/api/c_api.h).
FFI_CODE = {
    "float32": 11,
    "bfloat16": 16,
    "float16": 10,
    "uint32": 8,
    "int32": 4,
    "float64": 12,
    "int8": 2,
}
PER_COLUMN = -1

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def _compile(out_dir: Path, extra: list[str]) -> Path:
    lib = out_dir / "libemu.so"
    cmd = [
        "g++",
        "-std=c++17",
        "-fPIC",
        "-shared",
        "-Wall",
        "-Wno-unknown-pragmas",
        f"-I{EMU}",
        f"-I{ROOT / 'cuda'}",
        f"-I{ROOT / 'include'}",
        "-isystem",
        jax.ffi.include_dir(),
        *extra,
        str(EMU / "emu_driver.cc"),
        "-o",
        str(lib),
    ]
    subprocess.run(cmd, check=True, cwd=out_dir)
    return lib


def _bind(lib_path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(lib_path))
    p, i, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    lib.emu_lut_gemm.argtypes = [p, i, p, p, i, p, p, i64, i64, i64, i64, i64, i, i, i, p, p, i]
    lib.emu_lut_gemm.restype = i
    lib.emu_dequant.argtypes = [p, p, i, p, p, i, i64, i64, i64, i64, i, p, i]
    lib.emu_dequant.restype = i
    lib.emu_validate.argtypes = [i, p, p, p, i64, i64, i64, i64, p, i]
    lib.emu_validate.restype = i
    lib.emu_plan.argtypes = [i64, i64, i64, i, p]
    lib.emu_plan.restype = None
    return lib


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    return _bind(_compile(tmp_path_factory.mktemp("emu"), ["-O1"]))


# ---- problem generation and the float64 reference -------------------------------------------


def make_problem(rng, m, k, n, q, g, has_offset, x_dtype, a_dtype, uniform=False):
    """Random x ``[m, k]`` and weight (`random_weight`: random signs, alpha from U(0.1, 1), offset
    from N(0, 1); uniform: alpha ``[G, 1, N]``) as numpy arrays, with the weight's float64
    ``W_hat`` (``w64``). ``g = PER_COLUMN``: one group per column."""
    w, w64 = random_weight(
        rng, k, n, q, g, has_offset, DTYPES[a_dtype], layout="canonical", uniform=uniform
    )
    assert w.uniform == (uniform or q == 1)
    x = rng.normal(size=(m, k)).astype(DTYPES[x_dtype])
    return dict(
        x=x,
        bits=np.ascontiguousarray(np.asarray(w.bits)),
        alpha=np.ascontiguousarray(np.asarray(w.alpha)),
        offset=np.ascontiguousarray(np.asarray(w.offset)) if has_offset else None,
        w64=w64,
        m=m,
        k=k,
        n=n,
        q=q,
        g=w.group_size,
    )


def reference(p):
    w = p["w64"]
    x64 = p["x"].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return x64 @ w, np.abs(x64) @ np.abs(w)


def tolerance(ref, scale, dtype):
    tol = 2e-5 * scale
    if dtype == "bfloat16":
        tol += 2.0**-8 * np.abs(ref)
    elif dtype == "float16":
        tol += 2.0**-11 * np.abs(ref) + 2.0**-24
    return tol


def _ptr(a):
    return None if a is None else a.ctypes.data


def _uniform(p) -> int:
    """1 when alpha stores one scale per group (``[G, 1, N]``; for q = 1 both forms agree)."""
    return int(p["alpha"].shape[1] == 1)


def run_lut(lib, p, splits=0, num_sms=132):
    x_dtype = p["x"].dtype.name
    y = np.full((p["m"], p["n"]), np.nan, p["x"].dtype)  # poisoned: unwritten elements fail
    used = ctypes.c_int(-1)
    msg = ctypes.create_string_buffer(512)
    rc = lib.emu_lut_gemm(
        _ptr(p["x"]),
        FFI_CODE[x_dtype],
        _ptr(p["bits"]),
        _ptr(p["alpha"]),
        FFI_CODE[p["alpha"].dtype.name],
        _ptr(p["offset"]),
        _ptr(y),
        p["m"],
        p["k"],
        p["n"],
        p["q"],
        p["g"],
        _uniform(p),
        splits,
        num_sms,
        ctypes.byref(used),
        msg,
        len(msg),
    )
    assert rc == 0, (rc, msg.value.decode())
    return y, used.value


def check_lut(lib, p, **kw):
    y, used = run_lut(lib, p, **kw)
    ref, scale = reference(p)
    err = np.abs(y.astype(np.float64) - ref)
    tol = tolerance(ref, scale, p["x"].dtype.name)
    bad = ~(err <= tol)
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} wrong; worst err {np.nanmax(err)} tol {tol.ravel()[0]}; "
        f"first bad at {np.argwhere(bad)[0]}: {y[tuple(np.argwhere(bad)[0])]} vs "
        f"{ref[tuple(np.argwhere(bad)[0])]}"
    )
    return used


def test_emulation_selftest(tmp_path):
    """The harness itself: barriers order shared memory, races and divergent barriers show."""
    exe = tmp_path / "selftest"
    subprocess.run(
        ["g++", "-std=c++17", "-O1", f"-I{EMU}", f"-I{ROOT / 'include'}"]
        + [str(EMU / "emu_selftest.cc"), "-o", str(exe)],
        check=True,
    )
    out = subprocess.run([str(exe)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    assert "without barrier: 63 wrong" in out.stdout and "divergent barriers: 1" in out.stdout


def test_zero_rows(emu):
    """M = 0 is valid: nothing is launched, nothing is written."""
    p = make_problem(np.random.default_rng(0), 0, 64, 8, 2, 32, True, "float32", "float32")
    y, used = run_lut(emu, p)
    assert y.shape == (0, 8) and used == 1


# ---- the kernel matrix -------------------------------------------------------------------------

GROUPS = [16, 32, 64, 128, PER_COLUMN]
N_CYCLE = [1, 3, 67, 64, 516, 5]
K_CYCLE = [100, 45, 161, 300, 33, 250, 16]
DT_CYCLE = list(itertools.product(DTYPES, DTYPES))


def _case_id(case) -> str:
    q, g, has_offset, uniform = case[1]
    return f"q{q}-g{g}-{'off' if has_offset else 'nooff'}{'-uniform' if uniform else ''}"


@pytest.mark.parametrize(
    "case",
    list(enumerate(itertools.product(range(1, 9), GROUPS, [True, False], [False, True]))),
    ids=_case_id,
)
def test_lut_matrix(emu, case):
    """q = 1..8 x g in {16, 32, 64, 128, per-column} x offset x uniform scales, rotating N (odd
    and even, one and several column tiles), ragged K, M = 1..8, dtypes and K slices."""
    idx, (q, g, has_offset, uniform) = case
    n, k = N_CYCLE[idx % len(N_CYCLE)], K_CYCLE[(idx // 2) % len(K_CYCLE)]
    m = 1 + idx % 8
    x_dtype, a_dtype = DT_CYCLE[idx % len(DT_CYCLE)]
    rng = np.random.default_rng(idx)
    p = make_problem(rng, m, k, n, q, g, has_offset, x_dtype, a_dtype, uniform)
    check_lut(emu, p, splits=1 + idx % 3)


@pytest.mark.parametrize("x_dtype,a_dtype", DT_CYCLE)
def test_lut_dtypes(emu, x_dtype, a_dtype):
    p = make_problem(np.random.default_rng(7), 2, 200, 67, 3, 64, True, x_dtype, a_dtype)
    check_lut(emu, p)


@pytest.mark.parametrize("g,uniform", [(32, False), (16, False), (16, True)])
@pytest.mark.parametrize("m", range(1, 10))
def test_lut_rows(emu, m, g, uniform):
    """M = 1..8 (one row tile of 1, 2, 4 or 8 rows) and 9 (two row tiles)."""
    rng = np.random.default_rng(m)
    p = make_problem(rng, m, 96, 130, 4, g, m % 2 == 0, "float32", "float32", uniform)
    check_lut(emu, p, splits=2)


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("m,splits", [(1, 2), (1, 4), (3, 3), (3, 7), (3, 16), (8, 5), (8, 32)])
def test_split_k_slices_g16(emu, m, splits, uniform):
    """g = 16 under every slicing of K the plan can make: slices are whole K tiles (8 / MT
    words), so each starts on a word and thus on a group boundary; both halves of every word
    keep their own scales whichever slice reads them."""
    rng = np.random.default_rng(100 * m + splits)
    p = make_problem(rng, m, 1000, 70, 3, 16, True, "float32", "bfloat16", uniform)
    used = check_lut(emu, p, splits=splits)
    assert 1 < used <= splits


@pytest.mark.parametrize(
    "q,g,uniform", [(3, 128, False), (6, 128, False), (4, 16, True), (6, 16, False)]
)
def test_split_k_planned(emu, q, g, uniform):
    """The real launch plan with few SMs splits K; the reduction is deterministic."""
    rng = np.random.default_rng(q)
    p = make_problem(rng, 1, 1000, 64, q, g, True, "bfloat16", "float32", uniform)
    used = check_lut(emu, p, num_sms=8)
    assert used > 1
    y1, _ = run_lut(emu, p, num_sms=8)
    y2, _ = run_lut(emu, p, num_sms=8)
    assert y1.tobytes() == y2.tobytes()


@pytest.mark.parametrize("g,uniform", [(64, False), (16, True)])
def test_multiple_column_blocks(emu, g, uniform):
    """N > 512: several column tiles, vector loads, ragged last tile."""
    rng = np.random.default_rng(3)
    p = make_problem(rng, 3, 64, 1100, 2, g, True, "float16", "bfloat16", uniform)
    check_lut(emu, p)


@pytest.mark.parametrize("g,uniform", [(32, False), (16, False), (16, True)])
def test_nonfinite_inputs_propagate(emu, g, uniform):
    rng = np.random.default_rng(11)
    p = make_problem(rng, 4, 100, 67, 3, g, True, "float32", "float32", uniform)
    p["x"][1, 5] = np.nan
    p["x"][2, 99] = np.inf
    y, _ = run_lut(emu, p, splits=2)
    ref, _ = reference(p)
    assert np.isnan(y[1]).all()
    assert (~np.isfinite(y[2])).all() and (~np.isfinite(ref[2])).all()
    np.testing.assert_array_equal(np.isfinite(y), np.isfinite(ref))


def test_plan(emu):
    """Split-K planning: about 2 blocks per SM (at least 1), slices of >= 8 words, whole tiles."""
    lib = emu
    out = (ctypes.c_int * 6)()
    lib.emu_plan(1, 12288, 12288 // 32, 132, out)  # 24 column tiles
    mt, cols, rows, want, splits, per = out
    assert (mt, cols, rows, want) == (1, 24, 1, 11)
    assert cols * splits >= 132 and per % 8 == 0 and (splits - 1) * per < 384 <= splits * per
    lib.emu_plan(8, 4096, 4096 // 32, 132, out)
    mt, cols, rows, want, splits, per = out
    assert (mt, cols, rows) == (8, 8, 1) and per >= 8 and splits * per >= 128
    assert splits <= want == 16
    lib.emu_plan(1, 64, 2, 132, out)
    assert out[3] == out[4] == 1


@pytest.mark.parametrize("m", [0, 1, 2, 3, 5, 8, 9, 40])
def test_lowering_mirrors_plan(emu, m):
    """The CUDA lowering sizes the split-K workspace with the same rule as the C++ planner."""

    lib = emu
    out = (ctypes.c_int * 6)()
    for n, k in itertools.product([1, 67, 512, 4096, 12288, 49152], [32, 300, 4096, 49152]):
        lib.emu_plan(m, n, -(-k // 32), 132, out)
        assert lowering.cuda_splits(m, n, -(-k // 32)) == out[3], (m, n, k)


# ---- the dequantization kernel (large-M path) -----------------------------------------------


def run_dequant(lib, p, w_dtype):
    w = np.full((p["k"], p["n"]), np.nan, DTYPES[w_dtype])
    msg = ctypes.create_string_buffer(512)
    rc = lib.emu_dequant(
        _ptr(p["bits"]),
        _ptr(p["alpha"]),
        FFI_CODE[p["alpha"].dtype.name],
        _ptr(p["offset"]),
        _ptr(w),
        FFI_CODE[w_dtype],
        p["k"],
        p["n"],
        p["q"],
        p["g"],
        _uniform(p),
        msg,
        len(msg),
    )
    assert rc == 0, (rc, msg.value.decode())
    return w


@pytest.mark.parametrize(
    "case",
    list(enumerate(itertools.product(range(1, 9), [16, 32, 128, PER_COLUMN], [False, True]))),
    ids=lambda c: f"q{c[1][0]}-g{c[1][1]}{'-uniform' if c[1][2] else ''}",
)
def test_dequant(emu, case):
    """The large-M path's dequantization kernel: q = 1..8 x g x scale form, rotating the offset,
    the output and alpha dtypes, and ragged K (whole, half and no last group for g = 16)."""
    idx, (q, g, uniform) = case
    w_dtype, a_dtype = DT_CYCLE[idx % len(DT_CYCLE)]
    k = [77, 48, 40, 96][idx % 4]
    rng = np.random.default_rng(idx)
    p = make_problem(rng, 1, k, 261, q, g, idx % 3 != 0, "float32", a_dtype, uniform)
    w = run_dequant(emu, p, w_dtype).astype(np.float64)
    ref = p["w64"]
    tol = 1e-6 * np.abs(ref).max() * q + {"float32": 0, "bfloat16": 2**-8, "float16": 2**-11}[
        w_dtype
    ] * np.abs(ref)
    assert (np.abs(w - ref) <= tol).all()


# ---- the handlers' argument validation (host code) ------------------------------------------


def validate(lib, which, operands, attrs):
    """emu_validate on operand descriptions ``(dtype name, shape)`` (ranks <= 8: the harness's
    buffer limit); returns (status code, message)."""
    dtypes = (ctypes.c_int * 6)(*[FFI_CODE[d] for d, _ in operands])
    ranks = (ctypes.c_int * 6)(*[len(s) for _, s in operands])
    flat = [d for _, s in operands for d in s] or [0]
    dims = (ctypes.c_int64 * len(flat))(*flat)
    msg = ctypes.create_string_buffer(512)
    rc = lib.emu_validate(which, dtypes, ranks, dims, *attrs, msg, len(msg))
    return rc, msg.value.decode()


K, N, Q, G = 100, 6, 3, 32  # Kp = 128: 4 words, 4 groups
GOOD = [
    ("bfloat16", (2, 5, K)),  # x
    ("uint32", (4, Q, N)),  # bits
    ("float32", (4, Q, N)),  # alpha
    ("float32", (4, N)),  # offset
    ("bfloat16", (2, 5, N)),  # y
    ("float32", (0,)),  # split-K workspace: none
]
ATTRS = (K, N, Q, G)
INVALID_ARGUMENT = 3  # XLA_FFI_Error_Code_INVALID_ARGUMENT


def _replace(i, operand):
    ops = list(GOOD)
    ops[i] = operand
    return ops


LUT_BAD = {
    "x rank 0": (_replace(0, ("bfloat16", ())), ATTRS, "x has shape"),
    "x wrong K": (_replace(0, ("bfloat16", (2, 5, K + 1))), ATTRS, "x has shape"),
    "x int": (_replace(0, ("int32", (2, 5, K))), ATTRS, "x must be"),
    "bits dtype": (_replace(1, ("int32", (4, Q, N))), ATTRS, "bits must be uint32"),
    "bits rank": (_replace(1, ("uint32", (4 * Q, N))), ATTRS, "bits has shape"),
    "bits words": (_replace(1, ("uint32", (3, Q, N))), ATTRS, "bits has shape"),
    "alpha dtype": (_replace(2, ("int32", (4, Q, N))), ATTRS, "alpha must be"),
    "alpha groups": (_replace(2, ("float32", (2, Q, N))), ATTRS, "alpha has shape"),
    "offset dtype": (_replace(3, ("bfloat16", (4, N))), ATTRS, "offset must have"),
    "offset shape": (_replace(3, ("float32", (3, N))), ATTRS, "offset has shape"),
    "y dtype": (_replace(4, ("float32", (2, 5, N))), ATTRS, "output must have"),
    "y shape": (_replace(4, ("bfloat16", (10, N))), ATTRS, "output has shape"),
    "q = 0": (GOOD, (K, N, 0, G), "num_bits"),
    "q = 9": (GOOD, (K, N, 9, G), "num_bits"),
    "g = 48": (GOOD, (K, N, Q, 48), "group_size"),
    "g = 8": (GOOD, (K, N, Q, 8), "group_size"),
    "g = 16 with the g = 32 alpha": (GOOD, (K, N, Q, 16), "alpha has shape"),
    "alpha with 2 of 3 planes": (_replace(2, ("float32", (4, 2, N))), ATTRS, "alpha has shape"),
    "uniform alpha, offset groups": (
        [*_replace(2, ("float32", (4, 1, N)))[:3], ("float32", (3, N)), *GOOD[4:]],
        ATTRS,
        "offset has shape",
    ),
    "K = 0": (GOOD, (0, N, Q, G), "K (in_features)"),
    "workspace dtype": (_replace(5, ("bfloat16", (0,))), ATTRS, "workspace has shape"),
    "workspace rank": (_replace(5, ("float32", (2, 60))), ATTRS, "workspace has shape"),
    "workspace one slice": (_replace(5, ("float32", (60,))), ATTRS, "workspace has shape"),
    "workspace ragged": (_replace(5, ("float32", (130,))), ATTRS, "workspace has shape"),
    "N mismatch": (GOOD, (K, N + 1, Q, G), "has shape"),
}


def test_validation_accepts_good(emu):
    assert validate(emu, 0, GOOD, ATTRS) == (0, "")
    no_offset = _replace(3, ("float32", (0, N)))
    assert validate(emu, 0, no_offset, ATTRS) == (0, "")
    three_slices = _replace(5, ("float32", (3 * 10 * N,)))
    assert validate(emu, 0, three_slices, ATTRS) == (0, "")
    dq = [*GOOD[:4], ("bfloat16", (K, N)), GOOD[5]]
    assert validate(emu, 1, dq, ATTRS) == (0, "")
    # Uniform scales ([G, 1, N]) and g = 16 (Kp = 128: 4 words, 8 groups), on both handlers.
    uniform = _replace(2, ("float32", (4, 1, N)))
    g16 = [GOOD[0], GOOD[1], ("float32", (8, Q, N)), ("float32", (8, N)), *GOOD[4:]]
    g16_uniform = [*g16[:2], ("float32", (8, 1, N)), *g16[3:]]
    for ops, attrs in [(uniform, ATTRS), (g16, (K, N, Q, 16)), (g16_uniform, (K, N, Q, 16))]:
        assert validate(emu, 0, ops, attrs) == (0, "")
        assert validate(emu, 1, [*ops[:4], ("bfloat16", (K, N)), ops[5]], attrs) == (0, "")


@pytest.mark.parametrize("name", list(LUT_BAD))
def test_validation_rejects(emu, name):
    operands, attrs, fragment = LUT_BAD[name]
    rc, msg = validate(emu, 0, operands, attrs)
    assert rc == INVALID_ARGUMENT and fragment in msg, (rc, msg)


@pytest.mark.parametrize(
    "i,operand,fragment",
    [
        (1, ("int32", (4, Q, N)), "bits must be uint32"),
        (1, ("uint32", (4, Q + 1, N)), "bits has shape"),
        (2, ("int32", (4, Q, N)), "alpha must be"),
        (2, ("float32", (4, Q)), "alpha has shape"),
        (3, ("float16", (4, N)), "offset must have"),
        (3, ("float32", (4, N, 1)), "offset has shape"),
        (4, ("int32", (K, N)), "output must be"),
        (4, ("float32", (K + 28, N)), "output has shape"),
    ],
)
def test_dequant_validation_rejects(emu, i, operand, fragment):
    ops = [*GOOD[:4], ("bfloat16", (K, N)), GOOD[5]]
    ops[i] = operand
    rc, msg = validate(emu, 1, ops, ATTRS)
    assert rc == INVALID_ARGUMENT and fragment in msg, (rc, msg)
    rc, msg = validate(emu, 1, _replace(4, ("float32", (K, N))), (K, N, Q, 40))
    assert rc == INVALID_ARGUMENT and "group_size" in msg


# ---- coverage of the kernel source ------------------------------------------------------------


@pytest.mark.skipif(shutil.which("gcov") is None, reason="needs gcov")
def test_kernel_line_coverage(tmp_path):
    """Every executable line of cuda/lut_gemm_kernel.cuh (kernels and device helpers) runs."""
    lib = _bind(_compile(tmp_path, ["-O0", "--coverage", "-DLUTGEMM_EMU_COVERAGE"]))
    lib.emu_gcov_dump.argtypes = []
    rng = np.random.default_rng(0)
    dts = list(DTYPES)
    for i, (q, mt, g) in enumerate(itertools.product(range(1, 9), [1, 2, 4, 8], [16, 32])):
        n = [3, 64, 67, 600][i % 4]
        x_dtype, a_dtype = dts[i % 3], dts[(i // 3) % 3]
        p = make_problem(rng, mt, 70, n, q, g, i % 2 == 0, x_dtype, a_dtype, i % 4 < 2)
        check_lut(lib, p, splits=1 + i % 2)
    for i, (w_dtype, a_dtype) in enumerate(zip(dts, dts[1:] + dts[:1], strict=True)):
        for g, uniform in [(32, False), (16, True)]:
            p = make_problem(rng, 1, 40, 300, 5, g, i != 0, "float32", a_dtype, uniform)
            run_dequant(lib, p, w_dtype)
    lib.emu_gcov_dump()
    subprocess.run(
        ["gcov", "--json-format", *map(str, tmp_path.glob("*.gcda"))],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    report = json.loads(gzip.open(next(tmp_path.glob("*.gcov.json.gz"))).read())
    counts: dict[int, int] = {}
    for f in report["files"]:
        if os.path.realpath(f["file"]) == str(KERNEL):
            for line in f["lines"]:
                counts[line["line_number"]] = max(counts.get(line["line_number"], 0), line["count"])
    assert counts, "no coverage data for the kernel source"
    missed = sorted(n for n, c in counts.items() if c == 0)
    source = KERNEL.read_text().splitlines()
    assert not missed, "kernel lines never executed:\n" + "\n".join(
        f"{n}: {source[n - 1]}" for n in missed
    )
    print(f"kernel line coverage: {len(counts)}/{len(counts)} executable lines (100%)")
