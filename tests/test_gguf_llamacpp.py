"""`models.load_gguf` on files quantized by llama.cpp itself (tests/data/gguf, made by
scripts/make_gguf_fixtures.py: a tiny Llama, GQA 4/2, tied Q6_K embedding, in llama.cpp's own
K-quant mixes) against llama.cpp's logits for a fixed prompt.

* The rebuilt tokenizer gives llama.cpp's token ids for the prompt.
* Every quantized kernel dequantizes bit-exactly to ``gguf.quants.dequantize`` of the file
  (float32 scales), with real llama.cpp quantizer output including the min terms.
* Logits: llama.cpp rounds activations to 8 bits (Q8_K) for K-quant matmuls, to float16 for F16
  weights, and keeps a float16 KV cache, so it differs from an exact forward of the same
  weights by about 2e-2 (K-quants) and 7e-4 (F16) at logits of magnitude 1.3 (fixture
  docstring). Tolerances: 4e-2 and 2e-3 absolute. The fixture's q/k weights are scaled so that
  a RoPE or q/k-permutation mistake moves the logits by about 0.5.
* The Q4_K_M file (Q4_K + Q6_K + F32) decodes through LUT-GEMM: the kernels' logits equal the
  dequantized model's up to float32 summation order (1e-4 relative) and generation runs.
"""

from __future__ import annotations

import json
import os
import re

import gguf
import jax
import numpy as np
import pytest

from lutgemm_jax import models
from lutgemm_jax.format import BCQWeight, dequantize
from lutgemm_jax.linen import dequantize_params

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "gguf")
TYPES = ("F16", "Q4_K_M", "Q2_K", "Q3_K_M", "Q5_K_M")
TOLERANCE = {"F16": 2e-3}
K_QUANT_TOLERANCE = 4e-2


def fixture(kind: str) -> str:
    return os.path.join(DATA, f"tiny-llama-{kind}.gguf")


@pytest.fixture(scope="module")
def prompt():
    with open(os.path.join(DATA, "tiny-llama.prompt.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module", params=TYPES)
def loaded(request):
    return request.param, *models.load_gguf(fixture(request.param), progress=False)


def test_tokenizer_gives_llama_cpp_ids(loaded, prompt):
    _, _, _, tok = loaded
    assert tok.encode(prompt["prompt"]) == prompt["ids"]
    assert tok.decode(prompt["ids"]) == prompt["prompt"]


def test_kernels_equal_the_file_values(loaded):
    kind, config, params, _ = loaded
    reader = gguf.GGUFReader(fixture(kind))
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    checked = set()
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[0] != "blk":
            continue
        want = gguf.quants.dequantize(t.data, t.tensor_type)  # [N, K]
        if parts[2] in heads:  # undo convert_hf_to_gguf's permutation (checkpoint-formats 1.8)
            n = heads[parts[2]]
            want = want.reshape(n, -1, 2, want.shape[1]).swapaxes(1, 2).reshape(want.shape)
        layer = params[f"layers_{parts[1]}"]
        proj = {"attn_q": ("self_attn", "q_proj"), "attn_k": ("self_attn", "k_proj"),
                "attn_v": ("self_attn", "v_proj"), "attn_output": ("self_attn", "o_proj"),
                "ffn_gate": ("mlp", "gate_proj"), "ffn_up": ("mlp", "up_proj"),
                "ffn_down": ("mlp", "down_proj")}.get(parts[2])  # fmt: skip
        if proj is None:
            continue
        w = layer[proj[0]][proj[1]]["kernel"]
        got = np.asarray(dequantize(w)) if isinstance(w, BCQWeight) else np.asarray(w)
        assert isinstance(w, BCQWeight) == (kind != "F16"), t.name
        assert np.array_equal(got, want.T), t.name
        checked.add(t.tensor_type.name)
    if kind == "F16":  # the tied Q6_K head exists only in the quantized files
        assert "lm_head" not in params
    else:
        embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
        want = gguf.quants.dequantize(embd.data, embd.tensor_type)
        assert np.array_equal(np.asarray(dequantize(params["lm_head"]["kernel"])), want.T)
        assert np.array_equal(np.asarray(params["embed_tokens"]["embedding"]), want)
    assert checked


def test_logits_match_llama_cpp(loaded, prompt):
    kind, config, params, _ = loaded
    want = np.load(os.path.join(DATA, f"tiny-llama-{kind}.logits.npy"))
    model = models.from_config(config)
    got = np.asarray(models.forward(model, dequantize_params(params), np.array([prompt["ids"]])))
    assert got.shape == (1, *want.shape)
    assert np.abs(got[0] - want).max() < TOLERANCE.get(kind, K_QUANT_TOLERANCE)
    assert np.array_equal(got[0].argmax(-1), want.argmax(-1))


def test_q4_k_m_decodes_through_lut_gemm(prompt):
    config, params, tok = models.load_gguf(fixture("Q4_K_M"), progress=False)
    model = models.from_config(config)
    ids = np.array([prompt["ids"]])
    hlo = models.forward_jit.lower(model, params, ids, np.ones_like(ids)).as_text()
    assert len(re.findall(r"custom_call @lutgemm", hlo)) >= 7 * config.num_hidden_layers + 1
    got = np.asarray(models.forward(model, params, ids))
    dense = np.asarray(models.forward(model, dequantize_params(params), ids))
    assert np.abs(got - dense).max() <= 1e-4 * np.abs(dense).max()
    want = np.load(os.path.join(DATA, "tiny-llama-Q4_K_M.logits.npy"))
    assert np.abs(got[0] - want).max() < K_QUANT_TOLERANCE
    out = models.generate(model, params, ids, np.ones_like(ids), max_new_tokens=4)
    tokens = np.asarray(jax.device_get(out.tokens))
    assert tokens.shape == (1, 4) and isinstance(tok.decode(tokens[0]), str)
