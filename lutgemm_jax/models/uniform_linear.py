"""One pre-quantized Linear as integer codes, the common form of GPTQ and AWQ imports.

GPTQ and AWQ both store ``W[k, n] = scale[grp(k), n] * (code[k, n] - zero[grp(k), n])`` with
``W: [K, N]`` in the ``y = x @ W`` orientation; they differ only in how codes and zeros are packed
(`lutgemm_jax.models.gptq`, `lutgemm_jax.models.awq_checkpoint`) and in GPTQ's act-order group
map. `UniformLinear` holds the unpacked result; `to_bcq` turns it into the exact uniform
`BCQWeight` (`lutgemm_jax.uniform.from_uniform_codes`): alpha = D/2, offset = D*((2^q-1)/2 - z).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from lutgemm_jax.format import CPU_BLOCK_COLUMNS, BCQWeight
from lutgemm_jax.models.hf_checkpoint import HFCheckpointError
from lutgemm_jax.uniform import from_uniform_codes

CHUNK_WEIGHTS = 1 << 20
"""Weights converted per `lutgemm_jax.uniform.from_uniform_codes` call in `to_bcq`: its
temporaries take ~12 bytes per weight (codes as uint32, one byte per bit-plane, packing), so
about 12 MB per slice instead of three float32 copies of a large Linear."""


@dataclasses.dataclass
class UniformLinear:
    """``W[k, n] = scale[k_grp, n] * (codes[k, n] - zeros[k_grp, n])`` with contiguous groups of
    ``group_size`` rows *after* the row permutation ``perm``.

    Attributes:
      codes: uint8 ``[K, N]`` in ``[0, 2**num_bits)``, rows in the checkpoint's order.
      scale: ``[G, N]`` float (the checkpoint's dtype, usually float16), G = ceil(K / g).
      zeros: int32 ``[G, N]``, the zero points as the formula uses them (GPTQ v1's stored - 1
        already undone).
      num_bits: q.
      group_size: g, or -1 for one group spanning all of K.
      perm: int ``[K]`` or None. Row ``j`` of the contiguous-group weight is row ``perm[j]`` of
        ``codes`` (GPTQ act-order); then ``x @ W == x[..., perm] @ W[perm]``. None: identity.
    """

    codes: np.ndarray
    scale: np.ndarray
    zeros: np.ndarray
    num_bits: int
    group_size: int
    perm: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    def dequantize(self) -> np.ndarray:
        """The float64 ``W: [K, N]`` in the checkpoint's row order (the published formula)."""
        k = self.codes.shape[0]
        g = k if self.group_size == -1 else self.group_size
        grp = np.arange(k) // g
        if self.perm is not None:
            grp = grp[np.argsort(self.perm)]
        d = self.scale.astype(np.float64)
        return d[grp] * (self.codes.astype(np.float64) - self.zeros[grp])


def to_bcq(
    u: UniformLinear,
    *,
    dtype: Any,
    layout: str,
    columns: np.ndarray | None = None,
) -> BCQWeight:
    """The exact uniform `BCQWeight` of ``u`` with rows in ``u.perm`` order.

    ``columns``: an optional permutation of N (``W[:, columns]``), used to fold the next layer's
    act-order permutation into this layer's outputs. ``dtype``: storage dtype of alpha and offset.

    The conversion runs on slices of `CHUNK_WEIGHTS` weights (whole columns), so its
    temporaries stay bounded whatever the size of the Linear; the slices are joined along N.
    """
    k, n = u.shape
    cols = np.arange(n) if columns is None else np.asarray(columns)
    # Slices of whole 32-column blocks: the "cpu" layout shuffles bytes within blocks of
    # CPU_BLOCK_COLUMNS columns (the last N % 32 stay canonical), so slices converted on their
    # own and joined along N equal the whole weight converted at once.
    width = max(CPU_BLOCK_COLUMNS, CHUNK_WEIGHTS // k // CPU_BLOCK_COLUMNS * CPU_BLOCK_COLUMNS)
    parts = []
    for start in range(0, n, width):
        c = cols[start : start + width]
        codes = u.codes[:, c] if u.perm is None else u.codes[np.ix_(u.perm, c)]
        d = u.scale[:, c].astype(np.float64)
        parts.append(
            from_uniform_codes(
                codes,
                d,
                -u.zeros[:, c] * d,  # exact in float64: 11-bit float16 significand * int <= 256
                num_bits=u.num_bits,
                group_size=None if u.group_size == -1 else u.group_size,
                dtype=dtype,
                layout=layout,
            )
        )
    # joined in numpy: no XLA program per Linear shape
    bits, alpha, offset = (
        np.concatenate([np.asarray(getattr(p, f)) for p in parts], axis=-1)
        for f in ("bits", "alpha", "offset")
    )
    w = dataclasses.replace(
        parts[0],
        bits=jnp.asarray(bits),
        alpha=jnp.asarray(alpha),
        offset=jnp.asarray(offset),
        out_features=n,
    )
    w.validate()
    return w


def contiguous_perm(g_idx: np.ndarray, group_size: int, where: str) -> np.ndarray | None:
    """The row permutation that makes GPTQ's groups contiguous, or None when they already are.

    ``g_idx [K]`` maps each row to its group. Act-order checkpoints quantize rows in a
    data-dependent order and form groups of ``group_size`` consecutive rows *in that order*, so
    ``P = argsort(g_idx)`` (stable) must give ``g_idx[P] == arange(K) // group_size``; anything
    else (uneven groups) has no contiguous-group BCQ form and is refused.
    """
    k = g_idx.shape[0]
    g = k if group_size == -1 else group_size
    want = np.arange(k) // g
    if np.array_equal(g_idx, want):
        return None
    perm = np.argsort(g_idx, kind="stable")
    if not np.array_equal(g_idx[perm], want):
        counts = np.unique(g_idx, return_counts=True)[1]
        raise HFCheckpointError(
            f"{where}: g_idx does not split the {k} rows into groups of {g} (group sizes "
            f"{sorted(set(counts.tolist()))}); only groups of group_size rows (in any row order) "
            "convert exactly"
        )
    return perm


INT_WORDS = (np.int32, np.uint32)
"""dtypes accepted for packed words (safetensors stores GPTQ/AWQ words as I32)."""
SCALE_DTYPES = (np.float16, jnp.bfloat16, np.float32)
"""dtypes accepted for scales (float16 in every known checkpoint)."""


def optional_tensor(get: Callable[[str], np.ndarray], name: str) -> np.ndarray | None:
    """``get(name)``, or None when the checkpoint has no such tensor."""
    try:
        return get(name)
    except KeyError:
        return None


def checked_tensor(
    get: Callable[[str], np.ndarray],
    where: Callable[[str], str],
    name: str,
    shape: tuple[int, ...],
    dtypes: tuple[Any, ...],
) -> np.ndarray:
    """``get(name)`` checked against ``shape`` and ``dtypes`` (errors name file and tensor)."""
    x = np.asarray(get(name))
    if x.dtype not in [np.dtype(d) for d in dtypes]:
        want = "/".join(np.dtype(d).name for d in dtypes)
        raise HFCheckpointError(f"{where(name)}: tensor {name!r} is {x.dtype}, expected {want}")
    if x.shape != shape:
        raise HFCheckpointError(
            f"{where(name)}: tensor {name!r} has shape {x.shape}, the config (bits, group_size) "
            f"and the model's Linear shape imply {shape}"
        )
    return x


__all__ = [
    "INT_WORDS",
    "SCALE_DTYPES",
    "UniformLinear",
    "checked_tensor",
    "contiguous_perm",
    "optional_tensor",
    "to_bcq",
]
