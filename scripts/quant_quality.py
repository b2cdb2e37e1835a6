"""Quantization quality of the shipped demo model: held-out perplexity under BCQ.

Every decoder Linear (q, k, v, out, fc1, fc2; the tied lm_head stays float) is quantized with
``lutgemm_jax.models.opt.quantize_model`` for q in {2, 3, 4} bit-planes x group size g in
{32, 128, per-column} x method in {greedy, alternating, rtn}, and the perplexity of the
LUT-GEMM model is measured on the held-out standard-library files of
``scripts/train_demo_model.py`` (the same split and tokenization as in training), next to the
float32 reference. Bits per weight count what is stored: q sign bits plus q float32 scales
(and, for rtn, one float32 offset) per group of g weights.

    PYTHONPATH=$PWD python scripts/quant_quality.py

prints a Markdown table and writes ``docs/demo_model_quality.json`` and
``docs/demo_model_quality.png`` (perplexity vs bits per weight).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from lutgemm_jax.format import BCQWeight
from lutgemm_jax.models import opt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_demo_model import DEFAULT_OUT, REPO, read_split, stdlib_root, token_stream  # noqa: E402

BITS = (2, 3, 4)
GROUPS: tuple[int | None, ...] = (32, 128, None)
METHODS = ("greedy", "alternating", "rtn")


def held_out_stream(model_dir: str, config: opt.OPTConfig) -> np.ndarray:
    """The held-out split of this interpreter's standard library, tokenized as in training."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    texts = [text for _, text in read_split(stdlib_root(), held_out=True)]
    return token_stream(tokenizer, texts, config.bos_token_id)


def bits_per_weight(qparams) -> float:
    """Stored bits (signs, scales, offsets) per weight over all BCQ Linears."""
    leaves = jax.tree_util.tree_leaves(qparams, is_leaf=lambda x: isinstance(x, BCQWeight))
    weights = [w for w in leaves if isinstance(w, BCQWeight)]
    stored = sum(opt.param_bytes(w) for w in weights)
    return 8 * stored / sum(w.in_features * w.out_features for w in weights)


def group_name(g: int | None) -> str:
    return "per-column" if g is None else str(g)


def measure(
    model_dir: str,
    max_windows: int | None,
    bits_list: tuple[int, ...] = BITS,
    groups: tuple[int | None, ...] = GROUPS,
    methods: tuple[str, ...] = METHODS,
) -> dict:
    config, params = opt.load_hf_checkpoint(model_dir)
    model = opt.OPT(config)
    ids = held_out_stream(model_dir, config)
    seq_len = config.max_position_embeddings
    layout = "cpu" if jax.default_backend() == "cpu" else "canonical"
    ppl, tokens = opt.perplexity(model, params, ids, seq_len=seq_len, max_windows=max_windows)
    rows = []
    for bits in bits_list:
        for g in groups:
            for method in methods:
                t0 = time.perf_counter()
                qparams = opt.quantize_model(
                    params, bits=bits, group_size=g, method=method, layout=layout
                )
                q_ppl, _ = opt.perplexity(
                    model, qparams, ids, seq_len=seq_len, max_windows=max_windows
                )
                rows.append(
                    {
                        "bits": bits,
                        "group_size": group_name(g),
                        "method": method,
                        "bits_per_weight": round(bits_per_weight(qparams), 3),
                        "ppl": round(q_ppl, 3),
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {
        "model": os.path.relpath(model_dir, REPO),
        "python": sys.version.split()[0],
        "held_out_tokens": tokens,
        "window": seq_len,
        "ppl_float32": round(ppl, 3),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    """Perplexity table: one row per (bits, group), one column per method."""
    lines = [
        f"float32 reference: perplexity {result['ppl_float32']:.3f} "
        f"({result['held_out_tokens']:,} held-out tokens, windows of {result['window']})",
        "",
        "| q | g | bits/weight (greedy, alternating / rtn) | greedy | alternating | rtn |",
        "|---|---|---|---|---|---|",
    ]
    by_key = {(r["bits"], r["group_size"], r["method"]): r for r in result["rows"]}
    for bits in dict.fromkeys(r["bits"] for r in result["rows"]):
        for g in dict.fromkeys(r["group_size"] for r in result["rows"]):
            cells = [by_key.get((bits, g, m)) for m in METHODS]
            if not any(cells):
                continue
            bpw = " / ".join(
                f"{c['bits_per_weight']:.2f}" for c in (cells[0] or cells[1], cells[2]) if c
            )
            ppls = " | ".join("-" if c is None else f"{c['ppl']:.2f}" for c in cells)
            lines.append(f"| {bits} | {g} | {bpw} | {ppls} |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = list(dict.fromkeys(r["group_size"] for r in result["rows"]))
    for color, method in zip(("C0", "C1", "C2"), METHODS, strict=True):
        for g, marker in zip(groups, "os^vD", strict=False):
            rows = [r for r in result["rows"] if r["method"] == method and r["group_size"] == g]
            if not rows:
                continue
            ax.plot(
                [r["bits_per_weight"] for r in rows],
                [r["ppl"] for r in rows],
                marker=marker,
                color=color,
                lw=0.8,
                label=f"{method}, g {g}",
            )
    ax.axhline(result["ppl_float32"], color="k", ls="--", lw=1, label="float32")
    ax.set_yscale("log")
    ax.set_xlabel("stored bits per weight (signs + scales [+ offsets])")
    ax.set_ylabel("held-out perplexity (log scale)")
    ax.set_title("demo model (OPT architecture, Python stdlib): BCQ quantization")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_OUT, help="checkpoint directory")
    p.add_argument(
        "--max-windows",
        type=int,
        default=32,
        help="only the first N held-out windows of the model's context (default 32; 0: all)",
    )
    p.add_argument("--bits", default="2,3,4", help="comma-separated bit-plane counts")
    p.add_argument("--group-sizes", default="32,128,-1", help="comma-separated; -1: per column")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument(
        "--out",
        default=os.path.join(REPO, "docs", "demo_model_quality"),
        help="path prefix of the .json and .png written",
    )
    args = p.parse_args(argv)
    if args.max_windows < 0:
        p.error("--max-windows must be >= 0")
    try:
        bits_list = tuple(int(b) for b in args.bits.split(","))
        groups = tuple(None if int(g) == -1 else int(g) for g in args.group_sizes.split(","))
    except ValueError as e:
        p.error(f"--bits and --group-sizes take comma-separated integers ({e})")
    methods = tuple(args.methods.split(","))
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown --methods {unknown}; choose from {', '.join(METHODS)}")
    result = measure(args.model, args.max_windows or None, bits_list, groups, methods)
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    plot(result, args.out + ".png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
