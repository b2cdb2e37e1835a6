"""OPT on several devices (8 host CPU devices, see conftest.py): Megatron-style tensor parallel
and data parallel generation gives the same tokens as one device, without gathering weights."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_opt import ROOT, TINY, _batch, _params

from lutgemm_jax.format import BCQWeight, to_layout
from lutgemm_jax.models import generation, opt
from lutgemm_jax.models import tensor_parallel as tp

# hidden 256 with g = 64: out_proj has 4 groups along K and fc2 8, so row-parallel splits over 4.
CONFIG = dataclasses.replace(TINY, hidden_size=256, ffn_dim=512)
GROUP = 64
NEW = 5


@pytest.fixture(scope="module")
def quantized():
    params = _params(CONFIG)
    qparams = opt.quantize_model(params, bits=3, group_size=GROUP, method="greedy")
    ids, mask = _batch()
    want = opt.generate(opt.OPT(CONFIG), qparams, ids, mask, max_new_tokens=NEW, stop_at_eos=False)
    return qparams, np.asarray(want.tokens)


def _generate_compiled(model, params, ids, mask):
    """opt.generate's greedy program, compiled once: (tokens, compiled HLO text)."""
    args = (params, ids, mask, jax.random.PRNGKey(0))
    args += (jnp.zeros((ids.shape[0], NEW), jnp.int32), jnp.asarray(False))
    compiled = generation._generate.lower(model, *args, max_new_tokens=NEW, sampling=opt.Sampling(),
                                   return_logits=False, stop_at_eos=False).compile()  # fmt: skip
    return np.asarray(compiled(*args).tokens), compiled.as_text()


@pytest.mark.parametrize(
    ("spec", "layout"), [("tp=4", "canonical"), ("dp=2,tp=2", "canonical"), ("tp=4", "cpu")]
)
def test_sharded_generation_matches_one_device(quantized, spec, layout):
    qparams, want = quantized
    qparams = to_layout(qparams, layout)
    model = opt.OPT(CONFIG)
    mesh = tp.make_mesh(spec)
    sharded = tp.shard_params(qparams, mesh)
    fc1 = sharded["layers_0"]["fc1"]["kernel"]
    fc2 = sharded["layers_0"]["fc2"]["kernel"]
    assert fc1.layout == fc2.layout == layout
    assert fc1.bits.sharding.spec == jax.sharding.PartitionSpec(None, None, "tp")
    assert fc2.alpha.sharding.spec == jax.sharding.PartitionSpec("tp", None, None)
    ids, mask = tp.shard_batch(mesh, *_batch())
    with jax.set_mesh(mesh):
        got, hlo = _generate_compiled(model, sharded, ids, mask)
    np.testing.assert_array_equal(got, want)
    # The packed weights never move: no all-gather at all (of u32 bits or anything else) ...
    assert not [line for line in hlo.splitlines() if "all-gather" in line and "u32[" in line]
    assert not re.findall(r"= \S+ all-gather(-start)?\(", hlo)
    # ... and one all-reduce per row-parallel layer, in the prefill and in the decode step.
    assert len(re.findall(r"= \S+ all-reduce(-start)?\(", hlo)) == 2 * 2 * CONFIG.num_hidden_layers
    # Each device holds a quarter (tp=4) / a half (tp=2) of the decoder's Linear weights.
    linear = opt.param_bytes({k: v for k, v in qparams.items() if k.startswith("layers_")})
    rest = opt.param_bytes(qparams) - linear
    tp_size = mesh.shape["tp"]
    biases_replicated = 2 * CONFIG.hidden_size * 4 * CONFIG.num_hidden_layers * (tp_size - 1)
    layer_norms = 4 * CONFIG.hidden_size * 4 * CONFIG.num_hidden_layers * (tp_size - 1)
    expected = rest + (linear + biases_replicated + layer_norms) // tp_size
    assert tp.device_bytes(sharded) == expected


def test_row_parallel_rejects_split_groups_naming_the_layer():
    w = BCQWeight(np.zeros((8, 3, 256), np.uint32), np.zeros((2, 3, 256), np.float32), None,
                  256, 256, 3, 128)  # fmt: skip
    params = {"layers_1": {"fc2": {"kernel": w, "bias": np.zeros(256, np.float32)}}}
    with pytest.raises(ValueError, match=r"layers_1/fc2/kernel.*2 groups"):
        tp.shard_params(params, tp.make_mesh("tp=4"))
    params["layers_1"]["fc2"]["kernel"] = dataclasses.replace(w, group_size=256, alpha=w.alpha[:1])
    # A single group along K is fine where K is not split (no tp axis).
    placed = tp.shard_params(params, tp.make_mesh("dp=2"))
    assert placed["layers_1"]["fc2"]["kernel"].num_groups == 1
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count=16"):
        tp.make_mesh("dp=4,tp=4")
    with pytest.raises(ValueError, match="bad mesh spec"):
        tp.parse_mesh("tp4")
    assert tp.parse_mesh("dp=2, tp=4") == {"dp": 2, "tp": 4}


def test_cli_mesh(tmp_path, capsys, quantized):
    # In process (after the fixture): the quantizer is already compiled for these shapes.
    spec = importlib.util.spec_from_file_location("opt_decode", f"{ROOT}/examples/opt_decode.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    config = dataclasses.replace(CONFIG, num_hidden_layers=1)  # less to compile
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    cli.main(["--config", str(tmp_path / "config.json"), "--group-size", str(GROUP),
              "--mesh", "tp=4", "--max-new-tokens", "2", "--no-compare"])  # fmt: skip
    out = capsys.readouterr().out
    assert "mesh {'tp': 4}" in out and "weights per device" in out
    assert "same tokens as one device: yes" in out
