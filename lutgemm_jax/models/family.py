"""What a decoder family provides to the shared machinery, and helpers every family uses.

A family is one architecture file (e.g. `lutgemm_jax.models.llama`) that defines a frozen config
class (``from_dict`` / ``to_dict`` of ``config.json``; ``num_hidden_layers``,
``num_key_value_heads``, ``head_dim``, ``vocab_size``, ``max_position_embeddings``, special token
ids and ``add_bos_token``), a linen model with the call convention below, and a `Family` record
tying them to the Hugging Face parameter names.

Model call convention (shared by `generate`, `forward`, the KV cache and the benchmarks)::

    logits [B, T, V] float32, cache = model.apply(
        {"params": params}, input_ids [B, T], position_ids [B, T], key_mask bool [B, S],
        cache=None | KVCache, cache_index=0)
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Family:
    """One decoder family: config and model classes, HF names, tensor-parallel layer names."""

    name: str
    model_types: tuple[str, ...]
    """``config.json`` ``model_type`` values this family reads."""
    config_cls: type
    model_cls: type
    hf_names: Callable[[Any], dict]
    """config -> `lutgemm_jax.models.hf_checkpoint.NameMap`."""
    init_params: Callable[..., dict]
    """``(config, seed=0, *, dtype=float32) -> params``: deterministic random weights."""
    presets: Mapping[str, Any]
    column_parallel: tuple[str, ...]
    """Linears split along N (their output features) by tensor parallelism."""
    row_parallel: tuple[str, ...]
    """Linears split along K; an all-reduce sums their partial products."""


def eos_ids(config: Any) -> tuple[int, ...]:
    """The end-of-sequence ids of ``config`` (``eos_token_id`` may be an int or a list)."""
    eos = config.eos_token_id
    if eos is None:
        return ()
    return tuple(int(e) for e in eos) if isinstance(eos, (tuple, list)) else (int(eos),)


def pad_id(config: Any) -> int:
    """The id written into padding: ``pad_token_id``, else the first eos id, else 0."""
    if config.pad_token_id is not None:
        return int(config.pad_token_id)
    eos = eos_ids(config)
    return eos[0] if eos else 0


def abstract_params(model) -> dict:
    """``jax.ShapeDtypeStruct`` params of ``model`` (nothing is computed)."""
    ids = jnp.zeros((1, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids, ids > -1))
    return shapes["params"]


def param_shapes(model) -> dict[tuple[str, ...], tuple[int, ...]]:
    """param path -> shape, for checking checkpoints before any array is built."""
    flat = jax.tree_util.tree_flatten_with_path(abstract_params(model))[0]
    return {tuple(str(k.key) for k in path): tuple(x.shape) for path, x in flat}


LeafFn = Callable[[str, np.random.Generator, tuple], np.ndarray]


def random_params(model, seed: int, leaf: LeafFn, dtype=jnp.float32) -> dict:
    """Params of ``model`` with each leaf from ``leaf(path, rng, shape)``; ``rng`` is seeded by
    ``seed`` and the leaf's ``/``-joined path (``params/...``), so the weights do not depend on
    the jax version, the machine or the order of the tree (numpy's generator is also fast on
    CPU)."""
    shapes = abstract_params(model)

    def make(path, x):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        return jnp.asarray(leaf(name, rng, tuple(x.shape)), dtype)

    return jax.tree_util.tree_map_with_path(make, {"params": shapes})["params"]


__all__ = ["Family", "abstract_params", "eos_ids", "pad_id", "param_shapes", "random_params"]
