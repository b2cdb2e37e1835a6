"""Decode with LUT-GEMM for any supported family (OPT, Llama 2/3, Mistral, Qwen2/2.5, Qwen3):
float32 vs BCQ-quantized weights, side by side, or a decode-speed benchmark.

--model is a local Hugging Face checkpoint directory (config.json, *.safetensors, and
tokenizer.json for text) or a llama.cpp .gguf file (its quantized weights converted exactly to
BCQ and run as they are, its tokenizer rebuilt from the file); nothing is ever downloaded.
Without --model, --preset builds a model of a published shape with deterministic RANDOM
weights (the text is then meaningless; the comparison gauges the quantizer and the kernels,
not model quality)::

    python examples/decode.py --preset tiny --prompt "Hello"
    python examples/decode.py --model ~/models/Llama-3.2-1B --prompt "The capital of France is"
    python examples/decode.py --model ~/models/tinyllama-1.1b-chat.Q4_K_M.gguf --prompt "Hi"
    python examples/decode.py --benchmark --preset tinyllama-1.1b --bits 3,4 --batch 1,4 \\
        --method rtn --membw /tmp/membw

A .gguf model is already quantized: it is decoded (or benchmarked) once, as loaded, and
--bits, --group-size and --method do not apply.

--benchmark prints, per batch size, the median decode-step latency (ms per step; a step adds
one token to every batch row) and tokens/s, the MiB
of weights one step reads (embedding rows are gathered, not read whole, unless the embedding is
the tied lm_head) and the GB/s that implies, for float32 and for each --bits at --group-size.
--membw runs a compiled ``membw`` read-bandwidth probe (a JSON line on stdout) in the same run
and prints its figure next to them. The quantizer's --method does not change the speed; ``rtn``
is the fastest to fit.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import jax
import numpy as np

from lutgemm_jax import models
from lutgemm_jax.config import BCQConfig
from lutgemm_jax.models.family import pad_id

TINY = models.LlamaConfig(
    model_type="llama", vocab_size=512, hidden_size=256, intermediate_size=512,
    num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
    max_position_embeddings=256,
)  # fmt: skip
"""``--preset tiny``: a 2-layer GQA Llama for a quick look."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="local Hugging Face model directory or .gguf file")
    src.add_argument(
        "--preset",
        default="tiny",
        help="random weights of a published shape: tiny, " + ", ".join(models.presets()),
    )
    p.add_argument("--bits", default="3", help="bit widths, comma-separated (default 3)")
    p.add_argument("--group-size", type=int, default=128, help="quantization group (default 128)")
    p.add_argument("--method", default="alternating", choices=("greedy", "alternating", "rtn"))
    p.add_argument("--layout", default="auto", help="sign layout: auto, cpu, canonical")
    p.add_argument("--scale-dtype", default="float32", choices=("float32", "float16"),
                   help=".gguf: BCQ scale storage (float32 exact, float16 compact)")  # fmt: skip
    p.add_argument("--quantize-lm-head", action="store_true", help="also quantize the lm_head")
    p.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    p.add_argument("--prompt", action="append", help="prompt text (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--benchmark", action="store_true", help="time decode steps instead")
    p.add_argument("--bench-steps", type=int, default=16, help="decode steps per timed call")
    p.add_argument("--bench-repeats", type=int, default=5, help="timed calls (median reported)")
    p.add_argument("--membw", help='compiled membw probe to run alongside, e.g. "/tmp/membw 1024"')
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        args.bits = [int(b) for b in args.bits.split(",")]
        args.batch = [int(b) for b in args.batch.split(",")]
    except ValueError:
        p.error("--bits and --batch take comma-separated integers, e.g. --bits 3,4")
    if args.max_new_tokens < 1 or min(args.batch) < 1:
        p.error("--max-new-tokens and --batch must be >= 1")
    return args


def log(*a) -> None:
    print(*a, flush=True)


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def load(args):
    """``(config, params, tokenizer or None, description)`` from --model or --preset."""
    if args.model and args.model.endswith(".gguf"):
        t0 = time.perf_counter()
        try:
            config, params, tokenizer = models.load_gguf(
                args.model, layout=args.layout, scale_dtype=np.dtype(args.scale_dtype)
            )
        except models.GGUFError as e:
            sys.exit(f"error: {e}")
        log(f"loaded {args.model} in {time.perf_counter() - t0:.1f} s: "
            f"{mib(models.param_bytes(params))}")  # fmt: skip
        args.bits = []  # already quantized: run it as loaded
        return config, params, tokenizer, args.model
    if args.model:
        try:
            config, params = models.load_hf_checkpoint(args.model)
        except models.HFCheckpointError as e:
            sys.exit(f"error: {e}")
        return config, params, models.load_tokenizer(args.model, config), args.model
    if args.preset == "tiny":
        config = TINY
    else:
        try:
            config = models.preset(args.preset)
        except ValueError as e:
            sys.exit(f"error: {e}")
    t0 = time.perf_counter()
    params = models.init_params(config, args.seed)
    log(f"random weights for preset {args.preset} ({config.num_params() / 1e6:,.0f} M params) "
        f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    return config, params, None, f"preset {args.preset} (random weights)"


def quantize(args, params, bits: int):
    try:
        cfg = BCQConfig(bits=bits, group_size=args.group_size, method=args.method,
                        layout=args.layout)  # fmt: skip
    except (ValueError, TypeError) as e:
        sys.exit(f"error: {e}")
    t0 = time.perf_counter()
    q = models.quantize_model(params, cfg, quantize_lm_head=args.quantize_lm_head)
    jax.block_until_ready(q)
    log(f"quantized to {bits}-bit g{args.group_size} ({args.method}, layout "
        f"{cfg.resolve_layout()}) in {time.perf_counter() - t0:.1f} s: "
        f"{mib(models.param_bytes(params))} -> {mib(models.param_bytes(q))}")  # fmt: skip
    return q


def run_membw(command: str | None) -> dict | None:
    """The JSON line of a ``membw`` run (``command``: its path, optionally with its arguments,
    e.g. ``"/tmp/membw 1024 7"``), or None (no command, or it failed)."""
    if not command:
        return None
    try:
        out = subprocess.run(shlex.split(command), capture_output=True, text=True, check=True,
                             timeout=600)  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        log(f"membw failed ({e}); continuing without it")
        return None


def base_name(args) -> str:
    """The name of the loaded weights in the output: a .gguf file's are already quantized."""
    return "gguf" if args.model and args.model.endswith(".gguf") else "float32"


def benchmark(args, config, params, description: str) -> None:
    model = models.from_config(config)
    variants = [(base_name(args), params)] + [
        (f"{b}-bit g{args.group_size}", quantize(args, params, b)) for b in args.bits
    ]
    bw = run_membw(args.membw)
    log(f"\n{description}: decode step latency, median of {args.bench_repeats} calls of "
        f"{args.bench_steps} steps, {jax.devices()[0].platform.upper()}, "
        f"{os.cpu_count()} cores")  # fmt: skip
    if bw:
        counts = sorted(k for k in bw if k.startswith("read_gbps_"))
        rates = [f"{k.removeprefix('read_gbps_')} {bw[k]['median']:.1f} GB/s" for k in counts]
        log("machine read bandwidth (membw, median): " + ", ".join(rates))
    header = (f"{'batch':>5} | {'weights':<14} | {'ms/step':>9} | {'tok/s':>8} | "
              f"{'MiB read/token':>14} | {'GB/s':>6} | vs float32")  # fmt: skip
    log(header + "\n" + "-" * len(header))
    for batch in args.batch:
        base = None
        for name, p in variants:
            r = models.benchmark_decode(model, p, batch=batch, steps=args.bench_steps,
                                        repeats=args.bench_repeats, seed=args.seed)  # fmt: skip
            read = models.bytes_read_per_token(p)
            base = base or r["median"]
            log(f"{batch:5d} | {name:<14} | {1e3 * r['median']:9.2f} | {r['tokens_per_s']:8.1f} | "
                f"{read / 2**20:14,.1f} | {read / r['median'] / 1e9:6.1f} | "
                f"{base / r['median']:.2f}x")  # fmt: skip


def decode(args, config, params, tokenizer, description: str) -> None:
    model = models.from_config(config)
    enc = tokenizer or models.ByteTokenizer(config)
    prompts = args.prompt or ["Hello, my name is"]
    ids, mask = models.pad_batch([enc.encode(t) for t in prompts], pad_id(config))
    total = ids.shape[1] + args.max_new_tokens
    if total > config.max_position_embeddings:
        sys.exit(f"error: prompt + new tokens = {total} > max_position_embeddings "
                 f"{config.max_position_embeddings}")  # fmt: skip
    sampling = models.Sampling(args.temperature, args.top_k, args.top_p)
    log(f"\n{description}: {len(prompts)} prompt(s), {args.max_new_tokens} new tokens")
    ref = None
    for bits in [None, *args.bits]:
        p = params if bits is None else quantize(args, params, bits)
        kw = dict(max_new_tokens=args.max_new_tokens, sampling=sampling, seed=args.seed,
                  stop_at_eos=False)  # fmt: skip
        jax.block_until_ready(models.generate(model, p, ids, mask, **kw))  # compile
        t0 = time.perf_counter()
        out = jax.block_until_ready(models.generate(model, p, ids, mask, **kw))
        ms = 1e3 * (time.perf_counter() - t0) / args.max_new_tokens
        name = base_name(args) if bits is None else f"{bits}-bit"
        tokens = np.asarray(out.tokens)
        if ref is None:
            ref, agree = tokens, ""
        else:
            forced = models.generate(model, p, ids, mask, forced_tokens=ref, **kw).tokens
            agree = f", top-1 agreement with float32 {np.mean(np.asarray(forced) == ref):.0%}"
        log(f"[{name}] {ms:.1f} ms/token (prefill included){agree}")
        for text, row in zip(prompts, tokens, strict=True):
            log(f"  {text!r} -> {enc.decode(row)!r}")


def main(argv=None) -> None:
    args = parse_args(argv)
    config, params, tokenizer, description = load(args)
    if args.benchmark:
        benchmark(args, config, params, description)
    else:
        decode(args, config, params, tokenizer, description)


if __name__ == "__main__":
    main()
