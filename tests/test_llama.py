"""Llama family (Llama 2/3, Mistral, Qwen2, Qwen3) against an independent float64 numpy forward.

The reference below is written from the published equations (checkpoint-formats.md 5.2, 5.4:
RMSNorm, rotate-half RoPE with llama3 scaling, GQA by integer division of the head index,
SwiGLU), reads Hugging Face names and ``[out, in]`` weights, and shares no code with the model.
Each case writes a random checkpoint *in Hugging Face names* with a hand-written config.json
and loads it with `models.load_hf_checkpoint`, so names, transposes and config parsing are
checked by the same comparison.

Tolerances: float32 model vs float64 reference, ``max|got - want| <= 1e-4 * max|want|``
(float32 rounding through 2 layers of width <= 96 stays around 1e-6 relative; 1e-4 leaves room
for reassociation by XLA while catching any wrong formula, which moves logits by > 1e-2).
"""

from __future__ import annotations

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from lutgemm_jax import models
from lutgemm_jax.format import BCQWeight
from lutgemm_jax.linen import dequantize_params
from lutgemm_jax.models import generation

REL = 1e-4
BASE = dict(
    vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
    max_position_embeddings=64, bos_token_id=1, eos_token_id=2, hidden_act="silu",
)  # fmt: skip
CASES = {
    # GQA 4/2, untied head, legacy rope_theta spelling.
    "llama2_gqa": dict(BASE, model_type="llama", rope_theta=10000.0, tie_word_embeddings=False),
    # llama3 scaling in the transformers >= 5 spelling; head_dim 24 != 64 / 4; one KV head;
    # q/k/v/o and MLP biases; tied head. original_max 32 puts the 12 frequencies in all three
    # llama3 regimes (wavelengths ~6, ~19, then > 32).
    "llama3_scaled": dict(
        BASE, model_type="llama", head_dim=24, num_key_value_heads=1, tie_word_embeddings=True,
        attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32},
    ),  # fmt: skip
    # Sliding window of 3 over prompts of up to 7 tokens; rope_scaling with the old "type" key.
    "mistral_window": dict(
        BASE, model_type="mistral", sliding_window=3, rope_theta=10000.0,
        rope_scaling={"type": "linear", "factor": 2.0},
    ),  # fmt: skip
    "qwen2_bias": dict(BASE, model_type="qwen2", rope_theta=1e6, tie_word_embeddings=True),
    "qwen3_qknorm": dict(
        BASE, model_type="qwen3", head_dim=32, rope_theta=1e6, tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    ),  # fmt: skip
}


# ---- the reference ---------------------------------------------------------------------------


def hf_tensors(cfg: dict, seed: int) -> dict[str, np.ndarray]:
    """Random float32 weights under Hugging Face names and shapes for config dict ``cfg``."""
    rng = np.random.default_rng(seed)
    e, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or e // h
    mt = cfg["model_type"]
    qkv_bias = mt == "qwen2" or cfg.get("attention_bias", False)
    o_bias = mt != "qwen2" and cfg.get("attention_bias", False)
    mlp_bias = cfg.get("mlp_bias", False)

    def w(*shape, std=0.05):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    t = {"model.embed_tokens.weight": w(v, e, std=0.5), "model.norm.weight": 1 + w(e, std=0.2)}
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = w(v, e, std=0.5)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + w(e, std=0.2)
        t[p + "post_attention_layernorm.weight"] = 1 + w(e, std=0.2)
        for name, rows in (("q", h * hd), ("k", kv * hd), ("v", kv * hd)):
            t[p + f"self_attn.{name}_proj.weight"] = w(rows, e, std=0.2)
            if qkv_bias:
                t[p + f"self_attn.{name}_proj.bias"] = w(rows, std=0.2)
        t[p + "self_attn.o_proj.weight"] = w(e, h * hd)
        if o_bias:
            t[p + "self_attn.o_proj.bias"] = w(e)
        if mt == "qwen3":
            t[p + "self_attn.q_norm.weight"] = 1 + w(hd, std=0.2)
            t[p + "self_attn.k_norm.weight"] = 1 + w(hd, std=0.2)
        for name, shape in (("gate", (f, e)), ("up", (f, e)), ("down", (e, f))):
            t[p + f"mlp.{name}_proj.weight"] = w(*shape)
            if mlp_bias:
                t[p + f"mlp.{name}_proj.bias"] = w(shape[0])
    return t


def ref_inv_freq(cfg: dict, d: int) -> np.ndarray:
    """Inverse frequencies per checkpoint-formats.md 5.2, one scalar at a time."""
    rope = cfg.get("rope_parameters") or dict(cfg.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    out = []
    for i in range(d // 2):
        inv = theta ** (-2.0 * i / d)
        if kind == "linear":
            inv /= rope["factor"]
        elif kind == "llama3":
            orig = rope["original_max_position_embeddings"]
            lo, hi, factor = rope["low_freq_factor"], rope["high_freq_factor"], rope["factor"]
            wavelen = 2 * math.pi / inv
            if wavelen > orig / lo:
                inv /= factor
            elif wavelen >= orig / hi:
                s = (orig / wavelen - lo) / (hi - lo)
                inv = (1 - s) * inv / factor + s * inv
        out.append(inv)
    return np.array(out)


def ref_logits(cfg: dict, t: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """float64 logits ``[T, V]`` of one unpadded sequence (positions 0..T-1)."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    e, h, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or e // h
    eps, n = cfg["rms_norm_eps"], len(ids)
    window = cfg.get("sliding_window") if cfg["model_type"] == "mistral" else None

    def rms(x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight

    def lin(x, name):
        y = x @ t[name + ".weight"].T
        return y + t[name + ".bias"] if name + ".bias" in t else y

    angle = np.arange(n)[:, None] * ref_inv_freq(cfg, hd)[None, :]
    cos = np.cos(np.concatenate([angle, angle], -1))[:, None, :]
    sin = np.sin(np.concatenate([angle, angle], -1))[:, None, :]

    def rope(x):  # [T, heads, hd]; rotate_half(x) = concat(-x2, x1)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    x = t["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = rms(x, t[p + "input_layernorm.weight"])
        q = lin(a, p + "self_attn.q_proj").reshape(n, h, hd)
        k = lin(a, p + "self_attn.k_proj").reshape(n, kv, hd)
        v = lin(a, p + "self_attn.v_proj").reshape(n, kv, hd)
        if cfg["model_type"] == "qwen3":
            q = rms(q, t[p + "self_attn.q_norm.weight"])
            k = rms(k, t[p + "self_attn.k_norm.weight"])
        q, k = rope(q), rope(k)
        out = np.zeros((n, h, hd))
        for head in range(h):
            g = head // (h // kv)
            s = q[:, head] @ k[:, g].T / math.sqrt(hd)
            for qi in range(n):
                for kj in range(n):
                    if kj > qi or (window is not None and qi - kj >= window):
                        s[qi, kj] = -np.inf
            pr = np.exp(s - s.max(-1, keepdims=True))
            out[:, head] = (pr / pr.sum(-1, keepdims=True)) @ v[:, g]
        x = x + lin(out.reshape(n, h * hd), p + "self_attn.o_proj")
        m = rms(x, t[p + "post_attention_layernorm.weight"])
        gate = lin(m, p + "mlp.gate_proj")
        x = x + lin(gate / (1 + np.exp(-gate)) * lin(m, p + "mlp.up_proj"), p + "mlp.down_proj")
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    return rms(x, t["model.norm.weight"]) @ head.T


# ---- helpers ---------------------------------------------------------------------------------

PROMPTS = [[1, 5, 9, 33, 70, 12, 8], [1, 40, 41]]  # the second row is left-padded by 4


def write_dir(path, cfg: dict, tensors: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "model.safetensors"))


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def padded_check(model, params, cfg, tensors, bound=REL) -> None:
    ids, mask = models.pad_batch(PROMPTS, 0)
    logits = np.asarray(models.forward(model, params, ids, mask))
    for row, prompt in enumerate(PROMPTS):
        got = logits[row, ids.shape[1] - len(prompt) :]
        assert rel_err(got, ref_logits(cfg, tensors, prompt)) < bound


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    cfg = CASES[request.param]
    tensors = hf_tensors(cfg, seed=len(request.param))
    path = tmp_path_factory.mktemp(request.param)
    write_dir(path, cfg, tensors)
    config, params = models.load_hf_checkpoint(path)
    return request.param, cfg, tensors, config, params, path


# ---- tests -----------------------------------------------------------------------------------


def test_config_fields_parsed(case):
    name, cfg, _, config, _, _ = case
    assert config.model_type == cfg["model_type"]
    assert config.head_dim == cfg.get("head_dim", 16)
    assert config.num_key_value_heads == cfg["num_key_value_heads"]
    assert config.qk_norm == (name == "qwen3_qknorm")
    assert config.sliding_window == (3 if name == "mistral_window" else None)
    assert config.rope_type == {"llama3_scaled": "llama3", "mistral_window": "linear"}.get(
        name, "default"
    )


def test_full_sequence_logits_match_numpy(case):
    _, cfg, tensors, config, params, _ = case
    padded_check(models.from_config(config), params, cfg, tensors)


def test_cached_decoding_equals_uncached_forward(case):
    """Greedy generation through the KV cache (prefill, then one token per scan step) gives the
    logits of a full forward over prompt + generated tokens, and the numpy reference's."""
    _, cfg, tensors, config, params, _ = case
    model = models.from_config(config)
    ids, mask = models.pad_batch(PROMPTS, 0)
    new = 5
    gen = models.generate(
        model, params, ids, mask, max_new_tokens=new, return_logits=True, stop_at_eos=False
    )
    tokens = np.asarray(gen.tokens)
    full_ids = np.concatenate([ids, tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(tokens)], axis=1)
    full = np.asarray(models.forward(model, params, full_ids, full_mask))
    t = ids.shape[1]
    assert rel_err(gen.logits, full[:, t - 1 : -1]) < 1e-5
    np.testing.assert_array_equal(tokens, np.argmax(full[:, t - 1 : -1], -1))
    for row, prompt in enumerate(PROMPTS):
        want = ref_logits(cfg, tensors, prompt + list(tokens[row]))[len(prompt) - 1 : -1]
        assert rel_err(gen.logits[row], want) < REL


def test_bfloat16_params(case):
    """bfloat16 params compute in float32 (the model's dtype): exactly the float32 model on the
    bf16-rounded weights, so the reference gets the same rounded weights and the same bound."""
    _, cfg, tensors, config, _, path = case
    _, params = models.load_hf_checkpoint(path, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    rounded = {k: np.asarray(jnp.asarray(v, jnp.bfloat16), np.float32) for k, v in tensors.items()}
    padded_check(models.from_config(config), params, cfg, rounded)


def test_sliding_window_changes_the_result():
    """The window matters for prompts longer than it (else the mistral case proves nothing)."""
    cfg = CASES["mistral_window"]
    tensors = hf_tensors(cfg, seed=1)
    windowed = ref_logits(cfg, tensors, PROMPTS[0])
    full = ref_logits({**cfg, "sliding_window": None}, tensors, PROMPTS[0])
    assert rel_err(windowed[3:], full[3:]) > 1e-2
    assert rel_err(windowed[:3], full[:3]) < 1e-12


def test_llama3_frequencies_cover_all_regimes():
    cfg = CASES["llama3_scaled"]
    inv = ref_inv_freq(cfg, 24)
    base = 500000.0 ** (-np.arange(0, 24, 2) / 24)
    ratio = base / inv
    assert np.isclose(ratio[0], 1.0) and np.isclose(ratio[-1], 8.0)
    assert np.any((ratio > 1.01) & (ratio < 7.99))  # the interpolated band
    config = models.config_from_dict(cfg)
    np.testing.assert_allclose(models.llama.inv_frequencies(config), inv, rtol=1e-6)


def test_quantize_model_with_group_size_16_and_uniform_rtn(case):
    """models.quantize_model(group_size=16, method="rtn"): every decoder Linear is a uniform
    g = 16 weight (hidden 64, intermediate 96: K a multiple of 32), the summary reports its
    bits per weight, and the model on the packed weights equals the model on their dequantized
    copies (<= 1e-4 relative: float32 summation order only)."""
    _, _, _, config, params, _ = case
    model = models.from_config(config)
    qparams, summary = models.quantize_model(
        params, bits=4, group_size=16, method="rtn", alpha_dtype=jnp.float16, return_summary=True
    )
    is_bcq = lambda x: isinstance(x, BCQWeight)  # noqa: E731
    linears = [x for x in jax.tree_util.tree_leaves(qparams, is_leaf=is_bcq) if is_bcq(x)]
    assert len(linears) == 7 * config.num_hidden_layers
    assert all(w.uniform and w.group_size == 16 and w.alpha.shape[1] == 1 for w in linears)
    # 4 sign bits + a float16 scale and offset per 16 weights
    assert all(s.bits_per_weight == 6.0 for s in summary.layers)
    ids, mask = models.pad_batch(PROMPTS, 0)
    got = np.asarray(models.forward(model, qparams, ids, mask))
    dense = np.asarray(models.forward(model, dequantize_params(qparams), ids, mask))
    real = mask.astype(bool)
    assert rel_err(got[real], dense[real]) < REL


def test_quantized_model_decodes_through_lut_gemm(case):
    """3-bit g32 BCQ (the default alternating fit): every decoder Linear becomes a BCQWeight
    and runs as the lut_gemm custom call.

    Bounds: against the float model on the *dequantized* weights the only difference is the
    kernel's float32 summation order (<= 1e-4 relative). Against the original float model the
    difference is the quantization error: each kernel's relative (Frobenius) error ``e_w`` is
    ~0.18 for 3-bit fits of Gaussian weights, and the logits' relative error is a small multiple
    of it, since 2 layers x 7 Linears each add an error of relative size ``e_w`` to the residual
    stream (1.5-1.9 ``e_w`` measured on these five configs). We require 0 < error < 2.5 ``e_w``.
    """
    _, _, _, config, params, _ = case
    model = models.from_config(config)
    qparams = models.quantize_model(params, bits=3, group_size=32)
    is_bcq = lambda x: isinstance(x, BCQWeight)  # noqa: E731
    linears = [x for x in jax.tree_util.tree_leaves(qparams, is_leaf=is_bcq) if is_bcq(x)]
    assert len(linears) == 7 * config.num_hidden_layers
    ids, mask = models.pad_batch(PROMPTS, 0)
    hlo = models.forward_jit.lower(model, qparams, ids, mask).as_text()
    assert len(re.findall(r"custom_call @lutgemm", hlo)) >= 7 * config.num_hidden_layers
    got = np.asarray(models.forward(model, qparams, ids, mask))
    dense_params = dequantize_params(qparams)
    dense = np.asarray(models.forward(model, dense_params, ids, mask))
    real = mask.astype(bool)
    assert rel_err(got[real], dense[real]) < REL

    def frob(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    flat_q = dict(jax.tree_util.tree_leaves_with_path(dense_params))
    e_w = max(
        frob(flat_q[path], w)
        for path, w in jax.tree_util.tree_leaves_with_path(params)
        if str(path[-1].key) == "kernel" and str(path[0].key).startswith("layers_")
    )
    ref = np.asarray(models.forward(model, params, ids, mask))
    assert 0 < frob(got[real], ref[real]) < 2.5 * e_w
    # Decoding too: the prefill and the scanned decode step both call the kernel per Linear.
    args = (qparams, ids, mask, jax.random.PRNGKey(0), np.zeros((2, 3), np.int32), False)
    hlo = generation._generate.lower(model, *args, max_new_tokens=3, sampling=models.Sampling(),
                                     return_logits=False, stop_at_eos=False).as_text()  # fmt: skip
    assert len(re.findall(r"custom_call @lutgemm", hlo)) >= 2 * 7 * config.num_hidden_layers


def test_perplexity_matches_numpy(case):
    """Windowed perplexity (windows of 5 over 12 tokens, the last one padded) equals
    exp(mean NLL) of the reference's log-softmax over the same windows (1e-4 relative)."""
    _, cfg, tensors, config, params, _ = case
    ids = [1, 5, 9, 33, 70, 12, 8, 40, 41, 3, 17, 60]
    ppl, count = models.perplexity(models.from_config(config), params, ids, seq_len=5)
    nll = []
    for s in range(0, len(ids) - 1, 5):
        window = ids[s : s + 5]
        logits = ref_logits(cfg, tensors, window)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                               keepdims=True)) - logits.max(-1, keepdims=True)  # fmt: skip
        nll += [-logp[i, window[i + 1]] for i in range(len(window) - 1)]
    assert count == len(nll) == 9
    assert abs(ppl - math.exp(np.mean(nll))) < 1e-4 * ppl
