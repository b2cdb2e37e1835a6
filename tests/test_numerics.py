"""Non-finite and degenerate values: exactly which outputs they reach, in every implementation.

The rules (also in SECURITY.md), for ``y = x @ W_hat`` with x ``[M, K]``:

* Activations: a NaN or +-Inf in ``x[m, k]`` makes every output of row m non-finite (NaN or
  +-Inf), because every lookup-table entry of the 8-activation chunk holding k contains
  ``+-x[k]`` (and the dense paths multiply it by every ``W_hat[k, n]``). Rows without one are
  finite and exact to the usual tolerance. This holds for k in a partial last chunk (K not a
  multiple of 8 or 32) too; the zero padding never produces a non-finite value.
* Scales: a NaN or +-Inf in ``alpha[grp, i, n]`` or ``offset[grp, n]`` makes column n
  non-finite in every row (each row's output for column n multiplies every group's scales, even
  when the activations there are zero: 0 * Inf = NaN); other columns are unaffected.
* A group of padding rows only (g = 16 with K % 32 in 1..16: the high half of the last sign
  word) is never read: non-finite scales or offsets there change nothing.
* Zero activations give exactly zero outputs (the fast path's int8 scale is 0 there, not 0/0).

Checked on the native CPU kernel's three paths (through the public op), the pure-jnp lowering and
the CUDA LUT kernel under the emulation, for per-plane scales with g = 32 and per-column groups;
the native paths and the pure-jnp lowering also for g = 16 (two groups per sign word) with
uniform scales (alpha [G, 1, N], plane i scaled by 2^i) and for uniform per-column weights.
tests/test_lowering_cpu.py and tests/test_ops.py hold the basic native NaN-row cases; the
quantizer's degenerate inputs are in tests/test_quantize.py and tests/test_properties.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_properties as props

import lutgemm_jax as lj
from lutgemm_jax import lowering, ops
from lutgemm_jax.format import offset_operand
from lutgemm_jax.testing import random_weight

IMPLEMENTATIONS = ["exact", "fast", "dense", "jnp", "emulation"]
K, N = 77, 45  # K: 2 words + a partial one (13 rows), 9 chunks of 8 + 5 rows
# Weight kinds: name -> (group size, offset, uniform scales).
WEIGHTS = {
    "g32-offset": (32, True, False),
    "percol-nooffset": (None, False, False),
    "g16-uniform-offset": (16, True, True),
    "percol-uniform-nooffset": (None, False, True),
}
# (implementation, weight kind) pairs: the uniform and g = 16 kinds on the native kernel's paths
# and the pure-jnp lowering.
CASES = [(impl, kind) for kind in list(WEIGHTS)[:2] for impl in IMPLEMENTATIONS] + [
    (impl, kind) for kind in list(WEIGHTS)[2:] for impl in IMPLEMENTATIONS[:4]
]


def run(impl, x, w):
    """y = x @ W_hat (float32) by one implementation."""
    if impl == "jnp":
        offset = offset_operand(w.offset, w.alpha)
        f = jax.jit(lambda x, b, a, o: lowering.jnp_lowering(x, b, a, o, **ops.weight_params(w)))
        return np.asarray(f(x, w.bits, w.alpha, offset))
    if impl == "emulation":
        lib = props.emulation_lib()
        p = props.emulation_problem({"w": w, "x": np.asarray(x)})
        return props.emulation.run_lut(lib, p, splits=2)[0]
    mode = "fast" if impl == "fast" else "exact"
    saved = dict(lowering.CPU_CROSSOVER)
    lowering.CPU_CROSSOVER[mode] = 0 if impl == "dense" else 1 << 62
    try:
        with props.environ(LUTGEMM_CPU_POISON="1"):
            return np.asarray(jax.jit(lambda x, w: lj.lut_gemm(x, w, mode=mode))(x, w))
    finally:
        lowering.CPU_CROSSOVER.update(saved)


def weight_of(kind):
    g, has_offset, uniform = WEIGHTS[kind]
    return random_weight(np.random.default_rng(5), K, N, 3, g, has_offset, uniform=uniform)


# (row, column k, value) per row; rows 0, 5 and 9 stay clean.
ROW_PATTERNS = [
    [],
    [(1, 0, np.nan)],
    [(2, K - 1, np.inf)],  # the last real row of a partial chunk / word
    [(3, 40, -np.inf)],
    [(4, 10, np.inf), (4, 60, -np.inf)],  # +Inf and -Inf in one row: NaN
    [],
    [(6, k, np.nan) for k in range(K)],  # a whole row of NaN
    [(7, 72, np.nan), (7, 73, np.inf)],  # both in the last, partial chunk
    [(8, 31, np.inf)],  # the last row of the first word
    [],
]


@pytest.mark.parametrize("impl,kind", CASES)
def test_non_finite_activations_reach_exactly_their_rows(impl, kind):
    w, w64 = weight_of(kind)
    x = np.random.default_rng(6).normal(size=(len(ROW_PATTERNS), K)).astype(np.float32)
    for row in ROW_PATTERNS:
        for m, k, v in row:
            x[m, k] = v
    y = run(impl, x, w)
    bad_rows = np.array([bool(row) for row in ROW_PATTERNS])
    assert not np.isfinite(y[bad_rows]).any(), np.argwhere(np.isfinite(y) & bad_rows[:, None])
    assert np.isfinite(y[~bad_rows]).all()
    assert np.isnan(y[1]).all() and np.isnan(y[6]).all()  # NaN stays NaN
    extra = 0.0
    if impl == "fast":
        extra = props.cpu_tests.fast_bound(x[~bad_rows], w) * (1 + 1e-3)
    props.assert_close(y[~bad_rows], x[~bad_rows], w64, "float32", extra)


@pytest.mark.parametrize("impl,kind", [c for c in CASES if WEIGHTS[c[1]][1]])
@pytest.mark.parametrize("where", ["alpha NaN", "alpha Inf", "offset NaN", "offset -Inf"])
def test_non_finite_scales_reach_exactly_their_columns(impl, kind, where):
    g, _, uniform = WEIGHTS[kind]
    w, _ = random_weight(np.random.default_rng(7), K, N, 3, g, True, uniform=uniform)
    alpha, offset = np.array(w.alpha), np.array(w.offset)
    value = {"NaN": np.nan, "Inf": np.inf, "-Inf": -np.inf}[where.split()[1]]
    last = (K - 1) // g if g else 0  # the last group with real rows
    if where.startswith("alpha"):
        alpha[1, -1, 7] = value  # g = 16: group 1, the high half of the first word
    else:
        offset[last, 7] = value  # g = 32: 13 real rows, 19 padding rows; g = 16: 13 and 3
    w = lj.BCQWeight(
        bits=w.bits,
        alpha=jnp.asarray(alpha),
        offset=jnp.asarray(offset),
        in_features=K,
        out_features=N,
        num_bits=3,
        group_size=g,
    )
    x = np.random.default_rng(8).normal(size=(4, K)).astype(np.float32)
    x[3] = 0.0  # zero activations still meet the non-finite scale: 0 * Inf = NaN
    y = run(impl, x, w)
    assert not np.isfinite(y[:, 7]).any()
    assert np.isfinite(np.delete(y, 7, axis=1)).all()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS[:4])
def test_padding_only_group_is_never_read(impl):
    # g = 16, K = 77: groups 0-4 hold rows 0..76, group 5 (rows 80..95) is padding only.
    w, w64 = weight_of("g16-uniform-offset")
    assert w.num_groups == 6
    alpha, offset = np.array(w.alpha), np.array(w.offset)
    alpha[5], offset[5] = np.nan, np.inf
    poisoned = lj.BCQWeight(
        bits=w.bits,
        alpha=jnp.asarray(alpha),
        offset=jnp.asarray(offset),
        in_features=K,
        out_features=N,
        num_bits=3,
        group_size=16,
    )
    x = np.random.default_rng(10).normal(size=(3, K)).astype(np.float32)
    np.testing.assert_array_equal(run(impl, x, poisoned), run(impl, x, w))


@pytest.mark.parametrize("impl,kind", CASES)
def test_zero_activations_give_exact_zeros(impl, kind):
    w, _ = weight_of(kind)
    x = np.zeros((3, K), np.float32)
    x[1, ::2] = -0.0
    y = run(impl, x, w)
    assert (y == 0).all(), y[y != 0][:5]


@pytest.mark.parametrize("impl,kind", CASES)
def test_tiny_and_huge_finite_activations_stay_finite(impl, kind):
    """Subnormal and large (but not overflowing) activations: finite, and accurate."""
    w, w64 = weight_of(kind)
    rng = np.random.default_rng(9)
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    x = np.stack(
        [
            rng.integers(-3, 4, K) * tiny,  # subnormal
            rng.normal(size=K) * 1e-30,
            rng.normal(size=K) * 1e30,  # |y| about 1e32: within float32
            np.where(np.arange(K) % 2, 1e30, 1e-30) * rng.normal(size=K),  # mixed
        ]
    ).astype(np.float32)
    y = run(impl, x, w)
    assert np.isfinite(y).all()
    # Row 0 is only promised finite: products of subnormals keep a few bits (or are flushed to
    # zero). The others are checked at their own scale.
    for r in range(1, len(x)):
        extra = 0.0
        if impl == "fast":
            extra = props.cpu_tests.fast_bound(x[r : r + 1], w) * (1 + 1e-3)
        props.assert_close(y[r : r + 1], x[r : r + 1], w64, "float32", extra)
