"""Calibrated BCQ: quantize ``W: [K, N]`` to minimise the layer-output error ``||X (W - W_hat)||``.

The data-free quantizers (`lutgemm_jax.quantize`) minimise ``||W - W_hat||`` group by group;
with inputs ``X`` (statistics in `lutgemm_jax.calibration.Calibration`, ``H = X^T X``) the error
that matters is ``tr(D^T H D)``, ``D = W - W_hat``. `quantize_calibrated` does two things:

1. **Error feedback** (OPTQ/GPTQ, Frantar et al. 2023; for non-uniform BCQ as in ShiftAddLLM).
   ``Hd = H + damp * mean(diag H) * I`` and ``U`` = the upper Cholesky factor of ``Hd^-1``
   (``U^T U = Hd^-1``). Rows ``k = 0 .. K-1`` are quantized in order; at the first row of each
   group, the group's codebook (``alpha``, ``offset``) is fitted by the configured data-free
   method (greedy / alternating / rtn) to the group's *current* rows, which already carry the
   error fed forward from earlier rows. Each row then takes, per column, the nearest of the
   ``2^q`` codewords, and its error ``e_k = (w_k - w_hat_k) / U_kk`` is subtracted from every
   later row ``j`` as ``w_j -= U_kj e_k``: the optimal compensation of the later, still free
   rows for the output error (the OBS update). Lazy batches: within a block of rows the update
   is applied row by row; the rows after the block get the block's errors at once as one
   ``[Kp, B] @ [B, C]`` product.

2. **Refit of the scales in H's metric.** Given the chosen signs, ``W_hat[:, n] = P_n a_n`` is
   linear in the column's scales ``a_n`` (all groups' ``alpha`` and offsets: ``G * p``
   unknowns), so the exact minimiser of ``tr(D^T Hd D)`` solves, per column,
   ``(P_n^T Hd P_n) a_n = P_n^T Hd w_n``. Sign planes that coincide make the system singular:
   a ridge of ``1e-6 * trace / m`` keeps the Cholesky solve finite, and a column keeps its
   refitted scales only if they are finite and lower its output error. For ``method="rtn"``
   the grid stays uniform: the unknowns per group are the uniform scale ``alpha`` (plane ``i``
   scaled by ``alpha 2^i``, `lutgemm_jax.format.expand_alpha`) and the offset, and the result
   is stored uniform (``alpha: [G, 1, N]``).

Act-order (``act_order=True``): rows are processed in descending ``diag(H)`` order *within* each
group (groups stay contiguous, so the stored format and `lut_gemm` are unchanged); the rows with
the most input energy are quantized first, while the most free rows remain to absorb their
error.

Inputs that are never active (``H_kk = 0``) get weight 0 before the fit (they cannot change the
output). Rows past K (padding to a whole group) are independent of every real row in ``Hd``,
come last, and feed back nothing.

Numerics: ``Hd``, its inverse and ``U`` in float64 (numpy); the row loop, the refit and its
Cholesky solves in float32 under ``jax.jit``, chunked over output columns. Deterministic.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lutgemm_jax.calibration import Calibration, as_calibration
from lutgemm_jax.config import BCQConfig
from lutgemm_jax.format import (
    BCQWeight,
    expand_alpha,
    pack_signs,
    padded_in_features,
    resolve_group_size,
)
from lutgemm_jax.quantize import assemble, chunk_width, fit_groups

CHUNK_FLOATS = 1 << 26
"""Float32 working-set budget per column chunk (256 MB)."""
_RIDGE = 1e-6
"""Ridge of the refit normal equations, relative to their mean diagonal."""


def quantize_calibrated(
    W,
    calibration,
    config: BCQConfig | None = None,
    *,
    damp: float = 0.01,
    act_order: bool = False,
    refit: bool = True,
    column_chunk: int | None = None,
    progress: bool = False,
) -> BCQWeight:
    """Quantizes ``W: [K, N]`` (``y = x @ W``) to a `BCQWeight` minimising ``||X (W - W_hat)||``.

    Args:
      W: ``[K, N]`` finite floating weights.
      calibration: a `Calibration` (e.g. from `accumulate_hessian`, or
        ``Calibration.from_hessian(H, T)``) or the layer inputs ``X: [T, K]`` themselves.
      config: format and codebook fit (`BCQConfig`; default ``BCQConfig()``): ``bits``,
        ``group_size``, ``alpha_dtype``, ``layout``, and ``method`` / ``rounds`` /
        ``fit_offset`` / ``clip_search`` for each group's codebook.
      damp: ``> 0``: ``damp * mean(diag H)`` is added to ``diag H``. This keeps ``H`` invertible
        for any number of rows: with ``T < K`` rows ``H`` is singular and the damping decides
        the directions no row constrains (they are held to the weights themselves). Error
        feedback fits ``H``'s sampling noise: for a gain on unseen inputs use ``T >> K`` rows
        (white inputs, K = 256: +7% held-out error at T = 4K, +0.8% at T = 32K).
      act_order: process rows in descending ``diag(H)`` order within each group.
      refit: refit the scales in ``H``'s metric after the signs are chosen.
      column_chunk: output columns per jitted chunk; default keeps a chunk's float32 working set
        near `CHUNK_FLOATS`.
      progress: show a tqdm bar over column chunks.

    Returns:
      A `BCQWeight` (bits ``[Kp/32, q, N]``, alpha ``[G, q, N]`` or, for ``method="rtn"``,
      uniform ``[G, 1, N]``, offset ``[G, N]`` or ``None``) in ``config.resolve_layout()``.

    Raises:
      TypeError / ValueError naming the argument: non-2-D or non-finite ``W``; a
      ``calibration`` with another ``K``, NaN/Inf, or no nonzero rows; ``damp <= 0``.
    """
    config = BCQConfig.make(config, where="quantize_calibrated")
    alpha_dtype = config.resolve_alpha_dtype(getattr(W, "dtype", np.float32))
    W = _check_weight(W, "quantize_calibrated")
    k, n = W.shape
    calib = as_calibration(calibration, k, "quantize_calibrated")
    damp = _check_damp(damp)
    if act_order not in (True, False) or refit not in (True, False):
        raise TypeError("quantize_calibrated: act_order and refit must be bools")
    g = resolve_group_size(k, config.group_size)
    kp = padded_in_features(k, g)
    hd, w_pad, valid = _damped_problem(W, calib, g, damp)
    perm = _act_order_permutation(np.diag(hd), valid, g) if act_order else np.arange(kp)
    u = _inverse_cholesky(hd[np.ix_(perm, perm)])
    p = _num_params(config)
    chunk = _chunk_size(column_chunk, n, kp, (kp // g) * p, p)
    width = chunk_width(chunk)
    statics = dict(
        g=g,
        q=config.bits,
        method=config.method,
        rounds=config.rounds,
        fit_offset=config.fit_offset,
        clip_search=config.clip_search,
    )
    u32, hd32 = jnp.asarray(u, jnp.float32), jnp.asarray(hd, jnp.float32)
    valid_j, perm_j = jnp.asarray(valid), jnp.asarray(perm)
    inv_perm = jnp.asarray(np.argsort(perm))
    parts = []
    for start in _progress(range(0, n, chunk), progress, n, chunk):
        cols = w_pad[:, start : start + chunk]
        cols = jnp.asarray(np.pad(cols, ((0, 0), (0, width - cols.shape[1]))), jnp.float32)
        code, alpha, offset = _error_feedback(cols[perm_j], u32, valid_j[perm_j], **statics)
        code = code[inv_perm]
        if refit:
            alpha, offset = _refit(cols, hd32, code, alpha, offset, valid_j, **statics)
        bits = _pack(code, valid_j, config.bits)
        parts.append([x[..., : min(chunk, n - start)] for x in (bits, alpha, offset)])
    return assemble(parts, k, g, config, alpha_dtype, config.resolve_layout())


# ---- problem set-up (float64, numpy) ----------------------------------------------------------


def _check_weight(W, where: str) -> np.ndarray:
    if not hasattr(W, "shape") or not hasattr(W, "dtype"):
        W = np.asarray(W)
    if len(W.shape) != 2 or 0 in W.shape:
        raise ValueError(f"{where}: W must be a non-empty 2-D [K, N] array, got {W.shape}")
    if not jnp.issubdtype(W.dtype, jnp.floating):
        raise TypeError(f"{where}: W must have a floating dtype, got {W.dtype}")
    w = np.asarray(jnp.asarray(W).astype(jnp.float32), np.float64)
    if not np.isfinite(w).all():
        raise ValueError(f"{where}: W contains NaN or Inf (or values beyond float32)")
    return w


def _check_damp(damp) -> float:
    if isinstance(damp, bool) or not isinstance(damp, (int, float, np.floating, np.integer)):
        raise TypeError(f"damp must be a positive float, got {damp!r}")
    if not (np.isfinite(damp) and damp > 0):
        raise ValueError(f"damp must be a positive finite float, got {damp!r}")
    return float(damp)


def _damped_problem(W: np.ndarray, calib: Calibration, g: int, damp: float):
    """Returns ``(Hd float64 [Kp, Kp], W float32 [Kp, N] with dead and padded rows 0,
    valid bool [Kp])``."""
    k, n = W.shape
    kp = padded_in_features(k, g)
    h = calib.hessian
    diag = np.diag(h)
    dead = diag <= 0
    lam = damp * float(np.mean(diag[~dead]))
    hd = np.zeros((kp, kp))
    hd[:k, :k] = h
    hd[np.arange(k), np.arange(k)] += lam
    hd[np.arange(k, kp), np.arange(k, kp)] = lam  # padding: independent of real rows
    w = np.zeros((kp, n), np.float32)  # float32 like the fit; halves the peak for big W
    w[:k] = np.where(dead[:, None], 0.0, W)
    return hd, w, np.arange(kp) < k


def _act_order_permutation(diag: np.ndarray, valid: np.ndarray, g: int) -> np.ndarray:
    """Within each group, rows by descending ``diag`` (stable); padding rows stay last."""
    key = np.where(valid, -diag, np.inf).reshape(-1, g)
    order = np.argsort(key, axis=1, kind="stable")
    return (order + np.arange(key.shape[0])[:, None] * g).reshape(-1)


def _inverse_cholesky(hd: np.ndarray) -> np.ndarray:
    """Upper ``U`` with ``U^T U = hd^-1`` (float64): ``hd^-1`` from ``hd``'s Cholesky factor
    ``L`` as ``L^-T L^-1``, then ``U`` = the transposed lower Cholesky factor of ``hd^-1``."""
    try:
        low = np.linalg.cholesky(hd)
        inv = np.linalg.inv(low)
        return np.linalg.cholesky(inv.T @ inv).T.copy()
    except np.linalg.LinAlgError as e:
        raise ValueError(
            "quantize_calibrated: calibration: the damped H is not positive definite; raise damp"
        ) from e


def _num_params(config: BCQConfig) -> int:
    """Scales per group the refit solves for: ``q`` (+1 offset); RTN: step and offset."""
    if config.method == "rtn":
        return 2
    return config.bits + int(config.fit_offset)


def _chunk_size(column_chunk, n: int, kp: int, m: int, p: int) -> int:
    if column_chunk is None:
        per_column = m * m + kp * (p + 6)
        chunk = max(1, CHUNK_FLOATS // per_column)
        return n if chunk >= n else max(chunk // 128 * 128, min(chunk, 128))
    if isinstance(column_chunk, bool) or not isinstance(column_chunk, (int, np.integer)):
        raise ValueError(f"column_chunk must be a positive int or None, got {column_chunk!r}")
    if column_chunk <= 0:
        raise ValueError(f"column_chunk must be a positive int or None, got {column_chunk!r}")
    return int(min(column_chunk, n))


def _progress(it, progress: bool, n: int, chunk: int):
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=-(-n // chunk), desc="calibrated BCQ", unit="chunk")


# ---- error feedback (jit) ---------------------------------------------------------------------

_STATICS = ("g", "q", "method", "rounds", "fit_offset", "clip_search")


def _block_rows(g: int) -> int:
    """Rows per lazy-update block: the largest of 128, 64, 32, 16 dividing ``g``."""
    return next(b for b in (128, 64, 32, 16) if g % b == 0)


def _fit_group(wg, vg, *, q, method, rounds, fit_offset, clip_search):
    """The data-free codebook of one group: ``wg [g, C]``, ``vg bool [g]`` ->
    ``(alpha [p, C], offset [C])`` (``p`` = 1, the uniform scale, for RTN; else q), by the same
    fit as `lutgemm_jax.quantize`."""
    valid = vg[None, :, None]
    w = jnp.where(valid, wg[None], 0.0)  # [1, g, C]
    count = jnp.sum(valid).astype(jnp.float32).reshape(1, 1, 1)
    alpha, offset, _, _ = fit_groups(
        w, valid, count, q=q, method=method, rounds=rounds, fit_offset=fit_offset,
        clip_search=clip_search,
    )  # fmt: skip
    return jnp.stack([a[0, 0] for a in alpha]), offset[0, 0]


def _codewords(alpha, offset, q):
    """``[2^q, C]``: codeword ``p`` is ``offset + sum_i (2 bit_i(p) - 1) alpha_i`` for stored
    scales ``alpha [p, C]`` (``[1, C]``: uniform)."""
    p = jnp.arange(1 << q)
    signs = ((p[:, None] >> jnp.arange(q)) & 1).astype(jnp.float32) * 2.0 - 1.0  # [2^q, q]
    return offset[None] + signs @ expand_alpha(alpha, q)


@functools.partial(jax.jit, static_argnames=_STATICS)
def _error_feedback(w, u, valid, *, g, q, method, rounds, fit_offset, clip_search):
    """GPTQ over rows of ``w: [Kp, C]`` (in processing order) with ``u = chol(Hd^-1)`` upper.

    Returns ``(code uint8 [Kp, C], alpha f32 [G, p, C], offset f32 [G, C])`` (``p`` = 1 for
    RTN's uniform scale, else q); bit ``i`` of a code is 1 where ``s_i = +1``.
    """
    kp, c = w.shape
    b = _block_rows(g)
    per_group = g // b
    fit = functools.partial(
        _fit_group, q=q, method=method, rounds=rounds, fit_offset=fit_offset,
        clip_search=clip_search,
    )  # fmt: skip
    rows = jnp.arange(kp)

    def block(i, state):
        w, code, alphas, offsets, cw = state
        r0 = i * b
        gi = i // per_group

        def refit_codebook(_):
            wg = lax.dynamic_slice(w, (gi * g, 0), (g, c))
            a, o = fit(wg, lax.dynamic_slice(valid, (gi * g,), (g,)))
            return a, o

        def keep_codebook(_):
            return alphas[gi], offsets[gi]

        a, o = lax.cond(i % per_group == 0, refit_codebook, keep_codebook, None)
        alphas = alphas.at[gi].set(a)
        offsets = offsets.at[gi].set(o)
        cw = _codewords(a, o, q)
        ub = lax.dynamic_slice(u, (r0, r0), (b, b))

        def row(t, st):
            wb, err, codes = st
            x = wb[t]
            pick = jnp.argmin(jnp.abs(x[None] - cw), axis=0)  # ties: the lower code
            e = (x - jnp.take_along_axis(cw, pick[None], 0)[0]) / ub[t, t]
            coef = jnp.where(jnp.arange(b) > t, ub[t], 0.0)
            return wb - coef[:, None] * e[None], err.at[t].set(e), codes.at[t].set(pick)

        wb = lax.dynamic_slice(w, (r0, 0), (b, c))
        init = (wb, jnp.zeros((b, c), jnp.float32), jnp.zeros((b, c), jnp.int32))
        _, err, codes = lax.fori_loop(0, b, row, init)
        urows = lax.dynamic_slice(u, (r0, 0), (b, kp))
        urows = jnp.where(rows[None] >= r0 + b, urows, 0.0)
        w = w - urows.T @ err
        code = lax.dynamic_update_slice(code, codes.astype(jnp.uint8), (r0, 0))
        return w, code, alphas, offsets, cw

    groups = kp // g
    state = (
        w,
        jnp.zeros((kp, c), jnp.uint8),
        jnp.zeros((groups, 1 if method == "rtn" else q, c), jnp.float32),
        jnp.zeros((groups, c), jnp.float32),
        jnp.zeros((1 << q, c), jnp.float32),
    )
    _, code, alphas, offsets, _ = lax.fori_loop(0, kp // b, block, state)
    return code, alphas, offsets


# ---- refit in H's metric (jit) ----------------------------------------------------------------


def _basis(code, valid, q, method, fit_offset):
    """``P: [Kp, p, C]``, the columns multiplying each group's unknowns (0 on padding)."""
    signs = [((code >> i) & 1).astype(jnp.float32) * 2.0 - 1.0 for i in range(q)]
    if method == "rtn":  # the uniform scale multiplies sum_i 2^i s_i
        cols = [sum(s * 2.0**i for i, s in enumerate(signs)), jnp.ones_like(signs[0])]
    else:
        cols = signs + ([jnp.ones_like(signs[0])] if fit_offset else [])
    return jnp.stack(cols, axis=1) * valid[:, None, None]


def _params(alpha, offset, method, fit_offset):
    """The unknowns ``[G, p, C]`` of the current scales."""
    if method == "rtn":
        return jnp.stack([alpha[:, 0], offset], axis=1)
    return jnp.concatenate([alpha, offset[:, None]], axis=1) if fit_offset else alpha


def _unparams(x, q, method, fit_offset):
    """Inverse of `_params`: ``[G, p, C] -> (alpha [G, q, C] (RTN: uniform [G, 1, C]),
    offset [G, C])``."""
    if method == "rtn":
        return x[:, :1], x[:, 1]
    offset = x[:, q] if fit_offset else jnp.zeros_like(x[:, 0])
    return x[:, :q], offset


@functools.partial(jax.jit, static_argnames=_STATICS)
def _refit(w, hd, code, alpha, offset, valid, *, g, q, method, rounds, fit_offset, clip_search):
    """Per column, the scales minimising ``tr(D^T Hd D)`` given the signs, kept where better.

    ``w: [Kp, C]`` original weights, ``hd: [Kp, Kp]``, ``code uint8 [Kp, C]`` (row order).
    """
    del rounds, clip_search
    kp, c = w.shape
    groups = kp // g
    basis = _basis(code, valid, q, method, fit_offset)  # [Kp, p, C]
    p = basis.shape[1]
    pg = basis.reshape(groups, g, p, c)
    h4 = hd.reshape(groups, g, groups, g)

    def block_column(j):  # A[:, :, j, :] for group j: [C, G, p, p]
        t = jnp.einsum("akl,lbn->akbn", h4[:, :, j], pg[j])
        return jnp.einsum("akin,akbn->naib", pg, t)

    a = lax.map(block_column, jnp.arange(groups))  # [G', C, G, p, p']
    m = groups * p
    a = jnp.transpose(a, (1, 2, 3, 0, 4)).reshape(c, m, m)
    rhs = jnp.einsum("akin,akn->nai", pg, (hd @ w).reshape(groups, g, c)).reshape(c, m)
    ridge = _RIDGE * jnp.trace(a, axis1=1, axis2=2) / m + 1e-30
    chol = jnp.linalg.cholesky(a + ridge[:, None, None] * jnp.eye(m))
    x_new = jax.scipy.linalg.cho_solve((chol, True), rhs[..., None])[..., 0]
    x_old = jnp.transpose(_params(alpha, offset, method, fit_offset), (2, 0, 1)).reshape(c, m)

    def err_minus_const(x):  # tr(D^T Hd D) - w^T Hd w for one column: x^T A x - 2 x^T r
        return jnp.einsum("ni,nij,nj->n", x, a, x) - 2.0 * jnp.sum(x * rhs, axis=1)

    better = jnp.isfinite(x_new).all(axis=1) & (err_minus_const(x_new) < err_minus_const(x_old))
    x = jnp.where(better[:, None], x_new, x_old)
    x = jnp.transpose(x.reshape(c, groups, p), (1, 2, 0))
    return _unparams(x, q, method, fit_offset)


@functools.partial(jax.jit, static_argnames=("q",))
def _pack(code, valid, q):
    """``code uint8 [Kp, C]`` -> bits uint32 ``[Kp/32, q, C]`` (padding rows: bit 0)."""
    code = jnp.where(valid[:, None], code, 0)[:, None, :]
    return jnp.concatenate(
        [pack_signs(((code >> i) & 1).astype(jnp.bool_)) for i in range(q)], axis=1
    )
