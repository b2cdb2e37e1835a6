"""Meshes with explicit axes (``jax.make_mesh``'s default), where shardings are part of the types.

Array code that reshapes or contracts sharded dimensions (unpacking sign words, dequantizing,
the dense math of the gradients) must then say how every result is sharded. The helpers here
run such code with the explicit axes made automatic, so XLA's partitioner picks the shardings
of the intermediates, and give the results the sharding types the caller names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax


def explicit_mesh(avals: Sequence[Any]):
    """The first mesh with explicit axes among the sharding types of ``avals``, else None."""
    for aval in avals:
        mesh = getattr(getattr(aval, "sharding", None), "mesh", None)
        if mesh is not None and jax.sharding.AxisType.Explicit in mesh.axis_types:
            return mesh
    return None


def auto_axes_like(fn: Callable, out_avals: Sequence[Any], in_avals: Sequence[Any]) -> Callable:
    """``fn`` itself, or, when ``out_avals`` or ``in_avals`` are typed on a mesh with explicit
    axes, ``fn`` run with those axes automatic (`jax.sharding.auto_axes`) and its results given
    the sharding types of ``out_avals`` (one result per aval)."""
    mesh = explicit_mesh([*out_avals, *in_avals])
    if mesh is None:
        return fn
    specs = tuple(a.sharding.spec for a in out_avals)
    auto = jax.sharding.auto_axes(fn, out_sharding=specs[0] if len(specs) == 1 else specs)

    def call(*args):
        with jax.sharding.use_abstract_mesh(mesh):
            return auto(*args)

    return call
