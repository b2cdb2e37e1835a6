"""AWQ checkpoints (AutoAWQ, GEMM version): layout and unpacking.

(`lutgemm_jax.awq` is the AWQ *calibration algorithm* of this package; this module reads files
that AutoAWQ wrote.) Each quantized Linear ``<prefix>`` stores, with ``K`` = in_features,
``N`` = out_features, 4-bit codes, ``G = K / g``::

    <prefix>.qweight  int32 [K, N/8]   codes packed along N, interleaved
    <prefix>.qzeros   int32 [G, N/8]   zero points, packed the same way
    <prefix>.scales   float16 [G, N]

**Interleave.** Nibble ``i`` (bits ``4i .. 4i+3``) of word ``[r, c]`` holds column
``8c + ORDER[i]`` with ``ORDER = (0, 2, 4, 6, 1, 3, 5, 7)`` (the order AutoAWQ's GEMM kernel
dequantizes pairs in). Zeros are stored as they are (no GPTQ-v1 ``- 1``) and
``W[k, n] = scales[k // g, n] * (q[k, n] - z[k // g, n])``; there is no ``g_idx``.

Other AWQ versions are refused: ``gemv`` / ``gemv_fast`` (packed along K in other tile orders),
``marlin``, ``llm-awq`` (MIT packing); ``exllama`` / ``ipex`` are load-time kernels over GEMM
tensors and are accepted as GEMM after the shapes check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lutgemm_jax.format import is_group_size
from lutgemm_jax.models.hf_checkpoint import HFCheckpointError
from lutgemm_jax.models.uniform_linear import (
    INT_WORDS,
    SCALE_DTYPES,
    UniformLinear,
    checked_tensor,
)

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
"""Nibble ``i`` of a word holds column ``8c + ORDER[i]``."""
VERSIONS = ("gemm", "exllama", "ipex")
"""AWQ versions whose tensors are GEMM-packed."""
BITS = 4


def unpack_gemm(words: np.ndarray) -> np.ndarray:
    """AWQ-GEMM words int32 ``[R, N/8]`` -> uint8 codes ``[R, N]`` in column order."""
    u = np.ascontiguousarray(words).view(np.uint32)
    nibbles = np.stack([(u >> np.uint32(4 * i)) & np.uint32(15) for i in range(8)], axis=-1)
    out = np.empty((u.shape[0], u.shape[1], 8), np.uint8)
    out[..., list(ORDER)] = nibbles  # nibble i -> column slot ORDER[i]
    return out.reshape(u.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class AWQScheme:
    """A checkpoint's AWQ settings (``quantization_config`` or AutoAWQ's ``quant_config.json``).

    ``where`` names the config file for messages."""

    group_size: int
    version: str = "gemm"
    where: str = "config.json"

    method = "awq"
    bits = BITS

    @classmethod
    def from_config(cls, qc: Mapping[str, Any], where: str) -> AWQScheme:
        """``qc``: the quantization config with synonyms resolved (``bits``, ``group_size``,
        ``format`` (AWQ's ``version``), ``sym`` = not ``zero_point``).

        Raises:
          HFCheckpointError: a setting this importer does not convert, naming it.
        """
        head = f"{where}: quantization_config (quant_method 'awq')"
        version = str(qc.get("format") or "gemm").lower().replace("-", "_")
        if str(qc.get("backend") or "").lower() == "llm-awq":  # transformers' spelling
            version = "llm_awq"
        if version not in VERSIONS:
            raise HFCheckpointError(
                f"{head}: version {version!r} is not supported (supported: {VERSIONS}); gemv, "
                "gemv_fast, marlin and llm_awq pack the codes in other orders"
            )
        bits = qc.get("bits")
        if bits != BITS or isinstance(bits, bool):
            raise HFCheckpointError(f"{head}: bits {bits!r} is not supported (AWQ GEMM is 4-bit)")
        if qc.get("sym", False):
            raise HFCheckpointError(
                f"{head}: zero_point false is not supported (AutoAWQ's GEMM layer always stores "
                "zero points)"
            )
        g = qc.get("group_size", -1)
        if not (g == -1 or is_group_size(g)):
            raise HFCheckpointError(
                f"{head}: group_size {g!r} has no BCQ form (the format takes 16, a multiple of "
                "32, or -1 for one group per column)"
            )
        return cls(int(g), version, where)

    def source_bits(self, k: int, n: int) -> int:
        """Bits of one ``[K, N]`` Linear in the checkpoint: qweight, qzeros, float16 scales."""
        groups = 1 if self.group_size == -1 else k // self.group_size
        return k * n * BITS + groups * n * (BITS + 16)

    def row_perm(self, get, where, prefix: str, k: int) -> None:
        """AWQ groups are always contiguous (there is no g_idx)."""
        return None

    def read_linear(
        self,
        get: Callable[[str], np.ndarray],
        where: Callable[[str], str],
        prefix: str,
        k: int,
        n: int,
    ) -> UniformLinear:
        """Reads and unpacks the AWQ-GEMM tensors of Linear ``prefix`` (``[K, N] = [k, n]``).

        Raises:
          HFCheckpointError: missing tensors, wrong dtypes or shapes (a GEMV-packed tensor under a
            GEMM config), K not a multiple of group_size, N not a multiple of 8, non-finite
            scales, naming the file and tensor.
        """
        g = k if self.group_size == -1 else self.group_size
        if k % g or n % 8:
            raise HFCheckpointError(
                f"{where(prefix + '.qweight')}: {prefix!r} has K={k}, N={n}: AWQ GEMM needs K a "
                f"multiple of group_size {g} and N a multiple of 8"
            )
        qweight = checked_tensor(get, where, prefix + ".qweight", (k, n // 8), INT_WORDS)
        qzeros = checked_tensor(get, where, prefix + ".qzeros", (k // g, n // 8), INT_WORDS)
        scales = checked_tensor(get, where, prefix + ".scales", (k // g, n), SCALE_DTYPES)
        if not np.isfinite(scales.astype(np.float32)).all():
            raise HFCheckpointError(f"{where(prefix + '.scales')}: {prefix}.scales has NaN/Inf")
        zeros = unpack_gemm(qzeros).astype(np.int32)
        return UniformLinear(unpack_gemm(qweight), scales, zeros, BITS, self.group_size)


__all__ = ["ORDER", "VERSIONS", "AWQScheme", "unpack_gemm"]
