"""Calibrated vs data-free quantization of the shipped demo model: held-out perplexity.

For q in {2, 3, 4} bit-planes at group size g = 128, every decoder Linear is quantized five
ways and the LUT-GEMM model's perplexity is measured on the held-out files (the windows of
``scripts/quant_quality.py``): data-free alternating BCQ, data-free rtn (uniform grid),
calibrated rtn and calibrated alternating BCQ with act-order (``models.quantize_model(...,
calibrate=...)``: GPTQ-style, block by block on the quantized model's activations). The
calibration windows are drawn from the *training* split (never the held-out files):
``--calib-windows`` random windows of the model's context.

    PYTHONPATH=$PWD python scripts/calibrated_quality.py

prints a Markdown table (with the wall time of each calibrated quantization) and writes
``docs/demo_model_calibrated.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from lutgemm_jax import models
from lutgemm_jax.models import opt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quant_quality import bits_per_weight, held_out_stream  # noqa: E402
from train_demo_model import DEFAULT_OUT, REPO, read_split, stdlib_root, token_stream  # noqa: E402

VARIANTS = (
    # (name, method, calibrated, act_order)
    ("alternating", "alternating", False, False),
    ("rtn", "rtn", False, False),
    ("calibrated rtn", "rtn", True, False),
    ("calibrated alternating (act-order)", "alternating", True, True),
)


def train_windows(model_dir: str, config: opt.OPTConfig, n: int, seed: int) -> np.ndarray:
    """``n`` random windows ``[n, T]`` (T = the model's context) of the training split's token
    stream, tokenized as in training."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    texts = [text for _, text in read_split(stdlib_root(), held_out=False)]
    stream = token_stream(tokenizer, texts, config.bos_token_id)
    seq_len = config.max_position_embeddings
    starts = np.random.default_rng(seed).integers(0, stream.size - seq_len, n)
    return np.stack([stream[s : s + seq_len] for s in starts]).astype(np.int32)


def measure(model_dir: str, bits_list, group_size: int, calib: np.ndarray, max_windows) -> dict:
    config, params = opt.load_hf_checkpoint(model_dir)
    model = opt.OPT(config)
    ids = held_out_stream(model_dir, config)
    seq_len = config.max_position_embeddings
    ppl, tokens = opt.perplexity(model, params, ids, seq_len=seq_len, max_windows=max_windows)
    runner = models.calibration_runner(model, calib)
    rows = []
    for bits in bits_list:
        for name, method, calibrated, act_order in VARIANTS:
            t0 = time.perf_counter()
            qparams = opt.quantize_model(
                params,
                bits=bits,
                group_size=group_size,
                method=method,
                calibrate=runner if calibrated else None,
                act_order=act_order,
            )
            seconds = time.perf_counter() - t0
            q_ppl, _ = opt.perplexity(model, qparams, ids, seq_len=seq_len, max_windows=max_windows)
            rows.append(
                {
                    "bits": bits,
                    "variant": name,
                    "bits_per_weight": round(bits_per_weight(qparams), 3),
                    "ppl": round(q_ppl, 3),
                    "quantize_seconds": round(seconds, 1),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {
        "model": os.path.relpath(model_dir, REPO),
        "python": sys.version.split()[0],
        "group_size": group_size,
        "held_out_tokens": tokens,
        "calibration_windows": int(calib.shape[0]),
        "window": seq_len,
        "ppl_float32": round(ppl, 3),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    """One row per q; per variant the perplexity; the share of alternating's gap closed."""
    names = [v[0] for v in VARIANTS]
    ref = result["ppl_float32"]
    lines = [
        f"float32 reference: perplexity {ref:.3f} ({result['held_out_tokens']:,} held-out "
        f"tokens); g = {result['group_size']}; calibration: {result['calibration_windows']} "
        f"training windows of {result['window']} tokens",
        "",
        "| q | " + " | ".join(names) + " | gap closed (calibrated BCQ) | calibration time |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    by_key = {(r["bits"], r["variant"]): r for r in result["rows"]}
    for bits in dict.fromkeys(r["bits"] for r in result["rows"]):
        cells = [by_key[(bits, n)] for n in names]
        gap = cells[0]["ppl"] - ref
        closed = (cells[0]["ppl"] - cells[-1]["ppl"]) / gap if gap > 0 else float("nan")
        ppls = " | ".join(f"{c['ppl']:.2f}" for c in cells)
        lines.append(f"| {bits} | {ppls} | {closed:.0%} | {cells[-1]['quantize_seconds']:.0f} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_OUT, help="checkpoint directory")
    p.add_argument("--max-windows", type=int, default=32, help="held-out windows (0: all)")
    p.add_argument("--calib-windows", type=int, default=256, help="training windows")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    p.add_argument("--bits", default="2,3,4", help="comma-separated bit-plane counts")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument(
        "--out", default=os.path.join(REPO, "docs", "demo_model_calibrated.json"), help="JSON"
    )
    args = p.parse_args(argv)
    if args.max_windows < 0 or args.calib_windows < 1:
        p.error("--max-windows must be >= 0 and --calib-windows >= 1")
    try:
        bits_list = tuple(int(b) for b in args.bits.split(","))
    except ValueError as e:
        p.error(f"--bits takes comma-separated integers ({e})")
    config, _ = opt.load_hf_checkpoint(args.model)
    calib = train_windows(args.model, config, args.calib_windows, args.seed)
    result = measure(args.model, bits_list, args.group_size, calib, args.max_windows or None)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
