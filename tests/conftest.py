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
# error bound, in test_lowering_cpu.py.
os.environ.setdefault("LUTGEMM_DEFAULT_MODE", "exact")

# Hypothesis profiles (tests/test_properties.py): "ci" (the default) is derandomized, so CI runs
# the same examples every time, within its time budget; "long" (HYPOTHESIS_PROFILE=long) runs 20x
# the examples with fresh random draws, for local runs.
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a test dependency; without it the property tests fail alone
    pass
else:
    _slow = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile(
        "ci",
        max_examples=25,
        derandomize=True,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=_slow,
    )
    settings.register_profile(
        "long", max_examples=500, deadline=None, print_blob=True, suppress_health_check=_slow
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
