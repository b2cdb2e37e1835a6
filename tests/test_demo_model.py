"""The shipped demo model (examples/demo_model), its training script and the default demo.

Nothing here depends on the exact standard-library file set of one Python version: the held-out
loss is measured on whichever listed held-out files this interpreter has, and the training
script runs on the first few files of each split."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lutgemm_jax.models import opt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "examples", "demo_model")
HELD_OUT_LOSS_BOUND = 4.5
"""Nats/token on held-out stdlib code (the shipped model: 3.94 over all held-out files, about 3.5
on their first windows); a random model is near ln(4096) = 8.3 (uniform guessing)."""


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shipped():
    config, params = opt.load_hf_checkpoint(DEMO)
    return config, params, opt.load_tokenizer(DEMO, config)


def test_checkpoint_config_matches_tensors(shipped):
    config, params, tokenizer = shipped
    with open(os.path.join(DEMO, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["model_type"] == "opt"
    d, f = config.hidden_size, config.ffn_dim
    assert params["embed_tokens"]["embedding"].shape == (config.vocab_size, d)
    assert params["embed_positions"]["embedding"].shape == (config.max_position_embeddings + 2, d)
    layers = sorted(k for k in params if k.startswith("layers_"))
    assert layers == [f"layers_{i}" for i in range(config.num_hidden_layers)]
    for name in layers:
        assert params[name]["fc1"]["kernel"].shape == (d, f)
        assert params[name]["fc2"]["kernel"].shape == (f, d)
        assert params[name]["self_attn"]["q_proj"]["kernel"].shape == (d, d)
    assert "lm_head" not in params  # tied
    count = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert count == config.num_params()
    assert tokenizer.tokenizer.get_vocab_size() == config.vocab_size
    # the documented size budget of the shipped files
    size = sum(os.path.getsize(os.path.join(DEMO, n)) for n in os.listdir(DEMO))
    assert size < 30 * 2**20


def test_tokenizer_round_trips_python(shipped):
    _, _, tokenizer = shipped
    code = "def f(x):\n\tif x > 1:\n        return 'é' + str(x)  # ünïcode\n"
    ids = tokenizer.encode(code)
    assert ids[0] == 2  # OPT's bos, as in training
    assert tokenizer.decode(ids) == code
    typical = "    def __init__(self, name, value=None):\n        self.name = name\n"
    assert len(tokenizer.encode(typical)) < len(typical) / 2  # BPE merges, not bytes


def test_held_out_loss_is_trained(shipped):
    config, params, tokenizer = shipped
    with open(os.path.join(DEMO, "training_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    train = _script("train_demo_model")
    root = train.stdlib_root()
    names = [n for n in summary["corpus"]["held_out_files"] if os.path.exists(f"{root}/{n}")]
    assert len(names) >= 5
    assert all(train.is_held_out(n) for n in names)
    ids = []
    for name in names:
        with open(f"{root}/{name}", encoding="utf-8") as f:
            ids += tokenizer.encode(f.read())
    seq = config.max_position_embeddings
    windows = np.asarray(ids[: 4 * seq + 1])
    windows = np.stack([windows[i * seq : i * seq + seq + 1] for i in range(4)])
    loss = float(train.window_loss(opt.OPT(config), params, jnp.asarray(windows)))
    assert loss < HELD_OUT_LOSS_BOUND < math.log(config.vocab_size)
    assert abs(loss - summary["held_out_loss"]) < 1.0  # a slice of the model card's measurement


def test_held_out_rule_splits_the_stdlib():
    train = _script("train_demo_model")
    paths = train.list_sources(train.stdlib_root())
    assert paths == sorted(paths) and len(paths) > 300
    assert not any(part in train.SKIP_DIRS for p in paths for part in p.split("/")[:-1])
    held = [p for p in paths if train.is_held_out(p)]
    assert 0.02 < len(held) / len(paths) < 0.10
    digest = hashlib.sha256(held[0].encode()).digest()
    assert int.from_bytes(digest[:8], "big") % 20 == 0


def test_demo_json_summary():
    proc = subprocess.run(
        [sys.executable, "-P", os.path.join(ROOT, "examples", "opt_decode.py"), "--json",
         "--prompt", "def add(a, b):\n", "--max-new-tokens", "8", "--ppl-max-windows", "2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    for key in ("ppl_float", "ppl_quant", "ms_per_token_float", "ms_per_token_quant"):
        assert summary[key] > 0, key
    assert 1 < summary["ppl_float"] < math.exp(HELD_OUT_LOSS_BOUND)
    assert summary["ppl_float"] / 2 < summary["ppl_quant"] < summary["ppl_float"] * 2
    assert summary["ppl_tokens"] == 2 * 255
    assert 0.5 <= summary["greedy_agreement"] <= 1.0
    assert summary["quantization"] == "3-bit g128 alternating"
    assert summary["text_float"][0].startswith("def add(a, b):\n")
    assert "float32 (XLA dot)" in proc.stderr  # the human-readable log went to stderr


def test_demo_rejects_conflicting_sources():
    proc = subprocess.run(
        [sys.executable, "-P", os.path.join(ROOT, "examples", "opt_decode.py"), "--random",
         "--model", DEMO],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2 and "exclude each other" in proc.stderr


TINY_TRAIN = [
    "--max-files", "24", "--vocab-size", "320", "--hidden-size", "32", "--num-layers", "1",
    "--num-heads", "2", "--ffn-dim", "64", "--seq-len", "32", "--batch-size", "4",
    "--steps", "24", "--warmup", "4", "--lr", "3e-3", "--eval-every", "12", "--ckpt-every", "6",
    "--eval-windows", "4", "--final-eval-windows", "4", "--no-progress",
]  # fmt: skip


def _digests(directory: str) -> dict[str, str]:
    """sha256 of each file in ``directory`` (empty if it does not exist)."""
    out = {}
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_training_script_tiny_run_learns_and_resumes(tmp_path):
    train = _script("train_demo_model")
    shipped = _digests(DEMO)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train.main([*TINY_TRAIN, "--workdir", str(whole), "--out", str(whole / "out")]) == 0
    with open(whole / "log.json", encoding="utf-8") as f:
        losses = [e["loss"] for e in json.load(f)["train"]]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.3

    # interrupted at step 12 (the export of a partial run says so), then resumed to the end
    args = [*TINY_TRAIN, "--workdir", str(resumed), "--out", str(resumed / "out")]
    assert train.main([*args, "--stop-at", "12"]) == 0
    with open(resumed / "out" / "training_summary.json", encoding="utf-8") as f:
        assert json.load(f)["steps"] == 12
    assert train.main(args) == 0
    a = opt.load_hf_checkpoint(whole / "out")[1]
    b = opt.load_hf_checkpoint(resumed / "out")[1]
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)

    config, _ = opt.load_hf_checkpoint(whole / "out")
    assert config.hidden_size == 32 and config.vocab_size == 320
    assert os.path.exists(whole / "out" / "loss_curve.png")
    assert "held-out loss" in (whole / "out" / "README.md").read_text()
    assert _digests(DEMO) == shipped


def test_training_script_refuses_another_config_in_a_workdir(tmp_path):
    train = _script("train_demo_model")
    args = [*TINY_TRAIN, "--workdir", str(tmp_path), "--out", str(tmp_path / "out")]
    assert train.main([*args, "--stop-at", "6"]) == 0
    with pytest.raises(SystemExit, match="another configuration"):
        train.main([*args, "--lr", "1e-3"])
