"""lutgemm_jax: LUT-GEMM for JAX.

Matrix products with weights quantized to 1-8 bits in binary-coding quantization (BCQ),
computed at small batch with lookup tables over the packed sign bits (large batches dequantize
tiles and use a dense GEMM; see `lutgemm_jax.lowering`).

Public API:
  BCQWeight            the packed ``[K, N]`` weight (a pytree); per-plane scales
                       ``alpha [G, q, N]`` or uniform ones ``[G, 1, N]`` (``BCQWeight.uniform``)
  BCQConfig            what to quantize to and how (bits, groups, method, scales, layout)
  quantize             dense ``W: [K, N]`` -> BCQWeight (greedy, alternating, rtn; with
                       ``calibration=`` inputs, minimising the layer-output error)
  Calibration          accumulated layer inputs ``H = X^T X`` for calibrated quantization
  dequantize           BCQWeight -> dense ``[K, N]``
  from_uniform_codes   integer codes ``W = D*c + B`` (RTN, GGUF, GPTQ, AWQ) -> the exact,
                       uniform BCQWeight
  LAYOUTS              sign-word layouts of ``BCQWeight.bits``: "canonical", "cpu"
  to_layout            every BCQWeight in a pytree (params, nnx.State) -> a layout, e.g.
                       ``to_layout(params, "canonical")`` once before moving CPU-quantized
                       weights to a GPU (see ``BCQConfig.layout``)
  lut_gemm             ``x: [..., K]`` @ BCQWeight -> ``[..., N]``
  build_info           which native backends are compiled in, and the path lut_gemm takes on
                       each platform
  linen, nnx           Flax: LutDense / LutLinear, quantize_params / quantize_model, LoRA
  checkpoint           save / load quantized params as safetensors
  export_disabled_checks  what jax.export needs to serialize lut_gemm's custom calls

lutgemm_jax.testing (imported explicitly) holds the float64 reference and random packed weights
that the tests and benchmarks share.

Importing the package fails with an ImportError if the native CPU extension is missing (see
`lutgemm_jax._native`). The primitive itself, ``lut_gemm_p``, is in `lutgemm_jax.ops`; its
lowerings in `lutgemm_jax.lowering` and `lutgemm_jax.sharding`.
"""

# Importing lowering and sharding registers lut_gemm's lowerings (not re-exported).
from lutgemm_jax import checkpoint, linen, lowering, nnx, sharding  # noqa: F401
from lutgemm_jax._native import build_info, export_disabled_checks
from lutgemm_jax.calibration import Calibration
from lutgemm_jax.config import BCQConfig
from lutgemm_jax.format import (
    LAYOUTS,
    PER_COLUMN,
    BCQWeight,
    dequantize,
    pack_signs,
    to_layout,
    unpack_signs,
)
from lutgemm_jax.ops import lut_gemm
from lutgemm_jax.quantize import quantize
from lutgemm_jax.uniform import from_uniform_codes

__all__ = [
    "BCQConfig",
    "Calibration",
    "LAYOUTS",
    "PER_COLUMN",
    "BCQWeight",
    "build_info",
    "checkpoint",
    "dequantize",
    "export_disabled_checks",
    "from_uniform_codes",
    "linen",
    "lut_gemm",
    "nnx",
    "pack_signs",
    "quantize",
    "to_layout",
    "unpack_signs",
]
__version__ = "0.1.0"
