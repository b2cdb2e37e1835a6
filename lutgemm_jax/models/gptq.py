"""GPTQ checkpoints (AutoGPTQ, GPTQModel, transformers + optimum): layout and unpacking.

Each quantized Linear ``<prefix>`` (the Hugging Face module name, no ``.weight``) stores, with
``K`` = in_features, ``N`` = out_features, ``b`` bits, ``G = ceil(K / g)`` (1 for
``group_size = -1``)::

    <prefix>.qweight  int32 [K*b/32, N]   codes packed along K
    <prefix>.qzeros   int32 [G, N*b/32]   zero points packed along N
    <prefix>.scales   float16 [G, N]
    <prefix>.g_idx    int32 [K]           group of each row (optional; default k // g)

**Packing.** Every int32 column (of ``qweight``; every row of ``qzeros``) is a little-endian bit
stream: word ``w`` holds stream bits ``32w .. 32w+31`` and element ``r`` occupies bits
``b*r .. b*r + b - 1``, least significant first. For b = 3 an element may straddle two words
(AutoGPTQ's ``pack``; its 3-bit special cases are exactly this stream).

**Zero points.** Format ``gptq`` (v1, the default) stores ``z - 1``; ``gptq_v2`` (GPTQModel)
stores ``z``. ``W[k, n] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n])``. A v1 packer cannot
store ``z = 0``: it ORs ``-1`` into the word, so that field and every higher field of the word
read ``2**b - 1`` (z = 2**b, which no quantizer produces). Such tensors are refused: the zeros
above the overflowing one are lost.

**Act-order** (``desc_act``): rows were quantized in a permuted order and groups formed along it,
so ``g_idx`` is not monotone. `lutgemm_jax.models.uniform_linear.contiguous_perm` recovers the
permutation; the model then gathers its activations (or the previous layer absorbs it).
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
    contiguous_perm,
    optional_tensor,
)

BITS = (2, 3, 4, 8)
FORMATS = ("gptq", "gptq_v2")
_WORD = 32
_CHUNK_ELEMENTS = 1 << 18  # elements per step of `unpack_stream`: ~2 MB per uint64 temporary


def unpack_stream(words: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Elements of the little-endian bit streams in the columns of ``words``.

    Args:
      words: int32 or uint32 ``[W, M]``: column ``m`` is one stream, word ``w`` = stream bits
        ``32w .. 32w + 31``.
      bits: element width ``b``, 1..8.
      count: elements per stream (``count * b <= 32 * W``).

    Returns:
      uint8 ``[count, M]``: element ``r`` of column ``m`` = stream bits ``b*r .. b*r + b - 1``.
    """
    u = np.ascontiguousarray(words).view(np.uint32)
    u = np.concatenate([u, np.zeros((1, u.shape[1]), np.uint32)])  # an element may end a word
    out = np.empty((count, u.shape[1]), np.uint8)
    mask = np.uint64((1 << bits) - 1)
    rows = max(1, _CHUNK_ELEMENTS // u.shape[1])
    for start in range(0, count, rows):
        pos = np.arange(start, min(count, start + rows), dtype=np.int64) * bits
        lo = u[pos // _WORD].astype(np.uint64)
        hi = u[pos // _WORD + 1].astype(np.uint64)
        shift = (pos % _WORD).astype(np.uint64)[:, None]
        out[start : start + len(pos)] = (((hi << np.uint64(32)) | lo) >> shift) & mask
    return out


@dataclasses.dataclass(frozen=True)
class GPTQScheme:
    """A checkpoint's GPTQ settings (from ``quantization_config`` / ``quantize_config.json``).

    ``group_size`` -1 means one group over all of K. ``sym`` is informational: the zero points
    stored in the file are used either way. ``where`` names the config file for messages.
    """

    bits: int
    group_size: int
    checkpoint_format: str = "gptq"
    sym: bool = True
    where: str = "config.json"

    method = "gptq"

    @classmethod
    def from_config(cls, qc: Mapping[str, Any], where: str) -> GPTQScheme:
        """``qc``: the quantization config with synonyms already resolved (`bits`,
        `group_size`, `format`, `sym`, ...; `lutgemm_jax.models.prequantized`).

        Raises:
          HFCheckpointError: a setting this importer cannot convert exactly, naming it.
        """
        head = f"{where}: quantization_config (quant_method 'gptq')"
        fmt = str(qc.get("format") or "gptq").lower()
        if qc.get("is_marlin_format"):
            fmt = "marlin"
        if fmt not in FORMATS:
            raise HFCheckpointError(
                f"{head}: checkpoint format {fmt!r} is not supported (supported: {FORMATS}); "
                "marlin/bitblas/qqq/ipex repack the weights into kernel-specific tiles. Convert "
                "the checkpoint to the plain 'gptq' or 'gptq_v2' format with GPTQModel first"
            )
        pack = str(qc.get("pack_dtype") or "int32").lower().removeprefix("torch.")
        if pack != "int32":
            raise HFCheckpointError(
                f"{head}: pack_dtype {pack!r} is not supported (only int32 words)"
            )
        if qc.get("dynamic"):
            raise HFCheckpointError(
                f"{head}: 'dynamic' per-module overrides of bits/group_size are not supported"
            )
        bits = qc.get("bits")
        if bits not in BITS or isinstance(bits, bool):
            raise HFCheckpointError(f"{head}: bits {bits!r} is not supported (supported: {BITS})")
        g = qc.get("group_size", -1)
        if not (g == -1 or is_group_size(g)):
            raise HFCheckpointError(
                f"{head}: group_size {g!r} has no BCQ form (the format takes 16, a multiple of "
                "32, or -1 for one group per column)"
            )
        return cls(int(bits), int(g), fmt, bool(qc.get("sym", True)), where)

    def source_bits(self, k: int, n: int) -> int:
        """Bits of one ``[K, N]`` Linear in the checkpoint: qweight, qzeros, float16 scales and
        the int32 g_idx (which AutoGPTQ and GPTQModel always write)."""
        groups = 1 if self.group_size == -1 else -(-k // self.group_size)
        return k * n * self.bits + groups * n * (self.bits + 16) + 32 * k

    def read_linear(
        self,
        get: Callable[[str], np.ndarray],
        where: Callable[[str], str],
        prefix: str,
        k: int,
        n: int,
    ) -> UniformLinear:
        """Reads and unpacks the GPTQ tensors of Linear ``prefix`` (``[K, N] = [k, n]``).

        ``get(name)`` returns a tensor, ``where(name)`` the file holding it (for messages).

        Raises:
          HFCheckpointError: missing tensors, wrong dtypes or shapes, g_idx that does not form
            groups of ``group_size`` rows, non-finite scales, or a v1 zero-point overflow, naming
            the file and tensor.
        """
        b, g = self.bits, self.group_size
        groups = 1 if g == -1 else -(-k // g)
        if (k * b) % _WORD or (n * b) % _WORD:
            raise HFCheckpointError(
                f"{where(prefix + '.qweight')}: {prefix!r} has K={k}, N={n}: GPTQ with bits={b} "
                f"needs K*bits and N*bits to be multiples of 32"
            )
        qweight = checked_tensor(get, where, prefix + ".qweight", (k * b // _WORD, n), INT_WORDS)
        qzeros = checked_tensor(get, where, prefix + ".qzeros", (groups, n * b // _WORD), INT_WORDS)
        scales = checked_tensor(get, where, prefix + ".scales", (groups, n), SCALE_DTYPES)
        if not np.isfinite(scales.astype(np.float32)).all():
            raise HFCheckpointError(f"{where(prefix + '.scales')}: {prefix}.scales has NaN/Inf")
        codes = unpack_stream(qweight, b, k)
        stored = unpack_stream(qzeros.T, b, n).T.astype(np.int32)
        if self.checkpoint_format == "gptq":
            overflow = stored == (1 << b) - 1
            if overflow.any():
                grp, col = np.argwhere(overflow)[0]
                raise HFCheckpointError(
                    f"{where(prefix + '.qzeros')}: {prefix}.qzeros is corrupt: v1 ('gptq' format) "
                    f"field [{grp}, {col}] reads {(1 << b) - 1}, i.e. z = {1 << b}, the trace of a "
                    "zero point 0 that the v1 packer cannot store (it overwrites the higher "
                    "fields of the word too). Re-export the model in format 'gptq_v2'"
                )
            zeros = stored + 1
        else:
            zeros = stored
        return UniformLinear(codes, scales, zeros, b, g, self.row_perm(get, where, prefix, k))

    def row_perm(
        self, get: Callable[[str], np.ndarray], where: Callable[[str], str], prefix: str, k: int
    ) -> np.ndarray | None:
        """The act-order row permutation of Linear ``prefix`` from its ``g_idx`` (None when
        the groups are already contiguous or there is no g_idx).

        Raises:
          HFCheckpointError: a g_idx of the wrong dtype or shape, out of range, or not forming
            groups of ``group_size`` rows.
        """
        name = prefix + ".g_idx"
        g_idx = optional_tensor(get, name)
        if g_idx is None:
            return None
        g_idx = checked_tensor(lambda _: g_idx, where, name, (k,), (np.int32, np.int64))
        groups = 1 if self.group_size == -1 else -(-k // self.group_size)
        if g_idx.min() < 0 or g_idx.max() >= groups:
            raise HFCheckpointError(
                f"{where(name)}: {name} has values outside [0, {groups}) (G groups)"
            )
        return contiguous_perm(g_idx.astype(np.int64), self.group_size, f"{where(name)}: {name}")


__all__ = ["BITS", "FORMATS", "GPTQScheme", "unpack_stream"]
