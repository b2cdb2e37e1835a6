"""GPU benchmark: the CUDA LUT-GEMM kernel vs XLA's dense bfloat16/float16 dot.

    python benchmarks/bench_gpu.py [--bits 3] [--group-size 128] [--dtype bfloat16]
                                   [--batches 1 8] [--out results.json]

Shapes (K x N): the OPT-175B layer shapes 12288 x 12288, 12288 x 49152, 49152 x 12288 and
4096 x 4096. Timings are L2-cold: each jitted step applies R different weight sets in sequence
(R chosen so that R weights exceed 3x the L2 size), and the time per call is the step time / R
(median over repeats). The roofline is the bytes each call must move (bits + alpha [+ offset] +
x + y for LUT-GEMM; K*N*2 + x + y for the dense dot) at the device's measured copy bandwidth
(and the nominal one with --peak-gbs). For M > 8 the lowering takes the dequantize + dot path;
the LUT kernel is then also timed directly (`lut_kernel_us`), which measures the crossover
(`--batches 1 2 4 8 16 32`). Exits with a message, without timing anything, when no GPU is
present.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lutgemm_jax import build_info, lowering
from lutgemm_jax.ops import lut_gemm
from lutgemm_jax.testing import random_packed_weight

SHAPES = [(12288, 12288), (12288, 49152), (49152, 12288), (4096, 4096)]
L2_BYTES = 50 * 2**20  # H100; an upper bound for A100 (40 MB) too


def _gpu():
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


def median_time(fn, args, repeats=20, warmup=3) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(nbytes=2 * 2**30) -> float:
    """Device-to-device copy bandwidth (read + write bytes per second)."""
    a = jnp.ones(nbytes // 4, jnp.float32)
    f = jax.jit(lambda v: v + 1.0)
    t = median_time(f, (a,))
    return 2 * nbytes / t


def lut_bytes(k, n, q, g, m, act_bytes, scale_bytes, with_offset):
    groups = -(-k // g)
    scales = groups * n * (q + (1 if with_offset else 0)) * scale_bytes
    return -(-k // 32) * 4 * q * n + scales + m * (k + n) * act_bytes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--offset", action="store_true", help="weights with offsets (RTN-style)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--peak-gbs", type=float, default=3350.0, help="nominal HBM GB/s (H100 SXM)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    if _gpu() is None:
        print("bench_gpu: no GPU visible to JAX; nothing timed.")
        return 0
    if not build_info()["cuda"]:
        print(f"bench_gpu: the CUDA extension is unavailable ({build_info()['paths']['cuda']}).")
        return 1

    dtype = jnp.dtype(args.dtype)
    act = dtype.itemsize
    bw = copy_bandwidth()
    print(
        f"device: {_gpu().device_kind}; copy bandwidth {bw / 1e9:.0f} GB/s "
        f"(nominal {args.peak_gbs:.0f} GB/s); q={args.bits} g={args.group_size} {args.dtype}"
    )
    rng = np.random.default_rng(0)
    rows = []
    for k, n in SHAPES:
        wb = lut_bytes(k, n, args.bits, args.group_size, 0, act, act, args.offset)
        r_lut = max(2, -(-3 * L2_BYTES // wb))
        r_dense = max(2, -(-3 * L2_BYTES // (k * n * act)))
        lut_ws = [
            random_packed_weight(rng, k, n, args.bits, args.group_size, args.offset, dtype)
            for _ in range(r_lut)
        ]
        dense_ws = [jnp.asarray(rng.normal(size=(k, n)) * 0.02, dtype) for _ in range(r_dense)]
        lut_step = jax.jit(lambda x, ws: [lut_gemm(x, w) for w in ws])
        # The LUT kernel itself at any M (the lowering switches to dequantize + dot above
        # lowering.CUDA_LUT_MAX_ROWS): for measuring the crossover.
        kernel_step = jax.jit(lambda x, ws: [lowering.cuda_kernel(x, w, path="lut") for w in ws])
        dense_step = jax.jit(
            lambda x, ws: [
                jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(x.dtype) for w in ws
            ]
        )
        for m in args.batches:
            x = jnp.asarray(rng.normal(size=(m, k)), dtype)
            t_lut = median_time(lut_step, (x, lut_ws), args.repeats) / r_lut
            t_dense = median_time(dense_step, (x, dense_ws), args.repeats) / r_dense
            t_kernel = t_lut
            if m > lowering.CUDA_LUT_MAX_ROWS:
                t_kernel = median_time(kernel_step, (x, lut_ws), args.repeats) / r_lut
            b_lut = lut_bytes(k, n, args.bits, args.group_size, m, act, act, args.offset)
            b_dense = k * n * act + m * (k + n) * act
            row = dict(
                k=k,
                n=n,
                m=m,
                q=args.bits,
                g=args.group_size,
                dtype=args.dtype,
                lut_us=t_lut * 1e6,
                lut_kernel_us=t_kernel * 1e6,
                path="lut" if m <= lowering.CUDA_LUT_MAX_ROWS else "dequant+dot",
                dense_us=t_dense * 1e6,
                speedup=t_dense / t_lut,
                lut_roofline_pct=100 * b_lut / bw / t_lut,
                lut_nominal_roofline_pct=100 * b_lut / (args.peak_gbs * 1e9) / t_lut,
                dense_roofline_pct=100 * b_dense / bw / t_dense,
                weight_sets=(r_lut, r_dense),
            )
            rows.append(row)
            print(
                f"{k:>6} x {n:<6} M={m}: lut_gemm ({row['path']}) {row['lut_us']:8.1f} us "
                f"({row['lut_roofline_pct']:5.1f}% of measured BW) | XLA {args.dtype} dot "
                f"{row['dense_us']:8.1f} us ({row['dense_roofline_pct']:5.1f}%) | "
                f"speedup {row['speedup']:.2f}x | LUT kernel {row['lut_kernel_us']:8.1f} us"
            )
        del lut_ws, dense_ws
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=_gpu().device_kind, copy_gbs=bw / 1e9, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
