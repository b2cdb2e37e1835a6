"""Tokenizers for model directories: ``tokenizer.json`` through the ``tokenizers`` package, and
a byte-level fallback for random-weight models."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from lutgemm_jax.models.family import pad_id


class ByteTokenizer:
    """Fallback tokenizer for models without ``tokenizer.json`` (e.g. random weights): UTF-8
    bytes mapped to ids 4..259, after the bos id when the family adds one. Decoding shows other
    ids as ``<id>``."""

    OFFSET = 4

    def __init__(self, config: Any):
        self.config = config

    def encode(self, text: str) -> list[int]:
        ids = [(b + self.OFFSET) % self.config.vocab_size for b in text.encode("utf-8")]
        bos = self.config.bos_token_id
        return [bos, *ids] if self.config.add_bos_token and bos is not None else ids

    def decode(self, ids: Iterable[int]) -> str:
        skip = {self.config.bos_token_id, pad_id(self.config)}
        out, pending = [], bytearray()
        for i in ids:
            i = int(i)
            if self.OFFSET <= i < self.OFFSET + 256:
                pending.append(i - self.OFFSET)
                continue
            if pending:
                out.append(pending.decode("utf-8", "replace"))
                pending = bytearray()
            if i not in skip:
                out.append(f"<{i}>")
        if pending:
            out.append(pending.decode("utf-8", "replace"))
        return "".join(out)


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json``. When the family adds a bos token
    (``config.add_bos_token``: OPT, Llama, Mistral; not Qwen) and the file's post-processor did
    not, it is prepended, as the Hugging Face tokenizer classes do."""

    def __init__(self, path: str, config: Any):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(path)
        self.config = config

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text).ids
        bos = self.config.bos_token_id
        if self.config.add_bos_token and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def load_tokenizer(path: str | os.PathLike | None, config: Any) -> HFTokenizer | None:
    """`HFTokenizer` from ``path/tokenizer.json`` if present, else ``None``."""
    if path is None:
        return None
    file = os.path.join(os.fspath(path), "tokenizer.json")
    if os.path.exists(file):
        return HFTokenizer(file, config)
    return None


__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer"]
