"""The packed binary-coding-quantization (BCQ) weight format.

This module is the single Python definition of the format; ``include/lutgemm/bcq_format.h``
is its C++ twin and the two must agree. A dense kernel ``W: [K, N]`` (Flax convention,
``y = x @ W``) is approximated as::

    W_hat[k, n] = sum_{i<q} alpha[k // g, i, n] * s_i[k, n] + offset[k // g, n],   s_i = +-1

The group size ``g`` is 16 or a positive multiple of 32. Arrays (``Kp`` = K rounded up to a
multiple of ``max(g, 32)``, so that sign words stay whole; ``G = Kp // g``):

* ``bits``:   uint32 ``[Kp/32, q, N]``. Bit ``t`` (LSB = 0) of word ``[kw, i, n]`` is 1 where
  ``s_i[32*kw + t, n] = +1``. Byte ``j`` of a word holds k = 32*kw + 8j .. 32*kw + 8j + 7, which
  is exactly one 8-activation lookup-table index. This is the original LUT-GEMM layout. With
  ``g = 16`` a word spans two groups: bytes 0-1 belong to group ``2*kw``, bytes 2-3 to ``2*kw+1``.
* ``alpha``:  ``[G, q, N]``, float32 (default), bfloat16 or float16; or ``[G, 1, N]`` for
  *uniform* weights, whose plane scales are ``alpha_i = alpha[G, 0, N] * 2**i``. Integer codes
  ``c`` in ``[0, 2**q)`` with ``W = D*c + B`` are exactly this BCQ with ``s_i`` = bit ``i`` of
  ``c``, stored ``alpha = D/2`` and ``offset = D*(2**q - 1)/2 + B`` (`lutgemm_jax.uniform`): one
  scale per group instead of ``q``, the form of RTN, GGUF, GPTQ and AWQ weights.
* ``offset``: ``[G, N]`` in alpha's dtype, or ``None`` (pure BCQ has no offset).

Rows ``K <= k < Kp`` are padding: their sign bits are 0 (s = -1) and they contribute nothing,
because every consumer treats the activations there as zero.

Sign-word layouts (`LAYOUTS`, the static field ``BCQWeight.layout``) order the bytes of ``bits``
within each row ``[kw, i, :]``; shape and dtype are the same in both:

* ``"canonical"`` (``BCQWeight``'s default; read by every kernel): as above, word ``[kw, i, n]``
  holds column ``n``'s four table indices, byte ``j`` (little-endian: bits ``8j .. 8j+7``) for
  ``k = 32*kw + 8j .. +7``.
* ``"cpu"``: with ``N32 = N - N % 32``, the first ``N32`` words of every row form blocks of 32
  columns; a block's 128 bytes, ``[32 columns][4 bytes j]`` in canonical order, are stored as
  ``[4 bytes j][32 columns]``: byte ``j`` of block column ``c`` sits at byte ``32*j + c`` of the
  block. The last ``N % 32`` columns stay canonical. The CPU kernel then loads the table indices
  of 32 consecutive columns for one ``j`` with a single 32-byte load instead of transposing
  bytes in registers on every call; the shuffle is paid once per weight (`to_layout`), like a
  prepacked GEMM operand. `lutgemm_jax.config.BCQConfig.layout` says which layout quantizers
  produce.

The layout is a byte permutation inside each row and changes nothing else: the formula above,
`dequantize` and the float64 test reference apply to both (they read `canonical_bits`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lutgemm_jax._explicit import auto_axes_like

WORD_BITS = 32
"""Sign bits per packed uint32 word (along K)."""
MAX_BITS = 8
"""Largest supported number of bit-planes ``q``."""
FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
"""The floating dtypes the format and the kernels take: storage of ``alpha`` and ``offset``,
activations of ``lut_gemm``, computation dtypes of the Flax layers."""
PER_COLUMN = -1
"""``group_size`` value meaning one group spanning all of K for each output column."""
HALF_WORD_GROUP = 16
"""The one group size below a word (GGUF's 16-weight K-quant sub-blocks); every other ``g`` is a
multiple of `WORD_BITS`."""
LAYOUTS = ("canonical", "cpu")
"""Sign-word layouts of ``BCQWeight.bits`` (see the module docstring); the index of a layout in
this tuple is its code in the CPU kernel's FFI attribute ``layout``."""
CPU_BLOCK_COLUMNS = 32
"""Columns per block of the ``"cpu"`` layout (one 32-byte vector of table indices per byte j)."""
_WORD_BYTES = 4


def is_float_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` is one of `FLOAT_DTYPES`."""
    return jnp.dtype(dtype) in [jnp.dtype(d) for d in FLOAT_DTYPES]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def resolve_group_size(in_features: int, group_size: int | None) -> int:
    """Returns the concrete group size ``g`` for ``K = in_features``.

    ``None`` or ``PER_COLUMN`` (-1) means one group per output column spanning all of K, i.e.
    ``g = K`` rounded up to a multiple of 32. Otherwise ``g`` must be 16 or a positive multiple
    of 32.
    """
    if in_features <= 0:
        raise ValueError(f"in_features must be positive, got {in_features}")
    if group_size is None or group_size == PER_COLUMN:
        return round_up(in_features, WORD_BITS)
    if not is_group_size(group_size):
        raise ValueError(
            f"group_size must be {HALF_WORD_GROUP} or a positive multiple of {WORD_BITS}, None or "
            f"{PER_COLUMN} (per output column), got {group_size!r}"
        )
    return int(group_size)


def is_group_size(group_size: Any) -> bool:
    """Whether ``group_size`` is a concrete group size of the format: 16 or a positive multiple
    of 32."""
    return (
        isinstance(group_size, (int, np.integer))
        and not isinstance(group_size, bool)
        and (group_size == HALF_WORD_GROUP or (group_size > 0 and group_size % WORD_BITS == 0))
    )


def padded_in_features(in_features: int, group_size: int) -> int:
    """``Kp``: K rounded up to a whole number of groups and of 32-bit sign words."""
    return round_up(in_features, max(group_size, WORD_BITS))


@dataclasses.dataclass(frozen=True)
class BCQWeight:
    """A ``[K, N]`` weight in packed BCQ form; a pytree whose leaves are the arrays.

    Attributes:
      bits: uint32 ``[Kp/32, q, N]`` packed sign bits (bit = 1 means +1).
      alpha: ``[Kp/g, q, N]`` scales, float32/bfloat16/float16, or ``[Kp/g, 1, N]`` for a
        uniform weight (plane ``i`` scaled by ``alpha * 2**i``; see `uniform`).
      offset: ``[Kp/g, N]`` per-group offsets in alpha's dtype, or ``None``.
      in_features: K (static).
      out_features: N (static).
      num_bits: q, the number of bit-planes, 1..8 (static).
      group_size: g, 16 or a positive multiple of 32 (static; per-column weights have
        ``g = Kp``).
      layout: the byte order of ``bits`` within each row, one of `LAYOUTS` (static; default
        ``"canonical"``; see the module docstring and `to_layout`).

    Static fields travel as pytree metadata, so a ``BCQWeight`` passes through ``jax.jit``,
    ``jax.vmap`` (stacked weights get extra leading axes on every array), ``jax.tree`` utilities
    and Flax parameter trees.
    """

    bits: Any
    alpha: Any
    offset: Any
    in_features: int
    out_features: int
    num_bits: int
    group_size: int
    layout: str = "canonical"

    @property
    def shape(self) -> tuple[int, int]:
        """The logical dense shape ``(K, N)``."""
        return (self.in_features, self.out_features)

    @property
    def has_offset(self) -> bool:
        return self.offset is not None

    @property
    def padded_in_features(self) -> int:
        return padded_in_features(self.in_features, self.group_size)

    @property
    def num_groups(self) -> int:
        return self.padded_in_features // self.group_size

    @property
    def uniform(self) -> bool:
        """Whether ``alpha`` stores one scale per group (``[G, 1, N]``): plane ``i``'s scale is
        ``alpha * 2**i``. Read from alpha's shape; for ``q = 1`` both forms are the same."""
        return self.alpha.shape[-2] == 1

    def plane_alpha(self) -> Any:
        """The per-plane scales ``[..., G, q, N]`` (a uniform weight's expanded)."""
        return expand_alpha(self.alpha, self.num_bits)

    @property
    def dtype(self):
        """The storage dtype of alpha (and offset)."""
        return self.alpha.dtype

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The unbatched array shapes this metadata implies."""
        q, n, groups = self.num_bits, self.out_features, self.num_groups
        planes = 1 if self.uniform else q
        shapes = {
            "bits": (self.padded_in_features // WORD_BITS, q, n),
            "alpha": (groups, planes, n),
        }
        if self.has_offset:
            shapes["offset"] = (groups, n)
        return shapes

    def validate(self) -> None:
        """Raises ``ValueError``/``TypeError`` if arrays and metadata disagree.

        Leading batch axes (from ``vmap`` over stacked weights) are allowed as long as all arrays
        share them.
        """
        if self.layout not in LAYOUTS:
            raise ValueError(f"BCQWeight.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if not 1 <= self.num_bits <= MAX_BITS:
            raise ValueError(f"BCQWeight.num_bits must be in 1..{MAX_BITS}, got {self.num_bits}")
        resolve_group_size(self.in_features, self.group_size)
        if self.out_features <= 0:
            raise ValueError(f"BCQWeight.out_features must be positive, got {self.out_features}")
        if jnp.dtype(self.bits.dtype) != jnp.uint32:
            raise TypeError(f"BCQWeight.bits must be uint32, got {self.bits.dtype}")
        if not is_float_dtype(self.alpha.dtype):
            raise TypeError(
                f"BCQWeight.alpha must be float32, bfloat16 or float16, got {self.alpha.dtype}"
            )
        if self.has_offset and jnp.dtype(self.offset.dtype) != jnp.dtype(self.alpha.dtype):
            raise TypeError(
                f"BCQWeight.offset dtype {self.offset.dtype} must equal alpha's {self.alpha.dtype}"
            )
        batch = None
        for name, want in self.expected_shapes().items():
            got = tuple(getattr(self, name).shape)
            lead = got[: len(got) - len(want)]
            if got[len(lead) :] != want or (batch is not None and lead != batch):
                raise ValueError(
                    f"BCQWeight.{name} has shape {got}, expected [...]{want} for K="
                    f"{self.in_features}, N={self.out_features}, q={self.num_bits}, "
                    f"g={self.group_size}"
                )
            batch = lead

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading axes shared by all arrays (non-empty only for stacked weights)."""
        return tuple(self.alpha.shape[:-3])

    def nbytes(self) -> int:
        """Bytes of packed storage (bits + alpha + offset)."""
        leaves = [self.bits, self.alpha] + ([self.offset] if self.has_offset else [])
        return sum(array_nbytes(a) for a in leaves)

    def bits_per_weight(self) -> float:
        """Stored bits per weight of the logical ``[K, N]`` matrix (of every matrix of a
        stack): ``8 * nbytes / (K * N)``, padding, scales and offsets included. For example
        q = 4, g = 32 with one float16 scale and offset per group (uniform) is 5.0."""
        weights = int(np.prod(self.batch_shape)) * self.in_features * self.out_features
        return 8 * self.nbytes() / weights

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """Returns the dense ``[K, N]`` weight (``[..., K, N]`` for stacked weights)."""
        return dequantize(self, dtype)

    def to_layout(self, layout: str) -> BCQWeight:
        """This weight with ``bits`` in ``layout`` (one of `LAYOUTS`); ``self`` if already there.

        A byte permutation of ``bits`` (same shape ``[..., Kp/32, q, N]``); alpha and offset are
        shared. Works under ``jit`` and on stacked weights.
        """
        if layout not in LAYOUTS:
            raise ValueError(f"to_layout: layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == self.layout:
            return self
        bits = convert_bits(self.bits, self.layout, layout)
        return dataclasses.replace(self, bits=bits, layout=layout)


_META_FIELDS = ("in_features", "out_features", "num_bits", "group_size", "layout")
jax.tree_util.register_dataclass(
    BCQWeight, data_fields=["bits", "alpha", "offset"], meta_fields=list(_META_FIELDS)
)


def _serialize_meta(meta: tuple) -> bytes:
    return json.dumps(list(meta)).encode()


def _deserialize_meta(data: bytes) -> tuple:
    """Inverse of `_serialize_meta`; artifacts from before layouts (K, N, q, g) are canonical."""
    meta = tuple(json.loads(data))
    return meta + ("canonical",) if len(meta) == len(_META_FIELDS) - 1 else meta


# Lets jax.export serialize functions that take or return a BCQWeight; the static metadata
# (K, N, q, g, layout) travels as JSON.
jax.export.register_pytree_node_serialization(
    BCQWeight,
    serialized_name="lutgemm_jax.BCQWeight",
    serialize_auxdata=_serialize_meta,
    deserialize_auxdata=_deserialize_meta,
)


def _namespace(a: Any) -> Any:
    """numpy for numpy arrays (host-side conversion, e.g. in checkpoints), jax.numpy otherwise."""
    return np if isinstance(a, np.ndarray) else jnp


def _word_bytes(words: Any) -> Any:
    """uint32 ``[...]`` -> uint8 ``[..., 4]``, byte ``j`` = bits ``8j .. 8j+7`` of the word.

    Shifts and masks rather than a bitcast, so the result does not depend on the platform's
    byte order.
    """
    xp = _namespace(words)
    shifts = xp.arange(0, 8 * _WORD_BYTES, 8, dtype=xp.uint32)
    return ((words[..., None] >> shifts) & xp.uint32(0xFF)).astype(xp.uint8)


def _bytes_word(data: Any) -> Any:
    """Inverse of `_word_bytes`: uint8 ``[..., 4]`` -> uint32 ``[...]``."""
    xp = _namespace(data)
    shifts = xp.arange(0, 8 * _WORD_BYTES, 8, dtype=xp.uint32)
    return xp.sum(data.astype(xp.uint32) << shifts, axis=-1, dtype=xp.uint32)


def convert_bits(bits: Any, source: str, target: str) -> Any:
    """Reorders packed sign words ``[..., Kp/32, q, N]`` from layout ``source`` to ``target``.

    Both are names in `LAYOUTS`. Only the bytes of the first ``N - N % 32`` columns of every row
    move: each block of 32 columns is a ``[32 columns][4 bytes]`` byte matrix in canonical order
    and its transpose ``[4 bytes][32 columns]`` in ``"cpu"`` order. Takes and returns numpy
    arrays (computed on the host) or jax arrays (jit-able); any leading axes are kept.
    """
    for name, layout in (("source", source), ("target", target)):
        if layout not in LAYOUTS:
            raise ValueError(f"convert_bits: {name} must be one of {LAYOUTS}, got {layout!r}")
    *lead, n = bits.shape
    n32 = n - n % CPU_BLOCK_COLUMNS
    if source == target or n32 == 0:
        return bits
    xp = _namespace(bits)

    def convert(bits):
        block = (CPU_BLOCK_COLUMNS, _WORD_BYTES)
        blocks = _word_bytes(bits[..., :n32]).reshape(
            *lead, n32 // CPU_BLOCK_COLUMNS, *(block if source == "canonical" else block[::-1])
        )
        moved = xp.swapaxes(blocks, -1, -2).reshape(*lead, n32, _WORD_BYTES)
        return xp.concatenate([_bytes_word(moved), bits[..., n32:]], axis=-1)

    if xp is np:
        return convert(bits)
    # Sharded along K or N on an explicit mesh: the result keeps the input's sharding.
    aval = jax.typeof(bits)
    return auto_axes_like(convert, [aval], [aval])(bits)


def canonical_bits(w: BCQWeight) -> Any:
    """``w.bits`` in the ``"canonical"`` layout (``w.bits`` itself if it already is)."""
    return convert_bits(w.bits, w.layout, "canonical")


def is_bcq(x: Any) -> bool:
    """Whether ``x`` is a `BCQWeight` (the ``is_leaf`` of every walk over packed weights)."""
    return isinstance(x, BCQWeight)


def bcq_leaves(tree: Any) -> list[BCQWeight]:
    """The `BCQWeight` leaves of any pytree, in ``jax.tree.leaves`` order."""
    return [x for x in jax.tree.leaves(tree, is_leaf=is_bcq) if is_bcq(x)]


def map_bcq(fn: Any, tree: Any) -> Any:
    """``tree`` with every `BCQWeight` ``w`` replaced by ``fn(w)``; other leaves unchanged."""
    return jax.tree.map(lambda x: fn(x) if is_bcq(x) else x, tree, is_leaf=is_bcq)


def array_nbytes(x: Any) -> int:
    """Bytes of an array-like (shape and dtype; a `BCQWeight` counts its packed arrays), 0 for
    anything else."""
    if is_bcq(x):
        return x.nbytes()
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
    return 0


def tree_nbytes(tree: Any) -> int:
    """Bytes of all array leaves of ``tree`` (`BCQWeight` leaves count packed)."""
    return sum(array_nbytes(leaf) for leaf in jax.tree.leaves(tree, is_leaf=is_bcq))


def format_nbytes(n: float) -> str:
    """``n`` bytes for humans: ``"512 B"``, ``"1.50 KiB"``, ... up to GiB (binary units)."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def to_layout(tree: Any, layout: str) -> Any:
    """``tree`` with every `BCQWeight` in it converted to ``layout`` (one of `LAYOUTS`).

    ``tree`` is any pytree: a `BCQWeight`, linen params, nested dicts, or an NNX ``State``
    (``nnx.update(model, to_layout(nnx.state(model), "cpu"))`` converts a model in place).
    Other leaves are returned unchanged.
    """
    return map_bcq(lambda w: w.to_layout(layout), tree)


def check_layout_split(layout: str, n: int, shards: int, axes: object = None) -> None:
    """Raises ValueError if ``shards`` N-shards of a ``layout`` weight would cut its blocks.

    A ``"cpu"``-layout weight keeps 32-column blocks together, so every shard of its
    ``n = N`` columns must hold a whole number of them; canonical weights split anywhere.

    Args:
      layout: the weight's layout (`lutgemm_jax.format.LAYOUTS`).
      n: N, the global number of columns.
      shards: the size of the mesh axis (or axes) splitting N.
      axes: the mesh axis names, for the message (``None`` if unknown, as in ``shard_map``).
    """
    if layout != "cpu" or shards == 1:
        return
    if n % shards or (n // shards) % CPU_BLOCK_COLUMNS:
        where = f"mesh axes {axes!r} of size {shards}" if axes is not None else f"{shards} shards"
        raise ValueError(
            f"lut_gemm: a layout='cpu' weight with N = {n} cannot be split along N over {where}: "
            f"every shard must hold a multiple of {CPU_BLOCK_COLUMNS} columns (the layout's "
            f"column blocks); use a mesh axis size s with N / s a multiple of "
            f"{CPU_BLOCK_COLUMNS}, or convert the weight with to_layout(w, 'canonical')"
        )


def pack_signs(signs: jax.Array) -> jax.Array:
    """Packs sign bits ``[..., Kp, q, N]`` (bool, True = +1) into uint32 ``[..., Kp/32, q, N]``.

    ``Kp`` must be a multiple of 32.
    """
    *lead, kp, q, n = signs.shape
    if kp % WORD_BITS:
        raise ValueError(f"pack_signs needs the K axis to be a multiple of 32, got {kp}")
    words = signs.reshape(*lead, kp // WORD_BITS, WORD_BITS, q, n).astype(jnp.uint32)
    shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)[:, None, None]
    return jnp.sum(words << shifts, axis=-3, dtype=jnp.uint32)


def sign_planes(bits: jax.Array) -> jax.Array:
    """Bit ``t`` of every word: uint32 ``[..., Kp/32, q, N]`` -> 0/1 ``[..., Kp/32, 32, q, N]``.

    Element ``[..., kw, t, i, n]`` is 1 where ``s_i[32*kw + t, n] = +1``. ``bits`` must be in the
    canonical layout (see `canonical_bits`). Shifts and masks, so XLA fuses the unpacking into
    its consumer instead of writing the 32x larger array.
    """
    shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)[:, None, None]
    return (bits[..., :, None, :, :] >> shifts) & jnp.uint32(1)


def unpack_signs(bits: jax.Array) -> jax.Array:
    """Inverse of `pack_signs`: uint32 ``[..., Kp/32, q, N]`` -> bool ``[..., Kp, q, N]``.

    ``bits`` must be in the canonical layout (see `canonical_bits`).
    """
    *lead, kw, q, n = bits.shape
    return sign_planes(bits).reshape(*lead, kw * WORD_BITS, q, n).astype(jnp.bool_)


def expand_alpha(alpha: Any, num_bits: int) -> Any:
    """Per-plane scales ``[..., G, q, N]`` from stored ones: ``alpha`` itself when it has ``q``
    planes, ``alpha * 2**i`` for plane ``i`` when it is uniform (``[..., G, 1, N]``)."""
    if alpha.shape[-2] == num_bits:
        return alpha
    xp = _namespace(alpha)
    powers = (2.0 ** xp.arange(num_bits)).astype(alpha.dtype)
    return alpha * powers[:, None]


def dequantize(w: BCQWeight, dtype=jnp.float32) -> jax.Array:
    """Dense ``[K, N]`` weight of ``w`` (``[..., K, N]`` for stacked weights), in ``dtype``.

    Unpacks with shifts and masks so that XLA fuses unpacking, scaling and the sum over planes
    into one loop that writes ``[K, N]`` once (no ``32x`` float intermediate). A ``"cpu"``-layout
    weight is read through `canonical_bits`.
    """
    bits = canonical_bits(w)
    *lead, kw, q, n = bits.shape
    signs = sign_planes(bits).astype(jnp.float32) * 2.0 - 1.0  # [..., Kp/32, 32, q, N]
    # Uniform scales expand in float32: exact, and finite for every stored float16 scale.
    alpha = expand_alpha(w.alpha.astype(jnp.float32), q)  # [..., G, q, N]
    offset = w.offset.astype(jnp.float32) if w.has_offset else None
    if w.group_size < WORD_BITS:
        # Two groups per word: split each word's 32 rows into its halves.
        per_word = WORD_BITS // w.group_size
        signs = signs.reshape(*lead, kw, per_word, w.group_size, q, n)
        alpha = alpha.reshape(*lead, kw, per_word, 1, q, n)
        dense = jnp.sum(signs * alpha, axis=-2)  # [..., Kp/32, 2, 16, N]
        if offset is not None:
            dense = dense + offset.reshape(*lead, kw, per_word, 1, n)
    else:
        # Scales per word rather than per group, so no reshape regroups K (a reshape that
        # re-chunks an axis is rejected under explicit sharding).
        words_per_group = w.group_size // WORD_BITS
        alpha = jnp.repeat(alpha, words_per_group, axis=-3)
        dense = jnp.sum(signs * alpha[..., :, None, :, :], axis=-2)  # [..., Kp/32, 32, N]
        if offset is not None:
            dense = dense + jnp.repeat(offset, words_per_group, axis=-2)[..., :, None, :]
    dense = dense.reshape(*lead, kw * WORD_BITS, n)[..., : w.in_features, :]
    return dense.astype(dtype)


def offset_operand(offset: jax.Array | None, alpha: jax.Array) -> jax.Array:
    """The offset as the native kernels and ``lut_gemm_p`` take it: ``offset [G, N]``, or an empty
    ``[0, N]`` array of alpha's dtype standing for "no offset" (a custom call cannot take None).

    Args:
      offset: ``[G, N]`` or None.
      alpha: ``[G, q, N]``; gives N and the dtype of the empty array.
    """
    if offset is not None:
        return offset
    return jnp.zeros((0, alpha.shape[-1]), alpha.dtype)


def from_signs(
    signs: jax.Array,
    alpha: jax.Array,
    offset: jax.Array | None,
    *,
    in_features: int,
    group_size: int,
) -> BCQWeight:
    """Builds a `BCQWeight` from unpacked signs ``[Kp, q, N]`` (bool or +-1) and scales.

    ``signs`` may have K = ``in_features`` rows; they are padded with -1 (bit 0) up to ``Kp``.
    """
    g = resolve_group_size(in_features, group_size)
    kp = padded_in_features(in_features, g)
    signs = signs > 0 if signs.dtype != jnp.bool_ else signs
    if signs.shape[0] < kp:
        signs = jnp.pad(signs, ((0, kp - signs.shape[0]), (0, 0), (0, 0)))
    w = BCQWeight(
        bits=pack_signs(signs),
        alpha=alpha,
        offset=offset,
        in_features=in_features,
        out_features=signs.shape[-1],
        num_bits=signs.shape[-2],
        group_size=g,
    )
    w.validate()
    return w
