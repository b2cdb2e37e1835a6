"""Decode latency and the weight traffic it implies (distinct from `lutgemm_jax.bench`, which
times single kernels)."""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp

from lutgemm_jax.format import tree_nbytes
from lutgemm_jax.models.generation import decode, prefill
from lutgemm_jax.models.sampling import Sampling

LOOKUP_TABLES = ("embed_positions",)
"""Top-level params only gathered from (one row per token), never read whole."""


def param_bytes(params) -> int:
    """Bytes of all parameter arrays (packed BCQ storage counted as stored)."""
    return tree_nbytes(params)


def bytes_read_per_token(params) -> int:
    """Weight bytes one decode step reads: every parameter except lookup tables. The token
    embedding counts only when it is also the (tied) lm_head, i.e. ``lm_head`` is absent."""
    skip = set(LOOKUP_TABLES)
    if "lm_head" in params:
        skip.add("embed_tokens")
    return param_bytes({k: v for k, v in params.items() if k not in skip})


def benchmark_decode(
    model,
    params,
    *,
    batch: int = 1,
    prompt_len: int = 8,
    steps: int = 8,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
) -> dict:
    """Per-token greedy decode latency: the median over ``repeats`` of one jitted ``steps``-step
    `decode` scan (KV cache of ``prompt_len + steps`` slots, prefilled beforehand), divided by
    ``steps``. Returns seconds per token (``median``, ``min``, ``max``, and ``times``: each
    timed call's, in order), ``tokens_per_s`` (batch * 1 / median) and ``compile_s`` (first
    call)."""
    rng = jax.random.PRNGKey(seed)
    ids = jax.random.randint(rng, (batch, prompt_len), 4, model.config.vocab_size, jnp.int32)
    mask = jnp.ones_like(ids)
    sampling = Sampling()
    cache_len = prompt_len + steps

    state = jax.jit(prefill, static_argnums=(0, 4, 6))(
        model, params, ids, mask, cache_len, rng, sampling
    )[0]

    @functools.partial(jax.jit, static_argnums=0)
    def run(model, params, state):
        return decode(model, params, state, steps, rng, sampling, stop_at_eos=False)[1]

    t0 = time.perf_counter()
    jax.block_until_ready(run(model, params, state))
    compile_s = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        jax.block_until_ready(run(model, params, state))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(model, params, state))
        times.append((time.perf_counter() - t0) / steps)
    med = statistics.median(times)
    return {
        "median": med,
        "min": min(times),
        "max": max(times),
        "times": times,
        "tokens_per_s": batch / med,
        "compile_s": compile_s,
    }


__all__ = ["benchmark_decode", "bytes_read_per_token", "param_bytes"]
