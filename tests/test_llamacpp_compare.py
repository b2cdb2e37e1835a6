"""The llama.cpp comparison tooling without llama.cpp: the GGUF writer of benchmarks/gguf_llama.py
(read back with the gguf package), the committed fixtures it made (tests/data/gguf), the
benchmark's missing-dependency message and the per-call timings it takes from
`lutgemm_jax.models.benchmark_decode`."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "data" / "gguf"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gguf_llama  # noqa: E402
import llamacpp_compare  # noqa: E402

SHAPE = gguf_llama.LlamaShape(
    hidden=64, intermediate=96, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=300,
    rope_theta=5e5, rms_eps=1e-6,
)  # fmt: skip


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """GGUF q/k rows -> Hugging Face rows (checkpoint-formats.md 1.8, written independently of
    gguf_llama.permute_qk): GGUF row h*hd + 2i + j is HF row h*hd + j*hd/2 + i."""
    hd = w.shape[0] // n_heads
    out = np.empty_like(w)
    for h in range(n_heads):
        for i in range(hd // 2):
            for j in range(2):
                out[h * hd + j * hd // 2 + i] = w[h * hd + 2 * i + j]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_writer_round_trip(tmp_path, dtype):
    path = tmp_path / "m.gguf"
    pieces = ["▁", "a", "b", "▁a", "ab"]
    vocab = gguf_llama.spm_vocab(SHAPE.vocab, pieces)
    gguf_llama.write_llama_gguf(path, SHAPE, gguf_llama.random_tensors(SHAPE, 3), vocab,
                                dtype=dtype)  # fmt: skip
    want = dict(gguf_llama.random_tensors(SHAPE, 3))
    r = gguf.GGUFReader(str(path))
    f = {k: v.contents() for k, v in r.fields.items()}
    assert f["general.architecture"] == "llama"
    assert (f["llama.embedding_length"], f["llama.feed_forward_length"]) == (64, 96)
    assert (f["llama.block_count"], f["llama.attention.head_count"]) == (2, 4)
    assert (f["llama.attention.head_count_kv"], f["llama.rope.dimension_count"]) == (2, 16)
    assert f["llama.rope.freq_base"] == 5e5
    assert f["llama.attention.layer_norm_rms_epsilon"] == np.float32(1e-6)
    assert f["tokenizer.ggml.model"] == "llama"
    tokens = f["tokenizer.ggml.tokens"]
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and tokens[3 + 0x41] == "<0x41>"
    assert tokens[259:264] == pieces and len(tokens) == 300
    types = f["tokenizer.ggml.token_type"]
    assert types[:4] == [2, 3, 3, 6] and types[259] == 1
    assert f["tokenizer.ggml.scores"][259:262] == [0.0, -1.0, -2.0]
    assert [t.name for t in r.tensors] == list(want)  # untied: output.weight last
    for t in r.tensors:
        a = np.asarray(t.data)
        assert a.shape == want[t.name].shape
        assert [int(x) for x in t.shape] == list(reversed(a.shape))  # ne0 = in-features
        if a.ndim == 1:  # norms stay float32
            assert a.dtype == np.float32 and np.array_equal(a, want[t.name])
            continue
        assert a.dtype == dtype
        if ".attn_q." in t.name or ".attn_k." in t.name:
            a = unpermute(a, SHAPE.heads if ".attn_q." in t.name else SHAPE.kv_heads)
            assert not np.array_equal(np.asarray(t.data), a)  # rows did move
        np.testing.assert_array_equal(a, want[t.name].astype(dtype))


def test_writer_refuses_a_wrong_tensor_list(tmp_path):
    tensors = list(gguf_llama.random_tensors(SHAPE, 0))
    vocab = gguf_llama.spm_vocab(SHAPE.vocab)
    with pytest.raises(ValueError, match="expected blk.0.attn_q.weight"):
        gguf_llama.write_llama_gguf(tmp_path / "a.gguf", SHAPE, tensors[:2] + tensors[3:], vocab)
    with pytest.raises(ValueError, match="got 20 tensors, expected 21"):
        gguf_llama.write_llama_gguf(tmp_path / "b.gguf", SHAPE, tensors[:-1], vocab)
    with pytest.raises(ValueError, match="vocab has 299 tokens"):
        gguf_llama.write_llama_gguf(tmp_path / "c.gguf", SHAPE, tensors,
                                    gguf_llama.spm_vocab(299))  # fmt: skip


# llama.cpp's mixes as recorded in the committed files (llama-cpp-python 0.3.36), per tensor of
# a block: layer 1 of 2 gets the "more bits" type for attn_v / ffn_down in the _M mixes
FIXTURE_TYPES = {
    "F16": ("F16", ["F16"] * 7, ["F16"] * 7),
    "Q4_K_M": ("Q6_K", ["Q4_K"] * 7, ["Q4_K"] * 2 + ["Q6_K"] + ["Q4_K"] * 3 + ["Q6_K"]),
    "Q5_K_M": ("Q6_K", ["Q5_K"] * 7, ["Q5_K"] * 2 + ["Q6_K"] + ["Q5_K"] * 3 + ["Q6_K"]),
    "Q3_K_M": ("Q6_K", ["Q3_K", "Q3_K", "Q5_K", "Q4_K", "Q3_K", "Q3_K", "Q4_K"],
               ["Q3_K", "Q3_K", "Q5_K", "Q4_K", "Q3_K", "Q3_K", "Q4_K"]),
    "Q2_K": ("Q6_K", ["Q2_K", "Q2_K", "Q3_K", "Q3_K", "Q2_K", "Q2_K", "Q3_K"],
             ["Q2_K", "Q2_K", "Q3_K", "Q3_K", "Q2_K", "Q2_K", "Q3_K"]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FIXTURE_TYPES))
def test_committed_fixtures(name):
    """Each fixture holds the documented tensor types, and llama.cpp's logits for it match the
    recorded prompt and the file's vocabulary."""
    meta = json.loads((FIXTURES / "tiny-llama.prompt.json").read_text())
    r = gguf.GGUFReader(str(FIXTURES / f"tiny-llama-{name}.gguf"))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    embd, layer0, layer1 = FIXTURE_TYPES[name]
    assert types.pop("token_embd.weight") == embd and "output.weight" not in types  # tied
    for i, want in enumerate((layer0, layer1)):
        got = [types.pop(f"blk.{i}.{n}.weight") for n in gguf_llama.LINEAR]
        assert got == want, f"blk.{i}"
    assert set(types.values()) == {"F32"}  # the five norms
    vocab = len(r.fields["tokenizer.ggml.tokens"].contents())
    logits = np.load(FIXTURES / f"tiny-llama-{name}.logits.npy")
    assert logits.dtype == np.float32 and logits.shape == (len(meta["ids"]), vocab)
    assert np.isfinite(logits).all() and meta["ids"][0] == 1  # bos first


def test_missing_llama_cpp_is_a_clear_exit(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    with pytest.raises(SystemExit, match="llama-cpp-python is not installed.*GGML_NATIVE=OFF"):
        gguf_llama.import_llama_cpp()


def test_compare_arguments(capsys):
    with pytest.raises(SystemExit):
        llamacpp_compare.parse_args(["--random", "smoke"])
    assert "--random needs --type" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        llamacpp_compare.parse_args(["--gguf", "/nonexistent.gguf"])
    assert "no such file" in capsys.readouterr().err


def test_benchmark_decode_reports_every_timed_call():
    from lutgemm_jax import models

    config = models.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2,
                                max_position_embeddings=32)  # fmt: skip
    params = models.init_params(config, 0)
    r = models.benchmark_decode(models.from_config(config), params, prompt_len=4, steps=2,
                                repeats=3, warmup=1)  # fmt: skip
    assert len(r["times"]) == 3 and all(t > 0 for t in r["times"])
    assert r["min"] == min(r["times"]) and r["max"] == max(r["times"])
    assert r["median"] == statistics.median(r["times"])
    assert r["tokens_per_s"] == pytest.approx(1.0 / r["median"])
