"""CPU benchmark of ``lut_gemm`` against dense float32 baselines: ``python -m lutgemm_jax.bench``.

For every (shape, q, g, batch) it times, with weights rotated over enough copies (``--rotate-mib``,
default 256 MiB) that they are not served from the last-level cache (cold weights, as in a decode
step of a large model):

* ``lut``:        ``lut_gemm(x, w, mode=...)`` as users call it (LUT kernel, or the dense path
                  beyond the batch crossover ``lowering.CPU_CROSSOVER``);
* ``lut_kernel``: the native LUT kernel at every batch size (`lowering.cpu_kernel`, path "lut");
* ``dense``:      the kernel's large-batch path at every batch size (path "dense": dequantized
                  tiles + FMA);
* ``xla``:        XLA float32 ``x @ W`` on a dense float32 weight;
* ``xla_bytes``:  XLA float32 ``x @ W`` on a dense float32 weight of the packed weight's size
                  (``[B / 4N, N]`` for B packed bytes): how fast XLA's own GEMV streams as many
                  bytes as the LUT kernel reads, so ``ms_xla / ms_xla_bytes`` is the speedup over
                  ``xla`` that a kernel reading the packed bytes at XLA's rate would get;
* ``numpy``:      numpy/OpenBLAS float32 ``x @ W``;
* ``jnp``:        `lowering.jnp_lowering`: dequantize + XLA's own float32 dot in one jitted
                  function (the path on platforms without a native kernel).

LUT timings are per sign-word layout (``--layouts``; default ``cpu``, the layout CPU users
prepare once with `lutgemm_jax.to_layout`; ``canonical`` as quantizers produce it).

The floor. The same run measures the read bandwidth of the threads the kernel uses before and
after the timings (`read_bandwidth`: native passes over a ``--read-mib`` buffer on the kernel's
worker pool, ``--read-passes`` each time); ``read_GBps`` is the median of all those passes.
Every timing row carries the bytes the op must read (the packed weight's arrays as stored,
`BCQWeight.nbytes`, plus x; the output is written, not read), the floor time ``floor_ms`` =
those bytes / ``read_GBps``, ``GBps`` = those bytes / the time, and ``pct_of_floor`` =
``100 * floor_ms / ms``; ``bits_per_weight`` = 8 * weight bytes / (K * N).
Timings are medians after warm-up; ``min_ms`` is the fastest call. Ratio columns:
``x_vs_<backend>`` = that backend's time / the LUT time; ``xla_vs_xla_bytes`` = ``ms_xla /
ms_xla_bytes``.

``--overhead`` adds the per-call cost of a jitted 1 x 64 @ 64 x 64 ``lut_gemm`` (too small for
the kernel's work to matter, so dispatch dominates), next to XLA's own dot of that shape: per
call from Python, and per call inside one jitted loop (the custom call's cost without Python).

``--suite`` presets the options of one of issue 20's tables (explicit options still override):

* ``decode``:   batch 1, q = 2, 3, 4, g = 128, `ISSUE_SHAPES`, fast mode, cpu layout, ``lut``;
* ``batch``:    as ``decode`` at q = 3 for M = 1 .. 8;
* ``prefill``:  q = 2, 3, 4, `PREFILL_SHAPES`, M = 128, 512, 2048: ``lut`` against ``jnp`` (the
                library's dequantize + XLA's float32 dot, one jitted function) and ``xla`` (XLA's
                dot alone on a dense float32 weight: the strictest form of that baseline, with
                no dequantization at all); add ``--g 32 --uniform`` or ``--g 16 --uniform``
                for GGUF-imported weights and ``--alpha-dtype float16`` for float16 scales;
* ``overhead``: the 1 x 64 @ 64 x 64 dispatch table only.

``benchmarks/plot_bandwidth.py`` draws GB/s vs shape with the floor from the ``--json`` output.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lutgemm_jax import _lutgemm_cpu, lowering, ops
from lutgemm_jax.format import LAYOUTS, BCQWeight, array_nbytes, offset_operand
from lutgemm_jax.testing import random_packed_weight, reference, rel_err, weight_float64

ALL_BACKENDS = ("lut", "lut_kernel", "dense", "xla", "xla_bytes", "numpy", "jnp")
ISSUE_SHAPES = ((4096, 4096), (4096, 16384), (16384, 4096), (2048, 5632), (5632, 2048))
"""K x N shapes of issue 20's decode targets (attention / MLP shapes of 1-7B decoders)."""
PREFILL_SHAPES = ((4096, 4096), (2048, 5632), (5632, 2048))
"""K x N shapes of issue 20's prefill target (the MLP shapes at 2048 x 5632 are TinyLlama's)."""
MAX_SETS = 256
"""Most weight copies rotated: tiny shapes stay cache-resident rather than cost thousands."""
READ_STEP_BYTES = 128
"""The read-bandwidth buffer is a multiple of this (one iteration of four 32-byte loads)."""
MAX_READ_PASSES = 1000
MAX_THREADS = 256
OVERHEAD_SHAPE = (64, 64)
"""K x N of the dispatch-overhead call (x is 1 x K)."""
OVERHEAD_LOOP = 1000
"""Calls per jitted loop when timing the in-graph cost of the overhead call."""


def read_bandwidth(
    nbytes: int = 256 << 20, passes: int = 9, threads: int | None = None
) -> dict[str, float | int | str]:
    """Read bandwidth of the kernel's threads: the floor of every bench timing.

    Native (``cpu/read_bandwidth.h``): one ``nbytes`` buffer, filled once, read whole per pass by
    the calling thread plus the kernel's worker pool with 32-byte AVX2 loads (scalar loads
    without AVX2) whose sums are returned, so none is elided; one untimed warm-up pass.

    Args:
      nbytes: buffer size, a positive multiple of `READ_STEP_BYTES`; several times the last-level
        cache (the default, 256 MiB) to measure DRAM.
      passes: timed passes, 1 .. `MAX_READ_PASSES`.
      threads: 1 .. `MAX_THREADS`; ``None``: as many as the kernel uses by default (one per CPU
        this process may run on, or ``LUTGEMM_CPU_THREADS``).

    Returns:
      dict with ``GBps`` (median over the passes, 1e9 bytes/s), ``GBps_min``, ``GBps_max``,
      ``pass_GBps`` (every pass), ``threads``, ``MiB``, ``passes``, ``isa`` (the code path) and
      ``checksum``: the sum mod 2^64 of every 64-bit word read over the warm-up and the timed
      passes (word ``j`` of the buffer holds ``j * 0x9E3779B97F4A7C15`` mod 2^64).
    """
    if threads is None:
        threads = _lutgemm_cpu.kernel_threads()
    for name, value in (("nbytes", nbytes), ("passes", passes), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"read_bandwidth: {name} must be an int, got {value!r}")
    if nbytes < READ_STEP_BYTES or nbytes % READ_STEP_BYTES:
        raise ValueError(
            f"read_bandwidth: nbytes must be a positive multiple of {READ_STEP_BYTES}, got {nbytes}"
        )
    for name, value, hi in (("passes", passes, MAX_READ_PASSES), ("threads", threads, MAX_THREADS)):
        if not 1 <= value <= hi:
            raise ValueError(f"read_bandwidth: {name} must be in [1, {hi}], got {value}")
    r = _lutgemm_cpu.read_bandwidth(int(nbytes), int(passes), int(threads))
    rates = [nbytes / s / 1e9 for s in r["pass_seconds"]]
    return dict(
        GBps=statistics.median(rates),
        GBps_min=min(rates),
        GBps_max=max(rates),
        pass_GBps=rates,
        threads=r["threads"],
        MiB=nbytes / (1 << 20),
        passes=passes,
        isa=_lutgemm_cpu.selected_isa(),
        checksum=r["checksum"],
    )


def _time(fn, args_list, reps: int, warmup: int, budget_s: float) -> tuple[float, float]:
    """(median, minimum) seconds of fn(*args) rotating over args_list. On a busy machine the
    minimum is the least-disturbed call; the tables report medians and this as ``min_ms``."""
    for i in range(warmup):
        jax.block_until_ready(fn(*args_list[i % len(args_list)]))
    times = []
    start = time.perf_counter()
    for i in range(reps):
        a = args_list[i % len(args_list)]
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*a))
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    return statistics.median(times), min(times)


def _sets(nbytes: int, rotate_bytes: int) -> int:
    """Copies of an ``nbytes`` operand that make a rotated set of >= ``rotate_bytes``."""
    return max(2, min(MAX_SETS, math.ceil(rotate_bytes / max(nbytes, 1))))


def run(args) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(0)
    before = read_bandwidth(args.read_mib << 20, args.read_passes)
    rotate = args.rotate_mib << 20
    configs = [(k, n, q, m) for (k, n) in args.shapes for q in args.q for m in args.batch]
    rows = []
    progress = _progress(len(configs) * len(args.modes) * len(args.layouts), args.quiet)
    dense_cache: dict = {}
    for k, n, q, m in configs:
        g = args.g if args.g > 0 else -(-k // 32) * 32
        w0 = random_packed_weight(
            rng, k, n, q, g, args.offset, args.alpha_dtype, uniform=args.uniform
        )
        wbytes = w0.nbytes()
        sets = _sets(wbytes, rotate)
        ws = [w0] + [
            random_packed_weight(
                rng, k, n, q, g, args.offset, args.alpha_dtype, uniform=args.uniform
            )
            for _ in range(sets - 1)
        ]
        x = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
        read_bytes = wbytes + array_nbytes(x)
        base = {}
        if "xla_bytes" in args.backends:
            base["xla_bytes"] = _time_xla_bytes(args, rng, m, wbytes, n)
        if any(b in args.backends for b in ("xla", "numpy")):
            key = (k, n)
            if key not in dense_cache:
                dense_cache.clear()
                dense_cache[key] = [
                    rng.standard_normal((k, n), dtype=np.float32)
                    for _ in range(_sets(4 * k * n, rotate))
                ]
            dense = dense_cache[key]
            if "xla" in args.backends:
                dj = [jnp.asarray(d) for d in dense]
                f = jax.jit(lambda x, w: x @ w)
                base["xla"] = _time(f, [(x, d) for d in dj], args.reps, args.warmup, args.budget)
                del dj
            if "numpy" in args.backends:
                xn = np.asarray(x)
                base["numpy"] = _time(
                    lambda x, w: x @ w,
                    [(xn, d) for d in dense],
                    args.reps,
                    args.warmup,
                    args.budget,
                )
        if "jnp" in args.backends:
            f = jax.jit(
                lambda x, w: lowering.jnp_lowering(
                    x, w.bits, w.alpha, offset_operand(w.offset, w.alpha), **ops.weight_params(w)
                )
            )
            base["jnp"] = _time(f, [(x, w) for w in ws], args.reps, 1, args.budget)
        for mode in args.modes:
            for layout in args.layouts:
                wl = [w.to_layout(layout) for w in ws]
                res = _time_lut(args, x, wl, mode, dense=mode == args.modes[0])
                for name, (t, t_min) in res.items():
                    row = dict(
                        K=k,
                        N=n,
                        q=q,
                        g=g,
                        M=m,
                        mode="-" if name == "dense" else mode,
                        layout=layout,
                        backend=name,
                        ms=t * 1e3,
                        min_ms=t_min * 1e3,
                        GBps=read_bytes / t / 1e9,
                        weight_MB=wbytes / 1e6,
                        read_MB=read_bytes / 1e6,
                        bits_per_weight=8 * wbytes / (k * n),
                        rotated_MiB=sets * wbytes / (1 << 20),
                    )
                    if args.alpha_dtype != "float32":
                        row["alpha"] = args.alpha_dtype
                    if args.uniform:
                        row["uniform"] = True
                    for b, (tb, tb_min) in base.items():
                        row[f"ms_{b}"] = tb * 1e3
                        row[f"x_vs_{b}"] = tb / t
                        if b == "xla":
                            row["x_vs_xla_min"] = tb_min / t_min
                    if "xla" in base and "xla_bytes" in base:
                        row["xla_vs_xla_bytes"] = base["xla"][0] / base["xla_bytes"][0]
                    rows.append(row)
                progress.advance()
                del wl
    progress.close()
    after = read_bandwidth(args.read_mib << 20, args.read_passes)
    passes = before["pass_GBps"] + after["pass_GBps"]
    read_gbps = statistics.median(passes)
    for row in rows:
        row["floor_ms"] = row["read_MB"] * 1e6 / (read_gbps * 1e9) * 1e3
        row["pct_of_floor"] = 100 * row["floor_ms"] / row["ms"]
    meta = dict(
        read_GBps=read_gbps,
        read_GBps_min=min(passes),
        read_GBps_max=max(passes),
        read_threads=before["threads"],
        read_bandwidth=dict(before=before, after=after),
        machine=platform.processor() or platform.machine(),
        cpus=os.cpu_count(),
        jax=jax.__version__,
        date=time.strftime("%Y-%m-%d"),
        command="python -m lutgemm_jax.bench " + " ".join(sys.argv[1:]),
        crossover=dict(lowering.CPU_CROSSOVER),
    )
    return rows, meta


def _time_xla_bytes(args, rng, m: int, nbytes: int, n: int) -> tuple[float, float]:
    """(median, min) seconds of XLA float32 ``x @ W`` for W ``[nbytes / 4n, n]`` (rotated)."""
    k_eq = max(1, round(nbytes / (4 * n)))
    dense = [
        jnp.asarray(rng.standard_normal((k_eq, n), dtype=np.float32))
        for _ in range(_sets(4 * k_eq * n, args.rotate_mib << 20))
    ]
    x = jnp.asarray(rng.normal(size=(m, k_eq)), jnp.float32)
    f = jax.jit(lambda x, w: x @ w)
    return _time(f, [(x, d) for d in dense], args.reps, args.warmup, args.budget)


def _time_lut(args, x, ws: list[BCQWeight], mode: str, dense: bool) -> dict[str, tuple]:
    """(median, min) seconds of each LUT backend in ``args.backends`` over the weights ``ws``."""
    res = {}
    if "lut" in args.backends:
        f = jax.jit(lambda x, w: ops.lut_gemm(x, w, mode=mode))
        res["lut"] = _time(f, [(x, w) for w in ws], args.reps, args.warmup, args.budget)
    if "lut_kernel" in args.backends:
        f = jax.jit(lambda x, w: lowering.cpu_kernel(x, w, mode=mode, path="lut"))
        res["lut_kernel"] = _time(f, [(x, w) for w in ws], args.reps, args.warmup, args.budget)
    if "dense" in args.backends and dense:
        f = jax.jit(lambda x, w: lowering.cpu_kernel(x, w, mode=mode, path="dense"))
        res["dense"] = _time(f, [(x, w) for w in ws], args.reps, args.warmup, args.budget)
    return res


def overhead(args, read_gbps: float) -> list[dict]:
    """Per-call cost of a jitted ``[1, 64] @ [64, 64]``: ``lut_gemm`` (q = 3, g = 64, the first
    of ``args.modes``, cpu layout) and XLA's float32 dot on the dequantized weight.

    ``us``: median microseconds per call from Python (dispatch + the op); ``min_us`` the fastest;
    ``loop_us``: per call inside one jitted ``fori_loop`` of `OVERHEAD_LOOP` dependent calls
    (each call's output, through tanh, is the next call's x), i.e. without Python dispatch;
    ``floor_us``: the bytes the call reads (weight + x) at the read bandwidth."""
    k, n = OVERHEAD_SHAPE
    rng = np.random.default_rng(2)
    w = random_packed_weight(rng, k, n, 3, 64, args.offset, args.alpha_dtype, layout="cpu")
    dense = w.dequantize(jnp.float32)
    x = jnp.asarray(rng.normal(size=(1, k)), jnp.float32)
    mode = args.modes[0]
    calls = {
        f"lut_gemm ({mode})": (lambda x, w: ops.lut_gemm(x, w, mode=mode), w),
        "xla f32 dot": (lambda x, d: x @ d, dense),
    }
    reps = max(args.reps, 2000)
    out = []
    for name, (fn, wt) in calls.items():
        f = jax.jit(fn)

        def loop(x, wt, fn=fn):
            return jax.lax.fori_loop(0, OVERHEAD_LOOP, lambda _, x: jnp.tanh(fn(x, wt)), x)

        t, t_min = _time(f, [(x, wt)], reps, 10, args.budget)
        t_loop, _ = _time(jax.jit(loop), [(x, wt)], 9, 1, args.budget)
        read_bytes = array_nbytes(wt) + array_nbytes(x)
        out.append(
            dict(
                call=name,
                M=1,
                K=k,
                N=n,
                us=t * 1e6,
                min_us=t_min * 1e6,
                loop_us=t_loop / OVERHEAD_LOOP * 1e6,
                floor_us=read_bytes / (read_gbps * 1e9) * 1e6,
                read_bytes=read_bytes,
            )
        )
    return out


def accuracy(k: int = 4096, n: int = 4096, q: int = 3, g: int = 128, m: int = 8) -> list[dict]:
    """max |y - y64| / max |y64| of each mode vs float64, for Gaussian activations and for
    activations with outliers (1% of entries scaled by 30, as in LLM hidden states)."""
    rng = np.random.default_rng(1)
    w = random_packed_weight(rng, k, n, q, g, True)
    w64 = weight_float64(w)
    xs = {"gaussian": rng.normal(size=(m, k))}
    xo = rng.normal(size=(m, k))
    xo[rng.random((m, k)) < 0.01] *= 30
    xs["outliers"] = xo
    out = []
    for name, x in xs.items():
        x32 = x.astype(np.float32)
        ref = reference(x32, w64)
        for mode in ops.MODES:
            err = rel_err(lowering.cpu_kernel(jnp.asarray(x32), w, mode=mode, path="lut"), ref)
            out.append(dict(K=k, N=n, q=q, g=g, M=m, activations=name, mode=mode, rel_err=err))
    return out


class _progress:
    def __init__(self, total: int, quiet: bool):
        self.bar = None
        if not quiet:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="lut_gemm bench", file=sys.stderr)
            except ImportError:
                pass

    def advance(self):
        if self.bar is not None:
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


COLUMNS = [
    ("K", "{}"),
    ("N", "{}"),
    ("q", "{}"),
    ("g", "{}"),
    ("M", "{}"),
    ("mode", "{}"),
    ("layout", "{}"),
    ("alpha", "{}"),
    ("uniform", "{}"),
    ("bits_per_weight", "{:.2f}"),
    ("rotated_MiB", "{:.0f}"),
    ("backend", "{}"),
    ("ms", "{:.3f}"),
    ("min_ms", "{:.3f}"),
    ("floor_ms", "{:.3f}"),
    ("pct_of_floor", "{:.0f}%"),
    ("GBps", "{:.1f}"),
    ("ms_xla", "{:.3f}"),
    ("x_vs_xla", "{:.1f}x"),
    ("x_vs_xla_min", "{:.1f}x"),
    ("ms_xla_bytes", "{:.3f}"),
    ("x_vs_xla_bytes", "{:.2f}x"),
    ("xla_vs_xla_bytes", "{:.1f}x"),
    ("ms_numpy", "{:.3f}"),
    ("x_vs_numpy", "{:.1f}x"),
    ("ms_jnp", "{:.3f}"),
    ("x_vs_jnp", "{:.2f}x"),
]
OVERHEAD_COLUMNS = [
    ("call", "{}"),
    ("M", "{}"),
    ("K", "{}"),
    ("N", "{}"),
    ("us", "{:.1f}"),
    ("min_us", "{:.1f}"),
    ("loop_us", "{:.2f}"),
    ("floor_us", "{:.3f}"),
]


def markdown(rows: list[dict], columns: list[tuple[str, str]] = COLUMNS) -> str:
    cols = [(c, f) for c, f in columns if any(c in r for r in rows)]
    out = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f.format(r[c]) if c in r else "" for c, f in cols) + " |")
    return "\n".join(out)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    fields = ("K", "N", "q", "mode", "layout", "backend")
    for key in sorted({tuple(r[f] for f in fields) for r in rows}):
        pts = sorted(
            (r["M"], r["x_vs_xla"])
            for r in rows
            if tuple(r[f] for f in fields) == key and "x_vs_xla" in r
        )
        k, n, q, mode, layout, backend = key
        if pts:
            label = f"{k}x{n} q={q} {mode} {layout} {backend}"
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.axhline(1 / 1.1, color="red", lw=0.8, ls="--", label="0.91x (10% slower than XLA)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size M")
    ax.set_ylabel("speedup vs XLA float32 x @ W")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


_DECODE = dict(shapes=list(ISSUE_SHAPES), g=128, modes=["fast"], layouts=["cpu"], backends=["lut"])
SUITES: dict[str, dict] = {
    "decode": dict(_DECODE, q=[2, 3, 4], batch=[1]),
    "batch": dict(_DECODE, q=[3], batch=list(range(1, 9))),
    "prefill": dict(
        _DECODE,
        shapes=list(PREFILL_SHAPES),
        q=[2, 3, 4],
        batch=[128, 512, 2048],
        backends=["lut", "jnp", "xla"],
    ),
    "overhead": dict(shapes=[], modes=["fast"], overhead=True),
}
"""Option presets of issue 20's tables (``--suite``; see the module docstring)."""


def _shape(s: str) -> tuple[int, int]:
    k, n = s.lower().split("x")
    return int(k), int(n)


def _positive(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--suite", choices=sorted(SUITES), help="preset options of one of issue 20's tables"
    )
    p.add_argument(
        "--shapes",
        type=_shape,
        nargs="*",
        default=[(4096, 4096)],
        help="K x N shapes, e.g. 4096x4096 4096x16384",
    )
    p.add_argument("--q", type=int, nargs="+", default=[3], help="bit-planes")
    p.add_argument("--g", type=int, default=128, help="group size (-1: per column)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes M")
    p.add_argument("--sweep", action="store_true", help="batch sizes 1, 2, 4, ..., 256")
    p.add_argument("--modes", nargs="+", default=[ops.DEFAULT_MODE], choices=ops.MODES)
    p.add_argument(
        "--layouts",
        nargs="+",
        default=["cpu"],
        choices=LAYOUTS,
        help="sign-word layouts of the LUT weights (cpu: prepared with to_layout, the default)",
    )
    p.add_argument(
        "--backends", nargs="+", default=["lut", "xla", "numpy", "jnp"], choices=ALL_BACKENDS
    )
    p.add_argument("--offset", action="store_true", help="weights with an offset term")
    p.add_argument(
        "--alpha-dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="dtype of alpha (and offset); float16 is LUT-GEMM's own format",
    )
    p.add_argument(
        "--uniform",
        action="store_true",
        help="one scale per group (alpha [G, 1, N], plane i scaled by 2^i), as GGUF imports make",
    )
    p.add_argument(
        "--rotate-mib",
        type=_positive,
        default=256,
        help=f"rotate copies of each operand over at least this many MiB (at most {MAX_SETS} "
        "copies), so that timings read cold weights",
    )
    p.add_argument(
        "--read-mib", type=_positive, default=256, help="buffer of the read-bandwidth floor"
    )
    p.add_argument("--read-passes", type=_positive, default=9, help="timed read passes")
    p.add_argument(
        "--overhead", action="store_true", help="also time a jitted 1 x 64 @ 64 x 64 call"
    )
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget", type=float, default=3.0, help="max seconds per timing")
    p.add_argument("--csv", help="write rows as CSV")
    p.add_argument("--json", help="write rows + metadata as JSON")
    p.add_argument("--plot", help="PNG of speedup vs batch size")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--accuracy", action="store_true", help="also print each mode's error vs float64"
    )
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The options, with ``--suite``'s presets as defaults that explicit options override."""
    p = _parser()
    suite = p.parse_known_args(argv)[0].suite
    if suite is not None:
        p.set_defaults(**SUITES[suite])
    args = p.parse_args(argv)
    if args.sweep:
        args.batch = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    rows, meta = run(args)
    bw = meta["read_bandwidth"]["before"]
    print(f"# {meta['command']}")
    print(
        f"# {meta['date']}, {meta['machine']}, {meta['cpus']} CPUs, jax {meta['jax']}, "
        f"crossover {meta['crossover']}"
    )
    print(
        f"# read floor {meta['read_GBps']:.1f} GB/s ({meta['read_GBps_min']:.1f}-"
        f"{meta['read_GBps_max']:.1f}): median of {bw['passes']} passes over {bw['MiB']:.0f} MiB "
        f"before and {bw['passes']} after the timings (medians "
        f"{bw['GBps']:.1f} and {meta['read_bandwidth']['after']['GBps']:.1f}), "
        f"{bw['threads']} threads, {bw['isa']}"
    )
    if rows:
        print(markdown(rows))
    if args.overhead:
        meta["overhead"] = overhead(args, meta["read_GBps"])
        print("\n" + markdown(meta["overhead"], OVERHEAD_COLUMNS))
    if args.accuracy:
        acc = accuracy()
        print("\n| K | N | q | g | M | activations | mode | max abs err / max abs y |")
        print("|---|---|---|---|---|---|---|---|")
        for r in acc:
            print(
                f"| {r['K']} | {r['N']} | {r['q']} | {r['g']} | {r['M']} | {r['activations']} "
                f"| {r['mode']} | {r['rel_err']:.2e} |"
            )
        meta["accuracy"] = acc
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            wr.writeheader()
            wr.writerows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
