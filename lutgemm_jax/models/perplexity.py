"""Quality measurements: windowed perplexity and teacher-forced top-1 agreement."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lutgemm_jax.models.family import pad_id
from lutgemm_jax.models.generation import forward, forward_jit


def perplexity(
    model,
    params,
    token_ids: Sequence[int],
    *,
    seq_len: int = 512,
    max_windows: int | None = None,
    progress: bool = False,
) -> tuple[float, int]:
    """Perplexity over non-overlapping windows of ``seq_len`` tokens (the last one padded).

    Each window predicts its tokens 1..T-1 from the ones before (no context across windows, as
    in the OPT/GPTQ evaluations). Returns ``(perplexity, number of predicted tokens)``.
    """
    ids = np.asarray(token_ids, np.int32)
    seq_len = min(seq_len, model.config.max_position_embeddings)
    if ids.size < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    starts = list(range(0, ids.size - 1, seq_len))
    if max_windows is not None:
        starts = starts[:max_windows]

    @jax.jit
    def nll(params, window, mask):
        logits = forward(model, params, window[None], mask[None])[0]
        logp = jax.nn.log_softmax(logits[:-1], axis=-1)
        picked = jnp.take_along_axis(logp, window[1:, None], axis=-1)[:, 0]
        valid = mask[1:].astype(jnp.float32)
        return -jnp.sum(picked * valid), jnp.sum(valid)

    total, count = 0.0, 0
    iterator = starts
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(starts, desc="perplexity", unit="window", leave=False)
    for s in iterator:
        chunk = ids[s : s + seq_len]
        window = np.full(seq_len, pad_id(model.config), np.int32)
        mask = np.zeros(seq_len, np.int32)
        window[: chunk.size], mask[: chunk.size] = chunk, 1
        n, c = nll(params, jnp.asarray(window), jnp.asarray(mask))
        total, count = total + float(n), count + int(c)
    return math.exp(total / max(count, 1)), count


def teacher_forced_agreement(
    model, params_a, params_b, input_ids, attention_mask, start: int
) -> tuple[float, float]:
    """Runs both models on the same sequences; over positions ``start - 1 ..`` (those that
    predict tokens ``start ..``) returns ``(top-1 agreement, max |logit_a - logit_b|)``."""
    la = forward_jit(model, params_a, input_ids, attention_mask)[:, start - 1 : -1]
    lb = forward_jit(model, params_b, input_ids, attention_mask)[:, start - 1 : -1]
    agree = jnp.mean((jnp.argmax(la, -1) == jnp.argmax(lb, -1)).astype(jnp.float32))
    return float(agree), float(jnp.max(jnp.abs(la - lb)))


__all__ = ["perplexity", "teacher_forced_agreement"]
