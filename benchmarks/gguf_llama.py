"""Llama-architecture GGUF files for llama.cpp: write them (``gguf.GGUFWriter``), quantize them
and run them (``llama-cpp-python``). Shared by ``benchmarks/llamacpp_compare.py`` and
``scripts/make_gguf_fixtures.py``; imports numpy and gguf only, llama_cpp where it is used.

Conventions followed, as convert_hf_to_gguf writes a Hugging Face ``LlamaForCausalLM``:

* tensors are given in Hugging Face orientation (a Linear's ``weight`` is ``[out, in]``), which
  GGUFWriter stores as ``ne = [in, out]``, so quantization blocks run along ``in``;
* ``attn_q`` / ``attn_k`` rows are permuted (`permute_qk`) because llama.cpp's ``llama``
  architecture rotates adjacent pairs (RoPE "norm") where Hugging Face rotates halves;
* the vocabulary is SentencePiece-style (``tokenizer.ggml.model = "llama"``): ``<unk> <s> </s>``,
  the 256 byte tokens ``<0xNN>`` (byte fallback) and then pieces, score = -(rank).
"""

from __future__ import annotations

import ctypes
import dataclasses
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class LlamaShape:
    """The hyper-parameters a Llama GGUF records (``llama.*`` metadata keys)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    tied: bool = False
    context: int = 2048

    def num_params(self) -> int:
        return sum(int(np.prod(s)) for _, s in tensor_shapes(self))


SHAPES = {
    # checkpoint-formats.md 5.5 (Llama-3.2's "llama3" RoPE scaling is not written: it does not
    # change the cost of a step, and both engines then run plain RoPE on the same file)
    "tinyllama-1.1b": LlamaShape(2048, 5632, 22, 32, 4, 64, 32000),
    "llama-3.2-1b": LlamaShape(
        2048, 8192, 16, 32, 8, 64, 128256, rope_theta=500000.0, tied=True, context=131072
    ),  # fmt: skip
    # a few-MiB model for checking that the tools work; its timings mean nothing
    "smoke": LlamaShape(256, 512, 2, 4, 2, 64, 1024, tied=True),
}

# K-quant and legacy mixes llama_model_quantize can produce from a float file, by the names
# llama.cpp's quantize tool uses; the value is the llama_cpp constant of the llama_ftype
FTYPES = {
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q5_K_S": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q3_K_L": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
}

LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
"""GGUF names of the Linear layers of a block (``blk.{i}.{name}.weight``)."""


def tensor_shapes(shape: LlamaShape) -> list[tuple[str, tuple[int, ...]]]:
    """``(gguf name, numpy shape)`` in file order; Linear weights are ``[out, in]``."""
    h, f = shape.hidden, shape.intermediate
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    out = [("token_embd.weight", (shape.vocab, h))]
    for i in range(shape.layers):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (h,)),
            (b + "attn_q.weight", (q, h)),
            (b + "attn_k.weight", (kv, h)),
            (b + "attn_v.weight", (kv, h)),
            (b + "attn_output.weight", (h, q)),
            (b + "ffn_norm.weight", (h,)),
            (b + "ffn_gate.weight", (f, h)),
            (b + "ffn_up.weight", (f, h)),
            (b + "ffn_down.weight", (h, f)),
        ]
    out.append(("output_norm.weight", (h,)))
    if not shape.tied:
        out.append(("output.weight", (shape.vocab, h)))
    return out


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face q/k projection rows ``[n_heads * hd, in]`` -> GGUF rows: within each head,
    row ``j * hd/2 + i`` moves to ``2i + j`` (convert_hf_to_gguf ``LlamaModel.permute``)."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_tensors(
    shape: LlamaShape, seed: int, std: float = 0.02
) -> Iterator[tuple[str, np.ndarray]]:
    """Random weights in Hugging Face convention, tensor by tensor in file order: matrices
    ~ N(0, std^2), norm weights ~ 1 + N(0, 0.1^2) (not all ones, so a norm applied wrongly
    shows). Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    for name, s in tensor_shapes(shape):
        if len(s) == 1:
            yield name, (1.0 + 0.1 * rng.standard_normal(s, dtype=np.float32)).astype(np.float32)
        else:
            a = rng.standard_normal(s, dtype=np.float32)
            a *= std
            yield name, a


@dataclasses.dataclass(frozen=True)
class Vocab:
    """An SPM ("llama") vocabulary: id = index; ``types`` are `gguf.TokenType` values."""

    tokens: list[str]
    scores: list[float]
    types: list[int]


def spm_vocab(size: int, pieces: Sequence[str] = ()) -> Vocab:
    """``<unk> <s> </s>``, the 256 byte tokens, ``pieces`` (highest merge priority first), then
    filler pieces ``t<id>`` up to ``size``."""
    import gguf

    tt = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [tt.UNKNOWN, tt.CONTROL, tt.CONTROL] + [tt.BYTE] * 256 + [tt.NORMAL] * len(pieces)
    if len(set(tokens)) != len(tokens):
        raise ValueError("spm_vocab: duplicate pieces")
    if size < len(tokens):
        raise ValueError(f"spm_vocab: size {size} < {len(tokens)} tokens")
    tokens += [f"t{i}" for i in range(len(tokens), size)]
    types += [tt.NORMAL] * (size - len(types))
    scores = [0.0] * 259 + [-float(r) for r in range(size - 259)]
    return Vocab(tokens, scores, [int(t) for t in types])


def write_llama_gguf(
    path: str | Path,
    shape: LlamaShape,
    tensors: Iterable[tuple[str, np.ndarray]],
    vocab: Vocab,
    *,
    dtype: type = np.float32,
    name: str = "random-llama",
) -> None:
    """Write a complete ``llama`` GGUF: metadata, ``vocab`` and ``tensors`` (``(name, array)``
    in Hugging Face convention and `tensor_shapes` order, e.g. `random_tensors`), streamed:
    one tensor is in memory at a time. Linear and embedding weights are stored as ``dtype``
    (float32 or float16), norms as float32, q/k rows permuted (`permute_qk`)."""
    import gguf

    if len(vocab.tokens) != shape.vocab:
        raise ValueError(f"vocab has {len(vocab.tokens)} tokens, shape says {shape.vocab}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float16):
        raise ValueError(f"dtype must be float32 or float16, got {dtype}")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(shape.context)
    w.add_embedding_length(shape.hidden)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.intermediate)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_key_length(shape.head_dim)
    w.add_value_length(shape.head_dim)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(shape.rope_theta)
    w.add_layer_norm_rms_eps(shape.rms_eps)
    w.add_vocab_size(shape.vocab)
    ftype = gguf.LlamaFileType.ALL_F32 if dtype == np.float32 else gguf.LlamaFileType.MOSTLY_F16
    w.add_file_type(int(ftype))
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    plan = tensor_shapes(shape)
    for tname, s in plan:  # the tensor index: names, shapes and byte sizes, no data yet
        dt = np.dtype(np.float32) if len(s) == 1 else dtype
        w.add_tensor_info(tname, s, dt, int(np.prod(s)) * dt.itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    count = 0
    for tname, a in tensors:
        want, s = plan[count] if count < len(plan) else ("no more tensors", None)
        if tname != want or a.shape != s:
            raise ValueError(f"tensor {count} is {tname} {a.shape}, expected {want} {s}")
        if a.ndim == 2 and tname.endswith((".attn_q.weight", ".attn_k.weight")):
            a = permute_qk(a, shape.heads if ".attn_q." in tname else shape.kv_heads)
        w.write_tensor_data(a.astype(np.float32 if a.ndim == 1 else dtype))
        count += 1
    if count != len(plan):
        raise ValueError(f"got {count} tensors, expected {len(plan)}")
    w.close()


def import_llama_cpp():
    """The ``llama_cpp`` module, its log quietened; SystemExit with the install line if absent."""
    try:
        import llama_cpp
    except ImportError as e:
        raise SystemExit(
            f"llama-cpp-python is not installed ({e}). It is an optional, benchmark-only "
            'dependency: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python '
            "(or the project's 'bench' extra). GGML_NATIVE=OFF gives the AVX2 build; the default "
            "-march=native build may enable AMX kernels that crash on VMs without AMX state."
        ) from e
    import logging

    # llama-cpp-python routes llama.cpp's own log (quantizer progress etc.) through this logger
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


def quantize(src: str | Path, dst: str | Path, type_name: str, threads: int = 2) -> float:
    """``llama_model_quantize`` ``src`` (float GGUF) to ``dst`` with llama.cpp's default mix for
    ``type_name`` (a key of `FTYPES`); returns the seconds it took."""
    llama_cpp = import_llama_cpp()
    if type_name not in FTYPES:
        raise ValueError(f"unknown type {type_name!r}; known: {', '.join(FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[type_name])
    params.nthread = threads
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize {src} -> {type_name} failed (rc={rc})")
    return time.perf_counter() - t0


def tensor_types(path: str | Path) -> dict[str, str]:
    """``{tensor name: ggml type name}`` of a GGUF file, in file order."""
    import gguf

    r = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}


def read_bytes_per_token(path: str | Path) -> int:
    """Tensor bytes one decode step reads once: all tensors except the token embedding (one row
    of it is gathered), which counts when it is also the output matrix (no ``output.weight``)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    nbytes = {t.name: int(t.n_bytes) for t in r.tensors}
    total = sum(nbytes.values())
    return total if "output.weight" not in nbytes else total - nbytes["token_embd.weight"]


def linear_bits_per_weight(path: str | Path) -> float:
    """8 * bytes / weights over the Linear layers of the blocks."""
    import gguf

    r = gguf.GGUFReader(str(path))
    lin = [t for t in r.tensors if t.name.startswith("blk.") and t.name.split(".")[2] in LINEAR]
    return 8.0 * sum(int(t.n_bytes) for t in lin) / sum(int(t.n_elements) for t in lin)


def load_llama(path: str | Path, threads: int, *, logits_all: bool = False, n_ctx: int = 512):
    """``llama_cpp.Llama`` on ``path`` with ``threads`` threads for single tokens and batches."""
    llama_cpp = import_llama_cpp()
    return llama_cpp.Llama(
        model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
        logits_all=logits_all, verbose=False,
    )  # fmt: skip


def llama_logits(path: str | Path, ids: Sequence[int], threads: int) -> np.ndarray:
    """llama.cpp's logits for every position of ``ids`` (one ``llama_decode`` of the whole
    prompt): float32 ``[len(ids), vocab]``."""
    llm = load_llama(path, threads, logits_all=True)
    try:
        llm.eval(list(ids))
        return np.array(llm.scores[: llm.n_tokens], dtype=np.float32)
    finally:
        llm.close()


def llama_decode_ms(
    path: str | Path, prompt: Sequence[int], threads: int, warmup: int, tokens: int, seed: int
) -> list[float]:
    """Milliseconds of each of ``tokens`` single-token ``eval`` calls (one ``llama_decode`` of
    one token, last-position logits included), after the prompt and ``warmup`` untimed ones.
    The tokens fed are random ids past the byte tokens."""
    llm = load_llama(path, threads)
    try:
        llm.eval(list(prompt))
        rng = np.random.default_rng(seed)
        feed = rng.integers(259, llm.n_vocab(), warmup + tokens)
        times = []
        for i, t in enumerate(feed):
            t0 = time.perf_counter()
            llm.eval([int(t)])
            if i >= warmup:
                times.append(1e3 * (time.perf_counter() - t0))
        return times
    finally:
        llm.close()


def llama_tokenize(path: str | Path, text: str) -> list[int]:
    """llama.cpp's tokenization of ``text`` (bos added as the file's metadata says)."""
    llama_cpp = import_llama_cpp()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    try:  # add_bos=True asks for the special tokens the vocabulary's add_bos_token says
        return list(llm.tokenize(text.encode("utf-8"), add_bos=True))
    finally:
        llm.close()
