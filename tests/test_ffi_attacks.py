"""The native FFI handler attacked directly with malformed calls.

Every case below calls a registered XLA FFI target through ``jax.ffi.ffi_call`` (no Python-side
checks in between) with something wrong: ranks, dims, dtypes, zero-size dims, attributes that
disagree with the operands or with each other, negative and huge attributes (including values
that overflow int64 index arithmetic), wrong operand/result counts and attribute types. Each must
come back as a Python exception naming the problem; none may crash, hang or touch memory out of
bounds (the sanitizer build, scripts/sanitize.sh, runs this file with ASan + UBSan). The whole
battery also runs once in a fresh subprocess under a timeout, so a crash or a hang is reported as
such rather than taking the test session down.

The CUDA handler's validation gets the same treatment in tests/test_ffi_attacks_cuda.py.

Cases already in tests/test_lowering_cpu.py::test_bad_operands_raise are not repeated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lutgemm_jax import _native

K, N, Q, G = 96, 40, 3, 32  # Kp = 96: 3 words, 3 groups
I64_MAX = np.iinfo(np.int64).max
HUGE = 1 << 62


def _good():
    """Operands and attributes of one valid call, as ``dict`` (arrays are numpy)."""
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(size=(2, 3, K)).astype(np.float32),
        "bits": rng.integers(0, 2**32, (K // 32, Q, N), dtype=np.uint32),
        "alpha": rng.uniform(0.1, 1, (K // G, Q, N)).astype(np.float32),
        "offset": rng.normal(size=(K // G, N)).astype(np.float32),
        "out": ((2, 3, N), np.float32),
        "attrs": dict(
            in_features=K, out_features=N, num_bits=Q, group_size=G, layout=0, mode=0, path=0
        ),
    }


def _with(**changes):
    def build():
        c = _good()
        for key, value in changes.items():
            if key in c["attrs"] or key.startswith("attr_"):
                c["attrs"][key.removeprefix("attr_")] = value
            else:
                c[key] = value(c[key]) if callable(value) else value
        return c

    return build


def _drop_attr(name):
    def build():
        c = _good()
        del c["attrs"][name]
        return c

    return build


def _typed_attr(name, cast):
    def build():
        c = _good()
        c["attrs_typed"] = {name: cast(c["attrs"][name])}
        return c

    return build


def _zeros(shape, dtype=np.float32):
    return np.zeros(shape, dtype)


# name -> (builder, fragment of the expected error message). Each is one malformed call of the
# LUT-GEMM handler (target lutgemm_cpu).
LUT_CASES = {
    # ranks
    "x rank 0": (_with(x=np.float32(1.0), out=((N,), np.float32)), "x has shape"),
    "x rank 1 wrong K": (_with(x=_zeros((K - 1,)), out=((N,), np.float32)), "x has shape"),
    "bits rank 2": (_with(bits=lambda b: b.reshape(-1, N)), "bits has shape"),
    "bits rank 4": (_with(bits=lambda b: b[None]), "bits has shape"),
    "alpha rank 2": (_with(alpha=lambda a: a.reshape(-1, N)), "alpha has shape"),
    "alpha rank 4": (_with(alpha=lambda a: a[None]), "alpha has shape"),
    "offset rank 1": (_with(offset=lambda o: o.reshape(-1)), "offset has shape"),
    "offset rank 3": (_with(offset=lambda o: o[None]), "offset has shape"),
    "out rank 2 for x rank 3": (_with(out=((6, N), np.float32)), "output has shape"),
    "out rank 4": (_with(out=((1, 2, 3, N), np.float32)), "output has shape"),
    # dims
    "x K + 1": (_with(x=_zeros((2, K + 1))), "x has shape"),
    "out leading dim": (_with(out=((2, 4, N), np.float32)), "output has shape"),
    "bits one word short": (_with(bits=lambda b: b[:-1]), "bits has shape"),
    "bits one word long": (_with(bits=lambda b: np.concatenate([b, b[:1]])), "bits has shape"),
    "bits extra plane": (_with(bits=lambda b: np.concatenate([b, b[:, :1]], 1)), "bits has shape"),
    "bits one column short": (_with(bits=lambda b: b[..., :-1]), "bits has shape"),
    "alpha one group short": (_with(alpha=lambda a: a[:-1]), "alpha has shape"),
    "alpha one plane short": (_with(alpha=lambda a: a[:, :-1]), "alpha has shape"),
    "alpha one column long": (
        _with(alpha=lambda a: np.concatenate([a, a[..., :1]], -1)),
        "alpha has shape",
    ),
    "offset one group short": (_with(offset=lambda o: o[:-1]), "offset has shape"),
    "offset one column short": (_with(offset=lambda o: o[:, :-1]), "offset has shape"),
    # dtypes
    "x int32": (_with(x=lambda x: x.astype(np.int32), out=((2, 3, N), np.int32)), "x must be"),
    "x uint8": (_with(x=lambda x: x.astype(np.uint8), out=((2, 3, N), np.uint8)), "x must be"),
    "x bool": (_with(x=lambda x: x > 0, out=((2, 3, N), np.bool_)), "x must be"),
    "bits float32": (_with(bits=lambda b: b.astype(np.float32)), "bits must be uint32"),
    "bits uint8": (_with(bits=lambda b: b.astype(np.uint8)), "bits must be uint32"),
    "bits uint16": (_with(bits=lambda b: b.astype(np.uint16)), "bits must be uint32"),
    "alpha uint32": (_with(alpha=lambda a: a.astype(np.uint32)), "alpha must be"),
    "alpha and offset int8": (
        _with(alpha=lambda a: a.astype(np.int8), offset=lambda o: o.astype(np.int8)),
        "alpha must be",
    ),
    "offset float16, alpha float32": (
        _with(offset=lambda o: o.astype(np.float16)),
        "offset must have alpha's dtype",
    ),
    "offset float32, alpha bfloat16": (
        _with(alpha=lambda a: a.astype(jnp.bfloat16)),
        "offset must have alpha's dtype",
    ),
    "out bfloat16 for x float32": (_with(out=((2, 3, N), jnp.bfloat16)), "output must have"),
    "out int32": (_with(out=((2, 3, N), np.int32)), "output must have"),
    # zero-size dims
    "K = 0 everywhere": (
        _with(
            in_features=0,
            x=_zeros((2, 3, 0)),
            bits=_zeros((0, Q, N), np.uint32),
            alpha=_zeros((0, Q, N)),
            offset=_zeros((0, N)),
        ),
        "K (in_features) must be positive",
    ),
    "q = 0 everywhere": (
        _with(num_bits=0, bits=_zeros((3, 0, N), np.uint32), alpha=_zeros((3, 0, N))),
        "q (num_bits)",
    ),
    "bits with zero words": (_with(bits=_zeros((0, Q, N), np.uint32)), "bits has shape"),
    "alpha with zero groups": (_with(alpha=_zeros((0, Q, N))), "alpha has shape"),
    "x zero K with K attribute": (_with(x=_zeros((2, 0))), "x has shape"),
    # attributes inconsistent with the operands or each other
    "K attr larger than x": (_with(in_features=K + 1), "x has shape"),
    "K attr one group smaller": (
        _with(in_features=K - 32, x=_zeros((2, K - 32))),
        "bits has shape",
    ),
    "N attr smaller": (_with(out_features=N - 1, out=((2, 3, N - 1), np.float32)), "has shape"),
    "q attr smaller than planes": (_with(num_bits=Q - 1), "bits has shape"),
    "q attr larger than planes": (_with(num_bits=Q + 1), "bits has shape"),
    "g attr 64 for 32-row groups": (_with(group_size=64), "has shape"),
    "g attr 16 for 32-row groups": (_with(group_size=16), "alpha has shape"),
    # g = 16 (two groups per sign word; Kp rounds up to 32, not 16) and uniform alpha [G, 1, N]
    "g = 16, alpha groups of K / 16 rounded to 16": (
        _with(group_size=16, in_features=80, x=_zeros((2, 80)), alpha=_zeros((5, Q, N))),
        "alpha has shape",
    ),
    "g = 16, bits of K / 16 half words": (
        _with(
            group_size=16,
            in_features=80,
            x=_zeros((2, 80)),
            alpha=_zeros((6, Q, N)),
            bits=_zeros((5, Q, N), np.uint32),
        ),
        "bits has shape",
    ),
    "g = 16, offset of 32-row groups": (
        _with(group_size=16, alpha=_zeros((6, Q, N))),
        "offset has shape",
    ),
    "alpha neither q planes nor 1": (_with(alpha=lambda a: a[:, :2]), "alpha has shape"),
    "uniform alpha one group short": (_with(alpha=lambda a: a[:-1, :1]), "alpha has shape"),
    "uniform alpha, offset of another dtype": (
        _with(alpha=lambda a: a[:, :1].astype(np.float16)),
        "offset must have alpha's dtype",
    ),
    "g attr 0": (_with(group_size=0), "group_size"),
    "g attr 33": (_with(group_size=33), "group_size"),
    # negative and huge attributes (incl. int64 overflow of K + g - 1)
    "K = -1": (_with(in_features=-1), "K (in_features) must be positive"),
    "K = -2**63": (_with(in_features=-(2**63)), "K (in_features) must be positive"),
    "N = -1": (_with(out_features=-1), "N (out_features) must be positive"),
    "q = -1": (_with(num_bits=-1), "q (num_bits)"),
    "q = 2**62": (_with(num_bits=HUGE), "q (num_bits)"),
    "g = -32": (_with(group_size=-32), "group_size"),
    "g = 2**62": (_with(group_size=HUGE), "group_size is too large"),
    # K + g - 1 overflows int64: before the fix, Kp came out as 0 and a call with empty
    # bits/alpha/offset passed validation, then wrote K floats into a zero-length buffer.
    "g = 2**63 - 32, empty weight": (
        _with(
            group_size=I64_MAX - 31,
            bits=_zeros((0, Q, N), np.uint32),
            alpha=_zeros((0, Q, N)),
            offset=_zeros((0, N)),
        ),
        "group_size",
    ),
    "K = 2**62": (_with(in_features=HUGE), "K (in_features) is too large"),
    "K = 2**63 - 1": (_with(in_features=I64_MAX), "K (in_features)"),
    "N = 2**62": (_with(out_features=HUGE), "N (out_features)"),
    "N = 2**63 - 1": (_with(out_features=I64_MAX), "N (out_features)"),
    "mode = -1": (_with(mode=-1), "mode"),
    "mode = 3": (_with(mode=3), "mode"),
    "mode = 2**62": (_with(mode=HUGE), "mode"),
    "mode = 2 (the dense path is path = 1)": (_with(mode=2), "mode must be 0"),
    "mode = 2 with the dense path": (_with(mode=2, path=1), "mode must be 0"),
    "path = -1": (_with(path=-1), "path must be 0"),
    "path = 2": (_with(path=2), "path must be 0"),
    "path = 2**62": (_with(path=HUGE), "path must be 0"),
    # the binding itself: missing / mistyped attributes, wrong operand and result counts
    "layout = -1": (_with(layout=-1), "layout"),
    "layout = 2": (_with(layout=2), "layout"),
    "layout = 2**62": (_with(layout=HUGE), "layout"),
    "mode attribute missing": (_drop_attr("mode"), "Wrong number of attributes"),
    "path attribute missing": (_drop_attr("path"), "Wrong number of attributes"),
    "layout attribute missing": (_drop_attr("layout"), "Wrong number of attributes"),
    "in_features missing": (_drop_attr("in_features"), "Wrong number of attributes"),
    "extra attribute": (_with(attr_bogus=1), ""),
    "num_bits as int32": (_typed_attr("num_bits", np.int32), ""),
    "group_size as float": (_typed_attr("group_size", np.float32), ""),
    "three operands": (_with(drop_operand=True), ""),
    "five operands": (_with(extra_operand=True), ""),
    "two results": (_with(extra_result=True), ""),
}


def call(case: dict):
    """One raw FFI call of the CPU target, run to completion (``block_until_ready``)."""
    attrs = {k: np.int64(v) for k, v in case["attrs"].items()}
    attrs.update(case.get("attrs_typed", {}))
    operands = [case["x"], case["bits"], case["alpha"], case["offset"]]
    if case.get("drop_operand"):
        operands = operands[:-1]
    if case.get("extra_operand"):
        operands = [*operands, operands[-1]]
    results = jax.ShapeDtypeStruct(*case["out"])
    if case.get("extra_result"):
        results = (results, results)
    fn = jax.ffi.ffi_call(_native.CPU_TARGET, results)
    return jax.block_until_ready(jax.jit(lambda *a: fn(*a, **attrs))(*operands))


def run_case(name) -> str:
    """Runs one malformed call; returns the exception's message (fails if none is raised)."""
    builder, fragment = LUT_CASES[name]
    try:
        call(builder())
    except Exception as e:  # noqa: BLE001 - any Python exception is the contract
        msg = str(e)
        assert fragment in msg, f"{name}: message {msg!r} lacks {fragment!r}"
        return msg
    raise AssertionError(f"{name}: the malformed call returned a result")


def test_good_calls_succeed():
    """The baseline is valid (so each case fails for its own reason) in every kernel mode and
    path (the dense path reads no mode: both are accepted), also with no offset and with
    zero-size batch dims (M = 0: an empty result, not an error)."""
    kernels = [(0, 0), (1, 0), (0, 1), (1, 1)]  # (mode, path)
    for mode, path in kernels:
        for layout in (0, 1):
            y = call(_with(mode=mode, path=path, layout=layout)())
            assert y.shape == (2, 3, N) and np.isfinite(y).all()
    call(_with(offset=_zeros((0, N)))())
    # g = 16 (K = 80: Kp = 96, six groups, the last of padding rows only) and uniform scales.
    formats = [
        _with(group_size=16, alpha=_zeros((6, Q, N)), offset=_zeros((6, N))),
        _with(alpha=lambda a: a[:, :1]),
        _with(
            group_size=16,
            in_features=80,
            x=_zeros((2, 3, 80)),
            alpha=_zeros((6, 1, N)),
            offset=_zeros((0, N)),
        ),
    ]
    for build in formats:
        for mode, path in kernels:
            c = build()
            c["attrs"].update(mode=mode, path=path)
            y = call(c)
            assert y.shape == (2, 3, N) and np.isfinite(y).all()
    for lead in [(0,), (2, 0), (0, 5)]:
        for mode, path in kernels:
            out = ((*lead, N), np.float32)
            got = call(_with(x=_zeros((*lead, K)), out=out, mode=mode, path=path)())
            assert got.shape == (*lead, N)
    # A zero-element result (N = 0 in every operand and the attribute): XLA does not run the
    # handler at all and returns the empty array, so there is nothing to reject.
    empty = _with(
        out_features=0,
        bits=_zeros((3, Q, 0), np.uint32),
        alpha=_zeros((3, Q, 0)),
        offset=_zeros((3, 0)),
        out=((2, 3, 0), np.float32),
    )
    assert call(empty()).shape == (2, 3, 0)


# Cases that crashed the process before the fix in include/lutgemm/bcq_format.h (int64 overflow
# of Kp): each runs in its own subprocess, so that a regression (or a stale build) is reported
# as a crash of that case instead of killing the test session.
RISKY = [name for name in LUT_CASES if "2**63 - 32" in name]


@pytest.mark.parametrize("name", [n for n in LUT_CASES if n not in RISKY])
def test_malformed_call_raises(name):
    msg = run_case(name)
    fragment = LUT_CASES[name][1]
    if fragment and not fragment.startswith("Wrong number"):  # else XLA's binding rejects it
        assert "lut_gemm" in msg, msg


_ONE = """
import sys
sys.path.insert(0, sys.argv[1])
import test_ffi_attacks as t
print(t.run_case(sys.argv[2]))
"""


@pytest.mark.parametrize("name", RISKY)
def test_risky_malformed_call_raises_in_subprocess(name):
    r = subprocess.run(
        [sys.executable, "-P", "-c", _ONE, str(Path(__file__).parent), name],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, LUTGEMM_CPU_POISON="1"),
    )
    assert r.returncode == 0, f"exit status {r.returncode}: {r.stderr[-3000:]}"
    assert "lut_gemm" in r.stdout


_BATTERY = """
import json, sys
sys.path.insert(0, sys.argv[1])
import test_ffi_attacks as t
raised = 0
for name in t.LUT_CASES:  # the risky ones too: a crash fails this test, not the session
    t.run_case(name)
    raised += 1
t.test_good_calls_succeed()
print(json.dumps({"raised": raised}))
"""


def test_battery_in_fresh_process_exits_cleanly():
    """All cases in one process under a timeout: no crash, no hang, no heap damage showing up
    later (the process keeps working and exits with status 0)."""
    env = dict(os.environ, LUTGEMM_CPU_POISON="1")
    r = subprocess.run(
        [sys.executable, "-P", "-c", _BATTERY, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"raised": len(LUT_CASES)}


def test_case_count():
    assert len(LUT_CASES) >= 70
    print(f"malformed FFI calls: {len(LUT_CASES)} on the CPU handler")
