"""Partitioning of ``lut_gemm`` under ``jax.jit`` with sharded operands.

``lut_gemm_p`` lowers through `jax.experimental.custom_partitioning`, so XLA's SPMD partitioner
(Shardy) splits the call instead of all-gathering the packed weights. The sharding rule names
the factors of every operand::

    x: [... , (G gk)]   bits: [(G gw), q, n]   alpha: [G, q, n]   offset: [G, n]   ->  y: [..., n]

``G`` (groups along K) is a reduction factor, ``gk = g`` and ``gw = g / 32``, so a sharding of K
always hands each device whole quantization groups. With ``g = 16`` two groups share a sign
word, so the unit of K is the word: ``x: [..., (G gk)]`` with ``gk = 32``, ``bits: [G, q, n]``,
``alpha: [(G gp), q, n]`` and ``offset: [(G gp), n]`` with ``gp = 2`` replicated: a K sharding
hands each device whole pairs of groups. A uniform ``alpha`` (``[G, 1, n]``, one scale per
group, `lutgemm_jax.format`) names its plane axis ``p`` instead of ``q`` and splits like any
alpha. Three placements follow, and combine:

* column-parallel (Megatron's q/k/v/fc1): bits/alpha/offset sharded along N; each device
  computes its columns of y; no collective on the weights.
* row-parallel (Megatron's out/fc2): weights sharded along K (whole groups per shard) and x
  along K; each device computes a partial product over its groups in float32, and one psum
  adds them.
* data-parallel: x's leading axes sharded; weights replicated or column-sharded.

A ``"cpu"``-layout weight (`lutgemm_jax.format.LAYOUTS`) interleaves the bytes of 32 columns,
so it splits along N only into shards of a multiple of 32 columns (`check_layout_split`); K
splits are unaffected.

Per shard, the kernel primitive runs on the local arrays (``in_features`` and ``out_features``
are the local sizes): `lutgemm_jax.lowering` picks the CPU or CUDA FFI kernel, or
`lutgemm_jax.lowering.jnp_lowering` on other platforms. A single device compile inlines the
kernel call (no partitioning callback). `lut_gemm_p`'s lowering into that kernel call is
registered here.

Inside ``jax.shard_map``, ``lut_gemm`` takes the local shards directly (see ``ops.lut_gemm``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.extend.core import Primitive
from jax.interpreters import mlir
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lutgemm_jax.format import WORD_BITS, check_layout_split, offset_operand, padded_in_features
from lutgemm_jax.ops import lut_gemm_kernel_p, lut_gemm_p

__all__ = ["check_layout_split", "packed_specs", "partitioned", "shard_like"]


def _axis_size(mesh, axes) -> int:
    if axes is None:
        return 1
    names = axes if isinstance(axes, tuple) else (axes,)
    size = 1
    for name in names:
        size *= mesh.shape[name]
    return size


def _spec(shape) -> tuple:
    """A shape's PartitionSpec entries padded with None to its rank."""
    spec = tuple(shape.sharding.spec) if shape.sharding is not None else ()
    return spec + (None,) * (len(shape.shape) - len(spec))


def _k_units(k: int, g: int) -> int:
    """The pieces K splits into: groups (g >= 32) or sign words, i.e. group pairs (g = 16)."""
    return padded_in_features(k, g) // max(g, WORD_BITS)


def _placement(mesh, arg_shapes, params):
    """Chooses (batch axes, K axes, N axes) from the operands' shardings.

    The weights decide K and N (moving weights is what we must avoid); x decides the batch axes.
    """
    x_spec, bits_spec, alpha_spec = (_spec(a) for a in arg_shapes[:3])
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
        k, g = params["in_features"], params["group_size"]
        if k != padded_in_features(k, g):
            raise ValueError(
                f"lut_gemm: row-parallel sharding over mesh axes {k_axes!r} needs K to be a "
                f"whole number of groups and of 32-bit sign words, got K = {k}, g = {g}"
            )
        units = _k_units(k, g)
        shards = _axis_size(mesh, k_axes)
        if units % shards:
            what = f"{units} groups" if g >= WORD_BITS else f"{units} sign words (group pairs)"
            raise ValueError(
                f"lut_gemm: row-parallel sharding over mesh axes {k_axes!r} ({shards} shards) "
                f"would split a quantization group or sign word: K = {k} has {what} of "
                f"g = {g}; use a mesh axis size dividing {units}"
            )
    if n_axes is not None:
        check_layout_split(
            params["layout"], params["out_features"], _axis_size(mesh, n_axes), n_axes
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


# ---- the row-parallel sum ---------------------------------------------------------------------
#
# XLA runs the partitioning callback below while compiling the caller's program, so the lowering
# of its body sees the caller's ambient mesh (``jax.set_mesh``). ``lax.psum`` lowers its
# all-reduce's reduction region by tracing the scalar add there; on a mesh with explicit axes,
# newer JAX types that add on the ambient mesh and wraps its operands and result in ``Sharding``
# custom calls, and XLA's CPU backend then rejects the region ("Unsupported reduction
# computation": it accepts only a plain binary op of the two parameters). The body is already
# per-device code (every mesh axis is manual in it), so no sharding annotation belongs there:
# `_partial_sum_p` lowers to ``lax.psum`` with the ambient mesh cleared, which yields the plain
# region on every supported JAX.

_partial_sum_p = Primitive("lut_gemm_partial_sum")
_partial_sum_p.def_abstract_eval(lambda y, *, axes: y)


def _partial_sum_lowering(ctx, y, *, axes):
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
        return mlir.lower_fun(lambda y: jax.lax.psum(y, axes), multiple_results=False)(ctx, y)


mlir.register_lowering(_partial_sum_p, _partial_sum_lowering)


def _partial_sum(y, axes):
    """``lax.psum(y, axes)`` inside the partitioned body, with a reduction region XLA accepts."""
    return _partial_sum_p.bind(y, axes=axes if isinstance(axes, tuple) else (axes,))


@functools.cache
def partitioned(
    kernel, params: tuple[tuple[str, int | str], ...], has_offset: bool, uniform: bool = False
):
    """Returns ``f(x, bits, alpha[, offset]) -> y``, partitioned by custom_partitioning.

    Args:
      kernel: ``kernel(x, bits, alpha, offset, **params) -> y`` for one device's arrays.
      params: the primitive's static parameters as a tuple of (name, value) pairs.
      has_offset: whether an offset operand is passed.
      uniform: whether alpha is uniform (``[G, 1, N]``) with ``q > 1`` planes.
    """
    params = dict(params)
    g = params["group_size"]

    def local_call(x, bits, alpha, offset=None, *, row_parallel=False):
        offset = offset_operand(offset, alpha)
        local = dict(params, in_features=x.shape[-1], out_features=bits.shape[-1])
        if row_parallel:  # partial sums in float32, added across shards by the caller's psum
            return kernel(x.astype(jnp.float32), bits, alpha, offset, **local)
        return kernel(x, bits, alpha, offset, **local)

    @custom_partitioning
    def call(*args):
        return local_call(*args)

    def infer(mesh, arg_shapes, result_shape):
        batch, _, n_axes = _placement(mesh, arg_shapes, params)
        return NamedSharding(mesh, P(*batch, n_axes))

    def partition(mesh, arg_shapes, result_shape):
        batch, k_axes, n_axes = _placement(mesh, arg_shapes, params)
        result_sharding, arg_shardings = _shardings(mesh, batch, k_axes, n_axes, has_offset)
        out_dtype = result_shape.dtype

        def lower(*args):
            if k_axes is None:
                return local_call(*args)
            y = local_call(*args, row_parallel=True)
            return _partial_sum(y, k_axes).astype(out_dtype)

        return mesh, lower, result_sharding, arg_shardings

    call.def_partition(
        partition,
        infer_sharding_from_operands=infer,
        **_sharding_rule(params["in_features"], g, has_offset, uniform),
    )
    return call


def _sharding_rule(k: int, g: int, has_offset: bool, uniform: bool) -> dict:
    """The Shardy sharding rule of one call (see the module docstring) as `def_partition`
    keyword arguments.

    K splits into units of ``max(g, 32)`` rows (factor ``G``: a group, or a word of two
    groups for g = 16). Shardy rejects size-1 factors inside a compound dimension, so one-word
    units (g = 32) and single-unit weights spell their K dimensions without them; a padded K
    (not a whole number of units) cannot be split.
    """
    unit = max(g, WORD_BITS)
    units = _k_units(k, g)
    words, groups = unit // WORD_BITS, unit // g  # per unit
    x_k = "(G gk)"
    bits_k = "(G gw)" if words > 1 else "G"
    alpha_k = "(G gp)" if groups > 1 else "G"
    sizes = {"gk": unit, "gw": words, "gp": groups}
    if units == 1:  # one unit: K cannot be split
        bits_k, alpha_k = "w", "a" if groups > 1 else "G"
    if k != padded_in_features(k, g) or units == 1:
        x_k = "k"
    used = {f for dim in (x_k, bits_k, alpha_k) for f in dim.strip("()").split()}
    plane = "p" if uniform else "q"
    operands = [f"... {x_k}", f"{bits_k} q n", f"{alpha_k} {plane} n"]
    operands += [f"{alpha_k} n"] if has_offset else []
    return dict(
        sharding_rule=", ".join(operands) + " -> ... n",
        reduction_factors=("G",) if "G" in used else (),
        need_replication_factors=tuple(f for f in ("k", "w", "a", "gp") if f in used),
        **{name: size for name, size in sizes.items() if name in used},
    )


# ---- lut_gemm_p's lowering ------------------------------------------------------------------


def _is_spmd(ctx) -> bool:
    """Whether this lowering is for several devices under XLA's SPMD partitioner.

    Inside a fully manual ``shard_map`` and in single-device programs there is nothing to
    partition (duck-typed: the axis-context classes are not public API).
    """
    axis_context = ctx.module_context.axis_context
    manual_axes = getattr(axis_context, "manual_axes", None)
    if manual_axes is not None:
        return set(manual_axes) != set(axis_context.mesh.axis_names)
    return getattr(axis_context, "num_devices", 1) > 1


def _partitioned_lowering(ctx, x, bits, alpha, offset, **params):
    """Lowers ``lut_gemm_p`` to the kernel primitive, through `partitioned` when XLA's SPMD
    partitioner splits the program, directly otherwise."""
    if (
        not _is_spmd(ctx)
        or getattr(ctx.module_context.axis_context, "device_assignment", 0) is None
    ):
        kernel = functools.partial(lut_gemm_kernel_p.bind, **params)
        return mlir.lower_fun(kernel, multiple_results=False)(ctx, x, bits, alpha, offset)
    has_offset = ctx.avals_in[3].shape[0] > 0
    uniform = ctx.avals_in[2].shape[-2] != params["num_bits"]
    call = partitioned(lut_gemm_kernel_p.bind, tuple(sorted(params.items())), has_offset, uniform)

    def fn(x, bits, alpha, offset):
        return call(x, bits, alpha, offset) if has_offset else call(x, bits, alpha)

    return mlir.lower_fun(fn, multiple_results=False)(ctx, x, bits, alpha, offset)


mlir.register_lowering(lut_gemm_p, _partitioned_lowering)
# custom_partitioning needs the device assignment while lowering; JAX hands it only to programs
# containing primitives in this set (its own cuDNN primitives register the same way). There is
# no public spelling; without it, sharded programs fall back to the unpartitioned kernel.
_requires_devices = getattr(
    importlib.import_module("jax._src.dispatch"), "prim_requires_devices_during_lowering", None
)
if _requires_devices is not None:
    _requires_devices.add(lut_gemm_p)


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


def shard_like(w, kernel_sharding):
    """Places the arrays of `BCQWeight` ``w`` as the dense kernel it replaces was placed.

    Args:
      w: an unstacked `BCQWeight` for ``[K, N]``.
      kernel_sharding: the dense kernel's sharding; only a `NamedSharding` over more than one
        device moves anything (others are returned unchanged).
    """
    if not isinstance(kernel_sharding, NamedSharding) or kernel_sharding.num_devices == 1:
        return w
    specs = packed_specs(kernel_sharding.spec, w.has_offset)
    placed = {
        name: jax.device_put(getattr(w, name), NamedSharding(kernel_sharding.mesh, spec))
        for name, spec in specs.items()
    }
    return dataclasses.replace(w, **placed)
