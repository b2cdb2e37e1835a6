"""OPT end to end: model variants, KV cache vs full forward, HF checkpoints, generation,
quantized save/load, and the CLI (tiny configs so the whole file runs in well under a minute)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lutgemm_jax.format import BCQWeight, to_layout
from lutgemm_jax.models import opt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = opt.OPTConfig(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    ffn_dim=128,
    num_attention_heads=4,
    max_position_embeddings=64,
)
# OPT-350M's structure: post-LN, no final layer norm, project_in/out around a narrower embedding.
TINY_350M = dataclasses.replace(TINY, word_embed_proj_dim=32, do_layer_norm_before=False)
VARIANTS = {"pre_ln": TINY, "post_ln_proj": TINY_350M}


def _params(config, seed=0):
    # logit_std 2 keeps the tiny model's softmax away from one-hot, so comparisons are sharp.
    return opt.init_params(config, seed, logit_std=2.0)


def _batch():
    return opt.pad_batch([[2, 5, 6, 7, 8, 9, 10], [2, 40, 41]], TINY.pad_token_id)


def _np(x):
    return np.asarray(x, np.float64)


def test_presets_and_config_json(tmp_path):
    assert opt.OPTConfig.preset("opt-1.3b").hidden_size == 2048
    c350 = opt.OPTConfig.preset("350m")
    assert c350.has_projections and not c350.has_final_layer_norm
    assert abs(opt.OPTConfig.preset("125m").num_params() - 125.2e6) < 1e6
    assert abs(opt.OPTConfig.preset("175b").num_params() - 175e9) < 1e9
    hf = {  # the fields of facebook/opt-350m's config.json that matter, plus some that do not
        "_remove_final_layer_norm": False, "activation_function": "relu",
        "do_layer_norm_before": False,
        "dropout": 0.1, "ffn_dim": 4096, "hidden_size": 1024, "max_position_embeddings": 2048,
        "model_type": "opt", "num_attention_heads": 16, "num_hidden_layers": 24, "pad_token_id": 1,
        "bos_token_id": 2, "eos_token_id": 2, "vocab_size": 50272, "word_embed_proj_dim": 512,
        "torch_dtype": "float16", "prefix": "</s>",
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert opt.OPTConfig.from_json(tmp_path) == c350
    assert opt.OPTConfig.from_dict(c350.to_dict()) == c350
    with pytest.raises(ValueError, match="unknown OPT preset"):
        opt.OPTConfig.preset("7b")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kv_cache_decoding_matches_full_forward(variant):
    config = VARIANTS[variant]
    model, params = opt.OPT(config), _params(config)
    ids, mask = _batch()
    n = 6
    gen = opt.generate(model, params, ids, mask, max_new_tokens=n, return_logits=True,
                       stop_at_eos=False)  # fmt: skip
    assert gen.tokens.shape == (2, n) and gen.logits.shape == (2, n, config.vocab_size)
    full_ids = np.concatenate([ids, np.asarray(gen.tokens)], axis=1)
    full_mask = np.concatenate([mask, np.ones((2, n), np.int32)], axis=1)
    full = opt.forward(model, params, jnp.asarray(full_ids), jnp.asarray(full_mask))
    # Logits that produced generated token j come from position T - 1 + j of the full forward.
    ref = _np(full[:, ids.shape[1] - 1 : -1])
    np.testing.assert_allclose(_np(gen.logits), ref, atol=2e-4 * np.abs(ref).max())
    np.testing.assert_array_equal(np.asarray(gen.tokens), np.argmax(ref, -1))
    # Left padding changes nothing: the short row alone gives the same logits.
    alone = opt.generate(model, params, ids[1:, 4:], max_new_tokens=n, return_logits=True,
                         stop_at_eos=False)  # fmt: skip
    np.testing.assert_allclose(
        _np(alone.logits[0]), _np(gen.logits[1]), atol=1e-4 * np.abs(ref).max()
    )


def test_post_ln_and_projections_have_hf_structure():
    params = _params(TINY_350M)
    assert params["project_in"]["kernel"].shape == (32, 64)
    assert params["project_out"]["kernel"].shape == (64, 32)
    assert params["embed_tokens"]["embedding"].shape == (128, 32)
    assert params["embed_positions"]["embedding"].shape == (64 + 2, 64)
    assert "final_layer_norm" not in params
    assert "final_layer_norm" in _params(TINY)


def test_sampling_is_seeded_and_respects_top_k():
    model, params = opt.OPT(TINY), _params(TINY)
    ids, mask = _batch()
    s = opt.Sampling(temperature=1.5, top_k=3, top_p=0.9)
    a = opt.generate(model, params, ids, mask, max_new_tokens=8, sampling=s, seed=1,
                     return_logits=True, stop_at_eos=False)  # fmt: skip
    b = opt.generate(model, params, ids, mask, max_new_tokens=8, sampling=s, seed=1,
                     return_logits=True, stop_at_eos=False)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    top3 = np.argsort(np.asarray(a.logits), axis=-1)[..., -3:]
    assert np.all(np.any(top3 == np.asarray(a.tokens)[..., None], axis=-1))
    logits = jnp.array([[0.0, 1.0, 5.0, 4.9]])
    for seed in range(5):  # top_p 0.5 keeps only the best token here
        tok = opt.sample_token(logits, jax.random.PRNGKey(seed), opt.Sampling(1.0, 0, 0.5))
        assert int(tok[0]) == 2


def test_generate_stops_at_eos_with_padding():
    model, params = opt.OPT(TINY), _params(TINY)
    ids, mask = _batch()
    free = np.asarray(opt.generate(model, params, ids, mask, max_new_tokens=5,
                                   stop_at_eos=False).tokens)  # fmt: skip
    # Make the model's own 2nd token of row 0 the eos id.
    config = dataclasses.replace(TINY, eos_token_id=int(free[0, 1]))
    out = np.asarray(opt.generate(opt.OPT(config), params, ids, mask, max_new_tokens=5).tokens)
    assert list(out[0, :2]) == list(free[0, :2])
    assert np.all(out[0, 2:] == config.pad_token_id)


@pytest.mark.parametrize("num_shards", [1, 3])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hf_checkpoint_round_trip(tmp_path, variant, num_shards):
    config = VARIANTS[variant]
    model, params = opt.OPT(config), _params(config, seed=3)
    opt.save_hf_checkpoint(tmp_path, params, config, num_shards=num_shards)
    if num_shards > 1:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) == num_shards
    # The written files use HF names and [out, in] Linear weights.
    from safetensors.numpy import load_file

    state = {}
    for f in os.listdir(tmp_path):
        if f.endswith(".safetensors"):
            state.update(load_file(tmp_path / f))
    q = state["model.decoder.layers.1.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(
        q, np.asarray(params["layers_1"]["self_attn"]["q_proj"]["kernel"]).T
    )
    assert state["model.decoder.layers.0.fc1.weight"].shape == (config.ffn_dim, config.hidden_size)
    if config.has_projections:
        assert state["model.decoder.project_in.weight"].shape == (64, 32)

    loaded_config, loaded = opt.load_hf_checkpoint(tmp_path)
    assert loaded_config == config
    ids, mask = _batch()
    want = opt.forward(model, params, jnp.asarray(ids), jnp.asarray(mask))
    got = opt.forward(opt.OPT(loaded_config), loaded, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_hf_state_dict_without_prefix_and_fp16():
    params = _params(TINY)
    state = opt.params_to_hf(params, TINY, prefix="", dtype=np.float16)
    state["lm_head.weight"] = state["decoder.embed_tokens.weight"]  # tied, as in HF files
    loaded = opt.params_from_hf(state, TINY)
    assert "lm_head" not in loaded
    emb = np.asarray(params["embed_tokens"]["embedding"])
    np.testing.assert_allclose(np.asarray(loaded["embed_tokens"]["embedding"]), emb, atol=1e-3)
    del state["decoder.layers.0.fc1.weight"]
    with pytest.raises(KeyError, match="missing"):
        opt.params_from_hf(state, TINY)


def test_pytorch_bin_gives_conversion_message(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(
        opt.HFCheckpointError, match=r"(?s)pytorch_model\.bin.*safetensors.*save_file"
    ):
        opt.load_hf_checkpoint(tmp_path)
    os.remove(tmp_path / "pytorch_model.bin")
    with pytest.raises(opt.HFCheckpointError, match="no \\*.safetensors"):
        opt.load_hf_checkpoint(tmp_path)


def test_hf_tokenizer_json(tmp_path):
    import tokenizers

    vocab = {"<pad>": 1, "</s>": 2, "hello": 5, "world": 6, "[UNK]": 0}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    t = opt.load_tokenizer(tmp_path, TINY)
    assert t.encode("hello world") == [2, 5, 6]
    assert opt.load_tokenizer(tmp_path / "missing", TINY) is None
    b = opt.ByteTokenizer(TINY)
    assert b.decode(b.encode("hi")) == "hi"


@pytest.mark.parametrize("lm_head", [False, True])
def test_quantized_model_runs_and_round_trips(tmp_path, lm_head):
    from lutgemm_jax import checkpoint

    config = dataclasses.replace(TINY_350M, vocab_size=96) if lm_head else TINY
    model, params = opt.OPT(config), _params(config)
    qparams = opt.quantize_model(params, bits=4, group_size=32, method="greedy",
                                 quantize_lm_head=lm_head)  # fmt: skip
    bcq = {
        "/".join(str(getattr(k, "key", k)) for k in path)
        for path, x in jax.tree_util.tree_leaves_with_path(
            qparams, is_leaf=lambda x: isinstance(x, BCQWeight)
        )
        if isinstance(x, BCQWeight)
    }
    assert len(bcq) == 6 * config.num_hidden_layers + lm_head
    assert ("lm_head/kernel" in bcq) == lm_head
    assert not any("project" in p or "embed" in p for p in bcq)
    ids, mask = _batch()
    ref = _np(opt.forward(model, params, jnp.asarray(ids), jnp.asarray(mask)))
    got = _np(opt.forward(model, qparams, jnp.asarray(ids), jnp.asarray(mask)))
    # 4-bit on 0.02-std weights: close to float, not equal.
    assert 0 < np.abs(got - ref).max() < 0.25 * np.abs(ref).max()
    gen = opt.generate(model, qparams, ids, mask, max_new_tokens=4, return_logits=True,
                       stop_at_eos=False)  # fmt: skip

    checkpoint.save(tmp_path / "q.safetensors", qparams)
    loaded = checkpoint.load(tmp_path / "q.safetensors")
    again = opt.generate(model, loaded, ids, mask, max_new_tokens=4, return_logits=True,
                         stop_at_eos=False)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(gen.tokens))
    np.testing.assert_array_equal(np.asarray(again.logits), np.asarray(gen.logits))


def test_quantize_model_layout():
    """layout="cpu": every packed Linear in that layout, and the same logits to the bit."""
    model, params = opt.OPT(TINY), _params(TINY)
    qparams = opt.quantize_model(params, bits=3, group_size=32, method="greedy", layout="cpu")
    weights = jax.tree_util.tree_leaves(qparams, is_leaf=lambda x: isinstance(x, BCQWeight))
    assert {w.layout for w in weights if isinstance(w, BCQWeight)} == {"cpu"}
    ids, mask = _batch()
    got = opt.forward(model, qparams, jnp.asarray(ids), jnp.asarray(mask))
    want = opt.forward(model, to_layout(qparams, "canonical"), jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(ValueError, match="layout must be one of"):
        opt.quantize_model(params, layout="avx2")


def test_teacher_forced_generation_matches_forward():
    model, params = opt.OPT(TINY), _params(TINY)
    ids, mask = _batch()
    forced = np.array([[7, 8, 9, 10], [11, 12, 13, 14]], np.int32)
    gen = opt.generate(model, params, ids, mask, max_new_tokens=4, return_logits=True,
                       stop_at_eos=False, forced_tokens=forced)  # fmt: skip
    full_ids = np.concatenate([ids, forced], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(forced)], axis=1)
    ref = _np(opt.forward(model, params, jnp.asarray(full_ids), jnp.asarray(full_mask)))
    ref = ref[:, ids.shape[1] - 1 : -1]
    np.testing.assert_allclose(_np(gen.logits), ref, atol=2e-4 * np.abs(ref).max())
    np.testing.assert_array_equal(np.asarray(gen.tokens), np.argmax(ref, -1))


def test_perplexity_matches_manual_nll():
    model, params = opt.OPT(TINY), _params(TINY)
    ids = np.arange(3, 3 + 50) % TINY.vocab_size
    ppl, count = opt.perplexity(model, params, ids, seq_len=20)
    assert count == 19 + 19 + 9
    nll, n = 0.0, 0
    for s in range(0, 50, 20):
        w = ids[s : s + 20]
        logp = jax.nn.log_softmax(opt.forward_jit(model, params, jnp.asarray(w[None]))[0], -1)
        nll -= float(jnp.sum(logp[np.arange(len(w) - 1), w[1:]]))
        n += len(w) - 1
    assert n == count
    np.testing.assert_allclose(ppl, np.exp(nll / n), rtol=1e-4)


def _cli(*args, timeout=240):
    # -P: the installed package, not the source tree (as in a clean CI clone)
    proc = subprocess.run(
        [sys.executable, "-P", os.path.join(ROOT, "examples", "opt_decode.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _cli_module():
    """examples/opt_decode.py imported as a module (for its helpers, in process)."""
    spec = importlib.util.spec_from_file_location(
        "opt_decode", os.path.join(ROOT, "examples", "opt_decode.py")
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def _line(out: str, start: str) -> str:
    """The first line of ``out`` that starts with ``start`` (stripped)."""
    return next(line for line in map(str.strip, out.splitlines()) if line.startswith(start))


def test_cli_defaults_with_small_budget(tmp_path):
    """The demo with its defaults on a toy shape (the 125M default is timed in docs/opt.md)."""
    q = tmp_path / "q.safetensors"
    out = _cli("--preset", "tiny", "--max-new-tokens", "4", "--save-quantized", str(q))
    assert "RANDOM WEIGHTS" in out
    # the demo's default is the paper's setting: alternating BCQ, 3 bits, g128; --layout auto is
    # the CPU kernel's layout on a CPU backend
    auto = "cpu" if jax.default_backend() == "cpu" else "canonical"
    assert (
        f"quantized 12 Linears to 3-bit g128 alternating (lm_head kept float32), layout {auto}, "
        in out
    )
    assert "top-1 agreement" in out and "max |logit difference|" in out and ", rms " in out
    assert "random weights: near-Gaussian logits over 512 tokens" in out
    assert "tokens/s" in out and "saved quantized params" in out
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 4)
    out = _cli("--preset", "tiny", "--load-quantized", str(q), "--benchmark",
               "--batch-sizes", "2", "--bench-steps", "2", "--bench-repeats", "2",
               "--eval-ppl", str(text), "--ppl-seq-len", "32")  # fmt: skip
    assert "loaded quantized params" in out and f"layout {auto}, saved {auto};" in out
    assert "speedup" in out
    assert out.count("perplexity") >= 2
    # latency only: random weights are quantized with the fast greedy quantizer
    out = _cli("--preset", "tiny", "--benchmark", "--batch-sizes", "1", "--bench-steps", "1",
               "--bench-repeats", "1")  # fmt: skip
    assert "to 3-bit g128 greedy" in out and "speedup" in out


def test_cli_layouts_give_the_same_generation(tmp_path):
    """--layout canonical and cpu on the same weights (the cpu run converts the canonical file it
    loads): the same LUT-GEMM tokens and, to the printed digit, the same logit statistics."""
    q = tmp_path / "q.safetensors"
    common = ("--preset", "tiny", "--max-new-tokens", "4", "--prompt", "two prompts",
              "--prompt", "in one batch")  # fmt: skip
    canonical = _cli(*common, "--layout", "canonical", "--save-quantized", str(q))
    assert "(lm_head kept float32), layout canonical, in" in canonical
    cpu = _cli(*common, "--layout", "cpu", "--load-quantized", str(q))
    assert "layout cpu, saved canonical;" in cpu
    for start in ("[0]", "[1]"):
        i, j = canonical.index(start), cpu.index(start)
        assert _line(canonical[i:], "LUT-GEMM") == _line(cpu[j:], "LUT-GEMM")
    for start in ("top-1 agreement", "max |logit difference|"):
        assert _line(canonical, start) == _line(cpu, start)


def test_cli_layout_choice():
    cli = _cli_module()
    args = cli.parse_args([])
    assert args.layout == "auto"
    assert cli.resolve_layout(args) == ("cpu" if jax.default_backend() == "cpu" else "canonical")
    for layout in ("canonical", "cpu"):
        assert cli.resolve_layout(cli.parse_args(["--layout", layout])) == layout
    with pytest.raises(SystemExit):
        cli.parse_args(["--layout", "gpu"])


def test_cli_compare_logits():
    """The demo's teacher-forced statistics count live (non-pad) positions only."""
    cli = _cli_module()
    f = np.array([[[3.0, 1.0, 0.0], [0.0, 2.0, 1.5], [9.0, 0.0, 0.0]]], np.float32)
    q = np.array([[[2.0, 1.0, 0.5], [0.0, 1.0, 1.5], [0.0, 9.0, 0.0]]], np.float32)
    live = np.array([[True, True, False]])  # the last position (pad) differs wildly: ignored
    s = cli.compare_logits(f, q, live)
    assert s["agreement"] == 0.5  # position 0 keeps token 0; position 1 flips 1 -> 2
    assert s["max_diff"] == 1.0
    np.testing.assert_allclose(s["rms_diff"], np.sqrt(2.25 / 6))
    np.testing.assert_allclose(s["margin"], (2.0 + 0.5) / 2)  # leads 3-1 and 2-1.5
    np.testing.assert_allclose(s["std"], f[0, :2].std())


def test_cli_rejects_pytorch_bin(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    proc = subprocess.run(
        [sys.executable, "-P", os.path.join(ROOT, "examples", "opt_decode.py"), "--model",
         str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "safetensors" in proc.stderr and "pytorch_model.bin" in proc.stderr
