"""The CUDA handlers' validation attacked with malformed calls, without a GPU.

The CUDA handlers validate with the same host code as the CPU one (include/lutgemm/ffi_checks.h
plus cuda/lut_gemm_handler.h); malformed operand descriptions and attributes run through the
emulation harness's ``emu_validate`` (tests/test_cuda_emulation.py has the basic cases; the
hostile attributes and dims are here). Each must be rejected with InvalidArgument and a message
naming the problem (the sanitizer build, scripts/sanitize.sh, runs this file with ASan + UBSan).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import test_cuda_emulation as emulation
from test_properties import environ

I64_MAX = np.iinfo(np.int64).max
HUGE = 1 << 62

EK, EN, EQ, EG = emulation.K, emulation.N, emulation.Q, emulation.G
EGOOD = emulation.GOOD  # x, bits, alpha, offset, y, split-K workspace (valid descriptions)


def _ops(**replace):
    names = ["x", "bits", "alpha", "offset", "y", "workspace"]
    return [replace.get(name, EGOOD[i]) for i, name in enumerate(names)]


# name -> (operand descriptions, attributes (K, N, q, g), fragment of the expected message).
EMU_CASES = {
    "K = -5": (_ops(), (-5, EN, EQ, EG), "K (in_features)"),
    "N = 0": (_ops(), (EK, 0, EQ, EG), "N (out_features)"),
    "N = -1": (_ops(), (EK, -1, EQ, EG), "N (out_features)"),
    "q = -1": (_ops(), (EK, EN, -1, EG), "q (num_bits)"),
    "q = 2**62": (_ops(), (EK, EN, HUGE, EG), "q (num_bits)"),
    "g = 0": (_ops(), (EK, EN, EQ, 0), "group_size"),
    "g = -32": (_ops(), (EK, EN, EQ, -32), "group_size"),
    "g = 2**62": (_ops(), (EK, EN, EQ, HUGE), "group_size"),
    "g = 2**63 - 32, empty weight": (
        _ops(
            bits=("uint32", (0, EQ, EN)),
            alpha=("float32", (0, EQ, EN)),
            offset=("float32", (0, EN)),
        ),
        (EK, EN, EQ, I64_MAX - 31),
        "group_size",
    ),
    "K = 2**63 - 1 with matching x": (
        _ops(x=("bfloat16", (1, I64_MAX))),
        (I64_MAX, EN, EQ, EG),
        "K (in_features)",
    ),
    "K = 2**40 + 32 with matching operands": (
        _ops(
            x=("bfloat16", (1, 2**40 + 32)),
            bits=("uint32", (2**35 + 1, EQ, EN)),
            alpha=("float32", (2**35 + 1, EQ, EN)),
            offset=("float32", (0, EN)),
            y=("bfloat16", (1, EN)),
        ),
        (2**40 + 32, EN, EQ, 32),
        "too large",
    ),
    "K = 2**33 with matching operands (int indices)": (
        _ops(
            x=("bfloat16", (1, 2**33)),
            bits=("uint32", (2**28, EQ, EN)),
            alpha=("float32", (2**28, EQ, EN)),
            offset=("float32", (0, EN)),
            y=("bfloat16", (1, EN)),
        ),
        (2**33, EN, EQ, 32),
        "too large for the CUDA kernels",
    ),
    "M = 2**40 rows": (
        _ops(x=("bfloat16", (2**20, 2**20, EK)), y=("bfloat16", (2**20, 2**20, EN))),
        (EK, EN, EQ, EG),
        "too large for the CUDA kernels",
    ),
    "x rank 8, wrong K": (_ops(x=("bfloat16", (1,) * 7 + (EK + 1,))), (EK, EN, EQ, EG), "x has"),
    "y rank 8": (_ops(y=("bfloat16", (1,) * 7 + (EN,))), (EK, EN, EQ, EG), "output has shape"),
    "x with K = 0": (_ops(x=("bfloat16", (2, 0))), (EK, EN, EQ, EG), "x has shape"),
    "bits with zero words": (_ops(bits=("uint32", (0, EQ, EN))), (EK, EN, EQ, EG), "bits has"),
    "alpha with zero planes": (_ops(alpha=("float32", (4, 0, EN))), (EK, EN, EQ, EG), "alpha has"),
    "workspace for M = 0 rows": (
        _ops(x=("bfloat16", (0, EK)), y=("bfloat16", (0, EN)), workspace=("float32", (12,))),
        (EK, EN, EQ, EG),
        "workspace has shape",
    ),
    "workspace float16": (_ops(workspace=("float16", (0,))), (EK, EN, EQ, EG), "workspace has"),
    "workspace rank 0": (_ops(workspace=("float32", ())), (EK, EN, EQ, EG), "workspace has"),
    "alpha float64": (_ops(alpha=("float64", (4, EQ, EN))), (EK, EN, EQ, EG), "alpha must be"),
    "alpha with q + 1 planes": (
        _ops(alpha=("float32", (4, EQ + 1, EN))),
        (EK, EN, EQ, EG),
        "alpha has shape",
    ),
    "uniform alpha with 2**62 groups": (
        _ops(alpha=("float32", (HUGE, 1, EN))),
        (EK, EN, EQ, EG),
        "alpha has shape",
    ),
    # g = 16: Kp is K rounded up to whole 32-bit words (K = 40: Kp = 64, 2 words, 4 groups), not
    # to whole groups (48: 3 groups), so operands sized for Kp = 48 must be refused.
    "g = 16, alpha for Kp = 48": (
        _ops(
            x=("bfloat16", (2, 5, 40)),
            bits=("uint32", (2, EQ, EN)),
            alpha=("float32", (3, EQ, EN)),
            offset=("float32", (0, EN)),
        ),
        (40, EN, EQ, 16),
        "alpha has shape",
    ),
    "g = 16, uniform alpha and offset for Kp = 48": (
        _ops(
            x=("bfloat16", (2, 5, 40)),
            bits=("uint32", (2, EQ, EN)),
            alpha=("float32", (4, 1, EN)),
            offset=("float32", (3, EN)),
        ),
        (40, EN, EQ, 16),
        "offset has shape",
    ),
    "g = 16, one bits word for K = 40": (
        _ops(
            x=("bfloat16", (2, 5, 40)),
            bits=("uint32", (1, EQ, EN)),
            alpha=("float32", (4, EQ, EN)),
            offset=("float32", (0, EN)),
        ),
        (40, EN, EQ, 16),
        "bits has shape",
    ),
    "g = 16, K = 2**40 with matching uniform operands (int indices)": (
        _ops(
            x=("bfloat16", (1, 2**40)),
            bits=("uint32", (2**35, EQ, EN)),
            alpha=("float32", (2**36, 1, EN)),
            offset=("float32", (0, EN)),
            y=("bfloat16", (1, EN)),
        ),
        (2**40, EN, EQ, 16),
        "too large for the CUDA kernels",
    ),
    "x int8": (_ops(x=("int8", (2, 5, EK))), (EK, EN, EQ, EG), "x must be"),
}


@pytest.fixture(scope="module")
def emu_lib(tmp_path_factory):
    if os.environ.get("LUTGEMM_SANITIZER_BUILD"):
        # scripts/sanitize.sh: the CUDA handler's host validation under ASan + UBSan as well
        # (libasan is preloaded; only emu_validate is called, no fibers).
        flags = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
        out_dir = tmp_path_factory.mktemp("emu_asan")
        with environ(LD_PRELOAD=None):  # g++ itself runs without the preloaded runtime
            return emulation._bind(emulation._compile(out_dir, flags))
    from test_properties import emulation_lib

    return emulation_lib()


@pytest.mark.parametrize("name", list(EMU_CASES))
def test_cuda_validation_rejects(emu_lib, name):
    operands, attrs, fragment = EMU_CASES[name]
    rc, msg = emulation.validate(emu_lib, 0, operands, attrs)
    assert rc == emulation.INVALID_ARGUMENT and fragment in msg, (rc, msg)
    if attrs != (EK, EN, EQ, EG):  # the dequantization handler shares the attribute checks
        dq = [*operands[:4], ("float32", (1, EN)), operands[5]]
        rc, msg = emulation.validate(emu_lib, 1, dq, attrs)
        assert rc == emulation.INVALID_ARGUMENT and msg, (rc, msg)


def test_case_count():
    assert len(EMU_CASES) >= 20
    print(f"malformed FFI calls: {len(EMU_CASES)} on the CUDA handler's validation (emulated)")
