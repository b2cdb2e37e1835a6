"""Writers of small GGUF files for the GGUF tests: Llama-family models in llama.cpp's layout
(written with ``gguf.GGUFWriter``, q/k rows permuted for arch ``llama`` as convert_hf_to_gguf
does), quantized with ``gguf.quants.quantize`` (Q4_0..Q8_0, BF16) or, for the K-quants the
package cannot quantize, made of random blocks with realistic float16 scales.

Every writer returns the weights the file really holds, dequantized by
``gguf.quants.dequantize`` and put back in Hugging Face order and names: the reference the
loaded model is compared with.
"""

from __future__ import annotations

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

# Byte offsets of the float16 d (and dmin) of each K-quant block, and magnitudes that give
# weights of about 0.1 (d * sub-scale * code): random sub-scales and codes, like real blocks.
K_QUANT_SCALES = {
    Q.Q2_K: {80: 2e-3, 82: 3e-3},
    Q.Q3_K: {108: 1e-3},
    Q.Q4_K: {0: 1e-4, 2: 1e-3},
    Q.Q5_K: {0: 5e-5, 2: 1e-3},
    Q.Q6_K: {208: 2.5e-5},
}
GGUF_QUANTIZED = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16)


def k_quant_blocks(qtype: Q, rows: int, k: int, rng, *, spread: int = 1) -> np.ndarray:
    """Random ``qtype`` blocks uint8 ``[rows, K/256*type_size]`` whose float16 scales are the
    table's magnitude times ``U(0.5, 1) * 2**e``, ``e`` uniform in ``[0, spread)`` (``spread``
    binades; 1 = quantizer-like, large = arbitrary exponents)."""
    block, size = GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, (rows, k // block, size), dtype=np.uint8)
    for at, mag in K_QUANT_SCALES[qtype].items():
        e = rng.integers(0, spread, (rows, k // block)) - spread // 2
        d = (mag * rng.uniform(0.5, 1.0, (rows, k // block)) * 2.0**e).astype(np.float16)
        b[..., at : at + 2] = d[..., None].view(np.uint8).reshape(rows, k // block, 2)
    return b.reshape(rows, -1)


def encode_tensor(w: np.ndarray, qtype: Q, rng) -> np.ndarray:
    """``w [N, K]`` float32 as the data of a ``qtype`` tensor (K-quants: random blocks of that
    shape instead, ``w`` only gives the shape)."""
    if qtype == Q.F32:
        return w.astype(np.float32)
    if qtype == Q.F16:
        return w.astype(np.float16)
    if qtype in K_QUANT_SCALES:
        return k_quant_blocks(qtype, w.shape[0], w.shape[1], rng)
    return gguf.quants.quantize(w.astype(np.float32), qtype)


def stored_values(data: np.ndarray, qtype: Q) -> np.ndarray:
    """float32 values of tensor data (``gguf.quants.dequantize``)."""
    if qtype in (Q.F32, Q.F16):
        return data.astype(np.float32)
    return gguf.quants.dequantize(data, qtype)


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf's ``LlamaModel.permute`` of q/k rows ``[heads*hd, ...]``."""
    n = w.shape[0]
    return w.reshape(heads, 2, n // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    n = w.shape[0]
    return w.reshape(heads, n // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


SPM_PIECES = ["\u2581Hello", "\u2581world", "\u2581wor"]


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece vocabulary: ``<unk> <s> </s>``, 256 byte tokens, the characters of
    `SPM_PIECES`, every prefix of them (so BPE merges can build them), scores falling with id."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    for piece in SPM_PIECES:
        for end in range(1, len(piece) + 1):
            for t in (piece[end - 1], piece[:end]):
                if t not in tokens:
                    tokens.append(t)
                    types.append(1)
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 259)]
    return tokens, scores, types


def write_model(
    path,
    cfg: dict,
    tensors: dict[str, np.ndarray],
    types: dict[str, Q],
    *,
    seed: int = 0,
    rope_freqs: np.ndarray | None = None,
    tokenizer: bool = True,
    edit=None,
) -> dict[str, np.ndarray]:
    """Writes the Llama-family model of HF config dict ``cfg`` and float32 HF ``tensors`` as a
    GGUF file; Linear weights get type ``types[kind]`` (``kind`` = GGUF name minus ``blk.N.``
    and ``.weight``, e.g. ``attn_q``, ``output``, ``token_embd``; default F32), norms and
    biases F32. ``edit(writer)`` may add or change metadata before writing.

    Returns:
      The stored values as float32 HF tensors (dequantized, q/k un-permuted).
    """
    rng = np.random.default_rng(seed)
    arch = cfg["model_type"]
    n_layers = cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    names = gguf.get_tensor_name_map(arch_enum, n_layers)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    w.add_rope_freq_base(theta)
    w.add_rope_dimension_count(hd)
    if cfg.get("head_dim"):
        w.add_key_length(hd)
        w.add_value_length(hd)
    if tokenizer:
        tokens, scores, token_types = spm_vocab()
        assert len(tokens) == cfg["vocab_size"], len(tokens)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(token_types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
    if edit is not None:
        edit(w)
    stored = {}
    for hf, x in tensors.items():
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        kind = name.split(".")[-2]
        qk = {"attn_q": heads, "attn_k": kv}.get(kind) if arch == "llama" else None
        if qk:
            x = permute(x, qk)
        qtype = types.get(kind, Q.F32) if x.ndim == 2 else Q.F32
        data = encode_tensor(x, qtype, rng)
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=qtype)
        value = stored_values(data, qtype).reshape(x.shape)
        stored[hf] = unpermute(value, qk) if qk else value
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored
