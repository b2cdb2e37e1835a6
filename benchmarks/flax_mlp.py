"""Times a converted Flax MLP (1024 -> 4096 -> GELU -> 1024, the shape of a transformer FFN)
against the dense one on the CPU; prints compression ratio, error and speed. The packed weights
use the "cpu" sign-word layout on a CPU backend (what CPU users prepare, `lutgemm_jax.to_layout`).

Run: python benchmarks/flax_mlp.py   (numbers quoted in BENCHMARKS.md)
"""

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lutgemm_jax.linen import dequantize_params, intercept_dense, quantize_params


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1024)(nn.gelu(nn.Dense(4096)(x)))


def bench(f, *args, n=30):
    """(median, min) milliseconds of ``f(*args)`` after a warm-up call."""
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return np.median(times) * 1e3, np.min(times) * 1e3


def main():
    model = MLP()
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 1024)))["params"]
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(s.shape[0]), jnp.float32), shapes
    )
    dense = jax.jit(lambda p, x: model.apply({"params": p}, x))

    def lut(p, x, mode):
        with intercept_dense(mode=mode):
            return model.apply({"params": p}, x)

    luts = {mode: jax.jit(functools.partial(lut, mode=mode)) for mode in ("exact", "fast")}
    layout = "cpu" if jax.default_backend() == "cpu" else "canonical"
    for bits in (3, 4):
        t = time.perf_counter()
        q, summary = quantize_params(
            params, bits=bits, group_size=128, layout=layout, return_summary=True
        )
        took = time.perf_counter() - t
        print(f"q={bits} g=128 ({layout} layout): quantized in {took:.1f} s; {summary}")
        for batch in (1, 8, 64):
            x = jnp.asarray(rng.normal(size=(batch, 1024)), jnp.float32)
            y_dense, y_deq = dense(params, x), dense(dequantize_params(q), x)
            med, low = bench(dense, params, x)
            line = f"  batch {batch:3d}: dense {med:8.3f} ms (min {low:8.3f})"
            for mode, f in luts.items():
                y = f(q, x)
                err = float(jnp.max(jnp.abs(y - y_deq)) / jnp.max(jnp.abs(y_deq)))
                l2 = float(jnp.linalg.norm(y - y_dense) / jnp.linalg.norm(y_dense))
                med_q, low_q = bench(f, q, x)
                line += (
                    f" | {mode} {med_q:8.3f} ms (min {low_q:8.3f}, {low / low_q:5.2f}x)"
                    f" err vs dequantized {err:.1e}, rel. L2 vs dense {l2:.3f}"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
