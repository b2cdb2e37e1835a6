"""Megatron-style tensor parallelism (and data parallelism) for the decoder families, on JAX's
own SPMD machinery: params are placed with `NamedSharding`s and the jitted `generate` /
`forward` run partitioned by XLA, with no change to the model code.

* column-parallel (each family's ``COLUMN_PARALLEL``: OPT q/k/v_proj, fc1; Llama q/k/v_proj,
  gate/up_proj): kernels ``P(None, tp)``, biases ``P(tp)``. Each device computes its heads /
  its ffn columns; no collective.
* row-parallel (``ROW_PARALLEL``: OPT out_proj, fc2; Llama o_proj, down_proj): kernels
  ``P(tp, None)``, biases replicated. Each device multiplies its slice of the heads / ffn
  columns and one all-reduce adds the partial sums.
* everything else (embeddings, norms, lm_head, OPT's project_in/out) is replicated.
  With grouped-query attention the number of key/value heads must divide by the ``tp`` size.
* ``dp``: the batch of prompts is split over the ``dp`` axis (`shard_batch`).

Quantized kernels (`BCQWeight`) are placed with `lutgemm_jax.sharding.packed_specs`, so the
packed sign bits, scales and offsets are split exactly like the dense kernel they replace and
`lut_gemm`'s partitioning rule never gathers them. Row-parallel needs the number of
quantization groups along K to be divisible by the ``tp`` size.

Nothing here assumes one process: on several hosts call ``jax.distributed.initialize()`` first,
then build the mesh over ``jax.devices()`` (`make_mesh` does).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lutgemm_jax.format import WORD_BITS, BCQWeight
from lutgemm_jax.sharding import packed_specs

_DEVICE_HINT = (
    "on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count={n} before jax is imported"
)


def parse_mesh(spec: str) -> dict[str, int]:
    """``"tp=4"`` or ``"dp=2,tp=4"`` -> ``{"dp": 2, "tp": 4}`` (in the order given)."""
    axes: dict[str, int] = {}
    for part in spec.split(","):
        m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*=\s*(\d+)\s*", part)
        if not m:
            raise ValueError(f"bad mesh spec {spec!r}: expected NAME=SIZE[,NAME=SIZE...]")
        name, size = m.group(1), int(m.group(2))
        if name in axes or size < 1:
            raise ValueError(f"bad mesh spec {spec!r}: repeated axis or size < 1 ({part!r})")
        axes[name] = size
    return axes


def make_mesh(axes: Mapping[str, int] | str, devices=None) -> jax.sharding.Mesh:
    """A mesh with `AxisType.Auto` axes (XLA propagates shardings through the attention
    reshapes) over ``devices`` (default: all of ``jax.devices()``, every process's)."""
    if isinstance(axes, str):
        axes = parse_mesh(axes)
    devices = jax.devices() if devices is None else list(devices)
    n = math.prod(axes.values())
    if n > len(devices):
        raise ValueError(
            f"mesh {dict(axes)} needs {n} devices but only {len(devices)} are visible; "
            + _DEVICE_HINT.format(n=n)
        )
    return jax.make_mesh(
        tuple(axes.values()),
        tuple(axes),
        axis_types=(jax.sharding.AxisType.Auto,) * len(axes),
        devices=devices[:n],
    )


def layer_lists(config=None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(column-parallel, row-parallel)`` Linear names of ``config``'s family, or of every
    registered family when ``config`` is None (their names do not collide)."""
    from lutgemm_jax.models.registry import FAMILIES, family_of

    families = FAMILIES if config is None else (family_of(config),)
    column = tuple(n for f in families for n in f.column_parallel)
    row = tuple(n for f in families for n in f.row_parallel)
    return column, row


def _layer_specs(name: str, tp: str, column, row) -> dict[str, P] | None:
    if name in column:
        return {"kernel": P(None, tp), "bias": P(tp)}
    if name in row:
        return {"kernel": P(tp, None), "bias": P()}
    return None


def _check_divisible(path: str, kernel, spec: P, tp_size: int) -> None:
    k_sharded = spec[0] is not None
    if isinstance(kernel, BCQWeight):
        if k_sharded:
            # K splits into whole groups and whole sign words (pairs of groups for g = 16).
            g = kernel.group_size
            units = kernel.padded_in_features // max(g, WORD_BITS)
            if kernel.in_features != kernel.padded_in_features or units % tp_size:
                raise ValueError(
                    f"{path}: row-parallel over tp={tp_size} needs the quantization groups along "
                    f"K to split evenly, but K = {kernel.in_features} has {kernel.num_groups} "
                    f"groups of g = {g}; choose a group size with (K / max(g, 32)) % {tp_size} "
                    "== 0"
                )
            return
        size = kernel.out_features
    else:
        size = kernel.shape[0 if k_sharded else 1]
    if size % tp_size:
        axis = "K" if k_sharded else "N"
        raise ValueError(f"{path}: {axis} = {size} is not divisible by tp={tp_size}")


def shard_params(
    params,
    mesh: jax.sharding.Mesh,
    *,
    tp_axis: str | None = "tp",
    column: Sequence[str] | None = None,
    row: Sequence[str] | None = None,
):
    """Places a decoder's ``params`` (float or quantized) on ``mesh``, Megatron-style.

    Linears named in ``column`` (kernel ``P(None, tp)``, bias ``P(tp)``) and ``row`` (kernel
    ``P(tp, None)``, bias replicated); everything else replicated. ``column`` / ``row`` default
    to `layer_lists` of every registered family; pass ``layer_lists(config)`` to restrict them.
    ``BCQWeight`` kernels get the matching specs for bits/alpha/offset
    (`lutgemm_jax.sharding.packed_specs`). With ``tp_axis`` None or absent from the mesh, all
    params are replicated (pure data parallelism).

    Raises:
      ValueError: a sharded dimension does not split evenly over the ``tp`` axis (for a
        quantized row-parallel layer: the number of groups along K), naming the layer.
    """
    if tp_axis is not None and tp_axis not in mesh.shape:
        tp_axis = None
    tp_size = mesh.shape[tp_axis] if tp_axis else 1
    default_column, default_row = layer_lists()
    column = tuple(default_column if column is None else column)
    row = tuple(default_row if row is None else row)
    replicated = NamedSharding(mesh, P())

    def put(x, spec):
        return jax.device_put(x, NamedSharding(mesh, spec))

    def place(tree, path):
        if isinstance(tree, Mapping):
            specs = _layer_specs(path[-1], tp_axis, column, row) if path and tp_axis else None
            if specs is not None:
                return {k: place_leaf(v, path + (k,), specs.get(k, P())) for k, v in tree.items()}
            return {k: place(v, path + (k,)) for k, v in tree.items()}
        return place_leaf(tree, path, P())

    def place_leaf(x, path, spec):
        name = "/".join(path)
        if spec != P():
            _check_divisible(name, x, spec, tp_size)
        if isinstance(x, BCQWeight):
            if spec == P():
                return jax.tree.map(lambda a: jax.device_put(a, replicated), x)
            specs = packed_specs(spec, x.has_offset)
            placed = {k: put(getattr(x, k), s) for k, s in specs.items()}
            return dataclasses.replace(x, **placed)  # keeps the metadata (K, N, q, g, layout)
        return put(x, spec)

    return place(params, ())


def shard_batch(mesh: jax.sharding.Mesh, *arrays, dp_axis: str = "dp"):
    """Places ``[B, ...]`` arrays with the batch split over ``dp_axis`` (replicated when the mesh
    has no such axis or it has size 1). ``B`` must be divisible by the ``dp`` size."""
    spec = P(dp_axis) if mesh.shape.get(dp_axis, 1) > 1 else P()
    out = []
    for a in arrays:
        a = np.asarray(a)
        if spec != P() and a.shape[0] % mesh.shape[dp_axis]:
            raise ValueError(
                f"batch of {a.shape[0]} rows does not split over {dp_axis}={mesh.shape[dp_axis]}"
            )
        out.append(jax.device_put(a, NamedSharding(mesh, spec)))
    return out[0] if len(out) == 1 else tuple(out)


def device_bytes(params, device=None) -> int:
    """Bytes of ``params`` held on ``device`` (default: the first addressable one)."""
    device = device or jax.local_devices()[0]
    total = 0
    for x in jax.tree_util.tree_leaves(params):
        for shard in x.addressable_shards:
            if shard.device == device:
                total += shard.data.nbytes
    return total


__all__ = [
    "device_bytes",
    "layer_lists",
    "make_mesh",
    "parse_mesh",
    "shard_batch",
    "shard_params",
]
