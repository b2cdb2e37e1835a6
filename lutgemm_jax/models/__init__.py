"""Model families wired for LUT-GEMM (plain Flax linen models whose ``nn.Dense`` layers can be
quantized with `lutgemm_jax.linen.quantize_params` and run through LUT-GEMM with
`lutgemm_jax.linen.intercept_dense`).
"""

from lutgemm_jax.models import opt
from lutgemm_jax.models.opt import OPT, OPTConfig

__all__ = ["OPT", "OPTConfig", "opt"]
