"""AWQ (AutoAWQ GEMM) Linears import exactly: the interleaved nibble order, zero points, every
group size, both scale dtypes; other AWQ versions and settings are refused."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from test_gptq import AWQ_ORDER, awq_tensors, pack_awq_gemm, random_awq

from lutgemm_jax.models import HFCheckpointError
from lutgemm_jax.models.awq_checkpoint import AWQScheme, unpack_gemm
from lutgemm_jax.models.uniform_linear import to_bcq
from lutgemm_jax.testing import weight_float64


def _reader(tensors):
    return tensors.__getitem__, lambda name: "mem.safetensors"


def test_interleave_matches_the_published_order():
    # column 8c + j lives in nibble REV[j] = ORDER.index(j): columns 0..7 = nibbles 0 4 1 5 2 6 3 7
    values = np.arange(8)[None, :]
    word = int(pack_awq_gemm(values).view(np.uint32)[0, 0])
    nibbles = [(word >> (4 * i)) & 15 for i in range(8)]
    assert nibbles == list(AWQ_ORDER)
    assert [nibbles.index(j) for j in range(8)] == [0, 4, 1, 5, 2, 6, 3, 7]
    np.testing.assert_array_equal(unpack_gemm(pack_awq_gemm(values)), values)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_linear_is_exact(group_size):
    rng = np.random.default_rng(group_size)
    k, n = 256, 72
    q = random_awq(rng, k, n, group_size=group_size)
    u = AWQScheme(group_size).read_linear(*_reader(awq_tensors("p", q)), "p", k, n)
    np.testing.assert_array_equal(u.dequantize(), q["w"])
    assert u.perm is None
    w32 = to_bcq(u, dtype=jnp.float32, layout="cpu")
    np.testing.assert_array_equal(weight_float64(w32), q["w"])
    # float16: alpha exact, the asymmetric offset rounded once
    w16 = to_bcq(u, dtype=jnp.float16, layout="canonical")
    grp = np.arange(k) // group_size
    off = np.abs(q["scales"].astype(np.float64) * (7.5 - q["zeros"]))
    err = np.abs(weight_float64(w16) - q["w"])
    assert np.all(err <= off[grp] * 2.0**-11)
    assert err.max() > 0  # and it is not exact in general


@pytest.mark.parametrize(
    ("qc", "match"),
    [
        ({"version": "gemv_fast"}, r"version 'gemv_fast' is not supported"),
        ({"version": "GEMV"}, r"version 'gemv' is not supported"),
        ({"version": "marlin"}, r"version 'marlin'"),
        ({"version": "llm-awq"}, r"version 'llm_awq'"),
        ({"backend": "llm-awq"}, r"version 'llm_awq'"),
        ({"bits": 3}, r"bits 3 is not supported \(AWQ GEMM is 4-bit\)"),
        ({"zero_point": False}, r"zero_point false is not supported"),
        ({"group_size": 48}, r"group_size 48 has no BCQ form"),
    ],
)
def test_unsupported_settings_are_refused(qc, match):
    from lutgemm_jax.models.prequantized import quantization_scheme

    base = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
            "version": "gemm"}  # fmt: skip
    with pytest.raises(HFCheckpointError, match=r"config\.json: .*quant_method 'awq'.*" + match):
        quantization_scheme({"quantization_config": {**base, **qc}}, "/nowhere/config.json")


def test_gemv_shaped_tensors_under_a_gemm_config_are_refused():
    q = random_awq(np.random.default_rng(0), 64, 32, group_size=32)
    t = awq_tensors("p", q)
    t["p.qweight"] = np.zeros((32, 64 // 8), np.int32)  # GEMV: [N, K/8]
    with pytest.raises(HFCheckpointError, match=r"mem\.safetensors: tensor 'p\.qweight' has shape"):
        AWQScheme(32).read_linear(*_reader(t), "p", 64, 32)
