"""CPU benchmark of ``lut_gemm`` against dense float32 baselines: ``python -m lutgemm_jax.bench``.

For every (shape, q, g, batch) it times, with weights rotated over enough copies that they are not
served from the last-level cache (cold weights, as in a decode step of a large model):

* ``lut``:        ``lut_gemm(x, w, mode=...)`` as users call it (LUT kernel, or dequantize + dot
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
* ``jnp``:        `lowering.jnp_lowering` (dequantize + dot, fused by XLA; the path on platforms
                  without a native kernel).

LUT timings are per sign-word layout (``--layouts``; default ``cpu``, the layout CPU users
prepare once with `lutgemm_jax.to_layout`; ``canonical`` as quantizers produce it).

The same run measures memory copy bandwidth (numpy copy of a 256 MiB buffer, read + write bytes
over time) and reports each LUT timing against the bandwidth floor: bytes of bits + alpha
(+ offset) divided by that bandwidth. Timings are medians after warm-up. Ratio columns:
``x_vs_<backend>`` = that backend's time / the LUT time; ``xla_vs_xla_bytes`` = ``ms_xla /
ms_xla_bytes``.
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

from lutgemm_jax import lowering, ops
from lutgemm_jax.format import LAYOUTS, BCQWeight, offset_operand
from lutgemm_jax.testing import random_packed_weight, reference, rel_err, weight_float64

L3_BYTES = 32 << 20
ALL_BACKENDS = ("lut", "lut_kernel", "dense", "xla", "xla_bytes", "numpy", "jnp")


def copy_bandwidth(nbytes: int = 256 << 20, reps: int = 7) -> float:
    """Bytes/s of a large numpy copy, counting read + write."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times)


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


def _sets(nbytes: int, cap: int = 16) -> int:
    """Copies needed so that the rotated working set is >= 3x the L3."""
    return max(2, min(cap, math.ceil(3 * L3_BYTES / max(nbytes, 1))))


def run(args) -> list[dict]:
    rng = np.random.default_rng(0)
    bw = copy_bandwidth()
    configs = [(k, n, q, m) for (k, n) in args.shapes for q in args.q for m in args.batch]
    rows = []
    progress = _progress(len(configs) * len(args.modes) * len(args.layouts), args.quiet)
    dense_cache: dict = {}
    for k, n, q, m in configs:
        g = args.g if args.g > 0 else -(-k // 32) * 32
        w0 = random_packed_weight(rng, k, n, q, g, args.offset, args.alpha_dtype)
        ws = [w0] + [
            random_packed_weight(rng, k, n, q, g, args.offset, args.alpha_dtype)
            for _ in range(_sets(w0.nbytes()) - 1)
        ]
        wbytes = w0.nbytes()
        x = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
        base = {}
        if "xla_bytes" in args.backends:
            base["xla_bytes"] = _time_xla_bytes(args, rng, m, wbytes, n)
        if any(b in args.backends for b in ("xla", "numpy")):
            key = (k, n)
            if key not in dense_cache:
                dense_cache.clear()
                nd = _sets(4 * k * n, cap=4)
                dense_cache[key] = [
                    rng.standard_normal((k, n), dtype=np.float32) for _ in range(nd)
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
            base["jnp"] = _time(f, [(x, w) for w in ws[:2]], args.reps, 1, args.budget)
        floor = wbytes / bw
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
                        weight_MB=wbytes / 1e6,
                        GBps=wbytes / t / 1e9,
                        floor_ms=floor * 1e3,
                        pct_of_floor=100 * floor / t,
                        min_ms=t_min * 1e3,
                    )
                    if args.alpha_dtype != "float32":
                        row["alpha"] = args.alpha_dtype
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
    meta = dict(
        copy_GBps=bw / 1e9,
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
        for _ in range(_sets(4 * k_eq * n))
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
    ("backend", "{}"),
    ("ms", "{:.3f}"),
    ("min_ms", "{:.3f}"),
    ("GBps", "{:.1f}"),
    ("pct_of_floor", "{:.0f}%"),
    ("ms_xla", "{:.3f}"),
    ("x_vs_xla", "{:.1f}x"),
    ("x_vs_xla_min", "{:.1f}x"),
    ("ms_xla_bytes", "{:.3f}"),
    ("x_vs_xla_bytes", "{:.2f}x"),
    ("xla_vs_xla_bytes", "{:.1f}x"),
    ("ms_numpy", "{:.3f}"),
    ("x_vs_numpy", "{:.1f}x"),
    ("ms_jnp", "{:.3f}"),
    ("x_vs_jnp", "{:.1f}x"),
]


def markdown(rows: list[dict]) -> str:
    cols = [(c, f) for c, f in COLUMNS if any(c in r for r in rows)]
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


def _shape(s: str) -> tuple[int, int]:
    k, n = s.lower().split("x")
    return int(k), int(n)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--shapes",
        type=_shape,
        nargs="+",
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
    args = p.parse_args(argv)
    if args.sweep:
        args.batch = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    rows, meta = run(args)
    print(f"# {meta['command']}")
    print(
        f"# {meta['date']}, {meta['machine']}, {meta['cpus']} CPUs, jax {meta['jax']}, "
        f"copy bandwidth {meta['copy_GBps']:.1f} GB/s (read + write), "
        f"crossover {meta['crossover']}"
    )
    print(markdown(rows))
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
