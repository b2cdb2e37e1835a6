"""Determinism and concurrency of the CPU kernel.

* Repeated calls return bitwise-identical results, in every kernel path (exact LUT, fast LUT,
  dense tiles) and for thread counts 1..8 (``LUTGEMM_CPU_THREADS``; test_lowering_cpu.py covers
  1/2/3/5 threads for the LUT paths and one-CPU vs all-CPU processes).
* 8 Python threads call the same jitted function concurrently (bounded: 8 threads x 50
  iterations per path) on different inputs and shapes; every result is bitwise equal to the
  single-threaded result for that input. The threads are joined with a timeout, so a deadlock
  fails the test instead of hanging CI.
"""

from __future__ import annotations

import threading

import jax
import numpy as np
import pytest

import lutgemm_jax as lj
from lutgemm_jax import lowering
from lutgemm_jax.testing import random_weight

PATHS = ("exact", "fast", "dense")
THREADS, ITERATIONS = 8, 50


def _op(path: str):
    """A jitted lut_gemm taking the given kernel path (dense: crossover forced to 1 row)."""
    mode = "fast" if path == "fast" else "exact"

    def f(x, w):
        return lj.lut_gemm(x, w, mode=mode)

    jitted = jax.jit(f)

    def call(x, w):
        saved = dict(lowering.CPU_CROSSOVER)
        lowering.CPU_CROSSOVER[mode] = 1 if path == "dense" else 1 << 62
        try:  # the crossover is read while lowering, i.e. on the first call of each shape
            return np.asarray(jitted(x, w))
        finally:
            lowering.CPU_CROSSOVER.update(saved)

    return jitted, call


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    w, _ = random_weight(rng, 300, 700, 3, 64, True)
    # Different row counts: 1 (one table build), 4 (a row block), 9 (blocks + remainder).
    xs = [rng.normal(size=(rows, 300)).astype(np.float32) for rows in (1, 4, 9, 1, 4, 9, 2, 5)]
    return w, xs


@pytest.mark.parametrize("path", PATHS)
def test_repeated_calls_and_thread_counts_are_bitwise_identical(path, monkeypatch):
    w, xs = _inputs(1)
    _, call = _op(path)
    first = [call(x, w) for x in xs]
    for threads in ("1", "2", "3", "4", "5", "6", "7", "8"):
        monkeypatch.setenv("LUTGEMM_CPU_THREADS", threads)
        for _ in range(3):
            for x, y0 in zip(xs, first, strict=True):
                y = call(x, w)
                assert y.tobytes() == y0.tobytes(), (path, threads, x.shape)


@pytest.mark.parametrize("path", PATHS)
def test_eight_python_threads_share_one_jitted_function(path):
    w, xs = _inputs(2)
    jitted, call = _op(path)
    expected = [call(x, w) for x in xs]  # single-threaded; also compiles every shape first
    failures: list[str] = []
    done = [0] * THREADS
    start = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        try:
            start.wait(timeout=60)
            for it in range(ITERATIONS):
                i = (t + it) % len(xs)
                y = np.asarray(jitted(xs[i], w))
                if y.tobytes() != expected[i].tobytes():
                    failures.append(f"thread {t} iteration {it} input {i}")
                done[t] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"thread {t}: {e!r}")

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not any(th.is_alive() for th in threads), "a thread hung (deadlock?)"
    assert not failures, failures[:10]
    assert done == [ITERATIONS] * THREADS


def test_threads_on_eager_calls_and_different_weights():
    """Eager (un-jitted) calls from 8 threads, each with its own weight and both LUT modes."""
    rng = np.random.default_rng(3)
    cases = []
    for t in range(THREADS):
        w, _ = random_weight(rng, 100 + 7 * t, 40 + t, 1 + t % 8, [32, 64, 128, None][t % 4])
        x = rng.normal(size=(1 + t % 3, w.in_features)).astype(np.float32)
        mode = ("exact", "fast")[t % 2]
        cases.append((x, w, mode, np.asarray(lj.lut_gemm(x, w, mode=mode))))
    failures: list[str] = []

    def worker(t: int) -> None:
        x, w, mode, expected = cases[t]
        for it in range(20):
            y = np.asarray(lj.lut_gemm(x, w, mode=mode))
            if y.tobytes() != expected.tobytes():
                failures.append(f"thread {t} iteration {it}")

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not any(th.is_alive() for th in threads), "a thread hung (deadlock?)"
    assert not failures, failures[:10]
