"""Loads the compiled extensions and registers their XLA FFI targets with JAX.

The CPU extension is required: without it `lut_gemm` would silently dequantize on every call, so
importing the package fails with an ImportError that says how to build it. The CUDA extension is
optional (CPU-only builds have none); `build_info` reports why it is missing, and lowering for a
GPU without it warns (`lutgemm_jax.lowering`).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import jax

CPU_TARGET = "lutgemm_cpu"
"""FFI target name of the CPU LUT-GEMM handler."""
CUDA_TARGET = "lutgemm_cuda"
"""FFI target name of the CUDA LUT-GEMM handler (lookup-table path, small M)."""
CUDA_DEQUANT_TARGET = "lutgemm_cuda_dequant"
"""FFI target name of the CUDA dequantization handler (large-M path: dequantize + XLA dot)."""


TARGETS: list[str] = []
"""Names of every FFI target registered by the compiled extensions."""

_CPU_MODULE = "lutgemm_jax._lutgemm_cpu"
_CUDA_MODULE = "lutgemm_jax._lutgemm_cuda"


def _register(module: Any, platform: str) -> None:
    for name, capsule in module.registrations().items():
        jax.ffi.register_ffi_target(name, capsule, platform=platform)
        TARGETS.append(name)


def _import_cpu() -> Any:
    try:
        return importlib.import_module(_CPU_MODULE)
    except ImportError as err:
        raise ImportError(
            f"lutgemm_jax: the native CPU extension {_CPU_MODULE} could not be imported "
            f"({type(err).__name__}: {err}). It is compiled when the package is installed: run "
            "`pip install .` (or `pip install -e .` for development) in the source checkout; if "
            "the package is installed, run Python outside the source tree, so that the installed "
            "package is imported instead of the unbuilt sources."
        ) from err


_register(_import_cpu(), "cpu")


def _import_cuda() -> tuple[Any, str]:
    """(the CUDA extension module or None, why it is unavailable or "")."""
    try:
        return importlib.import_module(_CUDA_MODULE), ""
    except ModuleNotFoundError as err:
        if err.name != _CUDA_MODULE:
            return None, f"{type(err).__name__}: {err}"
        return None, (
            "not built: it is compiled at install time when nvcc is on PATH "
            "(LUTGEMM_CUDA=ON forces it)"
        )
    except ImportError as err:
        return None, f"{type(err).__name__}: {err}"


_cuda_module, CUDA_UNAVAILABLE = _import_cuda()
"""Why the CUDA extension is unavailable ("" when it is loaded)."""
HAS_CUDA = _cuda_module is not None
"""Whether the CUDA extension is loaded and its targets are registered."""
if HAS_CUDA:
    # Upper case: a lower-case "cuda" is queued under a key the CUDA plugin never reads.
    _register(_cuda_module, "CUDA")


def build_info() -> dict[str, Any]:
    """What this installation runs `lut_gemm` with.

    Returns a dict with:
      ``paths``: per platform, how `lut_gemm` is computed: ``"cpu"`` is ``"native"``,
        ``"cuda"`` is ``"native"`` or ``"unavailable: <reason>"`` (then GPU programs warn and
        dequantize), ``"other"`` (TPU, ROCm, ...) is ``"jnp (dequantize + dot)"``;
      ``cpu`` / ``cuda``: whether each extension is loaded;
      the build's ``cuda_architectures`` and ``build_type`` (from ``_build_config.json``), and
      the ``jax`` version.
    """
    config_path = Path(__file__).with_name("_build_config.json")
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    paths = {
        "cpu": "native",
        "cuda": "native" if HAS_CUDA else f"unavailable: {CUDA_UNAVAILABLE}",
        "other": "jnp (dequantize + dot)",
    }
    return {**config, "paths": paths, "cpu": True, "cuda": HAS_CUDA, "jax": jax.__version__}


def export_disabled_checks() -> list:
    """The ``disabled_checks`` that ``jax.export.export`` needs for functions using lut_gemm.

    The LUT-GEMM custom calls are this library's own FFI targets, not ones with XLA's
    compatibility guarantee: an exported artifact runs where the same lutgemm_jax version is
    installed (and imported, so the targets are registered). Usage::

        jax.export.export(jax.jit(f), disabled_checks=lutgemm_jax.export_disabled_checks())
    """
    return [jax.export.DisabledSafetyCheck.custom_call(name) for name in TARGETS]
