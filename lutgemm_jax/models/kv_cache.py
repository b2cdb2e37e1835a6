"""The KV cache and attention masks shared by every decoder family.

A cache is a list with one ``(k, v)`` pair per layer, each ``[batch, cache_len, kv_heads,
head_dim]``. Token ``t`` of a call that starts at slot ``cache_index`` is written to slot
``cache_index + t``; prompts are left-padded, so the real tokens of a row occupy contiguous
slots and slot distance equals position distance.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

KVCache = list
"""``[(k, v) per layer]``, each ``[batch, cache_len, kv_heads, head_dim]``."""


def init_cache(config: Any, batch: int, length: int, dtype=jnp.float32) -> KVCache:
    """A zero cache of ``length`` slots for ``config`` (any family config with
    ``num_hidden_layers``, ``num_key_value_heads`` and ``head_dim``)."""
    shape = (batch, length, config.num_key_value_heads, config.head_dim)
    return [
        (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.num_hidden_layers)
    ]


def update(cache, k: jax.Array, v: jax.Array, cache_index) -> tuple[jax.Array, jax.Array, Any]:
    """Writes ``k, v [B, T, kv_heads, hd]`` at slots ``cache_index ..`` of one layer's cache.

    Returns ``(keys, values, new layer cache)``: with ``cache`` None the keys and values are
    the new ones alone (no cache)."""
    if cache is None:
        return k, v, None
    ck, cv = cache
    start = (0, cache_index, 0, 0)
    k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), start)
    v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), start)
    return k, v, (k, v)


def attention_mask(
    key_mask: jax.Array, cache_index, num_queries: int, sliding_window: int | None = None
) -> jax.Array:
    """Which key slots each query may attend to: bool ``[B, 1, T, S]``.

    ``key_mask [B, S]`` marks real tokens. Query slot ``i`` (``cache_index + t``) sees key slots
    ``j <= i`` that are real and, with ``sliding_window = w``, satisfy ``i - j < w`` (the ``w``
    most recent positions, itself included). It always sees itself, so padded rows stay
    finite."""
    query_slots = cache_index + jnp.arange(num_queries)
    key_slots = jnp.arange(key_mask.shape[-1])
    allowed = key_slots[None, :] <= query_slots[:, None]
    if sliding_window is not None:
        allowed &= query_slots[:, None] - key_slots[None, :] < sliding_window
    self_slot = key_slots[None, :] == query_slots[:, None]
    return (key_mask[:, None, None, :] & allowed[None, None]) | self_slot[None, None]


def position_ids_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Positions 0, 1, ... over the real tokens of each row; padding gets -1."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=-1) * mask - 1


__all__ = ["KVCache", "attention_mask", "init_cache", "position_ids_from_mask", "update"]
