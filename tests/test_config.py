"""BCQConfig: defaults, validation naming the field, `make`, jit-static use, layout resolution."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lutgemm_jax import BCQConfig, quantize
from lutgemm_jax.config import METHODS, UNSET
from lutgemm_jax.format import PER_COLUMN


def test_defaults():
    c = BCQConfig()
    assert (c.bits, c.group_size, c.method, c.rounds) == (3, 128, "alternating", 15)
    assert (c.alpha_dtype, c.layout, c.fit_offset, c.clip_search) == (None, "auto", False, False)
    assert not c.has_offset
    assert BCQConfig(method="rtn").has_offset and BCQConfig(fit_offset=True).has_offset
    # rtn weights store one scale per group; the other methods one per plane
    assert BCQConfig(method="rtn").uniform
    assert not BCQConfig().uniform and not BCQConfig(method="greedy").uniform
    assert METHODS == ("greedy", "alternating", "rtn")


@pytest.mark.parametrize(
    ("fields", "exc", "match"),
    [
        (dict(bits=0), ValueError, r"^BCQConfig: bits must be in 1\.\.8, got 0"),
        (dict(bits=9), ValueError, r"bits must be in 1\.\.8"),
        (dict(bits=3.0), TypeError, "bits must be an int"),
        (dict(bits=True), TypeError, "bits must be an int"),
        (dict(group_size=48), ValueError, "group_size must be 16 or a positive multiple of 32"),
        (dict(group_size=8), ValueError, "group_size must be 16 or a positive multiple of 32"),
        (dict(group_size=0), ValueError, "group_size"),
        (dict(group_size=-32), ValueError, "group_size"),
        (dict(group_size=-16), ValueError, "group_size"),
        (dict(group_size=16.0), ValueError, "group_size"),
        (dict(group_size=True), ValueError, "group_size"),
        (dict(alpha_dtype=jnp.int8), TypeError, "alpha_dtype must be float32, bfloat16"),
        (dict(alpha_dtype="not a dtype"), TypeError, "alpha_dtype 'not a dtype' is not a dtype"),
        (dict(layout="gpu"), ValueError, r"layout must be one of .*'gpu'"),
        (dict(method="kmeans"), ValueError, "method must be one of"),
        (dict(rounds=-1), ValueError, "rounds must be a non-negative int"),
        (dict(fit_offset=1.5), TypeError, "fit_offset must be a bool"),
        (dict(clip_search=True), ValueError, "clip_search applies to method='rtn' only"),
    ],
)
def test_bad_fields_raise_naming_the_field(fields, exc, match):
    with pytest.raises(exc, match=match):
        BCQConfig(**fields)


def test_values_are_normalised():
    assert BCQConfig(group_size=PER_COLUMN).group_size is None
    assert BCQConfig(group_size=np.int64(64)).group_size == 64
    assert BCQConfig(group_size=16).group_size == BCQConfig(group_size=np.int32(16)).group_size
    c = BCQConfig(alpha_dtype="bfloat16")
    assert c.alpha_dtype == jnp.dtype(jnp.bfloat16) and isinstance(c.alpha_dtype, np.dtype)
    assert BCQConfig(method="rtn", clip_search=True).clip_search


def test_frozen_hashable_and_a_jit_static_argument():
    a, b = BCQConfig(bits=4), BCQConfig(bits=4, alpha_dtype=jnp.float32)
    assert hash(a) == hash(BCQConfig(bits=4)) and a != b
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.bits = 2
    traces = []

    @jax.jit(static_argnames="config")
    def f(x, config):
        traces.append(config)
        return x * config.bits

    x = jnp.ones(3)
    assert float(f(x, config=a)[0]) == 4.0
    f(x, config=BCQConfig(bits=4))  # equal config: cache hit
    f(x, config=BCQConfig(bits=2))
    assert len(traces) == 2


def test_make_applies_fields_and_skips_unset():
    base = BCQConfig(bits=4, method="greedy")
    assert BCQConfig.make() == BCQConfig()
    assert BCQConfig.make(base) is base
    assert BCQConfig.make(base, bits=UNSET, group_size=UNSET) is base
    assert BCQConfig.make(base, group_size=None) == BCQConfig(
        bits=4, method="greedy", group_size=None
    )
    assert BCQConfig.make(bits=2).bits == 2 and base.replace(bits=2).method == "greedy"


def test_make_names_the_caller():
    with pytest.raises(TypeError, match=r"^quantize_params: unexpected argument 'bitz'.*bits"):
        BCQConfig.make(where="quantize_params", bitz=4)
    with pytest.raises(ValueError, match=r"^LutLinear: bits must be in 1\.\.8, got 0$"):
        BCQConfig.make(where="LutLinear", bits=0)
    with pytest.raises(TypeError, match=r"^f: config must be a BCQConfig, got dict"):
        BCQConfig.make({"bits": 3}, where="f")
    with pytest.raises(ValueError, match=r"^quantize: method must be one of"):
        quantize(np.ones((64, 32), np.float32), method="nope")


def test_auto_layout_resolution(monkeypatch):
    assert BCQConfig(layout="canonical").resolve_layout() == "canonical"
    assert BCQConfig(layout="cpu").resolve_layout(partitioned=True) == "cpu"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert BCQConfig().resolve_layout() == "cpu"
    assert BCQConfig().resolve_layout(partitioned=True) == "canonical"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert BCQConfig().resolve_layout() == "canonical"


def test_quantize_resolves_auto_against_the_backend():
    W = np.random.default_rng(0).normal(size=(64, 96)).astype(np.float32)
    native = "cpu" if jax.default_backend() == "cpu" else "canonical"
    auto = quantize(W, 3, 32)
    canonical = quantize(W, 3, 32, layout="canonical")
    assert (auto.layout, canonical.layout) == (native, "canonical")
    np.testing.assert_array_equal(auto.to_layout("canonical").bits, canonical.bits)
    # A W placed over several devices stays canonical (a "cpu" weight splits along N only in
    # whole 32-column blocks).
    auto = (jax.sharding.AxisType.Auto,)  # quantize's column chunks are not explicit-sharded
    mesh = jax.make_mesh((2,), ("model",), devices=jax.devices()[:2], axis_types=auto)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "model"))
    assert quantize(jax.device_put(W, sharding), 3, 32).layout == "canonical"


def test_alpha_dtype_none_follows_the_weights():
    c = BCQConfig()
    assert c.resolve_alpha_dtype(jnp.bfloat16) == jnp.dtype(jnp.bfloat16)
    assert c.resolve_alpha_dtype(jnp.float64) == jnp.dtype(jnp.float32)
    assert BCQConfig(alpha_dtype=jnp.float16).resolve_alpha_dtype(jnp.bfloat16) == jnp.float16
    W = np.random.default_rng(0).normal(size=(64, 32))
    assert quantize(W.astype(jnp.bfloat16), 2, 32).alpha.dtype == jnp.bfloat16
    assert quantize(W, 2, 32).alpha.dtype == jnp.float32  # float64 weights: float32 scales


def test_one_config_gives_the_same_weight_everywhere():
    """quantize(config=...) and the keyword form build the same weight."""
    W = np.random.default_rng(1).normal(size=(64, 40)).astype(np.float32)
    config = BCQConfig(bits=2, group_size=32, method="rtn", clip_search=True, layout="canonical")
    a = quantize(W, config=config)
    b = quantize(W, 2, 32, "rtn", clip_search=True, layout="canonical")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert quantize(W, config=config, bits=3).num_bits == 3  # keywords override the config


@pytest.mark.parametrize("method", METHODS)
def test_group_size_16_config_quantizes_in_half_word_groups(method):
    """group_size=16 is a valid config for every method: 16-row groups (two per sign word),
    rtn with one scale per group."""
    W = np.random.default_rng(2).normal(size=(80, 24)).astype(np.float32)
    config = BCQConfig(bits=2, group_size=16, method=method, layout="canonical")
    w = quantize(W, config=config)
    assert (w.group_size, w.padded_in_features, w.num_groups) == (16, 96, 6)
    assert w.alpha.shape == (6, 1 if method == "rtn" else 2, 24) and w.uniform == config.uniform
