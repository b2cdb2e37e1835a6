"""Write the committed GGUF test fixtures in ``tests/data/gguf/`` with llama.cpp.

The ``gguf`` package cannot write K-quants, so the K-quant fixtures come from llama.cpp's own
quantizer: a tiny Llama-architecture float GGUF is written with ``gguf.GGUFWriter`` and
quantized with ``llama_cpp.llama_model_quantize``; llama.cpp's logits for a fixed prompt are
stored next to each file, so tests compare this library's GGUF import against llama.cpp
without llama.cpp installed. Deterministic (fixed seed) and rerunnable (overwrites the files)::

    python3 -m venv /tmp/venv-lcpp
    CMAKE_ARGS="-DGGML_NATIVE=OFF" /tmp/venv-lcpp/bin/pip install llama-cpp-python gguf numpy
    /tmp/venv-lcpp/bin/python scripts/make_gguf_fixtures.py          # from the repository root

The model (`SHAPE`): hidden 256, 2 layers, 4 attention heads and 2 KV heads of 64 (GQA),
SwiGLU width 256, tied embeddings (llama.cpp then quantizes ``token_embd`` with the output
matrix's rule: Q6_K), RoPE theta 1e4, RMSNorm eps 1e-5, context 512; every Linear has
in-features a multiple of 256, so the K-quant mixes keep their K-quant types (no Q5_0/Q8_0
fallbacks). Weights in Hugging Face convention, seed `SEED`: matrices ~ N(0, 0.02^2) (attn_q and
attn_k `QK_SCALE` times that), norm weights ~ 1 + N(0, 0.1^2); attn_q/attn_k rows written
permuted as convert_hf_to_gguf writes them. The float model is stored as F16 (norms F32, as
convert_hf_to_gguf's default ``--outtype f16``), half the bytes of F32. Vocabulary:
SentencePiece-style (``<unk> <s> </s>``, 256 byte tokens, then `PIECES`): the prompt is spelled
partly with merged pieces, partly with byte fallback.

Files, about 3.7 MiB in all (``TYPE`` in `TYPES`):

* ``tiny-llama-TYPE.gguf``: ``F16`` the float model, the others llama.cpp's mixes of it
  (Q4_K_M: Q4_K + Q6_K + F32; Q2_K: Q2_K + Q3_K + Q6_K; Q3_K_M: Q3_K + Q4_K + Q5_K + Q6_K;
  Q5_K_M: Q5_K + Q6_K), tensors in llama.cpp's order (not the float file's);
* ``tiny-llama-TYPE.logits.npy``: float32 ``[T, vocab]``, llama.cpp's logits at every position
  of the prompt (one ``llama_decode`` of the whole prompt, ``logits_all=True``). llama.cpp
  rounds activations to f16 for F16 weights and to 8 bits (Q8_K) for K-quant weights, and keeps
  an f16 KV cache: a float64 forward of the file's dequantized weights differs from these by
  about 7e-4 (F16) and 2e-2 (K-quants) at logits of magnitude 1.3;
* ``tiny-llama.prompt.json``: the prompt text, llama.cpp's token ids for it (bos first: the
  ids the logits belong to), the llama-cpp-python version and llama.cpp's system info line.

Rerunning with the same llama-cpp-python (0.3.36) and build reproduces every file bit for bit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gguf_llama  # noqa: E402  (benchmarks/ is not a package)

SEED = 19
# attn_q / attn_k weights 3x larger than the rest (std 0.06): attention scores of order 1, so
# positions matter and a RoPE or q/k-permutation mistake moves the logits by ~0.5, far above
# the ~0.02 by which llama.cpp's own activation quantization moves them
QK_SCALE = 3.0
TYPES = ("F16", "Q4_K_M", "Q2_K", "Q3_K_M", "Q5_K_M")
PROMPT = "Hello world, the cat sat on the mat. It is 42!"

# Pieces after the byte tokens, highest merge priority first. Every multi-character piece is
# the concatenation of two earlier-listed or single-character pieces, so SentencePiece-style
# merging (llama.cpp) and merges derived from the vocabulary (Hugging Face's GGUF converter)
# can reach it.
PIECES = (
    # single characters
    "▁", "e", "t", "a", "o", "i", "n", "s", "h", "r", "d", "l", "c", "u", "m", "w", "f", "g",
    "y", "p", "b", "v", "k", "H", "I", "T", "W", ",", ".",
    # merges
    "▁t", "he", "▁the", "in", "▁a", "er", "on", "at", "▁s", "en", "▁w", "or", "an", "▁c",
    "ll", "▁H", "▁He", "llo", "▁Hello", "▁wor", "ld", "▁world", "▁sat", "▁on", "▁m", "▁mat",
    "▁cat", "is", "▁is", "▁I", "▁It", "it", "▁it", "ing",
)  # fmt: skip

SHAPE = gguf_llama.LlamaShape(
    hidden=256, intermediate=256, layers=2, heads=4, kv_heads=2, head_dim=64,
    vocab=259 + len(PIECES), tied=True, context=512,
)  # fmt: skip


def fixture_tensors():
    """`gguf_llama.random_tensors` with attn_q / attn_k scaled by `QK_SCALE`."""
    for name, a in gguf_llama.random_tensors(SHAPE, SEED):
        if name.endswith((".attn_q.weight", ".attn_k.weight")):
            a *= QK_SCALE
        yield name, a


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "gguf")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    llama_cpp = gguf_llama.import_llama_cpp()
    a.out.mkdir(parents=True, exist_ok=True)

    src = a.out / "tiny-llama-F16.gguf"
    vocab = gguf_llama.spm_vocab(SHAPE.vocab, PIECES)
    tensors = fixture_tensors()
    gguf_llama.write_llama_gguf(src, SHAPE, tensors, vocab, dtype=np.float16,
                                name="tiny-llama-fixture")  # fmt: skip
    ids = gguf_llama.llama_tokenize(src, PROMPT)
    for t in TYPES:
        path = a.out / f"tiny-llama-{t}.gguf"
        if t != "F16":
            gguf_llama.quantize(src, path, t, a.threads)
        logits = gguf_llama.llama_logits(path, ids, a.threads)
        if not np.isfinite(logits).all():
            raise RuntimeError(f"{path.name}: llama.cpp gave non-finite logits")
        np.save(a.out / f"tiny-llama-{t}.logits.npy", logits)
        types: dict[str, int] = {}
        for ty in gguf_llama.tensor_types(path).values():
            types[ty] = types.get(ty, 0) + 1
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB, tensors {types}, "
              f"logits {logits.shape} max |logit| {np.abs(logits).max():.3f}")  # fmt: skip
    meta = {
        "prompt": PROMPT,
        "ids": ids,
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }
    (a.out / "tiny-llama.prompt.json").write_text(json.dumps(meta) + "\n")
    print(f"prompt {PROMPT!r} -> {ids}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
