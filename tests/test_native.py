"""Loading the native extensions (_native.py) and the paths `lut_gemm` takes without them: a
missing CPU extension fails the import with a message saying how to build it; a missing CUDA
extension is reported by `build_info` and warned about when lowering for a GPU."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lutgemm_jax as lj
from lutgemm_jax import _native, lowering
from lutgemm_jax.testing import random_weight

PACKAGE = Path(lj.__file__).parent


def _import_copy(tmp_path, drop: str) -> subprocess.CompletedProcess:
    """Imports a copy of the package without the files matching ``drop`` in a fresh process."""
    copy = tmp_path / "lutgemm_jax"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns(drop, "__pycache__"))
    code = "import lutgemm_jax, json; print(json.dumps(lutgemm_jax.build_info()['paths']))"
    return subprocess.run(
        [sys.executable, "-P", "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_without_the_cpu_extension_says_how_to_build(tmp_path):
    r = _import_copy(tmp_path, "_lutgemm_cpu*")
    assert r.returncode != 0
    assert "ImportError" in r.stderr
    assert "lutgemm_jax._lutgemm_cpu" in r.stderr
    assert "No module named" in r.stderr  # the underlying error
    assert "pip install ." in r.stderr and "pip install -e ." in r.stderr
    assert "outside the source tree" in r.stderr


def test_import_without_the_cuda_extension_reports_it(tmp_path):
    r = _import_copy(tmp_path, "_lutgemm_cuda*")
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"cpu": "native"' in r.stdout
    assert '"cuda": "unavailable: not built' in r.stdout
    assert '"other": "jnp (dequantize + dot)"' in r.stdout


def test_installed_package_imports_silently(tmp_path):
    # From outside the source tree, so that the package under test is the one imported.
    code = "import warnings; warnings.simplefilter('error'); import lutgemm_jax"
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stdout == "", r.stderr[-2000:]


def test_build_info_paths():
    info = lj.build_info()
    assert info["cpu"] is True and info["cuda"] is _native.HAS_CUDA
    paths = info["paths"]
    assert paths["cpu"] == "native" and paths["other"] == "jnp (dequantize + dot)"
    if _native.HAS_CUDA:
        assert paths["cuda"] == "native"
    else:
        assert paths["cuda"].startswith("unavailable: ")


def test_gpu_lowering_without_the_cuda_extension_warns_once(monkeypatch):
    monkeypatch.setattr(_native, "HAS_CUDA", False)
    monkeypatch.setattr(_native, "CUDA_UNAVAILABLE", "not built (test)")
    monkeypatch.setattr(lowering, "_warned_no_cuda", False)
    w, _ = random_weight(np.random.default_rng(0), 100, 40, 3, 32)
    x = jnp.ones((2, 100))

    def lower():
        return jax.jit(lj.lut_gemm).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()

    with pytest.warns(RuntimeWarning, match=r"CUDA extension .*unavailable \(not built \(test\)\)"):
        text = lower()
    assert "custom_call" not in text  # dequantize + dot in jnp
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.jit(lambda x, w: lj.lut_gemm(x, w) + 1).trace(x, w).lower(lowering_platforms=("cuda",))


def test_other_platforms_lower_to_jnp_without_warning():
    w, _ = random_weight(np.random.default_rng(1), 100, 40, 3, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lowered = jax.jit(lj.lut_gemm).trace(jnp.ones((2, 100)), w)
        text = lowered.lower(lowering_platforms=("tpu",)).as_text()
    assert "custom_call" not in text


def test_primitive_is_not_in_the_public_names():
    assert "lut_gemm_p" not in lj.__all__
    from lutgemm_jax.ops import lut_gemm_p

    assert lut_gemm_p.name == "lut_gemm"
