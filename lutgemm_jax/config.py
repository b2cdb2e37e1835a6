"""`BCQConfig`: how a dense kernel becomes a packed `BCQWeight`, defined once.

Every entry point that quantizes (`lutgemm_jax.quantize`, the Flax layers ``LutDense`` and
``LutLinear``, ``LutLinear.from_linear``, ``linen.quantize_params``, ``nnx.quantize_model``)
takes a ``config: BCQConfig``; their keyword arguments (``bits=``, ``group_size=``, ...) are a
convenience that builds one with `BCQConfig.make`. Each field is documented here and nowhere
else.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lutgemm_jax.format import (
    HALF_WORD_GROUP,
    LAYOUTS,
    MAX_BITS,
    PER_COLUMN,
    WORD_BITS,
    is_float_dtype,
    is_group_size,
)

METHODS = ("greedy", "alternating", "rtn")
"""Fitting methods (see `lutgemm_jax.quantize` for the math of each)."""
AUTO_LAYOUT = "auto"
"""`BCQConfig.layout` value resolved by `BCQConfig.resolve_layout` when a weight is quantized."""


class _Unset:
    """Type of `UNSET`."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""Default of the convenience keywords (``bits=``, ``group_size=``, ...) of the layers and
converters: "not given, take the field from the config". Distinct from ``None``, which is a
value of some fields (``group_size=None``: one group per column)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class BCQConfig:
    """What to quantize to and how: the format of the result and the fit that produces it.

    Frozen and hashable, so it can be a static argument of ``jax.jit`` and a field of a Flax
    module. ``BCQConfig()`` is the library default: 3-bit, groups of 128, alternating BCQ,
    scales in the weights' dtype, the sign layout of the default backend. Every quantizer uses
    ``method``, also the Flax layers when they initialise a kernel (their ``init_method``
    overrides it, or ``"zeros"`` skips the fit).

    Example::

        >>> from lutgemm_jax import BCQConfig
        >>> BCQConfig.make(bits=4, group_size=None).group_size is None
        True
    """

    # ---- the packed format -------------------------------------------------------------------
    bits: int = 3
    """``q``, the number of bit-planes (binary codes) per weight, 1..8."""
    group_size: int | None = 128
    """``g``, consecutive rows of K that share scales: 16 (two groups per 32-bit sign word, the
    sub-blocks of GGUF's K-quants), a positive multiple of 32, or ``None`` (equivalently
    `PER_COLUMN`, -1) for one group spanning all of K per output column."""
    alpha_dtype: Any = None
    """Storage dtype of the scales ``alpha`` and the offset: float32, bfloat16 or float16
    (LUT-GEMM's own format; stored as a ``numpy.dtype``), or ``None`` (the default): the dtype
    of the dense weights being quantized (``W``, a converted kernel, a layer's
    ``param_dtype``) when it is one of those three, else float32 (`resolve_alpha_dtype`)."""
    layout: str = AUTO_LAYOUT
    """Byte order of the packed sign words: ``"canonical"`` (the LUT-GEMM layout, read by every
    kernel), ``"cpu"`` (32-column blocks stored byte-major: the CPU kernel loads 32 table
    indices with one vector load; every other path shuffles it back to canonical on every
    call, a fused byte permutation of the bits) or ``"auto"`` (the default), resolved when a
    weight is quantized (`resolve_layout`): ``"cpu"`` when ``jax.default_backend()`` is the CPU
    and the weight is not partitioned over devices, else ``"canonical"``. Partitioned means
    placed on several devices, or annotated for it (``nn.with_partitioning``, nnx sharding
    metadata); such a weight stays canonical because a ``"cpu"`` weight splits along N only
    into shards of whole 32-column blocks. Weights quantized on CPU that later run on a GPU
    work, but pay the shuffle on every call: convert them once with
    ``lutgemm_jax.to_layout(tree, "canonical")`` (or quantize with ``layout="canonical"``).
    See `lutgemm_jax.format` for the byte layout."""

    # ---- the fit -----------------------------------------------------------------------------
    method: str = "alternating"
    """``"greedy"``, ``"alternating"`` (greedy, then alternating least-squares rounds) or
    ``"rtn"`` (uniform round-to-nearest, stored exactly as BCQ with an offset).

    The method also fixes the stored form of the scales: greedy and alternating fit ``q``
    independent plane scales (``alpha: [G, q, N]``); ``"rtn"`` weights are always *uniform*
    (``alpha: [G, 1, N]``, plane ``i`` scaled by ``alpha * 2**i``, `lutgemm_jax.uniform`),
    because the ``q`` plane scales of a uniform grid are fixed by one. There is no switch: the
    per-plane form of the same weight holds exactly the same values (`BCQWeight.plane_alpha`)
    in ``q`` times the bytes, and every kernel reads both. With ``alpha_dtype`` float16 a
    uniform scale costs 16 bits per group (e.g. q = 4, g = 32: 5 bits per weight with the
    offset, against 6.5 with per-plane float16 scales)."""
    rounds: int = 15
    """Alternating rounds after the greedy start (only ``method="alternating"``)."""
    fit_offset: bool = False
    """Fit a per-group offset with greedy / alternating (``"rtn"`` always has one)."""
    clip_search: bool = False
    """``method="rtn"`` only: per group, pick the clipping ratio with the lowest squared
    error."""

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)):
            raise TypeError(f"BCQConfig: bits must be an int in 1..{MAX_BITS}, got {self.bits!r}")
        if not 1 <= self.bits <= MAX_BITS:
            raise ValueError(f"BCQConfig: bits must be in 1..{MAX_BITS}, got {self.bits}")
        g = self.group_size
        if g is not None and g != PER_COLUMN and not is_group_size(g):
            raise ValueError(
                f"BCQConfig: group_size must be {HALF_WORD_GROUP} or a positive multiple of "
                f"{WORD_BITS}, None or PER_COLUMN (-1), got {g!r}"
            )
        if g == PER_COLUMN:
            object.__setattr__(self, "group_size", None)
        if self.alpha_dtype is not None:
            try:
                dtype = jnp.dtype(self.alpha_dtype)
            except TypeError as e:
                raise TypeError(
                    f"BCQConfig: alpha_dtype {self.alpha_dtype!r} is not a dtype"
                ) from e
            if not is_float_dtype(dtype):
                raise TypeError(
                    f"BCQConfig: alpha_dtype must be float32, bfloat16, float16 or None, got "
                    f"{dtype}"
                )
            object.__setattr__(self, "alpha_dtype", dtype)
        if self.layout not in (*LAYOUTS, AUTO_LAYOUT):
            raise ValueError(
                f"BCQConfig: layout must be one of {(*LAYOUTS, AUTO_LAYOUT)}, got {self.layout!r}"
            )
        if self.method not in METHODS:
            raise ValueError(f"BCQConfig: method must be one of {METHODS}, got {self.method!r}")
        r = self.rounds
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0:
            raise ValueError(f"BCQConfig: rounds must be a non-negative int, got {r!r}")
        if self.fit_offset not in (True, False):
            raise TypeError(f"BCQConfig: fit_offset must be a bool, got {self.fit_offset!r}")
        if self.clip_search and self.method != "rtn":
            raise ValueError(
                f"BCQConfig: clip_search applies to method='rtn' only, got {self.method!r}"
            )

    @property
    def has_offset(self) -> bool:
        """Whether weights quantized with this config carry an offset."""
        return self.method == "rtn" or self.fit_offset

    @property
    def uniform(self) -> bool:
        """Whether weights quantized with this config store one scale per group (``alpha:
        [G, 1, N]``; ``method="rtn"``, see `method`)."""
        return self.method == "rtn"

    def resolve_layout(self, *, partitioned: bool = False) -> str:
        """The concrete sign layout: `layout`, with ``"auto"`` decided by the default backend.

        ``partitioned``: the weight is (or will be) split over several devices (a placed
        kernel, sharding annotations), which keeps ``"auto"`` canonical.
        """
        if self.layout != AUTO_LAYOUT:
            return self.layout
        return "cpu" if jax.default_backend() == "cpu" and not partitioned else "canonical"

    def resolve_alpha_dtype(self, weight_dtype: Any) -> np.dtype:
        """The concrete ``alpha`` dtype for dense weights of ``weight_dtype``: `alpha_dtype`, or
        with ``None`` ``weight_dtype`` when it is float32/bfloat16/float16, else float32."""
        if self.alpha_dtype is not None:
            return self.alpha_dtype
        if is_float_dtype(weight_dtype):
            return jnp.dtype(weight_dtype)
        return jnp.dtype(jnp.float32)

    def replace(self, **changes: Any) -> BCQConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def make(
        cls, config: BCQConfig | None = None, /, *, where: str = "BCQConfig", **fields: Any
    ) -> BCQConfig:
        """``config`` (default: ``BCQConfig()``) with ``fields`` applied.

        The one place where keyword arguments of the convenience signatures become a config:
        ``quantize(W, bits=4)`` is ``quantize(W, config=BCQConfig.make(bits=4))``. Fields whose
        value is `UNSET` are left as in ``config``. Errors (an unknown name: ``TypeError``; a
        bad value: as raised by the field's check) start with ``where``, the caller's name.
        """
        base = cls() if config is None else config
        if not isinstance(base, cls):
            raise TypeError(f"{where}: config must be a BCQConfig, got {type(base).__name__}")
        given = {name: value for name, value in fields.items() if value is not UNSET}
        unknown = sorted(set(given) - set(_FIELD_NAMES))
        if unknown:
            raise TypeError(
                f"{where}: unexpected argument {unknown[0]!r}, not a BCQConfig field "
                f"({', '.join(_FIELD_NAMES)})"
            )
        if not given:
            return base
        try:
            return dataclasses.replace(base, **given)
        except (TypeError, ValueError) as e:
            if where == "BCQConfig":
                raise
            raise type(e)(f"{where}: {str(e).removeprefix('BCQConfig: ')}") from None


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(BCQConfig))
