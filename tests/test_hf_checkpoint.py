"""Hugging Face model directories: round trips for every family (single file and sharded), the
two config.json spellings of RoPE, and malformed directories, which must raise
`HFCheckpointError` naming the file and the tensor or key (never a raw library error)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lutgemm_jax import models
from lutgemm_jax.models import HFCheckpointError, LlamaConfig, MissingTensorError, OPTConfig

SMALL = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=32,
)  # fmt: skip
CONFIGS = {
    "opt": OPTConfig(ffn_dim=48, **SMALL),
    "llama": LlamaConfig(model_type="llama", intermediate_size=48, num_key_value_heads=2,
                         rope_type="llama3", rope_factor=8.0, **SMALL),  # fmt: skip
    "mistral": LlamaConfig(model_type="mistral", intermediate_size=48, sliding_window=8, **SMALL),
    "qwen2": LlamaConfig(model_type="qwen2", intermediate_size=48, qkv_bias=True,
                         tie_word_embeddings=True, **SMALL),  # fmt: skip
    "qwen3": LlamaConfig(model_type="qwen3", intermediate_size=48, qk_norm=True, head_dim=16,
                         num_key_value_heads=2, tie_word_embeddings=True, **SMALL),  # fmt: skip
}


def _flat(params) -> dict[str, np.ndarray]:
    return {
        "/".join(str(k.key) for k in path): np.asarray(x)
        for path, x in jax.tree_util.tree_leaves_with_path(params)
    }


def _state(path) -> dict[str, np.ndarray]:
    state = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            state.update(load_file(os.path.join(path, f)))
    return state


@pytest.mark.parametrize("num_shards", [1, 3])
@pytest.mark.parametrize("family", list(CONFIGS))
def test_round_trip(tmp_path, family, num_shards):
    config = CONFIGS[family]
    params = models.init_params(config, seed=1)
    models.save_hf_checkpoint(tmp_path, params, config, num_shards=num_shards)
    if num_shards > 1:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) == num_shards
    # Hugging Face names and [out, in] Linear weights on disk.
    state = _state(tmp_path)
    if family == "opt":
        q = state["model.decoder.layers.1.self_attn.q_proj.weight"]
    else:
        q = state["model.layers.1.self_attn.q_proj.weight"]
        assert state["model.layers.0.mlp.down_proj.weight"].shape == (32, 48)
        assert ("lm_head.weight" in state) == (not config.tie_word_embeddings)
        assert ("model.layers.0.self_attn.k_proj.bias" in state) == (family == "qwen2")
        assert ("model.layers.0.self_attn.q_norm.weight" in state) == (family == "qwen3")
    kernel = np.asarray(params["layers_1"]["self_attn"]["q_proj"]["kernel"])
    np.testing.assert_array_equal(q, kernel.T)
    loaded_config, loaded = models.load_hf_checkpoint(tmp_path)
    assert loaded_config == config
    want, got = _flat(params), _flat(loaded)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_untied_head_of_a_tied_config_is_kept(tmp_path):
    config = CONFIGS["qwen2"]
    params = models.untie_lm_head(models.init_params(config))
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 2
    models.save_hf_checkpoint(tmp_path, params, config)
    _, loaded = models.load_hf_checkpoint(tmp_path)
    np.testing.assert_array_equal(loaded["lm_head"]["kernel"], params["lm_head"]["kernel"])


def test_rope_spellings_agree():
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    legacy = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4,
              "rope_theta": 500000.0, "rope_scaling": scaling}  # fmt: skip
    v5 = {k: v for k, v in legacy.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {**legacy["rope_scaling"], "rope_theta": 500000.0}
    a, b = models.config_from_dict(legacy), models.config_from_dict(v5)
    assert a == b and a.rope_type == "llama3" and a.rope_theta == 5e5 and a.rope_factor == 32
    oldest = dict(legacy, rope_scaling={"type": "linear", "factor": 2.0})
    assert models.config_from_dict(oldest).rope_type == "linear"
    nested = dict(v5, rope_parameters={"full_attention": v5["rope_parameters"]})
    assert models.config_from_dict(nested) == a
    # to_dict writes the legacy spelling, which reads back to the same config.
    assert models.config_from_dict(a.to_dict()) == a
    # Qwen writes "bos_token_id": null; it must not fall back to Llama's default of 1.
    qwen = {"model_type": "qwen2", "hidden_size": 32, "num_attention_heads": 4,
            "bos_token_id": None, "eos_token_id": [7, 8]}  # fmt: skip
    config = models.config_from_dict(qwen)
    assert config.bos_token_id is None and config.eos_token_id == (7, 8)
    assert not config.add_bos_token and config.qkv_bias


def _write(tmp_path, family="llama"):
    config = CONFIGS[family]
    models.save_hf_checkpoint(tmp_path, models.init_params(config), config)
    return tmp_path / "model.safetensors"


def test_missing_tensor_names_file_and_tensor(tmp_path):
    file = _write(tmp_path)
    state = load_file(file)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, file)
    with pytest.raises(MissingTensorError, match=r"model\.safetensors.*layers\.1\.mlp\.up_proj"):
        models.load_hf_checkpoint(tmp_path)


def test_wrong_shape_names_file_tensor_and_shapes(tmp_path):
    file = _write(tmp_path)
    state = load_file(file)
    state["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
    save_file(state, file)
    with pytest.raises(
        HFCheckpointError,
        match=r"model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' has "
        r"shape \(8, 32\), config\.json implies \(16, 32\)",
    ):
        models.load_hf_checkpoint(tmp_path)


def test_truncated_file_names_file_and_tensor(tmp_path):
    file = _write(tmp_path)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 100])
    with pytest.raises(HFCheckpointError, match=r"model\.safetensors: truncated: tensor '.+'"):
        models.load_hf_checkpoint(tmp_path)
    file.write_bytes(data[:4])
    with pytest.raises(HFCheckpointError, match=r"model\.safetensors: truncated"):
        models.load_hf_checkpoint(tmp_path)


def test_missing_shard_and_bad_index(tmp_path):
    config = CONFIGS["opt"]
    models.save_hf_checkpoint(tmp_path, models.init_params(config), config, num_shards=2)
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(HFCheckpointError, match=r"index\.json lists shards.*00002"):
        models.load_hf_checkpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(HFCheckpointError, match=r"model\.safetensors\.index\.json: not a"):
        models.load_hf_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model_type": "gemma"}, r"config\.json: model_type 'gemma' is not supported"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"config\.json: rope type 'yarn'"),
        ({"hidden_act": "gelu"}, r"config\.json: hidden_act 'gelu'"),
        ({"quantization_config": {"quant_method": "gptq"}}, r"quant_method 'gptq'"),
        ({"num_key_value_heads": 3}, r"num_key_value_heads 3 does not divide"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, r"needs 'low_freq_factor'"),
    ],
)
def test_unsupported_config(tmp_path, change, match):
    _write(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(HFCheckpointError, match=match):
        models.load_hf_checkpoint(tmp_path)


def test_bad_directories(tmp_path):
    with pytest.raises(HFCheckpointError, match="is not a directory"):
        models.load_hf_checkpoint(tmp_path / "absent")
    with pytest.raises(HFCheckpointError, match=r"config\.json: no such file"):
        models.load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2")
    with pytest.raises(HFCheckpointError, match=r"config\.json: not a readable JSON"):
        models.load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(CONFIGS["qwen3"].to_dict()))
    with pytest.raises(HFCheckpointError, match=r"no \*\.safetensors"):
        models.load_hf_checkpoint(tmp_path)


def test_opt_loader_refuses_other_families(tmp_path):
    _write(tmp_path, "mistral")
    with pytest.raises(HFCheckpointError, match="model_type 'mistral' is not supported"):
        models.opt.load_hf_checkpoint(tmp_path)


def test_presets_and_tensor_parallel_lists():
    assert models.preset("llama-3.2-1b").rope_type == "llama3"
    assert abs(models.preset("tinyllama-1.1b").num_params() - 1.100e9) < 1e7
    assert abs(models.preset("opt-125m").num_params() - 125.2e6) < 1e6
    with pytest.raises(ValueError, match="unknown preset"):
        models.preset("gpt-5")
    from lutgemm_jax.models import tensor_parallel as tp

    column, row = tp.layer_lists(dataclasses.replace(CONFIGS["qwen3"]))
    assert "gate_proj" in column and "down_proj" in row and "fc1" not in column
