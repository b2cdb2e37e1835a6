"""Trains the small OPT-architecture demo model shipped in ``examples/demo_model/``.

The corpus is on every machine without a download: the ``*.py`` files of the running
interpreter's standard library (``sysconfig.get_paths()["stdlib"]``). Directories named
``test``, ``tests``, ``idle_test``, ``site-packages``, ``dist-packages`` or ``__pycache__`` and
files named ``test_*.py`` are skipped (test suites are huge, repetitive and version specific;
installed packages differ per machine), as are files that are not valid UTF-8.

Held-out rule: a file is held out for evaluation when the first 8 bytes of
``sha256(relative posix path)``, read as a big-endian integer, are 0 modulo 20 (about 5% of the
files). It depends on the path only, so a file is in the same split on every Python version
that has it (see `is_held_out`).

Pipeline: a byte-level BPE tokenizer (``tokenizers``) is trained on the training split; each
file becomes ``</s>`` (OPT's bos, id 2) followed by its tokens; the files are concatenated into
one stream per split. Training batches are random windows of that stream drawn from
``numpy.random.default_rng([seed, step])``, so a resumed run sees exactly the batches of an
uninterrupted one. AdamW with linear warmup and cosine decay, global-norm clipping.

The work directory holds the tokenizer, the token streams, ``state.msgpack`` (params, optimizer
state, step; written atomically every ``--ckpt-every`` steps) and ``log.json`` (loss curve).
Rerunning the same command resumes from the last checkpoint. At the end the model is written
to ``--out`` in the Hugging Face layout with `lutgemm_jax.models.opt.save_hf_checkpoint`
(``config.json``, ``model.safetensors``), plus ``tokenizer.json``, ``loss_curve.png`` and a
``README.md`` model card. The held-out loss of the card is measured on the weights as saved.

    PYTHONPATH=$PWD nice -n 19 python scripts/train_demo_model.py             # the shipped run
    PYTHONPATH=$PWD python scripts/train_demo_model.py --measure 5            # tokens/s only
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import sysconfig
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from lutgemm_jax.models import opt

SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)
HELD_OUT_MODULUS = 20
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
"""Ids 0..3, as in OPT's vocabulary: pad = 1, bos = eos = 2."""
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "examples", "demo_model")
DEFAULT_WORKDIR = os.path.join(REPO, "build", "demo_model_train")


# ---- corpus ----------------------------------------------------------------------------------


def is_held_out(relpath: str) -> bool:
    """The held-out rule: ``int(sha256(relpath)[:8]) % 20 == 0`` (``relpath`` in posix form)."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HELD_OUT_MODULUS == 0


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def list_sources(root: str) -> list[str]:
    """Sorted posix paths (relative to ``root``) of the corpus files."""
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for name in files:
            if name.endswith(".py") and not name.startswith("test_"):
                rel = os.path.relpath(os.path.join(directory, name), root)
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def read_split(root: str, held_out: bool, max_files: int | None = None) -> list[tuple[str, str]]:
    """``(relpath, text)`` of one split, in path order; undecodable files are skipped."""
    out = []
    for rel in list_sources(root):
        if is_held_out(rel) != held_out:
            continue
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                out.append((rel, f.read()))
        except UnicodeDecodeError:
            continue
        if max_files is not None and len(out) >= max_files:
            break
    return out


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2 style pre-tokenization, no prefix space)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def token_stream(tokenizer, texts: list[str], bos: int) -> np.ndarray:
    """Every text as ``[bos, *tokens]``, concatenated (uint16)."""
    parts = []
    for enc in tokenizer.encode_batch(texts):
        parts.append(np.asarray([bos, *enc.ids], np.uint16))
    return np.concatenate(parts)


# ---- model and training ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    ffn_dim: int = 1024
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 700
    warmup: int = 100
    lr: float = 2e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    clip: float = 1.0
    seed: int = 0
    eval_windows: int = 32

    def model_config(self) -> opt.OPTConfig:
        return opt.OPTConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            ffn_dim=self.ffn_dim,
            num_attention_heads=self.num_heads,
            max_position_embeddings=self.seq_len,
        )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, cfg.warmup, max(cfg.steps, cfg.warmup + 1), cfg.min_lr
    )
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip),
        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay),
    )


def initial_state(cfg: TrainConfig) -> tuple[opt.OPT, Callable, dict]:
    """The model, its jitted training step ``update(params, opt_state, windows) -> (params,
    opt_state, loss)`` and the step-0 state (Flax's default init, seeded)."""
    model = opt.OPT(cfg.model_config())
    optimizer = make_optimizer(cfg)
    dummy = jnp.zeros((1, cfg.seq_len), jnp.int32)
    params = model.init(jax.random.PRNGKey(cfg.seed), dummy, dummy, dummy > -1)["params"]

    @jax.jit
    def update(params, opt_state, windows):
        loss, grads = jax.value_and_grad(lambda p: window_loss(model, p, windows))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return model, update, {"params": params, "opt_state": optimizer.init(params), "step": 0}


def window_loss(model: opt.OPT, params, windows: jax.Array) -> jax.Array:
    """Mean next-token cross entropy over ``windows [B, T + 1]`` (positions 0..T-1)."""
    inputs, targets = windows[:, :-1], windows[:, 1:]
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
    logits, _ = model.apply({"params": params}, inputs, positions, jnp.ones(inputs.shape, bool))
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def sample_batch(stream: np.ndarray, cfg: TrainConfig, step: int) -> np.ndarray:
    """The batch of ``step``: a pure function of (seed, step), so resuming is exact."""
    rng = np.random.default_rng([cfg.seed, step])
    starts = rng.integers(0, stream.size - cfg.seq_len - 1, cfg.batch_size)
    return np.stack([stream[s : s + cfg.seq_len + 1] for s in starts]).astype(np.int32)


def eval_windows(stream: np.ndarray, seq_len: int, limit: int | None) -> np.ndarray:
    """Consecutive non-overlapping ``[seq_len + 1]`` windows from the start of ``stream``."""
    n = (stream.size - 1) // seq_len
    if limit is not None:
        n = min(n, limit)
    if n < 1:
        raise ValueError(f"the held-out stream ({stream.size} tokens) is shorter than a window")
    return np.stack([stream[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)]).astype(
        np.int32
    )


def evaluate(loss_fn, params, windows: np.ndarray, batch: int) -> float:
    """Token-weighted mean loss over ``windows`` (equal-length windows: mean of batch means)."""
    total = 0.0
    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        total += float(loss_fn(params, jnp.asarray(chunk))) * len(chunk)
    return total / len(windows)


# ---- work directory --------------------------------------------------------------------------


def prepare_data(workdir: str, cfg: TrainConfig, max_files: int | None):
    """Tokenizer and token streams, built once per work directory and reused on resume."""
    from tokenizers import Tokenizer

    tok_path = os.path.join(workdir, "tokenizer.json")
    streams = os.path.join(workdir, "streams.npz")
    meta_path = os.path.join(workdir, "corpus.json")
    if os.path.exists(streams) and os.path.exists(tok_path):
        data = np.load(streams)
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        return Tokenizer.from_file(tok_path), data["train"], data["held_out"], meta
    root = stdlib_root()
    train = read_split(root, held_out=False, max_files=max_files)
    held = read_split(root, held_out=True, max_files=max_files)
    if not train or not held:
        raise RuntimeError(f"no corpus files found under {root}")
    tokenizer = train_tokenizer([t for _, t in train], cfg.vocab_size)
    if tokenizer.get_vocab_size() != cfg.vocab_size:
        raise RuntimeError(
            f"the tokenizer learned {tokenizer.get_vocab_size()} tokens, not {cfg.vocab_size}: "
            "the corpus is too small for this vocabulary"
        )
    bos = opt.OPTConfig().bos_token_id
    train_ids = token_stream(tokenizer, [t for _, t in train], bos)
    held_ids = token_stream(tokenizer, [t for _, t in held], bos)
    meta = {
        "stdlib": root,
        "python": platform.python_version(),
        "train_files": len(train),
        "held_out_files": [p for p, _ in held],
        "train_bytes": sum(len(t.encode()) for _, t in train),
        "train_tokens": int(train_ids.size),
        "held_out_tokens": int(held_ids.size),
    }
    tokenizer.save(tok_path)
    np.savez(streams, train=train_ids, held_out=held_ids)
    _write_json(meta_path, meta)
    return tokenizer, train_ids, held_ids, meta


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def save_state(workdir: str, state: dict, log: dict) -> None:
    """Checkpoint and log, each replaced atomically (state first: the log never runs ahead)."""
    path = os.path.join(workdir, "state.msgpack")
    with open(path + ".tmp", "wb") as f:
        f.write(serialization.to_bytes(state))
    os.replace(path + ".tmp", path)
    _write_json(os.path.join(workdir, "log.json"), log)


def load_state(workdir: str, template: dict) -> tuple[dict, dict] | None:
    path = os.path.join(workdir, "state.msgpack")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        state = serialization.from_bytes(template, f.read())
    with open(os.path.join(workdir, "log.json"), encoding="utf-8") as f:
        log = json.load(f)
    step = int(state["step"])
    log["train"] = [e for e in log["train"] if e["step"] <= step]
    log["eval"] = [e for e in log["eval"] if e["step"] <= step]
    return state, log


def check_config(workdir: str, cfg: TrainConfig) -> None:
    """A work directory belongs to one configuration: refuse to resume with another."""
    path = os.path.join(workdir, "train_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved != dataclasses.asdict(cfg):
            diff = {
                k: (saved.get(k), v)
                for k, v in dataclasses.asdict(cfg).items()
                if saved.get(k) != v
            }
            raise SystemExit(
                f"{workdir} was started with another configuration (saved, requested): {diff}; "
                "use another --workdir or the same options"
            )
    else:
        _write_json(path, dataclasses.asdict(cfg))


# ---- the run ---------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    workdir: str,
    *,
    ckpt_every: int,
    eval_every: int,
    max_files: int | None,
    stop_at: int | None = None,
    progress: bool = True,
) -> tuple[dict, dict, dict]:
    """Runs (or resumes) training to ``cfg.steps``, or only to ``stop_at`` (the learning-rate
    schedule still spans ``cfg.steps``); returns ``(params, log, corpus meta)``."""
    from tqdm.auto import tqdm

    os.makedirs(workdir, exist_ok=True)
    check_config(workdir, cfg)
    _, train_ids, held_ids, meta = prepare_data(workdir, cfg, max_files)
    model, update, state = initial_state(cfg)
    log = {"train": [], "eval": [], "wall_s": 0.0}
    restored = load_state(workdir, state)
    if restored is not None:
        state, log = restored
    loss_fn = jax.jit(lambda p, w: window_loss(model, p, w))
    held_windows = eval_windows(held_ids, cfg.seq_len, cfg.eval_windows)
    params, opt_state, step = state["params"], state["opt_state"], int(state["step"])
    tokens_per_step = cfg.batch_size * cfg.seq_len
    last = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    bar = tqdm(total=last, initial=step, desc="train", unit="step", disable=not progress)
    t_last = time.perf_counter()
    while step < last:
        params, opt_state, loss = update(
            params, opt_state, jnp.asarray(sample_batch(train_ids, cfg, step))
        )
        step += 1
        loss = float(loss)
        log["train"].append({"step": step, "loss": loss})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if step % eval_every == 0 or step == last:
            held = evaluate(loss_fn, params, held_windows, cfg.batch_size)
            log["eval"].append({"step": step, "held_out_loss": held})
            bar.write(f"step {step}: train loss {loss:.4f}, held-out loss {held:.4f}")
        if step % ckpt_every == 0 or step == last:
            now = time.perf_counter()
            log["wall_s"] += now - t_last
            t_last = now
            log["tokens_seen"] = step * tokens_per_step
            save_state(workdir, {"params": params, "opt_state": opt_state, "step": step}, log)
            plot_losses(log, os.path.join(workdir, "loss_curve.png"))
    bar.close()
    log["steps"] = step
    return params, log, meta


def plot_losses(log: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.array([e["step"] for e in log["train"]])
    losses = np.array([e["loss"] for e in log["train"]])
    ax.plot(steps, losses, color="0.75", lw=0.8, label="train (per step)")
    if len(losses) >= 50:
        k = 50
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color="C0", label=f"train ({k}-step mean)")
    if log["eval"]:
        ax.plot(
            [e["step"] for e in log["eval"]],
            [e["held_out_loss"] for e in log["eval"]],
            "o-",
            color="C3",
            ms=3,
            label="held-out",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross entropy (nats/token)")
    ax.set_title("demo model: OPT architecture on Python stdlib source")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def export(
    out: str,
    workdir: str,
    params,
    cfg: TrainConfig,
    log: dict,
    meta: dict,
    dtype: str,
    final_eval_windows: int | None,
) -> dict:
    """Writes the Hugging Face checkpoint, tokenizer, plot and model card; returns the card's
    numbers. The final losses are measured on the weights as written (after the dtype cast)."""
    import shutil

    config = cfg.model_config()
    os.makedirs(out, exist_ok=True)
    opt.save_hf_checkpoint(out, params, config, dtype=np.dtype(dtype))
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        hf_config = json.load(f)
    _write_json(os.path.join(out, "config.json"), {**hf_config, "torch_dtype": dtype})
    shutil.copy(os.path.join(workdir, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    plot_losses(log, os.path.join(out, "loss_curve.png"))
    loaded_config, shipped = opt.load_hf_checkpoint(out)
    model = opt.OPT(loaded_config)
    loss_fn = jax.jit(lambda p, w: window_loss(model, p, w))
    data = np.load(os.path.join(workdir, "streams.npz"))
    held = eval_windows(data["held_out"], cfg.seq_len, final_eval_windows)
    rng = np.random.default_rng([cfg.seed, 2**31])
    train_windows = np.stack(
        [
            sample_batch(data["train"], dataclasses.replace(cfg, seed=int(s)), 0)
            for s in rng.integers(0, 2**31, 8)
        ]
    ).reshape(-1, cfg.seq_len + 1)
    summary = {
        "steps": log["steps"],
        "planned_steps": cfg.steps,
        "tokens_seen": log["steps"] * cfg.batch_size * cfg.seq_len,
        "wall_s": round(log["wall_s"], 1),
        "params": config.num_params(),
        "train_loss": round(evaluate(loss_fn, shipped, train_windows, cfg.batch_size), 4),
        "held_out_loss": round(evaluate(loss_fn, shipped, held, cfg.batch_size), 4),
        "held_out_eval_tokens": int(len(held) * cfg.seq_len),
        "dtype": dtype,
    }
    summary["tokens_per_s"] = round(summary["tokens_seen"] / max(summary["wall_s"], 1e-9), 1)
    _write_json(
        os.path.join(out, "training_summary.json"),
        {
            **summary,
            "train_config": dataclasses.asdict(cfg),
            "corpus": {k: v for k, v in meta.items() if k != "stdlib"},
        },
    )
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(cfg, summary, meta))
    return summary


def model_card(cfg: TrainConfig, s: dict, meta: dict) -> str:
    c = cfg.model_config()
    early = s["steps"] < cfg.steps
    stopped = f"; stopped at step {s['steps']} (`--stop-at`)" if early else ""
    command = "PYTHONPATH=$PWD nice -n 19 python scripts/train_demo_model.py"
    if early:
        command += f" --stop-at {s['steps']}"
    return f"""# lutgemm_jax demo model

A small causal language model with the OPT architecture (`model_type: opt`, pre-layer-norm,
ReLU FFN, learned positions, tied lm_head), trained from scratch by
`scripts/train_demo_model.py` so that `examples/opt_decode.py` shows real text and a real
perplexity without downloading anything. It writes Python: it is a toy, not a useful model.

| | |
|---|---|
| shape | hidden {c.hidden_size}, {c.num_hidden_layers} layers, {c.num_attention_heads} heads, \
FFN {c.ffn_dim}, vocab {c.vocab_size}, context {c.max_position_embeddings} |
| parameters | {s["params"]:,} (tied head counted once) |
| weights | `model.safetensors`, {s["dtype"]} (trained in float32) |
| tokenizer | byte-level BPE (`tokenizer.json`, `tokenizers` library), trained on the \
training split |
| corpus | `*.py` of the Python {meta["python"]} standard library, without `test`/`tests`/\
`idle_test`/`site-packages`/`dist-packages`/`__pycache__` directories and `test_*.py` files |
| split | held out: the first 8 bytes of `sha256(relative posix path)` are 0 mod 20 \
({len(meta["held_out_files"])} files, {meta["held_out_tokens"]:,} tokens); training: \
{meta["train_files"]} files, {meta["train_tokens"]:,} tokens |
| training | {s["steps"]} steps of {cfg.batch_size} x {cfg.seq_len} tokens = \
{s["tokens_seen"]:,} tokens seen; AdamW (lr {cfg.lr}, warmup {cfg.warmup}, cosine to \
{cfg.min_lr} at step {cfg.steps}, weight decay {cfg.weight_decay}, clip {cfg.clip}), \
seed {cfg.seed}{stopped} |
| wall time | {s["wall_s"] / 60:.1f} min on 2 shared CPU cores ({s["tokens_per_s"]:,.0f} tokens/s) |
| final train loss | {s["train_loss"]:.3f} nats/token (128 random training windows) |
| final held-out loss | {s["held_out_loss"]:.3f} nats/token (perplexity \
{math.exp(s["held_out_loss"]):.1f}) over {s["held_out_eval_tokens"]:,} held-out tokens; \
uniform guessing is ln({c.vocab_size}) = {math.log(c.vocab_size):.2f} |

![loss curve](loss_curve.png)

Held-out files: {", ".join(f"`{p}`" for p in meta["held_out_files"])}.

Reproduce (resumable; the work directory defaults to `build/demo_model_train`):

    {command}

Another Python version has a slightly different standard library, so its corpus, tokenizer
and weights differ slightly; the held-out rule picks the same files wherever they exist.
"""


def measure(cfg: TrainConfig, steps: int) -> float:
    """Training tokens/s of ``cfg`` on random tokens (after compilation)."""
    _, update, state = initial_state(cfg)
    params, opt_state = state["params"], state["opt_state"]
    stream = np.random.default_rng(0).integers(4, cfg.vocab_size, 100_000).astype(np.uint16)
    jax.block_until_ready(update(params, opt_state, jnp.asarray(sample_batch(stream, cfg, 0))))
    t0 = time.perf_counter()
    for step in range(steps):
        params, opt_state, loss = update(
            params, opt_state, jnp.asarray(sample_batch(stream, cfg, step))
        )
    jax.block_until_ready(loss)
    return steps * cfg.batch_size * cfg.seq_len / (time.perf_counter() - t0)


def parse_args(argv=None) -> tuple[argparse.Namespace, TrainConfig]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        p.add_argument(
            "--" + field.name.replace("_", "-"),
            type=type(getattr(defaults, field.name)),
            default=getattr(defaults, field.name),
        )
    p.add_argument("--out", default=DEFAULT_OUT, help="checkpoint directory written at the end")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="data, checkpoints and log")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument(
        "--final-eval-windows",
        type=int,
        default=None,
        help="held-out windows of the final evaluation (default: all)",
    )
    p.add_argument(
        "--max-files",
        type=int,
        default=None,
        help="use only the first N files of each split (quick runs and tests)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float16",
        help="dtype of the shipped weights",
    )
    p.add_argument(
        "--measure",
        type=int,
        metavar="STEPS",
        default=0,
        help="only print the training tokens/s of this configuration and exit",
    )
    p.add_argument(
        "--stop-at",
        type=int,
        metavar="STEP",
        help="stop (checkpoint and export) at this step; the schedule still spans --steps. "
        "With a checkpoint at or past STEP: export that checkpoint without training",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if cfg.steps < 1 or args.ckpt_every < 1 or args.eval_every < 1:
        p.error("--steps, --ckpt-every and --eval-every must be >= 1")
    if cfg.vocab_size <= len(SPECIAL_TOKENS) + 256:
        p.error(f"--vocab-size must exceed {len(SPECIAL_TOKENS) + 256} (specials + bytes)")
    return args, cfg


def main(argv=None) -> int:
    args, cfg = parse_args(argv)
    if args.measure:
        tps = measure(cfg, args.measure)
        print(
            json.dumps(
                {
                    "tokens_per_s": round(tps, 1),
                    "params": cfg.model_config().num_params(),
                    "s_per_step": round(cfg.batch_size * cfg.seq_len / tps, 3),
                }
            )
        )
        return 0
    params, log, meta = train(
        cfg,
        args.workdir,
        ckpt_every=args.ckpt_every,
        eval_every=args.eval_every,
        max_files=args.max_files,
        stop_at=args.stop_at,
        progress=not args.no_progress,
    )
    summary = export(
        args.out, args.workdir, params, cfg, log, meta, args.dtype, args.final_eval_windows
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
