"""The CPU kernel's worker pool (cpu/worker_pool.h): spinning workers that replace XLA's pool.

* tests/worker_pool_test.cc, built three ways and run: plain -O2 (with a fork()ed child),
  ThreadSanitizer (data races in the publish/claim/late-worker protocol; fork allowed with
  die_after_fork=0) and AddressSanitizer + UBSan (a late worker touching a finished job). It
  checks that every index runs exactly once before the call returns for many (helpers, count)
  pairs, that a helper really runs beside the caller, concurrent callers and a forked child,
  with workers spinning (300 us, 20 ms windows) and asleep (window 0).
* Through the op: results are bitwise identical whether the workers spin or sleep between calls
  (``LUTGEMM_CPU_SPIN_US``, read per call).
"""

import os
import shutil
import subprocess

import jax
import numpy as np
import pytest

import lutgemm_jax as lj
from lutgemm_jax.testing import random_weight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = os.environ.get("CXX", "c++")

BUILDS = {  # compiler flags, extra environment
    "plain": (["-O2"], {}),
    "tsan": (["-O1", "-g", "-fsanitize=thread"], {"TSAN_OPTIONS": "die_after_fork=0"}),
    "asan": (["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"], {}),
}


@pytest.mark.skipif(shutil.which(CXX) is None, reason=f"needs a C++ compiler ({CXX})")
@pytest.mark.parametrize("build", sorted(BUILDS))
def test_worker_pool_stress(build, tmp_path):
    flags, env = BUILDS[build]
    exe = str(tmp_path / f"worker_pool_test_{build}")
    cmd = [
        CXX,
        "-std=c++17",
        *flags,
        f"-I{ROOT}/cpu",
        "-o",
        exe,
        f"{ROOT}/tests/worker_pool_test.cc",
        f"{ROOT}/cpu/worker_pool.cc",
        "-lpthread",
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    run = subprocess.run(
        [exe, "1"], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "worker_pool_test: ok" in run.stdout
    assert "WARNING: ThreadSanitizer" not in run.stderr, run.stderr


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_op_results_do_not_depend_on_spinning(mode, monkeypatch):
    rng = np.random.default_rng(3)
    w, _ = random_weight(rng, 1000, 4000, q=3)  # 4 column chunks: both threads get work
    x = rng.normal(size=(3, 1000)).astype(np.float32)
    f = jax.jit(lambda x, w: lj.lut_gemm(x, w, mode=mode))
    monkeypatch.setenv("LUTGEMM_CPU_THREADS", "1")
    want = np.asarray(f(x, w))
    monkeypatch.setenv("LUTGEMM_CPU_THREADS", "2")
    for spin in ("0", "300", "20000", "0"):
        monkeypatch.setenv("LUTGEMM_CPU_SPIN_US", spin)
        for _ in range(3):
            np.testing.assert_array_equal(np.asarray(f(x, w)), want)
