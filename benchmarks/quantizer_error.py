"""Quantizer error table: relative Frobenius error ||W - W_hat|| / ||W|| and wall time.

Random Gaussian ``[K, N]`` float32 matrix; every (bits, group size, method) combination;
prints a markdown table. Wall time is measured on a second call (the first one compiles).

    python benchmarks/quantizer_error.py                 # 4096 x 4096, q = 2,3,4, g = 32,128,col
    python benchmarks/quantizer_error.py --k 1024 --n 1024 --bits 3
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from lutgemm_jax import quantize


def _parse_group(text: str) -> int | None:
    return None if text in ("col", "column", "none", "-1") else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4096, help="rows (in_features)")
    parser.add_argument("--n", type=int, default=4096, help="columns (out_features)")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument(
        "--groups", nargs="+", default=["32", "128", "col"], help="group sizes; 'col' = per column"
    )
    parser.add_argument(
        "--methods", nargs="+", default=["greedy", "alternating", "rtn"], help="methods"
    )
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    W = jax.random.normal(jax.random.key(args.seed), (args.k, args.n), jnp.float32)
    norm = float(jnp.linalg.norm(W))
    print(f"Random Gaussian {args.k} x {args.n} float32; {jax.devices()[0].device_kind}.\n")
    print("| bits | group | method | rel. error | time (s) |")
    print("|---:|---:|---|---:|---:|")
    for bits in args.bits:
        for group in args.groups:
            g = _parse_group(group)
            for method in args.methods:

                def run(method=method, g=g, bits=bits):
                    return jax.block_until_ready(quantize(W, bits, g, method, rounds=args.rounds))

                run()  # compile
                start = time.perf_counter()
                w = run()
                seconds = time.perf_counter() - start
                err = float(jnp.linalg.norm(W - w.dequantize())) / norm
                label = "column" if g is None else str(g)
                print(f"| {bits} | {label} | {method} | {err:.4f} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
