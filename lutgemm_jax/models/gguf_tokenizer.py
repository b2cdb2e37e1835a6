"""The tokenizer of a GGUF file, rebuilt from its ``tokenizer.ggml.*`` metadata with the
``tokenizers`` package, so that a lone ``.gguf`` file encodes and decodes text
(checkpoint-formats.md 1.7).

Two vocabulary models are rebuilt:

* ``"llama"`` (SentencePiece BPE with byte fallback: Llama 2, TinyLlama, Mistral v0.x). The
  file has tokens and scores but no merges; the merges are every split of a token into two
  tokens, ranked by the token's score (how transformers converts such files). Spaces become
  ``▁`` and one ``▁`` is prepended (unless ``add_space_prefix`` is false).
* ``"gpt2"`` (byte-level BPE: Llama 3.x, Qwen2/2.5/3, SmolLM) with the pre-tokenizer split
  named by ``tokenizer.ggml.pre`` (`PRE_TOKENIZERS`).

Control and user-defined tokens (types 3 and 4) are added as special tokens, never split. A
bos token is prepended when the file's ``add_bos_token`` says so (or, without that key, when
the model family does: Llama yes, Qwen no). Exact parity with a model's original
``tokenizer.json`` (normalizer details, added-token flags) is not guaranteed; prefer that file
when a Hugging Face directory is available.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""llama.cpp's ``llama-bpe`` pre-tokenizer regex (Llama 3.x)."""
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
"""``qwen2``: as Llama 3, digits one at a time."""
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
"""GPT-2's own regex (``default`` / ``gpt2``; SmolLM after splitting digits)."""
PRE_TOKENIZERS = ("default", "gpt2", "llama-bpe", "llama3", "llama-v3", "qwen2", "smollm")
"""``tokenizer.ggml.pre`` values of ``gpt2``-model files that are rebuilt."""
_IGNORE_MERGES = ("llama-bpe", "llama3", "llama-v3")
_SPECIAL_TYPES = (3, 4)  # control, user-defined
SPM_SPACE = "\u2581"


class GGUFTokenizer:
    """``encode(text) -> ids`` / ``decode(ids) -> text`` over a rebuilt ``tokenizers.Tokenizer``
    (the interface of `lutgemm_jax.models.tokenizer.HFTokenizer`).

    Attributes:
      tokenizer: the ``tokenizers.Tokenizer``.
      bos_token_id: prepended by `encode` when ``add_bos`` (and not already first).
      add_bos: whether `encode` starts with bos.
    """

    def __init__(self, tokenizer: Any, bos_token_id: int | None, add_bos: bool):
        self.tokenizer = tokenizer
        self.bos_token_id = bos_token_id
        self.add_bos = add_bos and bos_token_id is not None

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text).ids
        if self.add_bos and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def spm_merges(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """BPE merges of a SentencePiece vocabulary: every split ``t = a + b`` of a token into two
    vocabulary tokens, ordered by the score of ``t`` (highest first; ties by the ids of
    ``a`` and ``b``)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for token, score in zip(tokens, scores, strict=True):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                ranked.append((-float(score), vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _byte_level_pre(pre: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    split = LLAMA3_SPLIT if pre in _IGNORE_MERGES else QWEN2_SPLIT if pre == "qwen2" else GPT2_SPLIT
    steps = [pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False), byte_level]
    if pre == "smollm":
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    return pre_tokenizers.Sequence(steps)


def build_tokenizer(meta: Mapping[str, Any], *, default_add_bos: bool) -> GGUFTokenizer:
    """A `GGUFTokenizer` from GGUF metadata.

    Args:
      meta: ``tokenizer.ggml.*`` keys (without the prefix) to their values: ``model``,
        ``tokens``, and ``scores`` (``llama``) or ``merges`` (``gpt2``); optionally ``pre``,
        ``token_type``, ``bos_token_id``, ``unknown_token_id``, ``add_bos_token``,
        ``add_space_prefix``.
      default_add_bos: whether to prepend bos when the file does not say.

    Raises:
      ValueError: an unsupported ``model`` or ``pre``, or missing / inconsistent arrays (the
        message names the key).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    kind = meta.get("model")
    tokens = list(meta.get("tokens") or [])
    if not tokens:
        raise ValueError("tokenizer.ggml.tokens is missing or empty")
    types = list(meta.get("token_type") or [1] * len(tokens))
    if len(types) != len(tokens):
        raise ValueError(
            f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    vocab = {t: i for i, t in enumerate(tokens)}
    if kind == "llama":
        scores = meta.get("scores")
        if scores is None or len(scores) != len(tokens):
            raise ValueError(
                f"tokenizer.ggml.scores must hold one score per token ({len(tokens)}) for the "
                f"'llama' (SentencePiece) model"
            )
        unk = meta.get("unknown_token_id", 0)
        tok = Tokenizer(
            models.BPE(
                vocab,
                spm_merges(tokens, scores),
                unk_token=tokens[unk] if 0 <= unk < len(tokens) else None,
                fuse_unk=True,
                byte_fallback=True,
            )
        )
        steps = [normalizers.Replace(" ", SPM_SPACE)]
        if meta.get("add_space_prefix", True):
            steps.insert(0, normalizers.Prepend(SPM_SPACE))
        tok.normalizer = normalizers.Sequence(steps)
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace(SPM_SPACE, " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1 if meta.get("add_space_prefix", True) else 0, 0),
            ]
        )
    elif kind == "gpt2":
        pre = meta.get("pre", "default")
        if pre not in PRE_TOKENIZERS:
            raise ValueError(
                f"tokenizer.ggml.pre {pre!r} is not rebuilt (supported: {PRE_TOKENIZERS})"
            )
        merges = meta.get("merges")
        if not merges:
            raise ValueError("tokenizer.ggml.merges is missing: the 'gpt2' (BPE) model needs it")
        pairs = []
        for m in merges:
            left, sep, right = m.partition(" ")
            if not sep:
                raise ValueError(f"tokenizer.ggml.merges entry {m!r} is not 'left right'")
            pairs.append((left, right))
        tok = Tokenizer(models.BPE(vocab, pairs, ignore_merges=pre in _IGNORE_MERGES))
        tok.pre_tokenizer = _byte_level_pre(pre)
        tok.decoder = decoders.ByteLevel()
    else:
        raise ValueError(
            f"tokenizer.ggml.model {kind!r} is not rebuilt (supported: 'llama', 'gpt2')"
        )
    special = [
        AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, types, strict=True)
        if ty in _SPECIAL_TYPES
    ]
    tok.add_special_tokens(special)
    add_bos = meta.get("add_bos_token", default_add_bos)
    return GGUFTokenizer(tok, meta.get("bos_token_id"), bool(add_bos))


__all__ = [
    "GPT2_SPLIT",
    "LLAMA3_SPLIT",
    "PRE_TOKENIZERS",
    "QWEN2_SPLIT",
    "GGUFTokenizer",
    "build_tokenizer",
    "spm_merges",
]
