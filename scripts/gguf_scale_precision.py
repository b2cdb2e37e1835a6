"""Scale precision and storage of GGUF imports: for every exactly converted GGUF type, the bits
per weight of the BCQ form (real array bytes: sign words + alpha + offset) against the source
type's, and the error of the compact float16 scales against ``gguf.quants.dequantize``.

Data: Q4_0..Q8_0 from ``gguf.quants.quantize`` of Gaussian weights (``[256, 4096]`` per type);
the K-quants from the llama.cpp-quantized fixtures in ``tests/data/gguf`` (every tensor of the
type in the Q4_K_M, Q2_K, Q3_K_M and Q5_K_M files: llama.cpp's own quantizer output).

    PYTHONPATH=$PWD python scripts/gguf_scale_precision.py

prints a Markdown table (the one in docs/gguf.md).
"""

from __future__ import annotations

import os

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from lutgemm_jax.format import dequantize
from lutgemm_jax.models import gguf_quants

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = [
    os.path.join(REPO, "tests", "data", "gguf", f"tiny-llama-{m}.gguf")
    for m in ("Q4_K_M", "Q2_K", "Q3_K_M", "Q5_K_M")
]


def sources(qtype) -> list[np.ndarray]:
    """Raw tensors ``[N, bytes]`` of ``qtype`` to measure."""
    if qtype not in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
        rng = np.random.default_rng(int(qtype))
        return [gguf.quants.quantize(rng.standard_normal((256, 4096), np.float32), qtype)]
    out = []
    for path in FIXTURES:
        out += [np.array(t.data) for t in gguf.GGUFReader(path).tensors if t.tensor_type == qtype]
    return out


def measure(qtype) -> dict:
    block, size = GGML_QUANT_SIZES[qtype]
    weights = groups = 0
    bytes_by = {"float32": 0, "float16": 0}
    f32_exact = f16_exact = 0
    alpha16 = offset16 = 0
    max_rel = rms_num = rms_den = 0.0
    for data in sources(qtype):
        want = gguf.quants.dequantize(data, qtype).T
        exact = gguf_quants.to_bcq(data, qtype)
        compact = gguf_quants.to_bcq(data, qtype, dtype=np.float16)
        weights += want.size
        groups += exact.alpha.size
        bytes_by["float32"] += exact.nbytes()
        bytes_by["float16"] += compact.nbytes()
        f32_exact += int(np.sum(np.asarray(dequantize(exact)) == want))
        got = np.asarray(dequantize(compact))
        f16_exact += int(np.sum(got == want))
        a32, o32 = np.asarray(exact.alpha), np.asarray(exact.offset)
        alpha16 += int(np.sum(a32.astype(np.float16).astype(np.float32) == a32))
        offset16 += int(np.sum(o32.astype(np.float16).astype(np.float32) == o32))
        err = np.abs(got.astype(np.float64) - want)
        max_rel = max(max_rel, float(err.max() / np.abs(want).max()))
        rms_num += float(np.sum(err**2))
        rms_den += float(np.sum(want.astype(np.float64) ** 2))
    return {
        "type": qtype.name,
        "source_bpw": 8 * size / block,
        "bpw_f32": 8 * bytes_by["float32"] / weights,
        "bpw_f16": 8 * bytes_by["float16"] / weights,
        "f32_exact": f32_exact / weights,
        "alpha16": alpha16 / groups,
        "offset16": offset16 / groups,
        "f16_exact": f16_exact / weights,
        "f16_max_rel": max_rel,
        "f16_rms_rel": (rms_num / rms_den) ** 0.5,
        "weights": weights,
    }


def main() -> None:
    print(
        "| type | source bpw | BCQ bpw f32 (x) | BCQ bpw f16 (x) | f32 bit-exact | "
        "f16 alpha exact | f16 offset exact | f16 bit-exact | f16 max err / max|w| | "
        "f16 rms err / rms w | weights |"
    )
    print("|" + " --- |" * 11)
    for qtype in gguf_quants.SUPPORTED_TYPES:
        r = measure(qtype)
        s = r["source_bpw"]
        print(
            f"| {r['type']} | {s:.4g} | {r['bpw_f32']:.4g} ({r['bpw_f32'] / s:.2f}) | "
            f"{r['bpw_f16']:.4g} ({r['bpw_f16'] / s:.2f}) | {r['f32_exact']:.2%} | "
            f"{r['alpha16']:.1%} | {r['offset16']:.1%} | {r['f16_exact']:.1%} | "
            f"{r['f16_max_rel']:.1e} | {r['f16_rms_rel']:.1e} | {r['weights']:,} |"
        )


if __name__ == "__main__":
    main()
