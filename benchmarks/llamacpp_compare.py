"""llama.cpp and lutgemm_jax on the same GGUF file and the same cores: batch-1 decode speed and
the logit difference on one prompt.

    # one file (llama-cpp-python and lutgemm_jax in the same environment)
    python benchmarks/llamacpp_compare.py --gguf model-Q4_K_M.gguf
    # a random-weight model of a published shape, quantized by llama.cpp in a temporary
    # directory (removed afterwards); llama-cpp-python in its own venv; the membw probe alongside
    python benchmarks/llamacpp_compare.py --random tinyllama-1.1b --type Q4_K_M \\
        --llama-python /path/to/venv-lcpp/bin/python --membw "/tmp/membw 1024 7" --runs 3

llama-cpp-python is an optional, benchmark-only dependency (the ``bench`` extra; build it with
``CMAKE_ARGS="-DGGML_NATIVE=OFF"``: the AVX2 build, without AMX kernels that crash on VMs
without AMX state). Each engine runs in its own process (``--llama-python`` /
``--lutgemm-python`` choose the interpreters, default this one), pinned to the same ``--threads``
CPUs, one after the other, so neither competes with the other's threads or memory:

* llama.cpp: ``Llama(n_threads=n_threads_batch=T, n_ctx=512)``; logits of every prompt position
  from one ``llama_decode`` of the prompt (``logits_all``); then, on a fresh context, the prompt,
  ``--warmup`` untimed and ``--tokens`` timed single-token ``eval`` calls (one ``llama_decode``
  each).
* lutgemm_jax: ``models.load_gguf`` (exact conversion of the file's weights to BCQ); logits from
  `lutgemm_jax.models.forward`; ``--tokens`` timed calls of a jitted ``--lut-steps``-step greedy
  decode (`lutgemm_jax.models.benchmark_decode`), after ``--warmup`` untimed ones, with
  ``LUTGEMM_CPU_THREADS=T``.

Reported: ms/token (median of the run medians; min-max over every timed call of every run),
tokens/s and lutgemm_jax / llama.cpp tokens/s; weight bytes a step reads and the GB/s that
implies (with ``--membw``: as % of the machine's T-thread read bandwidth measured in the same
run); the max |logit difference| over every prompt position, also relative to max |logit|, and
top-1 agreement. Both engines see the same token ids: llama.cpp's tokenization of ``--prompt``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gguf_llama  # noqa: E402  (benchmarks/ is not a package)

# ---- the two engines, each run as `python llamacpp_compare.py --worker ENGINE REQUEST.json` ----


def _pin(cpus: list[int]) -> None:
    """Run on ``cpus`` only (before llama.cpp or XLA size their thread pools from it)."""
    os.sched_setaffinity(0, cpus)


def worker_llama(req: dict, out: Path) -> dict:
    """Tokenize, logits, decode timing with llama.cpp (optionally make the random file first)."""
    _pin(req["cpus"])
    threads = len(req["cpus"])
    llama_cpp = gguf_llama.import_llama_cpp()
    res: dict = {
        "version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
    }
    path = Path(req["gguf"])
    if req.get("make"):
        mk = req["make"]
        shape = gguf_llama.SHAPES[mk["shape"]]
        src = path.with_name("source-f16.gguf")
        t0 = time.perf_counter()
        vocab = gguf_llama.spm_vocab(shape.vocab)
        tensors = gguf_llama.random_tensors(shape, mk["seed"])
        gguf_llama.write_llama_gguf(src, shape, tensors, vocab, dtype=np.float16,
                                    name=f"random-{mk['shape']}")  # fmt: skip
        res["write_s"] = time.perf_counter() - t0
        res["quantize_s"] = gguf_llama.quantize(src, path, mk["type"], threads)
        if not req.get("bcq_bits"):
            src.unlink()  # else lutgemm_jax quantizes it with its own BCQ quantizer
    ids = req["prompt_ids"]
    if req.get("logits"):
        ids = res["ids"] = gguf_llama.llama_tokenize(path, req["prompt"])
        np.save(out / "llama.logits.npy", gguf_llama.llama_logits(path, ids, threads))
    res["ms"] = gguf_llama.llama_decode_ms(path, ids, threads, req["warmup"], req["tokens"],
                                           req["seed"])  # fmt: skip
    return res


def worker_lutgemm(req: dict, out: Path) -> dict:
    """Import the file with `lutgemm_jax.models.load_gguf`, logits, decode timing."""
    _pin(req["cpus"])
    os.environ["LUTGEMM_CPU_THREADS"] = str(len(req["cpus"]))
    os.environ["JAX_PLATFORMS"] = "cpu"  # the same CPU cores as llama.cpp, even beside a GPU
    import jax
    import jax.numpy as jnp

    from lutgemm_jax import models

    if not hasattr(models, "load_gguf"):
        raise SystemExit("this lutgemm_jax has no models.load_gguf (GGUF import)")
    t0 = time.perf_counter()
    if req.get("bcq_bits"):  # the F16 source, quantized here (greedy BCQ, float16 scales)
        from lutgemm_jax import BCQConfig

        bcq = BCQConfig(bits=req["bcq_bits"], group_size=req["bcq_group"], method="greedy",
                        alpha_dtype=jnp.float16)  # fmt: skip
        source = str(Path(req["gguf"]).with_name("source-f16.gguf"))
        config, params, tokenizer = models.load_gguf(source, quantize_dense=bcq)
    else:
        config, params, tokenizer = models.load_gguf(req["gguf"], scale_dtype=req["scale_dtype"])
    jax.block_until_ready(params)
    from lutgemm_jax import BCQWeight

    def is_bcq(v):
        return isinstance(v, BCQWeight)

    layers = {k: v for k, v in params.items() if k.startswith("layers_")}
    blocks = [w for w in jax.tree.leaves(layers, is_leaf=is_bcq) if is_bcq(w)]
    res: dict = {
        "load_s": time.perf_counter() - t0,
        "read_bytes": models.bytes_read_per_token(params),
        "linear_bits_per_weight": sum(8 * w.nbytes() for w in blocks)
        / max(1, sum(w.in_features * w.out_features * int(np.prod(w.batch_shape)) for w in blocks)),
    }
    model = models.from_config(config)
    ids = req["prompt_ids"]
    if req.get("logits"):
        logits = models.forward_jit(model, params, jnp.asarray([ids], jnp.int32))
        np.save(out / "lutgemm.logits.npy", np.asarray(logits[0], np.float32))
        res["tokenizer_ids"] = list(tokenizer.encode(req["prompt"])) if tokenizer else None
    # the compile call and then --warmup untimed calls precede the timed ones
    r = models.benchmark_decode(model, params, batch=1, prompt_len=len(ids),
                                steps=req["lut_steps"], repeats=req["tokens"],
                                warmup=req["warmup"] + 1, seed=req["seed"])  # fmt: skip
    res["compile_s"] = r["compile_s"]
    res["ms"] = [1e3 * t for t in r["times"]]
    res["platform"] = jax.devices()[0].platform
    return res


def run_worker(python: str, engine: str, req: dict, workdir: Path) -> dict:
    """Run one engine in a child process; its result dict (SystemExit on failure)."""
    rpath = workdir / f"{engine}.request.json"
    rpath.write_text(json.dumps(req))
    cmd = [python, str(Path(__file__).resolve()), "--worker", engine, str(rpath)]
    proc = subprocess.run(cmd, stdout=sys.stderr)  # keep stdout for the table or JSON
    if proc.returncode != 0:
        raise SystemExit(f"the {engine} worker failed (exit {proc.returncode}): {shlex.join(cmd)}")
    return json.loads((workdir / f"{engine}.result.json").read_text())


def worker_main(engine: str, request: str) -> int:
    req = json.loads(Path(request).read_text())
    out = Path(request).parent
    res = (worker_llama if engine == "llama" else worker_lutgemm)(req, out)
    (out / f"{engine}.result.json").write_text(json.dumps(res))
    return 0


# ---- orchestration --------------------------------------------------------------------------


def log(*msg) -> None:
    print(*msg, file=sys.stderr, flush=True)


def check_import(python: str, module: str, what: str) -> None:
    """SystemExit with a clear message when ``python`` cannot import ``module``."""
    code = f"import {module}"
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"{python} cannot import {module} ({last}). {what}")


def run_membw(command: str) -> dict | None:
    """The JSON line of a ``membw`` run (see examples/decode.py), or None if it failed."""
    try:
        out = subprocess.run(shlex.split(command), capture_output=True, text=True, check=True,
                             timeout=600)  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        log(f"membw failed ({e}); continuing without it")
        return None


def summarize(run_ms: list[list[float]], read_bytes: int, floor_gbps: float | None) -> dict:
    meds = [statistics.median(ms) for ms in run_ms]
    med = statistics.median(meds)
    flat = [t for ms in run_ms for t in ms]
    s = {
        "ms_per_token_median": med,
        "ms_per_token_min": min(flat),
        "ms_per_token_max": max(flat),
        "ms_per_token_run_medians": meds,
        "tokens_per_s": 1e3 / med,
        "read_mib_per_token": read_bytes / 2**20,
        "gbps": read_bytes / (med * 1e-3) / 1e9,
    }
    if floor_gbps:
        s["read_floor_ms"] = read_bytes / (floor_gbps * 1e9) * 1e3
        s["pct_of_read_floor"] = 100.0 * s["gbps"] / floor_gbps
    return s


def compare_logits(ref: np.ndarray, got: np.ndarray) -> dict:
    if ref.shape != got.shape:
        raise SystemExit(f"logit shapes differ: llama.cpp {ref.shape}, lutgemm_jax {got.shape}")
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    scale = float(np.abs(ref).max())
    return {
        "max_abs_diff": float(diff.max()),
        "max_abs_logit": scale,
        "max_abs_diff_rel": float(diff.max()) / scale if scale else float("nan"),
        "top1_agreement": float(np.mean(ref.argmax(-1) == got.argmax(-1))),
        "positions": int(ref.shape[0]),
    }


def file_info(path: Path) -> dict:
    types: dict[str, int] = {}
    for name, ty in gguf_llama.tensor_types(path).items():
        if name.startswith("blk.") and name.split(".")[2] in gguf_llama.LINEAR:
            types[ty] = types.get(ty, 0) + 1
    return {
        "file": str(path),
        "file_mib": path.stat().st_size / 2**20,
        "linear_types": types,
        "linear_bits_per_weight": gguf_llama.linear_bits_per_weight(path),
        "read_bytes": gguf_llama.read_bytes_per_token(path),
    }


def compare(a: argparse.Namespace, path: Path, workdir: Path, make: dict | None) -> dict:
    cpus = sorted(os.sched_getaffinity(0))[: a.threads]
    if len(cpus) < a.threads:
        raise SystemExit(f"--threads {a.threads}: only {len(cpus)} CPUs available")
    base = dict(gguf=str(path), cpus=cpus, prompt=a.prompt, warmup=a.warmup, tokens=a.tokens,
                seed=a.seed, lut_steps=a.lut_steps, prompt_ids=None,
                scale_dtype=a.scale_dtype, bcq_bits=a.bcq, bcq_group=a.bcq_group)  # fmt: skip
    llama_runs, lut_runs = [], []
    meta_llama = meta_lut = None
    membw = None
    for r in range(a.runs):
        first = r == 0
        req = dict(base, logits=first, make=make if first else None, seed=a.seed + r)
        res = run_worker(a.llama_python, "llama", req, workdir)
        if first:
            meta_llama, base["prompt_ids"] = res, res["ids"]
            if make:
                log(f"wrote and quantized {make['shape']} {make['type']} in "
                    f"{res['write_s']:.0f} + {res['quantize_s']:.0f} s")  # fmt: skip
        llama_runs.append(res["ms"])
        log(f"run {r + 1}: llama.cpp {statistics.median(res['ms']):.2f} ms/token")
        req = dict(base, logits=first, seed=a.seed + r)
        res = run_worker(a.lutgemm_python, "lutgemm", req, workdir)
        if first:
            meta_lut = res
            log(f"lutgemm_jax: load_gguf {res['load_s']:.1f} s, compile {res['compile_s']:.1f} s")
        lut_runs.append(res["ms"])
        log(f"run {r + 1}: lutgemm_jax {statistics.median(res['ms']):.2f} ms/token")
        if a.membw and first:
            membw = run_membw(a.membw)
    floor = None
    if membw and f"read_gbps_{a.threads}t" in membw:
        floor = membw[f"read_gbps_{a.threads}t"]["median"]
    info = file_info(path)
    llama = summarize(llama_runs, info["read_bytes"], floor)
    lut = summarize(lut_runs, meta_lut["read_bytes"], floor)
    llama.update(version=meta_llama["version"], system_info=meta_llama["system_info"])
    lut.update(load_s=meta_lut["load_s"], compile_s=meta_lut["compile_s"],
               platform=meta_lut["platform"], lut_steps=a.lut_steps)  # fmt: skip
    tok = meta_lut.get("tokenizer_ids")
    lut["tokenizer_matches_llama_cpp"] = None if tok is None else tok == base["prompt_ids"]
    logits = compare_logits(np.load(workdir / "llama.logits.npy"),
                            np.load(workdir / "lutgemm.logits.npy"))  # fmt: skip
    name = f"random {make['shape']} {make['type']}" if make else path.name
    if a.bcq:
        name += f" (lutgemm_jax: its own {a.bcq}-bit BCQ, g = {a.bcq_group}, of the F16 source)"
    return {
        "tool": "llamacpp_compare", "model": name,
        **{k: v for k, v in info.items() if k != "read_bytes"},
        "threads": a.threads, "cpus": cpus, "n_ctx": 512, "prompt": a.prompt,
        "prompt_ids": base["prompt_ids"], "warmup": a.warmup, "tokens": a.tokens, "runs": a.runs,
        "llama_cpp": llama, "lutgemm_jax": lut,
        "tokens_per_s_ratio": lut["tokens_per_s"] / llama["tokens_per_s"],
        "lutgemm_linear_bits_per_weight": meta_lut["linear_bits_per_weight"],
        "logits": logits, "membw": membw, "read_floor_gbps": floor,
        "machine": platform.machine(), "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }  # fmt: skip


def markdown(res: dict) -> str:
    floor = res["read_floor_gbps"]
    lines = [
        f"# {res['model']}: {res['file_mib']:.0f} MiB, Linear layers "
        f"{res['linear_bits_per_weight']:.2f} bits/weight "
        f"(tensors: {', '.join(f'{t} {n}' for t, n in res['linear_types'].items())}); "
        f"{res['threads']} threads, batch 1, {res['runs']} run(s) x {res['tokens']} tokens",
        "",
        "| engine | read MiB/token | ms/token median (min-max) | tokens/s | GB/s |"
        + (" % of read floor |" if floor else ""),
        "|---|---|---|---|---|" + ("---|" if floor else ""),
    ]
    for label, key in (("llama.cpp", "llama_cpp"), ("lutgemm_jax", "lutgemm_jax")):
        s = res[key]
        line = (f"| {label} | {s['read_mib_per_token']:.1f} | {s['ms_per_token_median']:.2f} "
                f"({s['ms_per_token_min']:.2f}-{s['ms_per_token_max']:.2f}) | "
                f"{s['tokens_per_s']:.1f} | {s['gbps']:.1f} |")  # fmt: skip
        if floor:
            line += f" {s['pct_of_read_floor']:.0f}% |"
        lines.append(line)
    lg = res["logits"]
    lines += [
        "",
        f"- lutgemm_jax / llama.cpp tokens/s: {res['tokens_per_s_ratio']:.2f}x",
        f"- Linear layers of the blocks, bits/weight: llama.cpp file "
        f"{res['linear_bits_per_weight']:.3f}, "
        f"lutgemm_jax {res['lutgemm_linear_bits_per_weight']:.3f}",
        f"- logits over {lg['positions']} prompt positions: max |diff| {lg['max_abs_diff']:.3g} "
        f"({lg['max_abs_diff_rel']:.2%} of max |logit| {lg['max_abs_logit']:.3g}); "
        f"top-1 agreement {lg['top1_agreement']:.0%}",
    ]
    if floor:
        lines.append(f"- read floor: {floor:.1f} GB/s ({res['threads']} threads, membw median)")
    tok = res["lutgemm_jax"]["tokenizer_matches_llama_cpp"]
    if tok is not None:
        lines.append(f"- lutgemm_jax's tokenizer gives llama.cpp's ids for the prompt: {tok}")
    lines.append(f"- llama-cpp-python {res['llama_cpp']['version']}: "
                 f"{res['llama_cpp']['system_info']}")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", type=Path, help="a Llama-architecture GGUF file")
    src.add_argument("--random", choices=sorted(gguf_llama.SHAPES),
                     help="write a random-weight model of this shape (needs --type)")  # fmt: skip
    ap.add_argument("--type", choices=list(gguf_llama.FTYPES),
                    help="llama.cpp quantization mix for --random")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32, help="timed decode calls per run")
    ap.add_argument("--warmup", type=int, default=4, help="untimed decode calls first")
    ap.add_argument("--runs", type=int, default=1, help="runs, alternating the engines")
    ap.add_argument("--lut-steps", type=int, default=1,
                    help="decode steps per timed lutgemm_jax call (a jitted scan; default 1, "
                         "one call per token as llama.cpp's eval)")  # fmt: skip
    ap.add_argument("--scale-dtype", choices=("float32", "float16"), default="float32",
                    help="lutgemm_jax's storage of the imported scales: float32 (exact) or "
                         "float16 (compact; see docs/gguf.md for its error)")  # fmt: skip
    ap.add_argument("--bcq", type=int, metavar="BITS",
                    help="with --random: lutgemm_jax runs its own BCQ quantization (greedy, "
                         "float16 scales) of the F16 source instead of importing the llama.cpp "
                         "file, e.g. --bcq 3 against --type Q3_K_S")  # fmt: skip
    ap.add_argument("--bcq-group", type=int, default=128, help="group size of --bcq")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llama-python", default=sys.executable,
                    help="interpreter with llama_cpp (default: this one)")  # fmt: skip
    ap.add_argument("--lutgemm-python", default=sys.executable,
                    help="interpreter with lutgemm_jax (default: this one)")  # fmt: skip
    ap.add_argument("--membw", help='membw read-bandwidth probe to run, e.g. "/tmp/membw 1024 7"')
    ap.add_argument("--tmpdir", help="parent of the temporary directory (default: the system's)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args(argv)
    if a.random and not a.type:
        ap.error("--random needs --type")
    if a.bcq is not None and (not a.random or not 1 <= a.bcq <= 8):
        ap.error("--bcq BITS (1..8) applies to --random only")
    if a.gguf and a.type:
        ap.error("--type applies to --random only (a --gguf file is run as it is)")
    if a.gguf and not a.gguf.is_file():
        ap.error(f"--gguf {a.gguf}: no such file")
    if min(a.threads, a.tokens, a.runs, a.lut_steps) < 1 or a.warmup < 0:
        ap.error("--threads, --tokens, --runs, --lut-steps must be >= 1, --warmup >= 0")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1], argv[2])
    a = parse_args(argv)
    check_import(
        a.llama_python,
        "llama_cpp",
        'Install llama-cpp-python (CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install '
        "llama-cpp-python) or name an interpreter that has it with --llama-python.",
    )
    check_import(
        a.lutgemm_python,
        "lutgemm_jax.models",
        "Install lutgemm_jax or put it on PYTHONPATH, or use --lutgemm-python.",
    )
    with tempfile.TemporaryDirectory(prefix="llamacpp-compare-", dir=a.tmpdir) as td:
        workdir = Path(td)
        if a.random:
            path = workdir / f"random-{a.random}-{a.type}.gguf"
            make = {"shape": a.random, "type": a.type, "seed": a.seed}
        else:
            path, make = a.gguf.resolve(), None
        res = compare(a, path, workdir, make)
    print(json.dumps(res) if a.json else markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
