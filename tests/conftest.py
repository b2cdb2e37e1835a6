"""Test-session setup: eight host CPU devices for the sharding tests.

Must run before jax is imported anywhere; a value already in XLA_FLAGS is kept.
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

# The op-level tests hold lut_gemm to the exact float64 contract (1e-5) at its default mode; the
# library default is "fast" (int8 tables). Fast mode is tested explicitly, against its stated
# error bound, in test_cpu_kernel.py.
os.environ.setdefault("LUTGEMM_DEFAULT_MODE", "exact")
