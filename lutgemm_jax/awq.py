"""Activation-aware scaling (AWQ, Lin et al. 2024) for BCQ weights.

Input channels with large activations matter more for the output; scaling their kernel rows up
before quantization gives them a finer share of each group's codebook. With per-input-channel
scales ``s: [K]``::

    y = x @ W = (x / s) @ (diag(s) W)  ~=  (x / s) @ Q(diag(s) W)

`quantize_awq` tries ``s_k = m_k^a`` (``m_k`` = mean ``|x_k|`` over the calibration rows,
normalised so that ``sqrt(max s * min s) = 1``) for each exponent ``a`` on a grid, quantizes
``diag(s) W`` (data-free, or calibrated with the inputs ``x / s``), and keeps the ``a`` whose
``W_hat = diag(1/s) Q(diag(s) W)`` has the lowest output error ``||X (W - W_hat)||``. The grid
contains ``a = 0`` (``s = 1``, the plain quantizer), so on the calibration rows the result is
never worse than the unscaled quantizer.

**Using the scales.** The returned weight expects inputs ``x / s``:
``lut_gemm(x / s, w)`` approximates ``x @ W``. Without a run-time division, fold ``1/s`` into
whatever produces ``x``: a preceding LayerNorm/RMSNorm (``gamma /= s``, ``beta /= s``) or a
preceding linear layer whose *output* columns feed ``x`` (``W_prev[:, k] /= s_k``,
``b_prev[k] /= s_k``). Layers that share one input (q/k/v) need one shared ``s``: pass the
concatenated kernel ``[K, N_q + N_k + N_v]`` and split the result's columns.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from lutgemm_jax.calibrate import _check_weight, quantize_calibrated
from lutgemm_jax.calibration import as_calibration, output_error
from lutgemm_jax.config import BCQConfig
from lutgemm_jax.format import BCQWeight, dequantize
from lutgemm_jax.quantize import quantize

EXPONENTS = tuple(i / 10 for i in range(11))
"""Default grid of the exponent ``a`` in ``s_k = mean|x_k|^a``: 0.0, 0.1, ..., 1.0."""
_MIN_MAGNITUDE = 1e-4
"""Channel magnitudes are floored at this fraction of the largest one (dead channels)."""


def awq_scales(magnitude: np.ndarray, exponent: float) -> np.ndarray:
    """float64 ``[K]``: ``s = m^a`` normalised to ``sqrt(max s * min s) = 1``.

    ``magnitude``: mean ``|x_k|`` per channel; values below `_MIN_MAGNITUDE` times the largest
    are raised to it, so every scale is finite and positive.
    """
    m = np.asarray(magnitude, np.float64)
    top = float(np.max(m)) if m.size else 0.0
    if not np.isfinite(top) or top <= 0:
        raise ValueError("awq_scales: magnitude must have a positive finite maximum")
    m = np.maximum(m, _MIN_MAGNITUDE * top)
    s = m**exponent
    return s / np.sqrt(s.max() * s.min())


def quantize_awq(
    W,
    calibration,
    config: BCQConfig | None = None,
    *,
    exponents=EXPONENTS,
    calibrated: bool = False,
    damp: float = 0.01,
    act_order: bool = False,
) -> tuple[BCQWeight, np.ndarray]:
    """AWQ-scaled quantization of ``W: [K, N]``; returns ``(weight, scales)``.

    Args:
      W: ``[K, N]`` finite floating weights.
      calibration: a `Calibration` or the layer inputs ``X: [T, K]``.
      config: format and fit (`BCQConfig`).
      exponents: the grid of ``a`` to search (non-empty, finite, ``>= 0``).
      calibrated: quantize the scaled kernel with `quantize_calibrated` (error feedback and
        refit, with the scaled inputs ``x / s``) instead of the data-free `quantize`.
      damp, act_order: passed to `quantize_calibrated` when ``calibrated``.

    Returns:
      ``weight``: the quantized ``diag(s) W`` (`BCQWeight` ``[K, N]``), to be applied to
      ``x / s``; ``scales``: float32 ``[K]``, ``s`` (see the module docstring for folding).
    """
    config = BCQConfig.make(config)
    w64 = _check_weight(W, "quantize_awq")
    calib = as_calibration(calibration, w64.shape[0], "quantize_awq")
    grid = np.asarray(exponents, np.float64).reshape(-1)
    if grid.size == 0 or not np.isfinite(grid).all() or np.any(grid < 0):
        raise ValueError(f"quantize_awq: exponents must be non-empty, finite, >= 0: {exponents}")
    magnitude = calib.channel_magnitude()
    best = None
    for a in grid:
        s = awq_scales(magnitude, float(a))
        ws = w64 * s[:, None]
        if calibrated:
            q = quantize_calibrated(ws, calib.scaled(s), config, damp=damp, act_order=act_order)
        else:
            q = _data_free(ws, config)
        w_hat = np.asarray(dequantize(q), np.float64) / s[:, None]
        err = output_error(w64, w_hat, calib, relative=False)
        if best is None or err < best[0]:
            best = (err, q, s)
    return best[1], best[2].astype(np.float32)


def _data_free(W, config: BCQConfig) -> BCQWeight:
    """`lutgemm_jax.quantize` with the fields of ``config``."""
    return quantize(jnp.asarray(W, jnp.float32), config=config)
