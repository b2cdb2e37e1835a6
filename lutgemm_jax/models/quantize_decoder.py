"""Quantization of a decoder's Linears to BCQ, for any family.

Every family names its decoder blocks ``layers_{i}`` and its Linears ``nn.Dense`` with a
``kernel``, so one pattern selects them all (OPT: q/k/v/out_proj, fc1, fc2; Llama family:
q/k/v/o_proj, gate/up/down_proj). Embeddings and norms stay float; the lm_head optionally.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from lutgemm_jax.config import BCQConfig

DECODER_LINEARS = r"(^|/)layers_\d+/(.+/)?kernel$"
"""The Linears quantized by default: every ``kernel`` inside a decoder layer."""
LM_HEAD_INCLUDE = r"(^|/)lm_head/kernel$"
EMBED_PATH = ("embed_tokens", "embedding")


def untie_lm_head(params) -> dict:
    """Adds ``lm_head/kernel = embed_tokens.T`` (a copy), so the head can be quantized; params
    that already hold an ``lm_head`` are returned as they are."""
    params = dict(params)
    if "lm_head" not in params:
        embed = params[EMBED_PATH[0]][EMBED_PATH[1]]
        params["lm_head"] = {"kernel": jnp.asarray(embed).T}
    return params


def quantize_model(
    params,
    config: BCQConfig | None = None,
    *,
    quantize_lm_head: bool = False,
    include: str | None = None,
    progress: bool = False,
    return_summary: bool = False,
    calibrate: Any = None,
    act_order: bool = False,
    damp: float = 0.01,
    **fields: Any,
):
    """Quantizes every decoder Linear of ``params`` (any family) to BCQ.

    Args:
      params: a family's params tree (float32 or bfloat16).
      config: the `BCQConfig` (default ``BCQConfig()``: 3-bit, g = 128, alternating, float32
        scales, ``layout="auto"``, i.e. the CPU sign layout when jax's default backend is the
        CPU); ``fields`` (``bits=4``, ``group_size=64``, ``method="greedy"``, ``layout=...``)
        override its fields (`BCQConfig.make`).
      quantize_lm_head: also quantize the lm_head (a tied one is untied first,
        `untie_lm_head`); the token embedding stays float (it is a lookup).
      include: regex of the kernel paths to quantize (default `DECODER_LINEARS`).
      progress, return_summary: as in `lutgemm_jax.linen.quantize_params`.
      calibrate, act_order, damp: calibrated, sequential quantization (block by block), as in
        `lutgemm_jax.linen.quantize_params`; e.g. with `calibration_runner`:
        ``calibrate=calibration_runner(model, windows)``.

    Returns:
      The params with `BCQWeight` kernels (or ``(params, summary)``).

    Raises:
      ValueError / TypeError: an invalid field, naming it (from `BCQConfig`).
    """
    from lutgemm_jax.linen import quantize_params

    cfg = BCQConfig.make(config, where="models.quantize_model", **fields)
    include = include or DECODER_LINEARS
    if quantize_lm_head:
        params = untie_lm_head(params)
        include = f"{include}|{LM_HEAD_INCLUDE}"
    return quantize_params(
        params,
        cfg,
        include=include,
        progress=progress,
        return_summary=return_summary,
        calibrate=calibrate,
        act_order=act_order,
        damp=damp,
    )


def calibration_runner(model, windows, batch_size: int = 8):
    """``calibrate(params)`` for `quantize_model`: runs ``model`` (eagerly, `forward`) on
    ``windows``, int token ids ``[n, T]`` (full windows, no padding), ``batch_size`` at a time.
    """
    import numpy as np

    from lutgemm_jax.models.generation import forward

    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[0] == 0 or not np.issubdtype(windows.dtype, np.integer):
        raise ValueError(
            f"calibration_runner: windows must be non-empty int token ids [n, T], got "
            f"{windows.dtype}{list(windows.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"calibration_runner: batch_size must be >= 1, got {batch_size}")

    def calibrate(params) -> None:
        for start in range(0, windows.shape[0], batch_size):
            forward(model, params, windows[start : start + batch_size])

    return calibrate


__all__ = [
    "DECODER_LINEARS",
    "LM_HEAD_INCLUDE",
    "calibration_runner",
    "quantize_model",
    "untie_lm_head",
]
