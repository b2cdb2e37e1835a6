"""Quantizers: dense ``W: [K, N]`` -> packed `BCQWeight` (see `lutgemm_jax.format`).

Every method works per group: ``g`` consecutive rows of one output column (``G = Kp / g``
groups per column, ``Kp`` = K rounded up to a multiple of ``max(g, 32)``; ``g`` is 16 or a
multiple of 32, see `lutgemm_jax.format`) get their own scales, and the
result is ``W_hat[k, n] = sum_{i<q} alpha[k // g, i, n] * s_i[k, n] (+ offset[k // g, n])``
with ``s_i = +-1``.

``"greedy"``
    ``r = w``; for ``i = 0 .. q-1``: ``s_i = sign(r)`` (``sign(0) = +1``),
    ``alpha_i = mean |r|``, ``r -= alpha_i * s_i``.

``"alternating"`` (default; Xu et al. 2018, "Alternating Multi-bit Quantization")
    Greedy, then ``rounds`` rounds of two exact partial minimisations of the group's squared
    error: (1) ``alpha`` = least squares given the signs (``q x q`` normal equations per group
    and column, solved by a Cholesky factorisation that drops linearly dependent sign planes, so
    singular systems give a valid minimiser, never NaN); (2) every weight takes the nearest of
    the ``2^q`` codewords ``sum_i +-alpha_i``. Each step can only lower the error; in addition a
    group keeps its previous solution whenever a round (through float rounding) would raise it,
    so the error is non-increasing round by round, per group.

``"rtn"`` (round to nearest, uniform asymmetric)
    ``lo, hi`` = min/max of the group (optionally shrunk by the clipping ratio in
    `CLIP_RATIOS` with the smallest squared error, ``clip_search=True``), scale
    ``s = (hi - lo) / (2^q - 1)``, zero point ``z = -lo / s``, codes
    ``c = clip(round((w - lo) / s), 0, 2^q - 1)``, reconstruction ``s * (c - z)``. Because
    ``c = sum_i 2^i bit_i(c)`` and ``bit = (s_i + 1) / 2``::

        s * (c - z) = sum_i (s * 2^(i-1)) * s_i + (s * (2^q - 1) / 2 - s * z)

    so the uniform grid is stored *exactly* as BCQ with ``alpha_i = s * 2^(i-1)``,
    ``s_i = 2 * bit_i(c) - 1`` and ``offset = s * (2^q - 1) / 2 - s * z`` (= ``lo + s (2^q-1)/2``),
    by the conversion of `lutgemm_jax.uniform` (`uniform_scales`), and in its *uniform* form:
    ``alpha: [G, 1, N] = s / 2``, one scale per group (`lutgemm_jax.format`). The zero point is
    real-valued (the offset is a float anyway), which is exact for constant groups; an integer
    zero point would convert by the same identity. RTN always has an offset.

``fit_offset=True`` (greedy and alternating) subtracts the group mean first and stores it as the
offset; alternating then re-fits it jointly with ``alpha`` (a column of ones in the least
squares) and includes it in the codewords.

Numerics: the fit runs in float32 on each (group, column) scaled by a power of two so that its
largest magnitude lies in ``[0.5, 1)`` (exact, and safe for 1e30 or 1e-30 weights); rows past
K are masked out of every mean, least-squares system and error, and get sign bit 0. Scales that
do not fit the alpha dtype saturate to its largest finite value (a uniform scale to that value
over ``2^(q-1)``, so that every plane scale ``alpha * 2^i`` stays finite).

The format, method and fit options are the fields of `lutgemm_jax.config.BCQConfig`.
Work is chunked over output columns by one jitted function per configuration (the last chunk is
zero-padded to the same shape, so a matrix compiles once), which bounds peak memory.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lutgemm_jax.config import UNSET, BCQConfig
from lutgemm_jax.format import BCQWeight, pack_signs, padded_in_features, resolve_group_size
from lutgemm_jax.uniform import uniform_scales

CLIP_RATIOS = tuple(1.0 - 0.025 * i for i in range(20))
"""Clipping ratios (1.0 down to 0.525) tried per group by RTN with ``clip_search=True``."""
CHUNK_ELEMENTS = 1 << 23
"""Default number of weights per column chunk (32 MB of float32 input per chunk)."""
_CODEWORD_BLOCK = 16
"""Codewords compared per fused pass in the nearest-codeword search."""
_PIVOT_TOL = 1e-4
"""Cholesky pivots below this fraction of the group's row count mark a dependent column."""


def quantize(
    W: jax.Array,
    bits: int = UNSET,
    group_size: int | None = UNSET,
    method: str = UNSET,
    *,
    config: BCQConfig | None = None,
    calibration: Any = None,
    column_chunk: int | None = None,
    **fields: Any,
) -> BCQWeight:
    """Quantizes a dense kernel ``W: [K, N]`` (``y = x @ W``) to a `BCQWeight`.

    Args:
      W: ``[K, N]`` floating weights (any float dtype; fitted in float32; ``alpha`` in its
        dtype unless ``alpha_dtype`` says otherwise). Must be finite in float32.
      bits, group_size, method, **fields: `BCQConfig` fields applied over ``config``
        (`BCQConfig.make`): ``rounds``, ``fit_offset``, ``clip_search``, ``alpha_dtype``,
        ``layout``.
      config: the `BCQConfig` (default ``BCQConfig()``); its ``"auto"`` layout is resolved
        here, ``"canonical"`` for a ``W`` placed on several devices.
      calibration: ``None`` (data-free: minimise the weight error) or the layer's inputs: an
        array ``X: [T, K]`` or a `lutgemm_jax.calibration.Calibration` (accumulated ``H = X^T X``).
        Then the output error ``||X (W - W_hat)||`` is minimised instead, by
        `lutgemm_jax.calibrate.quantize_calibrated` with its defaults (call it directly for
        damping and act-order).
      column_chunk: output columns per chunk; default keeps a chunk near `CHUNK_ELEMENTS`
        weights (peak memory a few hundred MB).

    Returns:
      A `BCQWeight` with bits ``[Kp/32, q, N]``, alpha ``[G, q, N]`` (``[G, 1, N]``, uniform,
      for ``method="rtn"``) and offset ``[G, N]`` (``None`` for greedy/alternating without
      ``fit_offset``), in the resolved layout.

    Raises:
      TypeError / ValueError: naming the argument, for a bad argument or a non-finite ``W``
        (the finiteness check is skipped when ``W`` is a tracer, i.e. under ``jax.jit``).
    """
    config = BCQConfig.make(
        config, where="quantize", bits=bits, group_size=group_size, method=method, **fields
    )
    if calibration is not None:
        from lutgemm_jax.calibrate import quantize_calibrated  # it builds on this module

        return quantize_calibrated(W, calibration, config, column_chunk=column_chunk)
    layout = config.resolve_layout(partitioned=_num_devices(W) > 1)
    W, g, chunk = _validate(W, config, column_chunk)
    dtype = jnp.dtype(W.dtype)
    W = _as_float32(W)
    k, n = W.shape
    parts = [
        [
            x[..., : min(chunk, n - start)]  # drop the chunk's zero-padded columns
            for x in _run_chunk(W, start, chunk, g, config, False)
        ]
        for start in range(0, n, chunk)
    ]
    return assemble(parts, k, g, config, config.resolve_alpha_dtype(dtype), layout)


def assemble(
    parts: list, k: int, g: int, config: BCQConfig, alpha_dtype: Any, layout: str
) -> BCQWeight:
    """The `BCQWeight` of column chunks ``parts``: one ``(bits [Kp/32, q, n_i], alpha
    [G, p, n_i], offset [G, n_i])`` per chunk (``p`` = 1 for uniform scales, else q), in column
    order, scales saturated to ``alpha_dtype``, validated and in ``layout``."""
    bits, alpha, offset = (jnp.concatenate(p, axis=-1) for p in zip(*parts, strict=True))
    # A uniform scale saturates below the largest finite value by its top plane's factor.
    headroom = 2.0 ** (config.bits - 1) if alpha.shape[-2] == 1 else 1.0
    w = BCQWeight(
        bits=bits,
        alpha=_saturate(alpha, alpha_dtype, headroom),
        offset=_saturate(offset, alpha_dtype) if config.has_offset else None,
        in_features=k,
        out_features=bits.shape[-1],
        num_bits=config.bits,
        group_size=g,
    )
    w.validate()
    return w.to_layout(layout)


def _num_devices(W: Any) -> int:
    """Devices a concrete ``W`` is placed on (1 for numpy arrays and tracers)."""
    if isinstance(W, jax.core.Tracer):
        return 1
    sharding = getattr(W, "sharding", None)
    return sharding.num_devices if sharding is not None else 1


def _error_history(
    W: jax.Array,
    bits: int,
    group_size: int | None = 128,
    *,
    rounds: int = 15,
    fit_offset: bool = False,
    column_chunk: int | None = None,
) -> np.ndarray:
    """float64 ``[rounds + 1]``: ``||W - W_hat||^2`` of alternating after greedy and each round.

    For tests and diagnostics; follows exactly the computation of ``quantize(method=
    "alternating")`` (entry ``r`` is the error of the solution kept after round ``r``).
    """
    config = BCQConfig(
        bits=bits, group_size=group_size, method="alternating", rounds=rounds, fit_offset=fit_offset
    )
    W, g, chunk = _validate(W, config, column_chunk)
    W = _as_float32(W)
    n = W.shape[1]
    hist = [_run_chunk(W, start, chunk, g, config, True) for start in range(0, n, chunk)]
    return np.sum([np.asarray(h, np.float64) for h in hist], axis=0)


def _validate(W: Any, config: BCQConfig, chunk: Any) -> tuple[jax.Array, int, int]:
    """Checks ``W`` and ``column_chunk`` (the config validated itself); returns ``W`` as an
    array, the concrete group size and the chunk width."""
    if not hasattr(W, "shape") or not hasattr(W, "dtype"):
        W = np.asarray(W)
    if len(W.shape) != 2:
        raise ValueError(f"quantize: W must be 2-D [K, N], got shape {tuple(W.shape)}")
    if not jnp.issubdtype(W.dtype, jnp.floating):
        raise TypeError(f"quantize: W must have a floating dtype, got {W.dtype}")
    k, n = W.shape
    if k == 0 or n == 0:
        raise ValueError(f"quantize: W must be non-empty, got shape {tuple(W.shape)}")
    g = resolve_group_size(k, config.group_size)
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // padded_in_features(k, g))
        chunk = n if chunk >= n else max(chunk // 128 * 128, min(chunk, 128))
    elif isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk <= 0:
        raise ValueError(f"quantize: column_chunk must be a positive int or None, got {chunk!r}")
    return W, g, int(min(chunk, n))


def _as_float32(W: Any) -> jax.Array:
    """``W`` in float32 (the fit's precision); raises if it is not finite there."""
    W = jnp.asarray(W).astype(jnp.float32)
    if not isinstance(W, jax.core.Tracer) and not bool(jnp.isfinite(W).all()):
        raise ValueError(
            "quantize: W contains NaN or Inf (or values beyond the float32 range); only finite "
            "weights can be quantized"
        )
    return W


def _run_chunk(W, start, chunk, g, config, history):
    """Quantizes columns ``start : start + chunk`` of ``W``, zero-padded to `chunk_width`."""
    k, n = W.shape
    kp = padded_in_features(k, g)
    cols = W[:, start : start + chunk]
    cols = jnp.pad(cols, ((0, kp - k), (0, chunk_width(chunk) - cols.shape[1])))
    return _quantize_chunk(
        cols,
        jnp.int32(k),
        g=g,
        q=config.bits,
        method=config.method,
        rounds=config.rounds,
        fit_offset=config.fit_offset,
        clip_search=config.clip_search,
        history=history,
    )


def chunk_width(chunk: int) -> int:
    """Compiled chunk width: a power of two below 1024 columns, else a multiple of 128, so
    that matrices of similar widths share one compilation."""
    return 1 << (chunk - 1).bit_length() if chunk < 1024 else -(-chunk // 128) * 128


@functools.partial(
    jax.jit,
    static_argnames=("g", "q", "method", "rounds", "fit_offset", "clip_search", "history"),
)
def _quantize_chunk(w, k, *, g, q, method, rounds, fit_offset, clip_search, history):
    """One column chunk. ``w``: float32 ``[Kp, C]``; rows ``>= k`` (an int32 scalar, traced so
    that matrices with the same ``Kp`` share a compilation) are padding.

    Returns ``(bits uint32 [Kp/32, q, C], alpha f32 [G, p, C], offset f32 [G, C])`` (``p`` = 1
    for RTN's uniform scale, else q), or with
    ``history`` the float32 ``[rounds + 1]`` squared error after greedy and each round.
    """
    kp, c = w.shape
    groups = kp // g
    valid = (jnp.arange(kp) < k).reshape(groups, g, 1)
    w = jnp.where(valid, w.reshape(groups, g, c), 0.0)  # [G, g, C]
    count = jnp.sum(valid, axis=1, keepdims=True).astype(jnp.float32)  # [G, 1, 1]
    alpha, offset, code, errs = fit_groups(
        w, valid, count, q=q, method=method, rounds=rounds, fit_offset=fit_offset,
        clip_search=clip_search,
    )  # fmt: skip
    if history:
        return errs
    alpha = jnp.stack([a[:, 0, :] for a in alpha], axis=1)  # [G, q, C]; RTN: [G, 1, C]
    offset = offset[:, 0, :]  # [G, C]
    # Padded rows get bit 0. The barrier materialises the codes once (XLA would otherwise fuse
    # the whole fit into the packing reduction, ~4x slower); one plane at a time packs fastest.
    code = lax.optimization_barrier(jnp.where(valid, code, 0)).reshape(kp, 1, c)
    bits = [pack_signs(((code >> i) & 1).astype(jnp.bool_)) for i in range(q)]
    return jnp.concatenate(bits, axis=1), alpha, offset


def fit_groups(w, valid, count, *, q, method, rounds, fit_offset, clip_search):
    """Fits the codebook of every group: ``w`` float32 ``[G, g, C]`` (rows past K zero, ``valid``
    bool ``[G, g, 1]``, ``count`` float32 ``[G, 1, 1]`` valid rows) with ``method``.

    Each (group, column) is scaled by an exact power of two so that its largest magnitude lies
    in ``[0.5, 1)``, fitted, and scaled back. Returns ``(alpha, offset, code, errs)``: the
    ``q`` plane scales as ``[G, 1, C]`` arrays (RTN: one, the uniform scale; plane ``i``'s is
    ``alpha * 2**i``), the offset ``[G, 1, C]``, the codes int ``[G, g, C]``
    (bit ``i`` set: ``s_i = +1``) and, for alternating, the float32 ``[rounds + 1]`` squared error
    after greedy and each round (else ``None``).
    """
    # With g = 16 a group can hold only padding (K % 32 in 1..16): it fits to all-zero scales,
    # as a group of zeros would, instead of dividing by its zero row count.
    count = jnp.maximum(count, 1.0)
    _, exp = jnp.frexp(_group_reduce(jnp.max, jnp.abs(w)))  # [G, 1, C]
    wn = _times_pow2(w, -exp)
    errs = None
    if method == "rtn":
        alpha, offset, code = _rtn(wn, valid, q, clip_search)
    else:
        alpha, offset, code = _greedy(wn, valid, count, q, fit_offset)
        if method == "alternating":
            alpha, offset, code, errs = _alternate(
                wn, valid, count, q, alpha, offset, code, fit_offset, rounds
            )
            errs = jnp.sum(_times_pow2(errs, 2 * exp[None, :, 0, :]), axis=(1, 2))
    return [_times_pow2(a, exp) for a in alpha], _times_pow2(offset, exp), code, errs


def _group_reduce(op, x):
    """``op`` (``jnp.sum``/``max``/``min``) over each group's rows: ``[G, g, C] -> [G, 1, C]``.

    A single group is reduced as a 2-D ``[g, C]`` array: XLA:CPU runs the same reduction with a
    leading axis of size 1 about ten times slower.
    """
    if x.shape[0] == 1:
        return op(x[0], axis=0)[None, None]
    return op(x, axis=1, keepdims=True)


def _times_pow2(x, e):
    """``x * 2^e`` exactly for int32 ``e`` in [-300, 300] (two normal power-of-two factors)."""
    half = e // 2
    return x * _pow2(half) * _pow2(e - half)


def _pow2(e):
    """``2^e`` as float32 for int32 ``e`` in [-126, 127], built from its exponent bits."""
    return lax.bitcast_convert_type((jnp.clip(e, -126, 127) + 127) << 23, jnp.float32)


def _saturate(x, dtype, headroom=1.0):
    """``x`` in ``dtype``, clipped to its largest finite magnitude divided by ``headroom``."""
    big = float(jnp.finfo(dtype).max) / headroom
    return jnp.clip(x, -big, big).astype(dtype)


def _sign(code, i):
    """``s_i = +-1`` (float32) from bit ``i`` of the codes."""
    return ((code >> i) & 1).astype(jnp.float32) * 2.0 - 1.0


def _greedy(wn, valid, count, q, fit_offset):
    """Greedy BCQ of normalised groups ``wn [G, g, C]``.

    Returns ``(alpha: list of q [G, 1, C], offset [G, 1, C], code uint8 [G, g, C])``; bit ``i``
    of ``code`` is 1 where ``s_i = +1``.
    """
    offset = jnp.zeros_like(wn[:, :1])
    if fit_offset:
        offset = _group_reduce(jnp.sum, wn) / count
    r = jnp.where(valid, wn - offset, 0.0)
    code = jnp.zeros(wn.shape, jnp.uint8)
    alpha = []
    for i in range(q):
        pos = r >= 0
        a = _group_reduce(jnp.sum, jnp.abs(r)) / count
        r = jnp.where(valid, r - jnp.where(pos, a, -a), 0.0)
        code = code | (pos.astype(jnp.uint8) << i)
        alpha.append(a)
    return alpha, offset, code


def _alternate(wn, valid, count, q, alpha, offset, code, fit_offset, rounds):
    """``rounds`` alternating rounds from the given solution (see `_greedy` for the layout).

    Returns the kept ``(alpha, offset, code)`` and the per-round errors ``[rounds + 1, G, C]``
    (normalised units).
    """
    vmask = valid.astype(jnp.float32)
    err0 = _group_reduce(jnp.sum, vmask * (wn - _decode(alpha, offset, code, q)) ** 2)[:, 0]

    def one_round(state, _):
        alpha, offset, code, err = state
        new_alpha, new_offset = _least_squares(wn, vmask, count, q, code, fit_offset)
        if not fit_offset:
            new_offset = offset
        new_code, new_err = _nearest_codeword(wn, vmask, q, new_alpha, new_offset)
        keep = (new_err <= err)[:, None, :]  # [G, 1, C]
        alpha = [jnp.where(keep, a1, a0) for a0, a1 in zip(alpha, new_alpha, strict=True)]
        offset = jnp.where(keep, new_offset, offset)
        code = jnp.where(keep, new_code, code)
        err = jnp.minimum(new_err, err)
        return (alpha, offset, code, err), err

    (alpha, offset, code, _), errs = lax.scan(
        one_round, (alpha, offset, code, err0), None, length=rounds
    )
    return alpha, offset, code, jnp.concatenate([err0[None], errs], axis=0)


def _decode(alpha, offset, code, q):
    return offset + sum(a * _sign(code, i) for i, a in enumerate(alpha))


def _least_squares(wn, vmask, count, q, code, fit_offset):
    """Exact least-squares ``alpha`` (and offset) given the signs, per (group, column).

    Builds the normal equations ``A x = b`` with ``A = S^T S`` over the valid rows (entries are
    integer counts, exact in float32) and solves them with `_solve_psd`.
    """
    cols = [_sign(code, i) * vmask for i in range(q)]
    if fit_offset:
        cols.append(vmask)
    m = len(cols)
    a = [[None] * m for _ in range(m)]
    for i in range(m):
        a[i][i] = count
        for j in range(i):
            a[i][j] = a[j][i] = _group_reduce(jnp.sum, cols[i] * cols[j])
    b = [_group_reduce(jnp.sum, col * wn) for col in cols]
    x = _solve_psd(a, b, count)
    return x[:q], (x[q] if fit_offset else None)


def _solve_psd(a, b, count):
    """Solves ``A x = b`` for symmetric PSD ``A`` (nested lists of broadcastable arrays).

    Cholesky without pivoting; a pivot below ``_PIVOT_TOL * count`` marks a column that depends
    linearly on the earlier ones: its variable is fixed to 0 and the column dropped, which
    still yields a least-squares minimiser (never a division by ~0).
    """
    m = len(b)
    tol = _PIVOT_TOL * count
    low = [[None] * m for _ in range(m)]
    inv_diag, keep = [], []
    for j in range(m):
        d = a[j][j] - sum((low[j][t] ** 2 for t in range(j)), 0.0)
        ok = d > tol
        inv = jnp.where(ok, lax.rsqrt(jnp.where(ok, d, 1.0)), 0.0)
        inv_diag.append(inv)
        keep.append(ok)
        for i in range(j + 1, m):
            s = a[i][j] - sum((low[i][t] * low[j][t] for t in range(j)), 0.0)
            low[i][j] = s * inv  # 0 for a dropped column
    y = []
    for j in range(m):
        y.append((b[j] - sum((low[j][t] * y[t] for t in range(j)), 0.0)) * inv_diag[j])
    x = [None] * m
    for j in reversed(range(m)):
        s = y[j] - sum((low[i][j] * x[i] for i in range(j + 1, m)), 0.0)
        x[j] = s * inv_diag[j]
    return x


def _nearest_codeword(wn, vmask, q, alpha, offset):
    """Per weight, the nearest of the ``2^q`` codewords ``offset + sum_i +-alpha_i``.

    Returns ``(code uint8 [G, g, C], squared error per group [G, C])``; ties go to the lower
    code. Enumerates the codewords in fused passes of `_CODEWORD_BLOCK` compares per weight
    (one pass for q <= 4; a loop over blocks keeps the graph small for larger q).
    """
    block = min(1 << q, _CODEWORD_BLOCK)

    def scan_block(first, state):
        best, code = state
        for j in range(block):
            p = first + j
            value = offset + sum(
                a * (((p >> i) & 1) * 2 - 1).astype(jnp.float32) for i, a in enumerate(alpha)
            )
            dist = jnp.abs(wn - value)
            better = dist < best
            best = jnp.where(better, dist, best)
            code = jnp.where(better, p.astype(jnp.uint8), code)
        return best, code

    state = (jnp.full(wn.shape, jnp.inf, jnp.float32), jnp.zeros(wn.shape, jnp.uint8))
    if block == 1 << q:
        best, code = scan_block(jnp.int32(0), state)
    else:
        best, code = lax.fori_loop(
            0, (1 << q) // block, lambda b, st: scan_block(b * block, st), state
        )
    return code, _group_reduce(jnp.sum, vmask * best * best)[:, 0]


def _rtn(wn, valid, q, clip_search):
    """Uniform asymmetric RTN of normalised groups, as BCQ (see the module docstring).

    Returns ``(alpha: [the uniform scale [G, 1, C]], offset [G, 1, C], code uint8 [G, g, C])``:
    plane ``i``'s scale is ``alpha * 2**i``.
    """
    levels = float((1 << q) - 1)
    hi0 = _group_reduce(jnp.max, jnp.where(valid, wn, -jnp.inf))
    lo0 = _group_reduce(jnp.min, jnp.where(valid, wn, jnp.inf))
    empty = ~jnp.isfinite(hi0)  # a group of padding only (g = 16): the grid of a zero group
    hi0, lo0 = jnp.where(empty, 0.0, hi0), jnp.where(empty, 0.0, lo0)

    def fit(ratio):
        lo, hi = lo0 * ratio, hi0 * ratio
        scale = (hi - lo) / levels
        c = jnp.clip(jnp.round((wn - lo) / jnp.where(scale > 0, scale, 1.0)), 0.0, levels)
        return scale, lo, c

    best = fit(1.0)
    if clip_search:

        def try_ratio(state, ratio):
            best, best_err = state
            cand = fit(ratio)
            scale, lo, c = cand
            err = _group_reduce(jnp.sum, jnp.where(valid, (wn - (scale * c + lo)) ** 2, 0.0))
            better = err < best_err
            best = tuple(jnp.where(better, x, y) for x, y in zip(cand, best, strict=True))
            return (best, jnp.minimum(err, best_err)), None

        init = (best, jnp.full(lo0.shape, jnp.inf, jnp.float32))
        (best, _), _ = lax.scan(try_ratio, init, jnp.asarray(CLIP_RATIOS, jnp.float32))
    scale, lo, c = best
    alpha, offset = uniform_scales(scale, lo, q)
    return [alpha], offset, c.astype(jnp.uint8)
