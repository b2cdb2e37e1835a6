"""Partitioning of ``lut_gemm`` under ``jax.jit`` with sharded operands.

``lut_gemm_p`` lowers through `jax.experimental.custom_partitioning`, so XLA's SPMD partitioner
(Shardy) splits the call instead of all-gathering the packed weights. The sharding rule names
the factors of every operand::

    x: [... , (G gk)]   bits: [(G gw), q, n]   alpha: [G, q, n]   offset: [G, n]   ->  y: [..., n]

``G`` (groups along K) is a reduction factor, ``gk = g`` and ``gw = g / 32``, so a sharding of K
always hands each device whole quantization groups. Three layouts follow, and combine:

* column-parallel (Megatron's q/k/v/fc1): bits/alpha/offset sharded along N; each device
  computes its columns of y; no collective on the weights.
* row-parallel (Megatron's out/fc2): weights sharded along K (whole groups per shard) and x
  along K; each device computes a partial product over its groups in float32, and one psum
  adds them.
* data-parallel: x's leading axes sharded; weights replicated or column-sharded.

A ``"cpu"``-layout weight (`lutgemm_jax.format.LAYOUTS`) is opaque: its ``bits`` keep the
shape ``[Kp/32, q, N]`` but hold each 32-column block's sign words for all of K in one stream,
so no slice along K or N of it is a weight. It runs data-parallel only (x's batch split, the
weight replicated); any K or N split raises a ``ValueError`` (`check_layout_placement`) saying
to convert it with ``to_layout(w, "canonical")`` first. The sharding rule gives its ``bits``
factors of their own that need replication, so no sharding of x, alpha or offset propagates
into them.

Per shard, the kernel primitive runs on the local arrays (``in_features`` and ``out_features``
are the local sizes), i.e. the CPU or CUDA FFI kernel, or the pure-jnp path elsewhere. A single
device compile inlines the kernel call (no partitioning callback).

Inside ``jax.shard_map``, ``lut_gemm`` takes the local shards directly (see ``ops.lut_gemm``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lutgemm_jax.format import WORD_BITS, BCQWeight, padded_in_features


def _axis_size(mesh, axes) -> int:
    if axes is None:
        return 1
    names = axes if isinstance(axes, tuple) else (axes,)
    size = 1
    for name in names:
        size *= mesh.shape[name]
    return size


def layout_split_error(where: str, shape: tuple[int, int], split: str) -> ValueError:
    """The error for a ``"cpu"``-layout weight of dense shape ``shape = (K, N)`` that ``split``
    (a description of the mesh axes or shard shape) would split along K or N."""
    k, n = shape
    return ValueError(
        f"{where}: a layout='cpu' BCQWeight (K = {k}, N = {n}) cannot be split along K or N, "
        f"but {split}. Its sign words are stored in an opaque order (32-column blocks, each "
        "one stream over all of K), so no K or N slice of it is a weight: convert it with "
        "to_layout(w, 'canonical') before sharding it, or keep layout='cpu' weights "
        "replicated (data parallel: split x's batch only)"
    )


def _check_unsplit(shape: tuple[int, int], mesh, k_axes: object, n_axes: object, where: str):
    """Raises `layout_split_error` if mesh axes ``k_axes`` / ``n_axes`` (names, ``None``: not
    sharded) of ``mesh`` (anything with a ``shape`` mapping, e.g. an AbstractMesh) split K / N
    of a ``"cpu"``-layout weight of dense shape ``shape = (K, N)``."""
    k_size, n_size = _axis_size(mesh, k_axes), _axis_size(mesh, n_axes)
    if k_size == n_size == 1:
        return
    k, n = shape
    raise layout_split_error(
        where,
        shape,
        f"mesh axes {k_axes!r} (K) and {n_axes!r} (N) would give shards of "
        f"[{-(-k // k_size)}, {-(-n // n_size)}]",
    )


def _known_sharding(a: Any) -> NamedSharding | None:
    """``a``'s `NamedSharding` where known while tracing: a placed array's (or a
    ``ShapeDtypeStruct``'s), or the one in a tracer's type (Explicit mesh axes only)."""
    if isinstance(a, jax.core.Tracer):
        sharding = jax.typeof(a).sharding
    else:
        sharding = getattr(a, "sharding", None)
    return sharding if isinstance(sharding, NamedSharding) else None


def check_layout_placement(
    w: BCQWeight, shardings: Mapping[str, Any] | None = None, where: str = "lut_gemm"
) -> None:
    """Raises ValueError if ``w`` is a ``"cpu"``-layout weight split along K or N.

    Args:
      w: a `BCQWeight`; stacked weights may be split along their leading axes (each weight
        stays whole).
      shardings: the shardings its arrays are about to get, by name (``"bits"``, ``"alpha"``,
        ``"offset"``); for a name not in it (or all, when ``None``) the array's own, where
        known (a placed array, or a tracer's type on a mesh with Explicit axes).
      where: the caller, first in the message.
    """
    if w.layout != "cpu":
        return
    shardings = {} if shardings is None else shardings
    for name, dims in w.expected_shapes().items():
        array = getattr(w, name)
        sharding = shardings[name] if name in shardings else _known_sharding(array)
        if not isinstance(sharding, NamedSharding):
            continue
        rank = len(array.shape)
        spec = tuple(sharding.spec) + (None,) * rank
        k_axes, n_axes = spec[rank - len(dims)], spec[rank - 1]
        _check_unsplit(w.shape, sharding.mesh, k_axes, n_axes, where)


def _spec(shape) -> tuple:
    """A shape's PartitionSpec entries padded with None to its rank."""
    spec = tuple(shape.sharding.spec) if shape.sharding is not None else ()
    return spec + (None,) * (len(shape.shape) - len(spec))


def _layout(mesh, arg_shapes, params):
    """Chooses (batch axes, K axes, N axes) from the operands' shardings.

    The weights decide K and N (moving weights is what we must avoid); x decides the batch axes.
    """
    x_spec, bits_spec, alpha_spec = (_spec(a) for a in arg_shapes[:3])
    if params["layout"] == "cpu":  # opaque bits: data parallel only
        weights = [_spec(a) for a in arg_shapes[1:]]  # bits, alpha [, offset]: K first, N last
        k_axes = next((s[0] for s in weights if _axis_size(mesh, s[0]) > 1), None)
        n_axes = next((s[-1] for s in weights if _axis_size(mesh, s[-1]) > 1), None)
        shape = (params["in_features"], params["out_features"])
        _check_unsplit(shape, mesh, k_axes, n_axes, "lut_gemm")
        return x_spec[:-1], None, None
    k_axes = alpha_spec[0] if alpha_spec[0] is not None else bits_spec[0]
    n_axes = alpha_spec[2] if alpha_spec[2] is not None else bits_spec[2]
    batch = x_spec[:-1]
    used = set()
    for axes in (k_axes, n_axes):
        used.update(axes if isinstance(axes, tuple) else (axes,))
    # A mesh axis can shard only one dimension of the result: drop batch axes the weights use.
    batch = tuple(
        None if (b in used or (isinstance(b, tuple) and used & set(b))) else b for b in batch
    )
    if k_axes is not None:
        if params["in_features"] % params["group_size"]:
            raise ValueError(
                f"lut_gemm: row-parallel sharding over mesh axes {k_axes!r} needs K to be a "
                f"whole number of groups, got K = {params['in_features']}, "
                f"g = {params['group_size']}"
            )
        groups = arg_shapes[2].shape[0]
        shards = _axis_size(mesh, k_axes)
        if groups % shards:
            raise ValueError(
                f"lut_gemm: row-parallel sharding over mesh axes {k_axes!r} ({shards} shards) "
                f"would split a quantization group: K = {params['in_features']} has {groups} "
                f"groups of g = {params['group_size']}; use a mesh axis size dividing {groups}"
            )
    return batch, k_axes, n_axes


def _shardings(mesh, batch, k_axes, n_axes, has_offset):
    args = [
        NamedSharding(mesh, P(*batch, k_axes)),
        NamedSharding(mesh, P(k_axes, None, n_axes)),
        NamedSharding(mesh, P(k_axes, None, n_axes)),
    ]
    if has_offset:
        args.append(NamedSharding(mesh, P(k_axes, n_axes)))
    return NamedSharding(mesh, P(*batch, n_axes)), tuple(args)


@functools.cache
def partitioned(kernel, params: tuple[tuple[str, int | str], ...], has_offset: bool):
    """Returns ``f(x, bits, alpha[, offset]) -> y``, partitioned by custom_partitioning.

    Args:
      kernel: ``kernel(x, bits, alpha, offset, **params) -> y`` for one device's arrays.
      params: the primitive's static parameters as a tuple of (name, value) pairs.
      has_offset: whether an offset operand is passed.
    """
    params = dict(params)
    g = params["group_size"]

    def local_call(x, bits, alpha, offset=None, *, row_parallel=False):
        if offset is None:
            offset = jnp.zeros((0, bits.shape[-1]), alpha.dtype)
        local = dict(params, in_features=x.shape[-1], out_features=bits.shape[-1])
        if row_parallel:  # partial sums in float32, added across shards by the caller's psum
            return kernel(x.astype(jnp.float32), bits, alpha, offset, **local)
        return kernel(x, bits, alpha, offset, **local)

    @custom_partitioning
    def call(*args):
        return local_call(*args)

    def infer(mesh, arg_shapes, result_shape):
        batch, _, n_axes = _layout(mesh, arg_shapes, params)
        return NamedSharding(mesh, P(*batch, n_axes))

    def partition(mesh, arg_shapes, result_shape):
        batch, k_axes, n_axes = _layout(mesh, arg_shapes, params)
        result_sharding, arg_shardings = _shardings(mesh, batch, k_axes, n_axes, has_offset)
        out_dtype = result_shape.dtype

        def lower(*args):
            if k_axes is None:
                return local_call(*args)
            y = local_call(*args, row_parallel=True)
            return jax.lax.psum(y, k_axes).astype(out_dtype)

        return mesh, lower, result_sharding, arg_shardings

    # Shardy rejects size-1 factors inside a compound dimension, so single-group weights
    # (G = 1) and one-word groups (g = 32) spell their K dimensions without them.
    groups = padded_in_features(params["in_features"], g) // g
    words = g // WORD_BITS
    x_k, bits_k, factor_sizes = "(G gk)", "(G gw)", {"gk": g, "gw": words}
    if words == 1:
        bits_k, factor_sizes = "G", {"gk": g}
    if groups == 1:  # one group: K cannot be split
        bits_k, factor_sizes = "w", {}
    if params["in_features"] % g or groups == 1:
        # Padded K: x's K is not a whole number of groups, so K cannot be split.
        x_k = "k"
        factor_sizes.pop("gk", None)
    bits_dims = f"{bits_k} q n"
    replicated = [f for f in ("k", "w") if f in (x_k, bits_k)]
    if params["layout"] == "cpu":
        # Opaque bits: factors of their own, all replicated, so that no sharding of x, alpha
        # or offset is propagated into them (`_layout` refuses weights that arrive split).
        bits_dims = "bk bq bn"
        replicated = [f for f in replicated if f != "w"] + ["bk", "bq", "bn"]
        factor_sizes.pop("gw", None)
    operands = [f"... {x_k}", bits_dims, "G q n"] + (["G n"] if has_offset else [])
    call.def_partition(
        partition,
        infer_sharding_from_operands=infer,
        sharding_rule=", ".join(operands) + " -> ... n",
        reduction_factors=("G",),
        need_replication_factors=tuple(replicated),
        **factor_sizes,
    )
    return call


# ---- placing packed weights ----------------------------------------------------------------


def packed_specs(kernel_spec: P, has_offset: bool) -> dict[str, P]:
    """PartitionSpecs of bits/alpha/offset for a dense kernel ``[K, N]`` sharded as ``kernel_spec``.

    ``P(k_axes, n_axes)`` becomes ``bits: P(k_axes, None, n_axes)``, ``alpha: P(k_axes, None,
    n_axes)``, ``offset: P(k_axes, n_axes)``: K and N keep their mesh axes and the plane axis
    is replicated. (The K axis of bits counts words, of alpha groups: a K sharding hands each
    device whole groups when the mesh axis size divides the number of groups.)
    """
    k_axes, n_axes = (tuple(kernel_spec) + (None, None))[:2]
    specs = {"bits": P(k_axes, None, n_axes), "alpha": P(k_axes, None, n_axes)}
    if has_offset:
        specs["offset"] = P(k_axes, n_axes)
    return specs


def shard_like(w: BCQWeight, kernel_sharding: Any) -> BCQWeight:
    """Places the arrays of `BCQWeight` ``w`` as the dense kernel it replaces was placed.

    Args:
      w: an unstacked `BCQWeight` for ``[K, N]``.
      kernel_sharding: the dense kernel's sharding; only a `NamedSharding` over more than one
        device moves anything (others are returned unchanged).

    Raises:
      ValueError: ``w`` is a ``"cpu"``-layout weight and ``kernel_sharding`` splits K or N
        (`check_layout_placement`); replicated placements are fine.
    """
    if not isinstance(kernel_sharding, NamedSharding) or kernel_sharding.num_devices == 1:
        return w
    specs = packed_specs(kernel_sharding.spec, w.has_offset)
    shardings = {name: NamedSharding(kernel_sharding.mesh, spec) for name, spec in specs.items()}
    check_layout_placement(w, shardings, "shard_like")
    placed = {name: jax.device_put(getattr(w, name), s) for name, s in shardings.items()}
    return dataclasses.replace(w, **placed)
