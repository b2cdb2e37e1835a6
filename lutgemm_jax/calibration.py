"""Calibration statistics of one linear layer's inputs, and the output error they measure.

A layer ``y = x @ W`` with inputs ``X: [T, K]`` changes its outputs by ``X (W - W_hat)`` when
``W`` is replaced by ``W_hat``; the squared Frobenius norm of that is

    ||X (W - W_hat)||^2 = tr((W - W_hat)^T H (W - W_hat)),   H = X^T X   [K, K]

so ``H`` (with the row count ``T``) is all a calibrated quantizer needs. `Calibration`
accumulates it batch by batch in float64 (``X`` is never stored) together with ``sum_t |x_tk|``,
the per-channel activation magnitude used by activation-aware scaling (`lutgemm_jax.awq`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Sufficient statistics of ``T`` input rows ``x_t: [K]`` of one layer.

    Attributes:
      hessian: float64 ``[K, K]``, ``H = sum_t x_t x_t^T`` (the Gram matrix ``X^T X``).
      abs_sum: float64 ``[K]``, ``sum_t |x_t|``, or ``None`` when built from ``H`` alone.
      count: ``T``, the number of rows accumulated.
    """

    hessian: np.ndarray
    abs_sum: np.ndarray | None
    count: int

    @property
    def in_features(self) -> int:
        return int(self.hessian.shape[0])

    @classmethod
    def empty(cls, in_features: int) -> Calibration:
        """No rows yet: ``H = 0``, ``abs_sum = 0``, ``count = 0``."""
        if isinstance(in_features, bool) or not isinstance(in_features, (int, np.integer)):
            raise TypeError(f"Calibration: in_features must be an int, got {in_features!r}")
        if in_features <= 0:
            raise ValueError(f"Calibration: in_features must be positive, got {in_features}")
        k = int(in_features)
        return cls(np.zeros((k, k)), np.zeros(k), 0)

    @classmethod
    def from_inputs(cls, X) -> Calibration:
        """From layer inputs ``X: [T, K]`` (or ``[..., K]``, flattened to rows)."""
        x = _rows(X, "X")
        return cls.empty(x.shape[1]).update(x)

    @classmethod
    def from_hessian(cls, H, count: int) -> Calibration:
        """From a precomputed Gram matrix ``H = X^T X: [K, K]`` of ``count`` rows.

        Raw ``[K, K]`` arrays passed as ``calibration`` are read as inputs ``X`` (``T = K`` rows),
        never as ``H``: a Gram matrix must come through this constructor.
        """
        h = np.asarray(H, np.float64)
        if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] == 0:
            raise ValueError(f"Calibration: H must be a square [K, K] matrix, got {h.shape}")
        if not np.isfinite(h).all():
            raise ValueError("Calibration: H contains NaN or Inf")
        asym = np.max(np.abs(h - h.T)) if h.size else 0.0
        if asym > 1e-6 * max(np.max(np.abs(h)), 1e-300):
            raise ValueError(f"Calibration: H must be symmetric (max |H - H^T| = {asym:.3g})")
        if np.any(np.diag(h) < 0):
            raise ValueError("Calibration: H has a negative diagonal entry; it is not X^T X")
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"Calibration: count must be a positive int, got {count!r}")
        return cls((h + h.T) / 2, None, int(count))

    def update(self, X) -> Calibration:
        """A new `Calibration` with the rows of ``X: [T, K]`` (or ``[..., K]``) added."""
        x = _rows(X, "X")
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"Calibration.update: X has {x.shape[1]} features, this calibration has "
                f"K = {self.in_features}"
            )
        hessian = self.hessian + x.T @ x
        abs_sum = None if self.abs_sum is None else self.abs_sum + np.abs(x).sum(axis=0)
        return Calibration(hessian, abs_sum, self.count + x.shape[0])

    def scaled(self, scales: np.ndarray) -> Calibration:
        """Statistics of the inputs ``x / scales`` (the inputs of a layer whose kernel rows were
        multiplied by ``scales``): ``H -> D H D``, ``abs_sum -> D abs_sum``, ``D = diag(1/s)``."""
        inv = 1.0 / np.asarray(scales, np.float64)
        abs_sum = None if self.abs_sum is None else self.abs_sum * inv
        return Calibration(self.hessian * inv[:, None] * inv[None, :], abs_sum, self.count)

    def channel_magnitude(self) -> np.ndarray:
        """float64 ``[K]``: mean ``|x_k|`` per input channel (RMS ``sqrt(H_kk / T)`` when only
        ``H`` is known)."""
        if self.abs_sum is not None:
            return self.abs_sum / max(self.count, 1)
        return np.sqrt(np.diag(self.hessian) / max(self.count, 1))


def accumulate_hessian(batches: Iterable, calibration: Calibration | None = None) -> Calibration:
    """Accumulates ``H = X^T X`` over ``batches`` of inputs ``[T_b, K]`` (or ``[..., K]``).

    Equals ``Calibration.from_inputs(concatenate(batches))`` up to float64 summation order,
    holding one batch at a time. Continues ``calibration`` when given.
    """
    calib = calibration
    for x in batches:
        x = _rows(x, "batches")
        calib = Calibration.empty(x.shape[1]) if calib is None else calib
        calib = calib.update(x)
    if calib is None:
        raise ValueError("accumulate_hessian: batches is empty and no calibration was given")
    return calib


def as_calibration(calibration, in_features: int, where: str) -> Calibration:
    """``calibration`` (a `Calibration` or inputs ``X: [T, K]``) checked against ``K``.

    Raises ``ValueError`` naming ``calibration`` for a wrong ``K``, no rows, or an all-zero ``H``.
    """
    if isinstance(calibration, Calibration):
        calib = calibration
    else:
        try:
            calib = Calibration.from_inputs(calibration)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: calibration: {e}") from None
    if calib.in_features != in_features:
        raise ValueError(
            f"{where}: calibration has K = {calib.in_features} input features, W has "
            f"K = {in_features} rows"
        )
    if calib.count < 1 or not np.any(np.diag(calib.hessian) > 0):
        raise ValueError(
            f"{where}: calibration has no nonzero input rows (count = {calib.count}); the output "
            "error is undefined"
        )
    return calib


def output_error(W, W_hat, calibration, *, relative: bool = True) -> float:
    """``||X (W - W_hat)|| / ||X W||`` (or the unnormalised ``||X (W - W_hat)||``) from ``H``.

    Args:
      W, W_hat: ``[K, N]`` dense kernels.
      calibration: a `Calibration` or inputs ``X: [T, K]``.
    """
    W = np.asarray(W, np.float64)
    calib = as_calibration(calibration, W.shape[0], "output_error")
    h = jnp.asarray(calib.hessian, jnp.float32)
    d = jnp.asarray(W - np.asarray(W_hat, np.float64), jnp.float32)
    num = float(_trace_quadratic(h, d))
    if not relative:
        return float(np.sqrt(max(num, 0.0)))
    den = float(_trace_quadratic(h, jnp.asarray(W, jnp.float32)))
    return float(np.sqrt(max(num, 0.0) / max(den, 1e-300)))


@jax.jit
def _trace_quadratic(h, d):
    """``tr(d^T h d)`` accumulated in float32 (``d`` is scaled by its max for range)."""
    scale = jnp.maximum(jnp.max(jnp.abs(d)), 1e-30)
    ds = d / scale
    return jnp.sum(ds * (h @ ds)) * scale * scale


def _rows(X, name: str) -> np.ndarray:
    """``X`` as float64 ``[T, K]`` rows; ``ValueError`` naming ``name`` for bad input."""
    if not hasattr(X, "shape"):
        X = np.asarray(X)
    if len(X.shape) < 2:
        raise ValueError(f"{name} must be [T, K] (or [..., K]), got shape {tuple(X.shape)}")
    if not np.issubdtype(np.dtype(X.dtype), np.floating) and X.dtype != jnp.bfloat16:
        raise TypeError(f"{name} must have a floating dtype, got {X.dtype}")
    x = np.asarray(jnp.asarray(X).astype(jnp.float32) if X.dtype == jnp.bfloat16 else X)
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {tuple(X.shape)})")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x
