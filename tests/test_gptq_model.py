"""GPTQ and AWQ Hugging Face checkpoints end to end: `models.load_hf_checkpoint` recognises the
quantization_config by itself (every key spelling, side files), imports each Linear exactly,
handles act-order (gathers, and the fold into gate/up), and refuses what it cannot import."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_gptq import awq_tensors, gptq_tensors, random_awq, random_gptq

from lutgemm_jax import BCQWeight, dequantize, models
from lutgemm_jax.models import HFCheckpointError, LlamaConfig, OPTConfig, hf_checkpoint
from lutgemm_jax.models.prequantized import INPUT_PERM
from lutgemm_jax.testing import weight_float64

LLAMA = LlamaConfig(
    model_type="llama", vocab_size=64, hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=32, rms_norm_eps=1e-5,
)  # fmt: skip
GPTQ_ACT_ORDER = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True,
                  "sym": True, "checkpoint_format": "gptq"}  # fmt: skip
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}


def _linears(config):
    names = models.family_of(config).hf_names(config)
    return {n: p for n, (p, t) in names.items() if t and n != "lm_head.weight"}


def write_quantized(path, config, qc, *, seed=0, side_file=None, act_order=True, num_shards=1):
    """A checkpoint directory of ``config`` whose Linears are GPTQ/AWQ per ``qc``; returns the
    float params with the exact dequantized kernels (the reference model)."""
    rng = np.random.default_rng(seed)
    params = models.init_params(config, seed)
    names = models.family_of(config).hf_names(config)
    state = hf_checkpoint.params_to_state(params, names)
    ref = jax.tree.map(np.asarray, params)
    method = qc.get("quant_method", qc.get("method"))
    for name, path_ in _linears(config).items():
        prefix = hf_checkpoint.hf_key(name).removesuffix(".weight")
        k, n = np.shape(ref_get(ref, path_))
        if method == "awq":
            q = random_awq(rng, k, n, group_size=qc["group_size"])
            tensors = awq_tensors(prefix, q)
        else:
            v1 = qc.get("checkpoint_format", qc.get("format", "gptq")) == "gptq"
            q = random_gptq(
                rng, k, n, bits=qc["bits"], group_size=qc["group_size"], sym=qc["sym"], v1=v1,
                act_order=act_order,
            )  # fmt: skip
            tensors = gptq_tensors(prefix, q, bits=qc["bits"], v1=v1)
        del state[hf_key_of(name)]
        state.update(tensors)
        ref_set(ref, path_, q["w"].astype(np.float32))
    cfg = config.to_dict()
    if side_file is None:
        cfg["quantization_config"] = qc
    hf_checkpoint.write_checkpoint(path, state, cfg, num_shards=num_shards)
    if side_file is not None:
        (path / side_file).write_text(json.dumps(qc))
    return ref


def hf_key_of(name):
    return hf_checkpoint.hf_key(name)


def ref_get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def ref_set(tree, path, value):
    ref_get(tree, path[:-1])[path[-1]] = value


def _dequantized(params):
    """``params`` with every BCQ kernel replaced by its float32 dequantization (input_perm kept):
    the loaded model computed without the LUT-GEMM kernels."""
    return jax.tree.map(
        lambda x: dequantize(x) if isinstance(x, BCQWeight) else x,
        params,
        is_leaf=lambda x: isinstance(x, BCQWeight),
    )


IDS = np.array([[1, 5, 9, 2, 33, 60, 7, 12], [3, 3, 40, 41, 8, 0, 63, 17]])


def _max_diff(model, params, ref):
    a = np.asarray(models.forward(model, params, IDS))
    b = np.asarray(models.forward(model, jax.tree.map(jnp.asarray, ref), IDS))
    return np.abs(a - b).max(), np.abs(b).max()


def test_gptq_act_order_llama(tmp_path):
    ref = write_quantized(tmp_path, LLAMA, GPTQ_ACT_ORDER)
    config, params = models.load_hf_checkpoint(tmp_path)
    assert config == LLAMA
    layer = params["layers_0"]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        sub = layer["self_attn" if proj[0] in "qkvo" else "mlp"][proj]
        w = sub["kernel"]
        assert isinstance(w, BCQWeight) and w.uniform and w.num_bits == 4 and w.group_size == 32
        # down_proj's permutation is folded into gate/up; the others gather their input
        assert (INPUT_PERM in sub) == (proj != "down_proj")
        perm = np.asarray(sub.get(INPUT_PERM, np.arange(w.in_features)))
        want = ref["layers_0"]["self_attn" if proj[0] in "qkvo" else "mlp"][proj]["kernel"]
        if proj in ("gate_proj", "up_proj"):  # output columns in down_proj's act order
            down = weight_float64(layer["mlp"]["down_proj"]["kernel"])
            dref = ref["layers_0"]["mlp"]["down_proj"]["kernel"]
            cols = _row_order(dref, down)
            want = want[:, cols]
        if proj == "down_proj":
            perm = _row_order(want, weight_float64(w))
        np.testing.assert_array_equal(weight_float64(w), np.asarray(want, np.float64)[perm])

    model = models.from_config(config)
    diff, scale = _max_diff(model, _dequantized(params), ref)
    # the same float32 weights, summed in another order: float32 rounding only
    assert diff <= 1e-5 * max(scale, 1.0), (diff, scale)


def _row_order(reference, permuted):
    """The permutation P with permuted == reference[P] (rows are distinct; + 0.0 merges the
    signed zeros that ``scale * 0`` gives for negative scales)."""
    index = {r.tobytes(): i for i, r in enumerate(np.asarray(reference, np.float64) + 0.0)}
    return np.array([index[r.tobytes()] for r in np.asarray(permuted, np.float64) + 0.0])


@pytest.mark.parametrize("qc", [GPTQ_ACT_ORDER, AWQ], ids=["gptq-act-order", "awq"])
def test_logits_through_lut_gemm(tmp_path, qc):
    """The imported model run by LUT-GEMM (uniform weights, act-order gathers) against the float
    model with the published dequantized weights, at lut_gemm's exact mode (conftest.py).
    Tolerance: float32 accumulation of K <= 128 terms over 2 layers, 1e-4 of the largest logit
    (observed 5e-6 of 12 for GPTQ, whose gathers reorder the sums)."""
    ref = write_quantized(tmp_path, LLAMA, qc, seed=3)
    config, params = models.load_hf_checkpoint(tmp_path)
    model = models.from_config(config)
    diff, scale = _max_diff(model, params, ref)
    assert diff <= 1e-4 * max(scale, 1.0), (diff, scale)


def test_awq_llama(tmp_path):
    ref = write_quantized(tmp_path, LLAMA, AWQ, seed=1, num_shards=3)
    config, params = models.load_hf_checkpoint(tmp_path, scale_dtype=jnp.float32)
    for path in _linears(config).values():
        w = ref_get(params, path)
        assert isinstance(w, BCQWeight) and INPUT_PERM not in ref_get(params, path[:-1])
        np.testing.assert_array_equal(weight_float64(w), ref_get(ref, path).astype(np.float64))
    diff, scale = _max_diff(models.from_config(config), _dequantized(params), ref)
    assert diff <= 1e-5 * max(scale, 1.0)


def test_float16_scales_are_exact_for_symmetric_gptq(tmp_path):
    qc = {**GPTQ_ACT_ORDER, "bits": 3, "group_size": -1}
    ref = write_quantized(tmp_path, LLAMA, qc, seed=2, act_order=False)
    _, params = models.load_hf_checkpoint(tmp_path, scale_dtype=jnp.float16, layout="canonical")
    for path in _linears(LLAMA).values():
        w = ref_get(params, path)
        assert w.alpha.dtype == jnp.float16 and w.layout == "canonical"
        np.testing.assert_array_equal(weight_float64(w), ref_get(ref, path).astype(np.float64))


@pytest.mark.parametrize(
    ("qc", "side_file"),
    [
        (
            {"method": "gptq", "wbits": 2, "q_group_size": 64, "sym": False, "format": "gptq_v2"},
            None,
        ),  # fmt: skip
        ({"bits": 8, "group_size": 32, "desc_act": False, "sym": True}, "quantize_config.json"),
        (
            {"w_bit": 4, "q_group_size": 32, "zero_point": True, "version": "GEMM"},
            "quant_config.json",
        ),  # fmt: skip
    ],
    ids=["gptqmodel-spelling", "autogptq-side-file", "autoawq-side-file"],
)
def test_config_spellings(tmp_path, qc, side_file):
    method = "awq" if "zero_point" in qc else "gptq"
    spelled = {
        "quant_method": method,
        "bits": qc.get("bits", qc.get("wbits", qc.get("w_bit"))),
        "group_size": qc.get("group_size", qc.get("q_group_size")),
        "sym": qc.get("sym", False),
        "format": qc.get("format", "gptq"),
    }
    ref = write_quantized(tmp_path, LLAMA, spelled, seed=4)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["quantization_config"]
    if side_file is None:
        cfg["quantization_config"] = qc
    else:
        (tmp_path / side_file).write_text(json.dumps(qc))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _, params = models.load_hf_checkpoint(tmp_path)
    path = _linears(LLAMA)["layers.1.self_attn.k_proj.weight"]
    w = ref_get(params, path)
    assert w.num_bits == spelled["bits"]
    perm = np.asarray(ref_get(params, path[:-1]).get(INPUT_PERM, np.arange(w.in_features)))
    np.testing.assert_array_equal(weight_float64(w), ref_get(ref, path).astype(np.float64)[perm])


@pytest.mark.parametrize(
    ("qc", "match"),
    [
        ({"checkpoint_format": "marlin"}, r"checkpoint format 'marlin' is not supported"),
        ({"is_marlin_format": True}, r"checkpoint format 'marlin'"),
        ({"format": "bitblas"}, r"checkpoint format 'bitblas'"),
        ({"pack_dtype": "int16"}, r"pack_dtype 'int16' is not supported"),
        ({"dynamic": {"-:.*down": {}}}, r"'dynamic' per-module overrides"),
        ({"bits": 5}, r"bits 5 is not supported"),
        ({"group_size": 100}, r"group_size 100 has no BCQ form"),
        ({"quant_method": "exl2"}, r"quant_method 'exl2'\) is not supported"),
        ({"quant_method": "bitsandbytes"}, r"quant_method 'bitsandbytes'"),
        ({"quant_method": "compressed-tensors"}, r"quant_method 'compressed-tensors'"),
    ],
)
def test_refused_configs_name_file_and_setting(tmp_path, qc, match):
    write_quantized(tmp_path, LLAMA, GPTQ_ACT_ORDER)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"] = {**cfg["quantization_config"], **qc}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFCheckpointError, match=r"config\.json: quantization_config .*" + match):
        models.load_hf_checkpoint(tmp_path)
    with pytest.raises(HFCheckpointError, match=match):  # also when only the config is read
        models.read_config(tmp_path)


def test_exl2_tensors_under_a_gptq_config_are_refused(tmp_path):
    write_quantized(tmp_path, LLAMA, GPTQ_ACT_ORDER)
    file = tmp_path / "model.safetensors"
    state = hf_checkpoint.read_safetensors([str(file)])[0]
    prefix = "model.layers.0.mlp.up_proj"
    for suffix in ("qweight", "qzeros", "scales", "g_idx"):
        del state[f"{prefix}.{suffix}"]
    state[f"{prefix}.q_weight"] = np.zeros((8, 128), np.int32)
    from safetensors.numpy import save_file

    save_file(state, str(file))
    with pytest.raises(HFCheckpointError, match=r"'layers\.0\.mlp\.up_proj' is stored in the EXL2"):
        models.load_hf_checkpoint(tmp_path)


def test_missing_packed_tensor_names_it(tmp_path):
    write_quantized(tmp_path, LLAMA, AWQ)
    file = tmp_path / "model.safetensors"
    state = hf_checkpoint.read_safetensors([str(file)])[0]
    del state["model.layers.1.self_attn.o_proj.qzeros"]
    from safetensors.numpy import save_file

    save_file(state, str(file))
    with pytest.raises(HFCheckpointError, match=r"layers\.1\.self_attn\.o_proj\.qzeros"):
        models.load_hf_checkpoint(tmp_path)


def test_opt_folds_fc2_and_refuses_other_act_order(tmp_path):
    config = OPTConfig(
        vocab_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
        ffn_dim=128, max_position_embeddings=32,
    )  # fmt: skip
    qc = {**GPTQ_ACT_ORDER, "sym": False, "checkpoint_format": "gptq_v2"}
    ref = write_quantized(tmp_path, config, qc, seed=5)
    with pytest.raises(HFCheckpointError, match=r"act-order permutation; the 'opt' model cannot"):
        models.load_hf_checkpoint(tmp_path)
    # only fc2 in act order: its permutation folds into fc1's output columns (relu between)
    ref = write_quantized(tmp_path, config, qc, seed=5, act_order=False)
    state = hf_checkpoint.read_safetensors([str(tmp_path / "model.safetensors")])[0]
    rng = np.random.default_rng(6)
    q = random_gptq(rng, 128, 64, bits=4, group_size=32, sym=False, v1=False, act_order=True)
    state.update(gptq_tensors("model.decoder.layers.0.fc2", q, bits=4, v1=False))
    from safetensors.numpy import save_file

    save_file(state, str(tmp_path / "model.safetensors"))
    ref["layers_0"]["fc2"]["kernel"] = q["w"].astype(np.float32)
    config2, params = models.load_hf_checkpoint(tmp_path)
    assert INPUT_PERM not in params["layers_0"]["fc2"]
    diff, scale = _max_diff(models.from_config(config2), _dequantized(params), ref)
    assert diff <= 1e-5 * max(scale, 1.0)


def test_qwen2_with_biases_and_generation(tmp_path):
    """Qwen2 (q/k/v biases, tied embeddings) in GPTQ act order: the loaded model equals the
    float model, and greedy `generate` (jitted prefill + scan decode, gathers on traced
    permutations) produces the same tokens."""
    config = LlamaConfig(
        model_type="qwen2", vocab_size=64, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, qkv_bias=True,
        tie_word_embeddings=True, max_position_embeddings=32, bos_token_id=None,
        eos_token_id=None,
    )  # fmt: skip
    qc = {**GPTQ_ACT_ORDER, "sym": False, "checkpoint_format": "gptq_v2", "bits": 8}
    ref = write_quantized(tmp_path, config, qc, seed=9)
    loaded, params = models.load_hf_checkpoint(tmp_path)
    assert loaded == config
    bias = params["layers_0"]["self_attn"]["q_proj"]["bias"]
    np.testing.assert_array_equal(bias, ref["layers_0"]["self_attn"]["q_proj"]["bias"])
    model = models.from_config(loaded)
    diff, scale = _max_diff(model, params, ref)
    assert diff <= 1e-4 * max(scale, 1.0)
    ids, mask = models.pad_batch([[3, 14, 15], [9, 2, 6, 5, 35]], 0)
    out = models.generate(model, params, ids, mask, max_new_tokens=6)
    want = models.generate(model, jax.tree.map(jnp.asarray, ref), ids, mask, max_new_tokens=6)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(want.tokens))
