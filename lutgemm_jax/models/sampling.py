"""Token selection: greedy, or temperature / top-k / top-p sampling."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Token selection: ``temperature == 0`` is greedy (argmax); otherwise sample from the
    softmax at that temperature, restricted to the ``top_k`` most likely tokens (0 = all) and to
    the smallest set whose probability reaches ``top_p`` (1.0 = all)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


GREEDY = Sampling()
"""Argmax decoding, the default of `lutgemm_jax.models.generation.generate`."""


def sample_token(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """Picks one token per row of ``logits [B, V]``: int32 ``[B]``."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / sampling.temperature
    neg = jnp.finfo(jnp.float32).min
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if sampling.top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each entry
        keep = before < sampling.top_p  # always keeps the first
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, neg, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


__all__ = ["GREEDY", "Sampling", "sample_token"]
