"""Tensor-parallel Llama-family decoding (GQA, Qwen2 biases, Qwen3 q/k norms) on 8 host CPU
devices: the family's column/row lists place the packed weights, and sharded generation gives
the tokens of one device with no all-gather and one all-reduce per row-parallel Linear."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lutgemm_jax import models
from lutgemm_jax.models import generation
from lutgemm_jax.models import tensor_parallel as tp

NEW = 4
# heads * head_dim = 128 and intermediate 128: 4 groups of 32 along K split over tp=2.
BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32,
            max_position_embeddings=32)  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [dict(model_type="llama"), dict(model_type="qwen2", qkv_bias=True),
     dict(model_type="qwen3", qk_norm=True, tie_word_embeddings=True)],  # fmt: skip
    ids=["llama", "qwen2", "qwen3"],
)
def test_sharded_generation_matches_one_device(extra):
    config = models.LlamaConfig(**BASE, **extra)
    model = models.from_config(config)
    qparams = models.quantize_model(models.init_params(config), bits=3, group_size=32,
                                    method="rtn")  # fmt: skip
    ids, mask = models.pad_batch([[1, 5, 6, 7, 8], [1, 9]], 0)
    want = models.generate(model, qparams, ids, mask, max_new_tokens=NEW, stop_at_eos=False)

    mesh = tp.make_mesh("dp=2,tp=2")
    column, row = tp.layer_lists(config)
    sharded = tp.shard_params(qparams, mesh, column=column, row=row)
    spec = sharded["layers_0"]["mlp"]["down_proj"]["kernel"].alpha.sharding.spec
    assert spec == jax.sharding.PartitionSpec("tp", None, None)
    ids, mask = tp.shard_batch(mesh, ids, mask)
    args = (sharded, ids, mask, jax.random.PRNGKey(0), jnp.zeros((2, NEW), jnp.int32),
            jnp.asarray(False))  # fmt: skip
    with jax.set_mesh(mesh):
        compiled = generation._generate.lower(
            model, *args, max_new_tokens=NEW, sampling=models.Sampling(), return_logits=False,
            stop_at_eos=False,
        ).compile()  # fmt: skip
        got = compiled(*args).tokens
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want.tokens))
    hlo = compiled.as_text()
    assert not re.findall(r"= \S+ all-gather(-start)?\(", hlo)
    # o_proj and down_proj per layer, in the prefill and in the decode step.
    assert len(re.findall(r"= \S+ all-reduce(-start)?\(", hlo)) == 2 * 2 * 2
