"""OPT text generation with LUT-GEMM: float32 vs 1-8 bit BCQ weights, side by side.

Default (no arguments): the small OPT-architecture model shipped in ``examples/demo_model/``
(trained on Python standard-library source by ``scripts/train_demo_model.py``, see its
README.md) is quantized to 3 bits, group size 128, with the alternating BCQ quantizer (the
paper's method); both models complete a few Python-code prompts, the decoded text is shown side
by side, then the perplexity of both on a bounded slice of the held-out standard-library files,
ms/token, tokens/s and the greedy (top-1) agreement. ``--json`` prints that summary as one
JSON object on stdout (the human-readable lines go to stderr)::

    python examples/opt_decode.py
    python examples/opt_decode.py --json
    python examples/opt_decode.py --prompt "def parse_args(argv):" --max-new-tokens 64
    python examples/opt_decode.py --random                     # OPT-125M shape, random weights
    python examples/opt_decode.py --model ~/models/opt-1.3b --prompt "The capital of France is"
    python examples/opt_decode.py --benchmark --preset 1.3b --method rtn
    python examples/opt_decode.py --model ~/models/opt-125m --eval-ppl wiki.test.raw
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python examples/opt_decode.py --mesh dp=2,tp=4 --group-size 64 --prompt a --prompt b

``--random`` (implied by ``--preset`` / ``--config``) builds a model of any OPT shape with
deterministic RANDOM weights (OPT's 0.02-std init): no text, only latency and float-vs-quantized
agreement (low at 3 bits, about 35-50%: near-Gaussian logits leave the top-1 a lead of ~1 that
3-bit noise often overturns; docs/opt.md has the sweep).

--mesh runs Megatron-style tensor parallelism (column-parallel q/k/v/fc1, row-parallel
out_proj/fc2) over a ``tp`` mesh axis and splits the prompts over a ``dp`` axis.

--layout picks the packed weights' sign-word layout: ``cpu`` (the CPU kernel's faster
layout) or ``canonical`` (GPU, portable); ``auto``, the default, is cpu on a CPU backend.

A --model directory is a local Hugging Face OPT checkpoint (config.json, *.safetensors, and
tokenizer.json for text); nothing is ever downloaded. See docs/opt.md and docs/demo_model.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import sysconfig
import time

import jax
import numpy as np

from lutgemm_jax import LAYOUTS, BCQConfig, to_layout
from lutgemm_jax.distributed import add_distributed_args, initialize_from_args
from lutgemm_jax.models import opt
from lutgemm_jax.models import tensor_parallel as tp

DEFAULT_PROMPT = "Lookup tables replace"
DEMO_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_model")
"""The shipped model (``scripts/train_demo_model.py``), used when neither --model nor --random
is given."""
# Prompts end mid-line: the byte-level BPE merges a newline with the next line's indentation, so
# a prompt ending in a bare newline is a token sequence the model rarely saw in training.
DEMO_PROMPTS = (
    "class Stack:\n    def push(self, item):\n        self",
    "    if not isinstance(",
    "    for key, value in sorted(",
)
DEMO_NEW_TOKENS = 40
RANDOM_NEW_TOKENS = 16
HELD_OUT_WINDOWS = 8
"""Held-out perplexity of the default demo: the first 8 windows of the held-out stream."""
DEFAULT_METHOD = "alternating"
# --benchmark on random weights measures latency only, which does not depend on the quantizer:
# it uses the fast one (at 1.3B alternating would add many minutes).
RANDOM_BENCHMARK_METHOD = "greedy"
# A toy shape (not an OPT release) for smoke tests: --preset tiny.
TINY = opt.OPTConfig(
    vocab_size=512,
    hidden_size=64,
    num_hidden_layers=2,
    ffn_dim=256,
    num_attention_heads=4,
    max_position_embeddings=128,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_argument_group("model")
    src.add_argument(
        "--model",
        help="local Hugging Face OPT checkpoint directory (default: the shipped demo model, "
        "examples/demo_model)",
    )
    src.add_argument(
        "--random",
        action="store_true",
        help="random weights of an OPT shape instead of a checkpoint (see --preset, --config)",
    )
    src.add_argument(
        "--preset",
        help="shape of the random-weight model, implies --random "
        f"({', '.join(opt.PRESETS)}, or tiny: a 2-layer toy; default 125m)",
    )
    src.add_argument(
        "--config",
        help="config.json giving the random model's shape (overrides --preset), implies --random",
    )
    src.add_argument("--seed", type=int, default=0, help="seed of random weights and sampling")

    q = p.add_argument_group("quantization")
    q.add_argument("--bits", type=int, default=3)
    q.add_argument("--group-size", type=int, default=128, help="-1: one group per column")
    q.add_argument(
        "--method",
        choices=["alternating", "greedy", "rtn"],
        help=f"BCQ quantizer (default: {DEFAULT_METHOD}; {RANDOM_BENCHMARK_METHOD} for "
        "--benchmark on random weights, where only latency is measured)",
    )
    q.add_argument("--rounds", type=int, help="alternating rounds (quantizer default: 15)")
    q.add_argument("--quantize-lm-head", action="store_true", help="also quantize the lm_head")
    q.add_argument(
        "--layout",
        choices=["auto", *LAYOUTS],
        default="auto",
        help="sign-word layout of the packed weights, applied after quantizing or loading: cpu "
        "(faster batch-1 CPU kernel; with --mesh, tp must split N into multiples of 32 "
        "columns), canonical (GPU, portable); auto (default): cpu when jax's default backend "
        "is cpu, else canonical",
    )
    q.add_argument(
        "--save-quantized",
        metavar="PATH",
        help="write the quantized params here (in the layout in use, see --layout)",
    )
    q.add_argument(
        "--load-quantized",
        metavar="PATH",
        help="read quantized params (no quantizer; converted to --layout if saved in another)",
    )

    g = p.add_argument_group("generation")
    g.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    g.add_argument(
        "--max-new-tokens",
        type=int,
        help=f"default {DEMO_NEW_TOKENS} with a tokenizer, {RANDOM_NEW_TOKENS} without",
    )
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the float32 model and compare (default on)",
    )

    d = p.add_argument_group("several devices")
    d.add_argument(
        "--mesh",
        metavar="SPEC",
        help="device mesh, e.g. tp=4 or dp=2,tp=4: tensor parallel over tp (column-parallel "
        "q/k/v/fc1, row-parallel out_proj/fc2), prompts split over dp",
    )

    m = p.add_argument_group("measurements")
    m.add_argument(
        "--benchmark", action="store_true", help="decode latency table (instead of the demo)"
    )
    m.add_argument("--batch-sizes", default="1,4,16", help="batch sizes for --benchmark")
    m.add_argument("--bench-steps", type=int, default=4, help="decode steps per timed call")
    m.add_argument("--bench-repeats", type=int, default=3, help="timed calls (median is shown)")
    m.add_argument(
        "--eval-ppl", metavar="FILE", help="perplexity on a local text file (instead of the demo)"
    )
    m.add_argument("--ppl-seq-len", type=int, default=512)
    m.add_argument(
        "--ppl-max-windows",
        type=int,
        help=f"only the first N windows (the demo's held-out perplexity: {HELD_OUT_WINDOWS})",
    )
    m.add_argument(
        "--json",
        action="store_true",
        help="print the demo's summary as one JSON object on stdout (the log goes to stderr)",
    )
    add_distributed_args(p)  # several processes (hosts): README, "Several processes"
    args = p.parse_args(argv)
    args.random = args.random or args.preset is not None or args.config is not None
    if args.random and args.model:
        p.error("--model and --random (or --preset / --config) exclude each other")
    if args.json and (args.benchmark or args.eval_ppl):
        p.error("--json summarizes the demo; it does not apply to --benchmark or --eval-ppl")
    return args


def resolve_layout(args) -> str:
    """The layout of the quantized params: ``--layout``, with ``auto`` resolved."""
    return BCQConfig(layout=args.layout).resolve_layout()


def log(*args) -> None:
    print(*args, flush=True)


# ---- model loading and quantization ----------------------------------------------------------


def model_dir(args) -> str | None:
    """The checkpoint directory in use: --model, else the shipped demo model (None: random)."""
    if args.random:
        return None
    if args.model:
        return args.model
    if not os.path.isdir(DEMO_MODEL):
        sys.exit(
            f"error: the demo model is not at {DEMO_MODEL}; train it with "
            "scripts/train_demo_model.py, pass --model DIR, or use --random"
        )
    return DEMO_MODEL


def load_float_model(args):
    """(config, float params, tokenizer, is_random)."""
    path = model_dir(args)
    if path is not None:
        t0 = time.perf_counter()
        try:
            config, params = opt.load_hf_checkpoint(path)
        except opt.HFCheckpointError as e:
            sys.exit(f"error: {e}")
        tokenizer = opt.load_tokenizer(path, config)
        log(
            f"loaded {path}: {config.num_params() / 1e6:.1f}M params "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        if tokenizer is None:
            log(
                "  no tokenizer.json there: prompts are encoded as UTF-8 bytes, output shown as ids"
            )
        return config, params, tokenizer, False
    if args.config:
        config = opt.OPTConfig.from_json(args.config)
    elif args.preset == "tiny":
        config = TINY
    else:
        config = opt.OPTConfig.preset(args.preset or "125m")
    t0 = time.perf_counter()
    params = opt.init_params(config, args.seed)
    jax.block_until_ready(params)
    shape = os.path.basename(args.config) if args.config else f"OPT-{args.preset or '125m'}"
    log(
        f"RANDOM WEIGHTS (seed {args.seed}): {shape}-shaped model, "
        f"{config.num_params() / 1e6:.0f}M params, no checkpoint "
        f"({time.perf_counter() - t0:.1f} s)."
        "\n  Text is meaningless; latency and float-vs-quantized agreement are the point."
    )
    return config, params, None, True


def quantize_or_load(args, config, params, is_random):
    """Quantized params in the --layout: from --load-quantized, else quantized now (and saved
    if asked)."""
    from lutgemm_jax import checkpoint

    layout = resolve_layout(args)
    if args.load_quantized:
        t0 = time.perf_counter()
        meta = checkpoint.read_metadata(args.load_quantized)
        saved = json.loads(meta.get("opt_config", "null"))
        if saved is not None and opt.OPTConfig.from_dict(saved) != config:
            sys.exit(f"error: {args.load_quantized} was saved for a different OPT config")
        qparams = checkpoint.load(args.load_quantized)
        saved = ", ".join(sorted({w.layout for w in bcq_weights(qparams)}))
        qparams = to_layout(qparams, layout)
        jax.block_until_ready(qparams)
        log(
            f"loaded quantized params from {args.load_quantized} "
            f"({meta.get('quantization', '?')}; layout {layout}, saved {saved}; "
            f"{time.perf_counter() - t0:.1f} s)"
        )
        return qparams
    method = args.method or default_method(args, is_random)
    kwargs = {} if args.rounds is None else {"rounds": args.rounds}
    group = None if args.group_size == -1 else args.group_size
    t0 = time.perf_counter()
    qparams = opt.quantize_model(
        params,
        bits=args.bits,
        group_size=group,
        method=method,
        quantize_lm_head=args.quantize_lm_head,
        layout=layout,
        progress=True,
        **kwargs,
    )
    jax.block_until_ready(qparams)
    head = " + lm_head" if args.quantize_lm_head else " (lm_head kept float32)"
    desc = f"{args.bits}-bit g{args.group_size} {method}"
    log(
        f"quantized {len(bcq_weights(qparams))} Linears to {desc}{head}, layout {layout}, "
        f"in {time.perf_counter() - t0:.1f} s: weights {opt.param_bytes(params) / 2**20:.0f} MiB "
        f"-> {opt.param_bytes(qparams) / 2**20:.0f} MiB"
    )
    if args.save_quantized:
        checkpoint.save(
            args.save_quantized,
            qparams,
            metadata={
                "opt_config": json.dumps(config.to_dict()),
                "quantization": desc + head,
            },
        )
        log(f"saved quantized params to {args.save_quantized}")
    return qparams


def default_method(args, is_random: bool) -> str:
    if is_random and args.benchmark and not args.eval_ppl:
        return RANDOM_BENCHMARK_METHOD
    return DEFAULT_METHOD


def bcq_weights(params) -> list:
    """The `BCQWeight` leaves of ``params``."""
    from lutgemm_jax.format import BCQWeight

    leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, BCQWeight))
    return [x for x in leaves if isinstance(x, BCQWeight)]


# ---- the demo --------------------------------------------------------------------------------


def encode_prompts(args, config, tokenizer):
    prompts = args.prompt or (
        list(DEMO_PROMPTS) if model_dir(args) == DEMO_MODEL else [DEFAULT_PROMPT]
    )
    enc = tokenizer or opt.ByteTokenizer(config)
    ids, mask = opt.pad_batch([enc.encode(p) for p in prompts], config.pad_token_id)
    return prompts, ids, mask


def show(tokenizer, tokens) -> str:
    if tokenizer is None:
        return " ".join(str(int(t)) for t in tokens)
    return repr(tokenizer.decode(tokens))


def until_eos(tokens, eos: int) -> list[int]:
    """The generated tokens up to (without) the first ``eos`` (generation pads after it)."""
    out = []
    for t in np.asarray(tokens).tolist():
        if t == eos:
            break
        out.append(t)
    return out


def side_by_side(columns: list[tuple[str, str]], width: int = 56, height: int = 16) -> list[str]:
    """``(title, text)`` columns as lines of fixed-width cells: tabs expanded, trailing blank
    lines dropped, long lines cut at ``width`` and long texts at ``height`` lines (``~``)."""

    def lines(text: str) -> list[str]:
        rows = text.expandtabs(4).rstrip().splitlines()
        return rows if len(rows) <= height else [*rows[: height - 1], "~"]

    cells = [[title, "-" * width, *lines(text)] for title, text in columns]
    height = max(len(c) for c in cells)

    def fit(line: str) -> str:
        return line if len(line) <= width else line[: width - 1] + "~"

    return [
        "  " + " | ".join(f"{fit(c[i]) if i < len(c) else '':<{width}}" for c in cells).rstrip()
        for i in range(height)
    ]


def timed_generate(model, params, ids, mask, args, **kw):
    """(Generation, compile+first-call seconds, steady-state seconds of one call)."""
    sampling = opt.Sampling(args.temperature, args.top_k, args.top_p)

    def call(**extra):
        out = opt.generate(
            model,
            params,
            ids,
            mask,
            max_new_tokens=args.max_new_tokens,
            sampling=sampling,
            seed=args.seed,
            return_logits=True,
            **{**kw, **extra},
        )
        return jax.block_until_ready(out)

    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = call()
    return out, first, time.perf_counter() - t0


def compare_logits(float_logits, quant_logits, live) -> dict[str, float]:
    """Teacher-forced comparison over the ``live`` [B, T] positions of two [B, T, V] logit arrays:
    top-1 agreement, max and rms |difference|, the float logits' std and the median lead of
    their top-1 over the runner-up (how much noise it takes to flip a top-1)."""
    f = np.asarray(float_logits, np.float64)[np.asarray(live)]
    q = np.asarray(quant_logits, np.float64)[np.asarray(live)]
    top2 = np.sort(f, axis=-1)[:, -2:]
    return {
        "agreement": float(np.mean(f.argmax(-1) == q.argmax(-1))),
        "max_diff": float(np.abs(q - f).max()),
        "rms_diff": float(np.sqrt(np.mean((q - f) ** 2))),
        "std": float(f.std()),
        "margin": float(np.median(top2[:, 1] - top2[:, 0])),
    }


def demo(
    args, config, params, qparams, tokenizer, mesh=None, is_random=False
) -> tuple[opt.Generation, dict]:
    """Generates with both models and prints the comparison; returns the LUT-GEMM generation
    and the summary (texts, ms/token, tokens/s, teacher-forced greedy agreement)."""
    model = opt.OPT(config)
    prompts, ids, mask = encode_prompts(args, config, tokenizer)
    if mesh is not None:
        try:
            ids, mask = tp.shard_batch(mesh, ids, mask)
        except ValueError as e:
            sys.exit(f"error: --mesh: {e} (pass a multiple of dp prompts with --prompt)")
    b, n = ids.shape[0], args.max_new_tokens
    log(
        f"\nprompt{'s' if b > 1 else ''} ({b} x {ids.shape[1]} tokens, left-padded), "
        f"{n} new tokens, {'greedy' if args.temperature == 0 else 'sampling'}"
    )
    rows = []
    if args.compare:
        gf, cf, tf = timed_generate(model, params, ids, mask, args)
        rows.append(("float32 (XLA dot)", gf, cf, tf))
    gq, cq, tq = timed_generate(model, qparams, ids, mask, args)
    rows.append(("LUT-GEMM", gq, cq, tq))
    texts = show_generations(args, config, prompts, rows, tokenizer)
    log(f"\n{'model':18s} {'compile+1st s':>13s} {'ms/token':>9s} {'tokens/s':>9s}")
    for name, _, c, t in rows:
        log(f"{name:18s} {c:13.1f} {1e3 * t / n:9.1f} {b * n / t:9.1f}")
    log(f"(one call = prefill of the prompt + {n} tokens, after compilation; batch {b})")
    summary = {"prompts": prompts, **texts, "new_tokens": n, "batch": b}
    seconds = {"quant" if name == "LUT-GEMM" else "float": t for name, _, _, t in rows}
    for key in ("float", "quant"):
        t = seconds.get(key)
        summary[f"ms_per_token_{key}"] = None if t is None else 1e3 * t / n
        summary[f"tokens_per_s_{key}"] = None if t is None else b * n / t
    summary["greedy_agreement"] = None
    if args.compare:
        gf = rows[0][1]
        forced, _, _ = timed_generate(model, qparams, ids, mask, args, forced_tokens=gf.tokens)
        live = np.asarray(forced.tokens) != config.pad_token_id
        stats = compare_logits(gf.logits, forced.logits, live)
        same = np.mean(np.all(np.asarray(gq.tokens) == np.asarray(gf.tokens), axis=1))
        log(
            f"\ntop-1 agreement, LUT-GEMM vs float32 (teacher-forced on the float32 tokens): "
            f"{stats['agreement']:.1%} of {live.sum()} tokens"
        )
        log(
            f"max |logit difference|: {stats['max_diff']:.3f}, rms {stats['rms_diff']:.3f}   "
            f"(float32 logits: std {stats['std']:.2f}, top-1 ahead of the runner-up by a "
            f"median {stats['margin']:.2f})"
        )
        log(f"identical free-running generations: {same:.0%} of {b} prompt(s)")
        summary.update(
            greedy_agreement=stats["agreement"],
            greedy_agreement_tokens=int(live.sum()),
            identical_generations=float(same),
            max_logit_diff=stats["max_diff"],
        )
        if is_random:
            log(
                f"  random weights: near-Gaussian logits over {config.vocab_size} tokens leave "
                "the top-1 a small lead that logit noise of this rms often overturns, so agreement "
                "gauges the quantizer's error, not model quality (for that: --model, --eval-ppl)"
            )
    return gq, summary


def show_generations(args, config, prompts, rows, tokenizer) -> dict:
    """Prints each prompt's generations (text side by side with a tokenizer, else token ids);
    returns the decoded texts (``None`` without a tokenizer)."""
    titles = [f"LUT-GEMM {args.bits}-bit" if name == "LUT-GEMM" else name for name, *_ in rows]
    texts = {f"text_{k}": [] for k in ("float", "quant")}
    for i, prompt in enumerate(prompts):
        log(f"\n[{i}] {prompt!r}")
        if tokenizer is None:
            for name, g, _, _ in rows:
                log(f"  {name:18s}: {show(tokenizer, np.asarray(g.tokens[i]))}")
            continue
        decoded = [
            prompt + tokenizer.decode(until_eos(g.tokens[i], config.eos_token_id))
            for _, g, _, _ in rows
        ]
        for line in side_by_side(list(zip(titles, decoded, strict=True))):
            log(line)
        if args.compare:
            texts["text_float"].append(decoded[0])
        texts["text_quant"].append(decoded[-1])
    if tokenizer is None:
        return {"text_float": None, "text_quant": None}
    return texts


def held_out_ids(path: str | None, tokenizer, max_tokens: int) -> list[int] | None:
    """The start (``max_tokens``) of the held-out stream of a model trained by
    ``scripts/train_demo_model.py``: the files its ``training_summary.json`` lists, read from this
    interpreter's standard library (files this Python lacks are skipped), each encoded as
    ``[bos, *tokens]`` as in training. ``None`` for other models."""
    summary = os.path.join(path or "", "training_summary.json")
    if tokenizer is None or not os.path.exists(summary):
        return None
    with open(summary, encoding="utf-8") as f:
        names = json.load(f)["corpus"]["held_out_files"]
    root = sysconfig.get_paths()["stdlib"]
    ids: list[int] = []
    for name in names:
        source = os.path.join(root, *name.split("/"))
        if len(ids) >= max_tokens:
            break
        if os.path.exists(source):
            with open(source, encoding="utf-8") as f:
                ids += tokenizer.encode(f.read())
    return ids[:max_tokens] or None


def held_out_quality(args, config, params, qparams, ids: list[int]) -> dict:
    """Perplexity of both models over ``ids`` in windows of the model's context, and the
    teacher-forced top-1 agreement of LUT-GEMM with float32 there."""
    model = opt.OPT(config)
    seq_len = min(args.ppl_seq_len, config.max_position_embeddings)
    out = {}
    for key, p in (("float", params), ("quant", qparams)):
        out[f"ppl_{key}"], out["ppl_tokens"] = opt.perplexity(model, p, ids, seq_len=seq_len)
    windows = len(ids) // seq_len
    if windows:
        batch = np.asarray(ids[: windows * seq_len], np.int32).reshape(windows, seq_len)
        out["held_out_agreement"], _ = opt.teacher_forced_agreement(
            model, params, qparams, batch, np.ones_like(batch), start=1
        )
    log(
        f"\nheld-out perplexity ({out['ppl_tokens']} tokens of the held-out standard-library "
        f"files, windows of {seq_len}): float32 {out['ppl_float']:.3f}, "
        f"LUT-GEMM {args.bits}-bit {out['ppl_quant']:.3f} "
        f"({out['ppl_quant'] / out['ppl_float'] - 1:+.1%})"
    )
    if windows:
        log(
            f"top-1 agreement there (teacher-forced): {out['held_out_agreement']:.1%} of "
            f"{windows * (seq_len - 1)} tokens"
        )
    return out


# ---- benchmark and perplexity ----------------------------------------------------------------


def benchmark(args, config, params, qparams) -> None:
    model = opt.OPT(config)
    variants = [("float32", params)]
    if "lm_head" in qparams:  # --quantize-lm-head: show the float-head variant too
        float_head = {k: v for k, v in qparams.items() if k != "lm_head"}
        variants += [("LUT, f32 lm_head", float_head), ("LUT, LUT lm_head", qparams)]
    else:
        variants += [("LUT, f32 lm_head", qparams)]
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    log("\nweights read per decoded token (embedding rows are gathered, not read whole):")
    for name, p in variants:
        log(f"  {name:18s} {weights_read(p) / 2**20:8.0f} MiB")
    log(
        f"decode step latency in ms (one new token per batch row; median of "
        f"{args.bench_repeats} calls of {args.bench_steps} steps after a warm-up call), "
        f"{jax.devices()[0].platform.upper()}, {os.cpu_count()} cores"
    )
    header = f"{'batch':>5s}"
    for name, _ in variants:
        header += f" | {name + ' ms':>22s} {'tok/s':>8s}"
    header += " | speedup"
    log(header)
    log("-" * len(header))
    for b in sizes:
        results = []
        for _, p in variants:
            r = opt.benchmark_decode(
                model,
                p,
                batch=b,
                steps=args.bench_steps,
                repeats=args.bench_repeats,
                seed=args.seed,
            )
            results.append(r)
        line = f"{b:5d}"
        for r in results:
            line += f" | {1e3 * r['median']:22.2f} {r['tokens_per_s']:8.1f}"
        line += " | " + ", ".join(f"{results[0]['median'] / r['median']:.2f}x" for r in results[1:])
        log(line)


def weights_read(params) -> int:
    """Bytes of weights one decode step streams: all params but the position table and, when
    the lm_head is untied, the token embedding (both are only gathered)."""
    skip = {"embed_positions"} | ({"embed_tokens"} if "lm_head" in params else set())
    return opt.param_bytes({k: v for k, v in params.items() if k not in skip})


def eval_ppl(args, config, params, qparams, tokenizer) -> None:
    model = opt.OPT(config)
    with open(args.eval_ppl, encoding="utf-8") as f:
        text = f.read()
    enc = tokenizer or opt.ByteTokenizer(config)
    if tokenizer is None:
        log("no tokenizer: perplexity over UTF-8 byte tokens (only comparable between models)")
    ids = enc.encode(text)
    log(f"\n{args.eval_ppl}: {len(ids)} tokens, windows of {args.ppl_seq_len}")
    for name, p in (("float32", params), ("LUT-GEMM", qparams)):
        t0 = time.perf_counter()
        ppl, count = opt.perplexity(
            model, p, ids, seq_len=args.ppl_seq_len, max_windows=args.ppl_max_windows, progress=True
        )
        log(
            f"  {name:9s} perplexity {ppl:10.3f} over {count} tokens "
            f"({time.perf_counter() - t0:.1f} s)"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def make_mesh(spec: str):
    try:
        mesh = tp.make_mesh(spec)
    except ValueError as e:
        sys.exit(f"error: --mesh: {e}")
    kinds = ", ".join(sorted({d.device_kind for d in mesh.devices.flat}))
    log(f"mesh {dict(mesh.shape)} over {mesh.size} of {jax.device_count()} devices ({kinds})")
    return mesh


def shard(mesh, params, qparams, args):
    """(float params, quantized params) placed on ``mesh``; prints the bytes per device."""
    try:
        qsharded = tp.shard_params(qparams, mesh)
        sharded = tp.shard_params(params, mesh) if args.compare or args.benchmark else params
    except ValueError as e:
        sys.exit(f"error: --mesh: {e}")
    log(
        f"weights per device (on {jax.local_devices()[0]}): LUT-GEMM "
        f"{_size(tp.device_bytes(qsharded))} of {_size(opt.param_bytes(qparams))} on one device"
        + (
            f"; float32 {_size(tp.device_bytes(sharded))} of {_size(opt.param_bytes(params))}"
            if sharded is not params
            else ""
        )
    )
    return sharded, qsharded


def main(argv=None) -> None:
    args = parse_args(argv)
    initialize_from_args(args)  # before any device is touched; a no-op without the flags
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        summary = run(args)
    if args.json:
        print(json.dumps(summary), file=stdout, flush=True)


def run(args) -> dict:
    """Everything but the --json output; returns the demo's summary (empty for --benchmark and
    --eval-ppl)."""
    t_start = time.perf_counter()
    log(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    mesh = make_mesh(args.mesh) if args.mesh else None
    config, params, tokenizer, is_random = load_float_model(args)
    if args.max_new_tokens is None:
        args.max_new_tokens = DEMO_NEW_TOKENS if tokenizer is not None else RANDOM_NEW_TOKENS
    t0 = time.perf_counter()
    qparams = single_q = quantize_or_load(args, config, params, is_random)
    method = args.method or default_method(args, is_random)
    summary = {
        "model": model_dir(args) or "random",
        "quantization": f"{args.bits}-bit g{args.group_size} {method}",
        "quantize_s": time.perf_counter() - t0,
    }
    if mesh is not None:
        params, qparams = shard(mesh, params, qparams, args)
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        if args.eval_ppl:
            eval_ppl(args, config, params, qparams, tokenizer)
        if args.benchmark:
            benchmark(args, config, params, qparams)
        if not (args.benchmark or args.eval_ppl):
            gq, generated = demo(args, config, params, qparams, tokenizer, mesh, is_random)
            summary.update(generated, ppl_float=None, ppl_quant=None)
            windows = args.ppl_max_windows or HELD_OUT_WINDOWS
            seq_len = min(args.ppl_seq_len, config.max_position_embeddings)
            ids = held_out_ids(model_dir(args), tokenizer, windows * seq_len + 1)
            if ids is not None:
                summary.update(held_out_quality(args, config, params, qparams, ids))
    if mesh is not None and not (args.benchmark or args.eval_ppl):
        _, ids, mask = encode_prompts(args, config, tokenizer)
        one = opt.generate(
            opt.OPT(config),
            single_q,
            ids,
            mask,
            max_new_tokens=args.max_new_tokens,
            sampling=opt.Sampling(args.temperature, args.top_k, args.top_p),
            seed=args.seed,
        )
        same = np.array_equal(np.asarray(one.tokens), np.asarray(gq.tokens))
        log(f"same tokens as one device: {'yes' if same else 'NO'}")
    summary["total_s"] = time.perf_counter() - t_start
    log(f"\ntotal wall time {summary['total_s']:.1f} s")
    return summary if not (args.benchmark or args.eval_ppl) else {}


if __name__ == "__main__":
    main()
