"""Loads the compiled extensions and registers their XLA FFI targets with JAX."""

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


def _register(module_name: str, platform: str) -> bool:
    try:
        module = importlib.import_module(f"lutgemm_jax.{module_name}")
    except ImportError:
        return False
    for name, capsule in module.registrations().items():
        jax.ffi.register_ffi_target(name, capsule, platform=platform)
        TARGETS.append(name)
    return True


HAS_CPU = _register("_lutgemm_cpu", "cpu")
# Upper case: a lower-case "cuda" is queued under a key the CUDA plugin never reads.
HAS_CUDA = _register("_lutgemm_cuda", "CUDA")


def build_info() -> dict[str, Any]:
    """Which native backends this installation has.

    Returns a dict with ``cpu`` and ``cuda`` (whether each extension was compiled and imported),
    and the build's ``cuda_architectures`` and ``build_type``.
    """
    config_path = Path(__file__).with_name("_build_config.json")
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    return {**config, "cpu": HAS_CPU, "cuda": HAS_CUDA, "jax": jax.__version__}


def export_disabled_checks() -> list:
    """The ``disabled_checks`` that ``jax.export.export`` needs for functions using lut_gemm.

    The LUT-GEMM custom calls are this library's own FFI targets, not ones with XLA's
    compatibility guarantee: an exported artifact runs where the same lutgemm_jax version is
    installed (and imported, so the targets are registered). Usage::

        jax.export.export(jax.jit(f), disabled_checks=lutgemm_jax.export_disabled_checks())
    """
    return [jax.export.DisabledSafetyCheck.custom_call(name) for name in TARGETS]
