"""`models.load_gguf` on small GGUF files written in the tests (gguf_files.py).

Each model is written from random Hugging Face-convention float weights (test_llama.hf_tensors)
in llama.cpp's layout and types, and compared with what the file really holds
(``gguf.quants.dequantize``, q/k rows put back):

* every BCQ kernel dequantizes bit-exactly to those values (float32 scales; both
  `lutgemm_jax.format.dequantize` and the float64 `lutgemm_jax.testing.weight_float64`);
* the loaded model's logits match test_llama's independent float64 numpy forward on those
  values (``REL`` = 1e-4 of the largest logit, the bound of test_llama: float32 rounding and
  XLA reassociation; a wrong permutation, RoPE or config moves logits by > 1e-2), and the same
  weights written as a Hugging Face directory and loaded by the float path give the same
  logits (1e-5: only the tied head's summation order differs); through the LUT-GEMM kernels the
  logits equal the dequantized model's (1e-4 relative: float32 summation order);
* errors for missing, corrupt and truncated files, unsupported architectures and types, and
  metadata that is missing, ill-typed or disagrees with the tensors.
"""

from __future__ import annotations

import dataclasses
import math

import gguf
import jax
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf_files import SPM_PIECES, spm_vocab, write_model
from test_llama import PROMPTS, hf_tensors, ref_logits, write_dir

from lutgemm_jax import BCQConfig, models
from lutgemm_jax.format import BCQWeight, dequantize
from lutgemm_jax.linen import dequantize_params
from lutgemm_jax.models import llama
from lutgemm_jax.testing import weight_float64

REL = 1e-4
VOCAB = len(spm_vocab()[0])
BASE = dict(
    vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
    max_position_embeddings=64, bos_token_id=1, eos_token_id=2, hidden_act="silu",
)  # fmt: skip
Q4_K_M = dict(
    token_embd=Q.Q4_K, attn_q=Q.Q4_K, attn_k=Q.Q4_K, attn_v=Q.Q6_K, attn_output=Q.Q4_K,
    ffn_gate=Q.Q4_K, ffn_up=Q.Q4_K, ffn_down=Q.Q6_K, output=Q.Q6_K,
)  # fmt: skip
# fmt: off
CASES = {
    # A "Q4_K_M" mix (Q4_K + Q6_K + F32 norms), untied head, GQA 4/2, q/k permuted.
    "llama_q4_k_m": (dict(BASE, model_type="llama", tie_word_embeddings=False), Q4_K_M),
    # The other K-quants; tied head on a Q6_K embedding (lm_head becomes its BCQ form).
    "llama_k_tied": (
        dict(BASE, model_type="llama", tie_word_embeddings=True),
        dict(token_embd=Q.Q6_K, attn_q=Q.Q2_K, attn_k=Q.Q3_K, attn_v=Q.Q5_K, attn_output=Q.Q3_K,
             ffn_gate=Q.Q2_K, ffn_up=Q.Q5_K, ffn_down=Q.Q6_K),
    ),
    # gguf-quantized legacy types, F16 and BF16 dense weights, llama3 RoPE via rope_freqs.
    "llama3_legacy": (
        dict(BASE, model_type="llama", tie_word_embeddings=False,
             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 64}),
        dict(token_embd=Q.Q8_0, attn_q=Q.Q4_0, attn_k=Q.Q4_1, attn_v=Q.Q5_0, attn_output=Q.Q5_1,
             ffn_gate=Q.F16, ffn_up=Q.BF16, ffn_down=Q.Q8_0, output=Q.Q5_1),
    ),
    # Qwen2: q/k/v biases, no permutation, tied F16 embedding (stays tied and float).
    "qwen2_bias": (
        dict(BASE, model_type="qwen2", rope_theta=1e6, tie_word_embeddings=True),
        dict(token_embd=Q.F16, attn_q=Q.Q8_0, attn_k=Q.Q4_0, attn_v=Q.Q5_1, attn_output=Q.Q4_K,
             ffn_gate=Q.Q5_K, ffn_up=Q.Q4_1, ffn_down=Q.Q3_K),
    ),
    # Qwen3: per-head q/k norms, head_dim 32 != 256 / 4 (K = 128 rows of o_proj: 32-blocks).
    "qwen3_qknorm": (
        dict(BASE, model_type="qwen3", head_dim=32, rope_theta=1e6, tie_word_embeddings=True,
             rms_norm_eps=1e-6),
        dict(token_embd=Q.Q8_0, attn_q=Q.Q5_0, attn_k=Q.Q8_0, attn_v=Q.Q4_1, attn_output=Q.Q5_1,
             ffn_gate=Q.Q2_K, ffn_up=Q.Q6_K, ffn_down=Q.Q4_K),
    ),
}
# fmt: on


def llama3_divisors(cfg: dict) -> np.ndarray:
    """llama.cpp's rope_freqs for a llama3 config (convert_hf_to_gguf's formula)."""
    p = cfg["rope_parameters"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    orig = p["original_max_position_embeddings"]
    out = []
    for i in range(hd // 2):
        freq = 1.0 / p["rope_theta"] ** (2 * i / hd)
        wavelen = 2 * math.pi / freq
        if wavelen < orig / hi:
            out.append(1.0)
        elif wavelen > orig / lo:
            out.append(factor)
        else:
            smooth = (orig / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out)


def write_case(path, name: str, **kw):
    cfg, types = CASES[name]
    tensors = hf_tensors(cfg, seed=len(name))
    divisors = llama3_divisors(cfg) if "rope_parameters" in cfg else None
    if divisors is not None:
        kw.setdefault("edit", lambda w: w.add_rope_scaling_orig_ctx_len(64))
    return write_model(path, cfg, tensors, types, rope_freqs=divisors, **kw)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    name = request.param
    path = tmp_path_factory.mktemp(name) / "model.gguf"
    stored = write_case(path, name)
    config, params, tok = models.load_gguf(path, progress=False)
    return name, CASES[name][0], stored, config, params, tok, path


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def leaves(params) -> dict[str, object]:
    is_bcq = lambda x: isinstance(x, BCQWeight)  # noqa: E731
    flat = jax.tree_util.tree_leaves_with_path(params, is_leaf=is_bcq)
    return {"/".join(str(k.key) for k in p): x for p, x in flat}


def test_config_from_metadata(case):
    name, cfg, _, config, _, _, _ = case
    want = llama.LlamaConfig.from_dict({**cfg, "rope_theta": cfg.get("rope_theta", 10000.0)})
    if name == "llama3_legacy":  # the fitted llama3 settings reproduce the frequencies
        np.testing.assert_allclose(
            llama.inv_frequencies(config), llama.inv_frequencies(want), rtol=1e-6
        )
        want = dataclasses.replace(
            want, **{f: getattr(config, f) for f in ("rope_low_freq_factor",
                                                     "rope_high_freq_factor")}
        )  # fmt: skip
    assert config == want


def test_weights_are_exactly_the_stored_values(case):
    """Every param equals the file's dequantized value in Hugging Face layout; quantized
    Linears are uniform BCQ of the source's q and g."""
    name, _, stored, config, params, _, _ = case
    types = CASES[name][1]
    flat = leaves(params)
    names = llama.hf_names(config)
    n_bcq = 0
    for hf, (path, transpose) in names.items():
        want = stored[hf if hf == "lm_head.weight" else "model." + hf]
        want = want.T if transpose else want
        got = flat["/".join(path)]
        if isinstance(got, BCQWeight):
            n_bcq += 1
            assert got.uniform and got.alpha.dtype == np.float32
            assert np.array_equal(np.asarray(dequantize(got)), want), hf
            assert np.array_equal(weight_float64(got).astype(np.float32), want), hf
        else:
            assert np.array_equal(np.asarray(got), want), hf
    dense = (Q.F32, Q.F16, Q.BF16)
    kinds = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    per_layer = sum(types.get(k, Q.F32) not in dense for k in kinds)
    untied_head = not config.tie_word_embeddings and types.get("output", Q.F32) not in dense
    assert n_bcq == config.num_hidden_layers * per_layer + untied_head
    tied_quantized = config.tie_word_embeddings and types.get("token_embd") not in dense
    assert ("lm_head" in params) == (tied_quantized or not config.tie_word_embeddings)
    if tied_quantized:  # the head of a quantized embedding: its BCQ form
        embed = stored["model.embed_tokens.weight"]
        assert np.array_equal(np.asarray(dequantize(params["lm_head"]["kernel"])), embed.T)


def test_logits_match_numpy_reference(case):
    _, cfg, stored, config, params, _, _ = case
    model = models.from_config(config)
    dense = dequantize_params(params)
    ids, mask = models.pad_batch(PROMPTS, 0)
    logits = np.asarray(models.forward(model, dense, ids, mask))
    for row, prompt in enumerate(PROMPTS):
        got = logits[row, ids.shape[1] - len(prompt) :]
        assert rel_err(got, ref_logits(cfg, stored, prompt)) < REL


def test_lut_gemm_logits_equal_the_dequantized_model(case):
    """Every imported type through the LUT-GEMM kernels (uniform scales, g = 16 and 32, the
    CPU sign layout on a CPU backend): the dequantized model's logits up to float32 summation
    order (1e-4 relative, test_llama's bound)."""
    _, _, _, config, params, _, _ = case
    model = models.from_config(config)
    ids, mask = models.pad_batch(PROMPTS, 0)
    got = np.asarray(models.forward(model, params, ids, mask))
    want = np.asarray(models.forward(model, dequantize_params(params), ids, mask))
    real = mask.astype(bool)
    assert rel_err(got[real], want[real]) < REL


def test_same_logits_as_the_float_checkpoint_path(case, tmp_path):
    """The stored values as a Hugging Face directory, through load_hf_checkpoint."""
    name, cfg, stored, config, params, _, _ = case
    write_dir(tmp_path, cfg, stored)
    hf_config, hf_params = models.load_hf_checkpoint(tmp_path)
    ids, mask = models.pad_batch(PROMPTS, 0)
    want = np.asarray(models.forward(models.from_config(hf_config), hf_params, ids, mask))
    got = np.asarray(models.forward(models.from_config(config), dequantize_params(params), ids,
                                    mask))  # fmt: skip
    real = mask.astype(bool)
    assert rel_err(got[real], want[real]) < 1e-5


def test_generates_through_the_loaded_tokenizer(case):
    _, _, _, config, params, tok, _ = case
    ids = tok.encode("Hello world")
    tokens = spm_vocab()[0]
    bos = [1] if config.model_type == "llama" else []  # the file has no add_bos_token: family's
    assert ids == bos + [tokens.index(p) for p in SPM_PIECES[:2]]
    assert tok.decode(ids) == "Hello world"
    assert tok.decode(tok.encode("Hé wor")) == "Hé wor"  # é by byte fallback
    out = models.generate(models.from_config(config), dequantize_params(params),
                          *models.pad_batch([ids], 0), max_new_tokens=3)  # fmt: skip
    assert np.asarray(out.tokens).shape == (1, 3)
    assert isinstance(tok.decode(np.asarray(out.tokens)[0]), str)


# ---- options ---------------------------------------------------------------------------------


def test_float16_scales_and_cpu_layout(tmp_path):
    """scale_dtype=float16: alpha and offset are the float16 roundings of the float32 ones."""
    stored = write_case(tmp_path / "m.gguf", "llama_q4_k_m")
    _, exact, _ = models.load_gguf(tmp_path / "m.gguf", progress=False, tokenizer=False,
                                   layout="canonical")  # fmt: skip
    _, compact, _ = models.load_gguf(tmp_path / "m.gguf", progress=False, tokenizer=False,
                                     scale_dtype=np.float16, layout="cpu")  # fmt: skip
    a, b = leaves(exact), leaves(compact)
    for key, w in a.items():
        if isinstance(w, BCQWeight):
            v = b[key]
            assert v.layout == "cpu" and v.alpha.dtype == np.float16
            assert np.array_equal(np.asarray(v.alpha), np.asarray(w.alpha).astype(np.float16))
            assert np.array_equal(np.asarray(v.offset), np.asarray(w.offset).astype(np.float16))
            assert np.array_equal(np.asarray(v.to_layout("canonical").bits), np.asarray(w.bits))
    assert stored  # the file was written


def test_quantize_dense_weights_on_request(tmp_path):
    write_case(tmp_path / "m.gguf", "llama3_legacy")
    cfg = BCQConfig(bits=4, group_size=64, method="rtn")
    _, params, _ = models.load_gguf(tmp_path / "m.gguf", progress=False, tokenizer=False,
                                    quantize_dense=cfg)  # fmt: skip
    for i in range(2):
        mlp = params[f"layers_{i}"]["mlp"]
        for proj in ("gate_proj", "up_proj"):  # F16 and BF16 in the file
            w = mlp[proj]["kernel"]
            assert isinstance(w, BCQWeight) and (w.num_bits, w.group_size) == (4, 64)


def test_quantize_dense_also_quantizes_a_head_tied_to_a_float_embedding(tmp_path):
    # qwen2_bias ties the head to an F16 token_embd: without quantize_dense the head stays the
    # tied float embedding; with it the head is its own BCQ copy (what the decode step reads),
    # while the embedding lookup stays float.
    write_case(tmp_path / "m.gguf", "qwen2_bias")
    _, plain, _ = models.load_gguf(tmp_path / "m.gguf", progress=False, tokenizer=False)
    assert "lm_head" not in plain
    cfg = BCQConfig(bits=4, group_size=32, method="rtn")
    _, params, _ = models.load_gguf(tmp_path / "m.gguf", progress=False, tokenizer=False,
                                    quantize_dense=cfg)  # fmt: skip
    head, embed = params["lm_head"]["kernel"], np.asarray(params["embed_tokens"]["embedding"])
    assert isinstance(head, BCQWeight) and (head.num_bits, head.group_size) == (4, 32)
    assert not isinstance(params["embed_tokens"]["embedding"], BCQWeight)
    err = np.linalg.norm(np.asarray(dequantize(head)) - embed.T) / np.linalg.norm(embed)
    assert err < 0.1  # 4-bit RTN of Gaussian rows: about 0.05


def test_unsupported_type_is_an_error_unless_requantized(tmp_path):
    cfg, _ = CASES["qwen2_bias"]
    tensors = hf_tensors(cfg, seed=1)
    write_model(tmp_path / "m.gguf", cfg, tensors, {"ffn_up": Q.MXFP4, "attn_q": Q.Q8_0})
    with pytest.raises(models.UnsupportedTensorTypeError,
                       match=r"'blk\.0\.ffn_up\.weight' has type MXFP4.*requantize="):  # fmt: skip
        models.load_gguf(tmp_path / "m.gguf", progress=False)
    config, params, _ = models.load_gguf(
        tmp_path / "m.gguf", progress=False, requantize=BCQConfig(bits=4, group_size=32)
    )
    w = params["layers_0"]["mlp"]["up_proj"]["kernel"]
    data = next(t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors
                if t.name == "blk.0.ffn_up.weight")  # fmt: skip
    want = gguf.quants.dequantize(data.data, Q.MXFP4).T
    err = np.linalg.norm(np.asarray(dequantize(w)) - want) / np.linalg.norm(want)
    assert isinstance(w, BCQWeight) and err < 0.2  # a 4-bit fit of the 4-bit MXFP4 grid


def test_llama3_frequencies_with_other_factors(tmp_path):
    """rope_freqs from low/high frequency factors 2 and 6: the fitted config reproduces them."""
    cfg = dict(CASES["llama3_legacy"][0])
    cfg["rope_parameters"] = dict(cfg["rope_parameters"], low_freq_factor=2.0,
                                  high_freq_factor=6.0)  # fmt: skip
    div = llama3_divisors(cfg)
    assert ((div > 1) & (div < 8)).sum() >= 2
    write_model(tmp_path / "m.gguf", cfg, hf_tensors(cfg, 0), {}, rope_freqs=div,
                edit=lambda w: w.add_rope_scaling_orig_ctx_len(64))  # fmt: skip
    config, _, _ = models.load_gguf(tmp_path / "m.gguf", progress=False, tokenizer=False)
    want = llama.inv_frequencies(llama.LlamaConfig.from_dict(cfg))
    np.testing.assert_allclose(llama.inv_frequencies(config), want, rtol=1e-6)
    assert config.rope_type == "llama3" and config.rope_factor == 8.0


# ---- errors ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "m.gguf"
    write_case(path, "qwen2_bias")
    return path


def test_missing_corrupt_and_truncated_files(good_file, tmp_path):
    with pytest.raises(models.GGUFError, match="no such file"):
        models.load_gguf(tmp_path / "absent.gguf")
    data = good_file.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + data[4:])
    with pytest.raises(models.GGUFError, match="bad.gguf: not a readable GGUF file"):
        models.load_gguf(bad, progress=False)
    for cut in (len(data) - 100, len(data) // 2, 20):
        bad.write_bytes(data[:cut])
        with pytest.raises(models.GGUFError, match="truncated or corrupt"):
            models.load_gguf(bad, progress=False)


def edited(tmp_path, name: str, edit=None, tensors=None, types=None):
    cfg, case_types = CASES[name]
    path = tmp_path / "m.gguf"
    write_model(path, cfg, tensors or hf_tensors(cfg, 0), types or case_types, edit=edit)
    return path


def test_wrong_metadata(tmp_path):
    def add(key, value, kind):
        return lambda w: getattr(w, f"add_{kind}")(key, value)

    path = edited(tmp_path, "qwen2_bias", add("qwen2.rope.scaling.type", "yarn", "string"))
    with pytest.raises(models.GGUFError, match=r"rope.scaling.type 'yarn' is not supported"):
        models.load_gguf(path, progress=False)
    path = edited(tmp_path, "qwen2_bias", add("split.count", 3, "uint16"))
    with pytest.raises(models.GGUFError, match=r"shard 1 of a file split in 3; merge"):
        models.load_gguf(path, progress=False)


def test_metadata_checks(tmp_path, monkeypatch):
    """Keys removed or retyped after writing (the writer refuses duplicates), through the
    reader's fields."""
    path = edited(tmp_path, "qwen2_bias")
    real = gguf.GGUFReader

    def reader_without(key, replace=None):
        def make(*a, **kw):
            r = real(*a, **kw)
            if replace is None:
                del r.fields[key]
            else:
                r.fields[key] = r.fields[replace]
            return r

        return make

    cases = [
        ("qwen2.block_count", None, "metadata key 'qwen2.block_count' is missing"),
        ("qwen2.block_count", "general.architecture", r"'qwen2.block_count' has value 'qwen2'"),
        ("qwen2.attention.head_count", "qwen2.context_length", "dimension_count 64 != head_dim 4"),
        ("general.architecture", None, "'general.architecture' is missing"),
        ("tokenizer.ggml.scores", None, "cannot rebuild the tokenizer.*scores"),
    ]
    for key, replace, match in cases:
        monkeypatch.setattr(gguf, "GGUFReader", reader_without(key, replace))
        with pytest.raises(models.GGUFError, match=match):
            models.load_gguf(path, progress=False)
    monkeypatch.setattr(gguf, "GGUFReader", real)


def test_unsupported_architecture(tmp_path):
    cfg, types = CASES["qwen2_bias"]
    path = tmp_path / "m.gguf"
    write_model(path, cfg, hf_tensors(cfg, 0), types)
    data = path.read_bytes().replace(b"qwen2", b"qwen9")
    path.write_bytes(data)
    with pytest.raises(models.GGUFError, match=r"general.architecture 'qwen9' is not supported"):
        models.load_gguf(path, progress=False)


def test_shapes_that_disagree_with_metadata(tmp_path):
    cfg, types = CASES["qwen2_bias"]
    tensors = hf_tensors(cfg, 0)
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"][
        :256
    ]
    path = edited(tmp_path, "qwen2_bias", tensors=tensors)
    with pytest.raises(models.GGUFError, match=r"'blk.1.ffn_up.weight' has shape \[256, 256\]"):
        models.load_gguf(path, progress=False)
    tensors = hf_tensors(cfg, 0)
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    path = edited(tmp_path, "qwen2_bias", tensors=tensors)
    with pytest.raises(models.GGUFError, match=r"missing.*blk.1.attn_k.bias"):
        models.load_gguf(path, progress=False)


# ---- byte-level BPE tokenizers ---------------------------------------------------------------


def gpt2_meta(pre: str) -> dict:
    """A byte-level BPE vocabulary: the 256 byte characters, merges building "Hello",
    "Ġworld" and "123", and one control token."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = ["H e", "He l", "Hel l", "Hell o", "Ġ w", "Ġw o", "Ġwo r", "Ġwor l", "Ġworl d",
              "1 2", "12 3"]  # fmt: skip
    tokens = alphabet + [m.replace(" ", "") for m in merges] + ["<|endoftext|>"]
    types = [1] * (len(tokens) - 1) + [3]
    return dict(model="gpt2", pre=pre, tokens=tokens, token_type=types, merges=merges,
                bos_token_id=len(tokens) - 1)  # fmt: skip


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "smollm", "default"])
def test_byte_level_bpe_tokenizer(pre):
    from lutgemm_jax.models.gguf_tokenizer import build_tokenizer

    meta = gpt2_meta(pre)
    tok = build_tokenizer(meta, default_add_bos=pre == "llama-bpe")
    vocab = {t: i for i, t in enumerate(meta["tokens"])}
    ids = tok.encode("Hello world<|endoftext|>123")
    bos = [vocab["<|endoftext|>"]] if pre == "llama-bpe" else []
    # llama3 splits digits in runs of up to 3 ("123" is one piece, merged); qwen2 and smollm
    # split every digit; GPT-2's regex keeps digit runs.
    digits = ["1", "2", "3"] if pre in ("qwen2", "smollm") else ["123"]
    want = bos + [vocab[t] for t in ["Hello", "Ġworld", "<|endoftext|>", *digits]]
    assert ids == want
    assert tok.decode(ids) == "Hello world123"  # special tokens are skipped


def test_tokenizer_metadata_errors():
    from lutgemm_jax.models.gguf_tokenizer import build_tokenizer

    with pytest.raises(ValueError, match="tokenizer.ggml.pre 'falcon' is not rebuilt"):
        build_tokenizer(gpt2_meta("falcon"), default_add_bos=False)
    with pytest.raises(ValueError, match="tokenizer.ggml.model 'bert' is not rebuilt"):
        build_tokenizer(dict(gpt2_meta("qwen2"), model="bert"), default_add_bos=False)
    with pytest.raises(ValueError, match="merges is missing"):
        build_tokenizer(dict(gpt2_meta("qwen2"), merges=[]), default_add_bos=False)
    with pytest.raises(ValueError, match="token_type has 2 entries"):
        build_tokenizer(dict(gpt2_meta("qwen2"), token_type=[1, 1]), default_add_bos=False)


def test_decode_example_takes_a_gguf_file(tmp_path, capsys):
    """examples/decode.py --model x.gguf decodes the file as loaded (no re-quantization)."""
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("decode", f"{root}/examples/decode.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    write_case(tmp_path / "m.gguf", "llama_q4_k_m")
    cli.main(["--model", str(tmp_path / "m.gguf"), "--max-new-tokens", "2", "--prompt",
              "Hello world"])  # fmt: skip
    out = capsys.readouterr().out
    assert "[gguf]" in out and "'Hello world' ->" in out and "-bit]" not in out
    with pytest.raises(SystemExit, match="error: .*absent.gguf: no such file"):
        cli.main(["--model", str(tmp_path / "absent.gguf")])


def test_sizes_that_do_not_divide(tmp_path):
    cfg, types = CASES["qwen2_bias"]
    tensors = hf_tensors(cfg, 0)
    path = tmp_path / "heads.gguf"
    write_model(path, dict(cfg, num_attention_heads=3), tensors, types)
    with pytest.raises(models.GGUFError, match="embedding_length 256 is not a multiple of "
                       "qwen2.attention.head_count 3"):  # fmt: skip
        models.load_gguf(path, progress=False)
    # A Q8_0 tensor whose row length (ne0) is not a whole number of 32-weight blocks: the
    # tensor info's ne0 256 patched to 200.
    path = tmp_path / "blocks.gguf"
    write_model(path, cfg, tensors, types)
    data = bytearray(path.read_bytes())
    name = b"blk.0.attn_q.weight"
    at = data.index(name) + len(name) + 4  # past the name and n_dims
    assert int.from_bytes(data[at : at + 8], "little") == 256
    data[at : at + 8] = (200).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(models.GGUFError, match=r"row size \(200\) is not a multiple of Q8_0"):
        models.load_gguf(path, progress=False)
