"""Test helpers: random packed weights and their float64 dense twins (independent of the code
under test: the dense matrix is built from the unpacked signs with numpy in float64)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from lutgemm_jax.format import from_signs, padded_in_features, resolve_group_size


def random_weight(rng, k, n, q, group_size=128, has_offset=True, alpha_dtype=jnp.float32):
    """Returns (BCQWeight, W64: float64 [K, N]) for random signs, scales and offsets."""
    g = resolve_group_size(k, group_size)
    groups = padded_in_features(k, g) // g
    signs = rng.random((k, q, n)) < 0.5
    alpha = jnp.asarray(rng.uniform(0.1, 1.0, (groups, q, n)), alpha_dtype)
    offset = jnp.asarray(rng.normal(size=(groups, n)), alpha_dtype) if has_offset else None
    w = from_signs(jnp.asarray(signs), alpha, offset, in_features=k, group_size=g)
    return w, dense_float64(signs, alpha, offset, g)


def dense_float64(signs, alpha, offset, g):
    """W64[k, n] = sum_i alpha[k // g, i, n] * (+-1) + offset[k // g, n], in float64."""
    group = np.arange(signs.shape[0]) // g
    a64 = np.asarray(alpha.astype(jnp.float32), np.float64)[group]
    dense = np.sum(np.where(signs, 1.0, -1.0) * a64, axis=1)
    if offset is not None:
        dense += np.asarray(offset.astype(jnp.float32), np.float64)[group]
    return dense


def reference(x, w64):
    """float64 ``x @ W64`` for x of any float dtype (read exactly as float64)."""
    x64 = np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)
    return x64 @ w64


def rel_err(y, ref):
    """max |y - ref| / max |ref|: error relative to the output's scale."""
    y = np.asarray(jnp.asarray(y).astype(jnp.float32), np.float64)
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))
