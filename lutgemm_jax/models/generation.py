"""Family-agnostic decoding: full-sequence forward, prefill, the ``lax.scan`` decode loop and
`generate` (both inside one ``jax.jit``), and left-padding of prompt batches.

Every function takes a family's linen model (see `lutgemm_jax.models.family` for the call
convention) and its params; params holding `BCQWeight`s run their ``nn.Dense`` layers through
`lut_gemm` (`lutgemm_jax.linen.intercept_dense`), with no change to the model code.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lutgemm_jax.format import bcq_leaves
from lutgemm_jax.models.family import eos_ids, pad_id
from lutgemm_jax.models.kv_cache import KVCache, init_cache, position_ids_from_mask
from lutgemm_jax.models.sampling import GREEDY, Sampling, sample_token


def has_bcq(params) -> bool:
    """True if any leaf of ``params`` is a `BCQWeight`."""
    return bool(bcq_leaves(params))


def _context(params):
    """`lutgemm_jax.linen.intercept_dense` when ``params`` hold BCQ weights, else a no-op."""
    if has_bcq(params):
        from lutgemm_jax.linen import intercept_dense

        return intercept_dense()
    return contextlib.nullcontext()


def apply(model, params, *args, **kwargs):
    """``model.apply({"params": params}, ...)``, routed through LUT-GEMM for BCQ params."""
    with _context(params):
        return model.apply({"params": params}, *args, **kwargs)


def forward(model, params, input_ids, attention_mask=None) -> jax.Array:
    """Full-sequence logits ``[B, T, vocab]`` float32 (no cache).

    ``input_ids`` int ``[B, T]``; ``attention_mask [B, T]``: 1 = real token, 0 = (left)
    padding; None = all real."""
    if attention_mask is None:
        attention_mask = jnp.ones(jnp.shape(input_ids), jnp.int32)
    attention_mask = jnp.asarray(attention_mask)
    positions = position_ids_from_mask(attention_mask)
    logits, _ = apply(model, params, jnp.asarray(input_ids), positions, attention_mask.astype(bool))
    return logits


@functools.partial(jax.jit, static_argnums=0)
def forward_jit(model, params, input_ids, attention_mask=None):
    """`forward` under ``jax.jit`` (compiled once per model, shapes and params structure)."""
    return forward(model, params, input_ids, attention_mask)


class DecodeState(NamedTuple):
    cache: KVCache
    key_mask: jax.Array  # bool [B, S]
    token: jax.Array  # int32 [B], the token to feed next
    position: jax.Array  # int32 [B], its position id
    index: jax.Array  # int32 scalar, its cache slot
    done: jax.Array  # bool [B], eos seen


def _is_eos(token: jax.Array, config: Any) -> jax.Array:
    eos = eos_ids(config)
    if not eos:
        return jnp.zeros(token.shape, bool)
    return jnp.isin(token, jnp.asarray(eos, jnp.int32))


def prefill(
    model,
    params,
    input_ids,
    attention_mask,
    cache_len: int,
    rng,
    sampling: Sampling,
    cache_dtype=jnp.float32,
):
    """Runs the (left-padded) prompt ``[B, T]`` through the model, filling a cache of
    ``cache_len`` slots.

    Returns ``(state, first_logits [B, V])``; ``state.token`` is the first new token.
    """
    b, t = input_ids.shape
    if cache_len < t:
        raise ValueError(f"cache_len {cache_len} is shorter than the prompt ({t} tokens)")
    attention_mask = attention_mask.astype(bool)
    positions = position_ids_from_mask(attention_mask)
    key_mask = jnp.zeros((b, cache_len), bool).at[:, :t].set(attention_mask)
    cache = init_cache(model.config, b, cache_len, cache_dtype)
    logits, cache = apply(model, params, input_ids, positions, key_mask, cache, 0)
    last = logits[:, -1]
    token = sample_token(last, jax.random.fold_in(rng, 0), sampling)
    done = _is_eos(token, model.config)
    length = jnp.sum(attention_mask, axis=-1).astype(jnp.int32)
    state = DecodeState(cache, key_mask, token, length, jnp.int32(t), done)
    return state, last


def decode(
    model,
    params,
    state: DecodeState,
    num_steps: int,
    rng,
    sampling: Sampling,
    return_logits: bool = False,
    stop_at_eos: bool = True,
    forced_tokens=None,
):
    """``num_steps`` decode steps in one `lax.scan`: feeds ``state.token``, picks the next one.

    Returns ``(state, tokens [B, num_steps], logits [B, num_steps, V] or None)``. After a row
    has produced an eos id (with ``stop_at_eos``) it emits the pad id (`family.pad_id`).

    ``forced_tokens``: optional ``(tokens [B, num_steps], force: bool scalar)``; where ``force``
    is true, step ``i`` feeds ``tokens[:, i]`` onward instead of the token it picked (teacher
    forcing), while still returning the picked tokens and their logits.
    """
    config = model.config
    pad = pad_id(config)
    b = state.token.shape[0]

    def step(state: DecodeState, i):
        key_mask = jax.lax.dynamic_update_slice(
            state.key_mask, jnp.ones((b, 1), bool), (0, state.index)
        )
        logits, cache = apply(
            model,
            params,
            state.token[:, None],
            state.position[:, None],
            key_mask,
            state.cache,
            state.index,
        )
        logits = logits[:, 0]
        token = sample_token(logits, jax.random.fold_in(rng, i + 1), sampling)
        picked = token
        if forced_tokens is not None:
            token = jnp.where(forced_tokens[1], forced_tokens[0][:, i], token)
        done = state.done
        if stop_at_eos:
            token = jnp.where(done, pad, token)
            done = done | _is_eos(token, config)
            picked = jnp.where(state.done, pad, picked)
        new = DecodeState(cache, key_mask, token, state.position + 1, state.index + 1, done)
        return new, (picked, logits if return_logits else None)

    state, (tokens, logits) = jax.lax.scan(step, state, jnp.arange(num_steps))
    tokens = tokens.T
    if return_logits:
        logits = jnp.swapaxes(logits, 0, 1)
    return state, tokens, logits


class Generation(NamedTuple):
    tokens: jax.Array  # int32 [B, max_new_tokens]
    logits: jax.Array | None  # float32 [B, max_new_tokens, V]: the logits each token came from


@functools.partial(
    jax.jit, static_argnames=("model", "max_new_tokens", "sampling", "return_logits", "stop_at_eos")
)
def _generate(
    model,
    params,
    input_ids,
    attention_mask,
    rng,
    forced_tokens,
    force,
    *,
    max_new_tokens,
    sampling,
    return_logits,
    stop_at_eos,
):
    cache_len = input_ids.shape[1] + max_new_tokens
    state, first = prefill(model, params, input_ids, attention_mask, cache_len, rng, sampling)
    first_token = state.token
    state = state._replace(token=jnp.where(force, forced_tokens[:, 0], state.token))
    _, tokens, logits = decode(
        model,
        params,
        state,
        max_new_tokens - 1,
        rng,
        sampling,
        return_logits,
        stop_at_eos,
        (forced_tokens[:, 1:], force),
    )
    tokens = jnp.concatenate([first_token[:, None], tokens], axis=1)
    if return_logits:
        logits = jnp.concatenate([first[:, None], logits], axis=1)
    return Generation(tokens, logits)


def generate(
    model,
    params,
    input_ids,
    attention_mask=None,
    *,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    seed: int = 0,
    return_logits: bool = False,
    stop_at_eos: bool = True,
    forced_tokens=None,
) -> Generation:
    """Generates ``max_new_tokens`` tokens after each prompt row, in one compiled call.

    ``input_ids [B, T]`` must be left-padded (`pad_batch`) with ``attention_mask`` 0 on padding.
    Prefill and a `lax.scan` over the new tokens run inside one ``jax.jit``; it compiles once per
    (model, shapes, max_new_tokens, sampling) and never per token. Params holding `BCQWeight`s
    run their Dense layers through `lut_gemm`.

    ``forced_tokens [B, max_new_tokens]`` (teacher forcing): feed these tokens instead of the
    picked ones; the result still holds what the model picked (and, with ``return_logits``, its
    logits) at each step given the forced prefix. Forced or not, it is the same compiled code.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if input_ids.ndim == 1:
        input_ids = input_ids[None]
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    total = input_ids.shape[1] + max_new_tokens
    if total > model.config.max_position_embeddings:
        raise ValueError(
            f"prompt + new tokens = {total} exceeds max_position_embeddings "
            f"{model.config.max_position_embeddings}"
        )
    force = forced_tokens is not None
    if forced_tokens is None:
        forced_tokens = jnp.zeros((input_ids.shape[0], max_new_tokens), jnp.int32)
    forced_tokens = jnp.asarray(forced_tokens, jnp.int32)
    if forced_tokens.shape != (input_ids.shape[0], max_new_tokens):
        raise ValueError(
            f"forced_tokens has shape {forced_tokens.shape}, expected "
            f"{(input_ids.shape[0], max_new_tokens)}"
        )
    return _generate(
        model,
        params,
        input_ids,
        jnp.asarray(attention_mask, jnp.int32),
        jax.random.PRNGKey(seed),
        forced_tokens,
        jnp.asarray(force),
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        return_logits=return_logits,
        stop_at_eos=stop_at_eos,
    )


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token id lists to ``(input_ids [B, T], attention_mask [B, T])``."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("pad_batch needs at least one non-empty sequence")
    t = max(len(s) for s in sequences)
    ids = np.full((len(sequences), t), pad_token_id, np.int32)
    mask = np.zeros((len(sequences), t), np.int32)
    for row, seq in enumerate(sequences):
        ids[row, t - len(seq) :] = seq
        mask[row, t - len(seq) :] = 1
    return ids, mask


__all__ = [
    "DecodeState",
    "Generation",
    "apply",
    "decode",
    "forward",
    "forward_jit",
    "generate",
    "has_bcq",
    "pad_batch",
    "prefill",
]
