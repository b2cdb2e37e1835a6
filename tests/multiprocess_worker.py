"""One process of the two-process run in test_multiprocess.py.

Usage: ``python tests/multiprocess_worker.py --coordinator HOST:PORT --num-processes 2
--process-id I TMPDIR``, with two host CPU devices per process
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``). The process joins JAX's distributed
runtime (CPU collectives over gloo), builds one global mesh over every process's devices and
runs every scenario of `SCENARIOS` in order. Each scenario prints one line ``RESULT {json}`` to
stdout: its name, ``ok``, the error (a traceback) if it failed, and what the parent checks
across processes (tokens, collectives of the compiled programs, ...).

Each comparison is made here against the same computation on one local device, or a float64
reference, so a failing scenario says what differed; a scenario that raises on one process can
leave the other waiting in a collective, which the parent's timeout ends (the ``START`` line
printed before each scenario names the one in progress).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lutgemm_jax import checkpoint, dequantize, lut_gemm, models, quantize
from lutgemm_jax.distributed import add_distributed_args, initialize_from_args
from lutgemm_jax.models import opt
from lutgemm_jax.models import tensor_parallel as tp
from lutgemm_jax.sharding import packed_specs

K, N, GROUP, BITS = 256, 128, 64, 3
"""The lut_gemm weight: 4 groups along K, so row-parallel splits it over 4 devices."""
NEW_TOKENS = 4


def collectives(hlo: str) -> list[str]:
    """The collective instructions of a compiled HLO module, one ``op(shape)`` string each."""
    found = re.findall(
        r"= (\S+) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
        r"(?:-start)?\(",
        hlo,
    )
    return [f"{op}({shape})" for shape, op in found]


def global_array(value: Any, mesh: jax.sharding.Mesh, spec: P) -> jax.Array:
    """A global array over ``mesh`` from the same host value on every process."""
    value = np.asarray(value)
    return jax.make_array_from_callback(
        value.shape, NamedSharding(mesh, spec), lambda index: value[index]
    )


def global_weight(w: Any, mesh: jax.sharding.Mesh, kernel_spec: P) -> Any:
    """``w``'s packed arrays placed on ``mesh`` as a dense kernel sharded ``kernel_spec`` is."""
    specs = packed_specs(kernel_spec, w.has_offset)
    placed = {name: global_array(getattr(w, name), mesh, spec) for name, spec in specs.items()}
    return dataclasses.replace(w, **placed)


def gathered(x: jax.Array) -> np.ndarray:
    """The full value of a global array, on every process."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@functools.cache
def weight() -> Any:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    return jax.tree.map(np.asarray, quantize(w, BITS, GROUP, method="greedy", fit_offset=True))


def activations(rows: int = 8) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((rows, K)).astype(np.float32)


def reference64(x: np.ndarray, w: Any) -> np.ndarray:
    """``x @ W_hat`` in float64 from the format formula (`dequantize`)."""
    return x.astype(np.float64) @ np.asarray(dequantize(w), np.float64)


def one_device(f: Callable, *args: Any) -> np.ndarray:
    """``f(*args)`` jitted on this process's first device alone (the single-process result)."""
    device = jax.local_devices()[0]
    local = jax.tree.map(lambda a: jax.device_put(np.asarray(a), device), args)
    return jax.tree.map(np.asarray, jax.jit(f)(*local))


def _gemm_case(kernel_spec: P, x_spec: P, axis: str) -> dict[str, Any]:
    w, x = weight(), activations()
    mesh = tp.make_mesh({axis: jax.device_count()})
    gw = global_weight(w, mesh, kernel_spec)
    gx = global_array(x, mesh, x_spec)
    compiled = jax.jit(lut_gemm).lower(gx, gw).compile()
    y = gathered(compiled(gx, gw))
    want = one_device(lut_gemm, x, w)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(y, reference64(x, w), rtol=1e-5, atol=1e-4)
    return {"collectives": collectives(compiled.as_text())}


def column_parallel() -> dict[str, Any]:
    return _gemm_case(P(None, "tp"), P(), "tp")


def row_parallel() -> dict[str, Any]:
    return _gemm_case(P("tp", None), P(None, "tp"), "tp")


def data_parallel() -> dict[str, Any]:
    """x's rows split over all devices, each process supplying only its own rows."""
    w, x = weight(), activations()
    mesh = tp.make_mesh({"dp": jax.device_count()})
    sharding = NamedSharding(mesh, P("dp"))
    rows = x.shape[0] // jax.process_count()
    local = x[jax.process_index() * rows : (jax.process_index() + 1) * rows]
    gx = jax.make_array_from_process_local_data(sharding, local, x.shape)
    gw = global_weight(w, mesh, P())
    compiled = jax.jit(lut_gemm).lower(gx, gw).compile()
    y = compiled(gx, gw)
    for shard in y.addressable_shards:  # this process's rows, checked where they are
        np.testing.assert_array_equal(shard.data, one_device(lut_gemm, x[shard.index], w))
    np.testing.assert_allclose(gathered(y), reference64(x, w), rtol=1e-5, atol=1e-4)
    return {"collectives": collectives(compiled.as_text())}


def row_parallel_grad() -> dict[str, Any]:
    """d/dx of ``sum(lut_gemm(x, w) * c)`` with w row-parallel and x sharded along K."""
    w, x = weight(), activations()
    c = np.random.default_rng(2).standard_normal((x.shape[0], N)).astype(np.float32)
    mesh = tp.make_mesh({"tp": jax.device_count()})

    def loss(x, w, c):
        return jnp.sum(lut_gemm(x, w) * c)

    grad = jax.grad(loss)
    args = (global_array(x, mesh, P(None, "tp")), global_weight(w, mesh, P("tp", None)))
    args += (global_array(c, mesh, P()),)
    compiled = jax.jit(grad).lower(*args).compile()
    got = gathered(compiled(*args))
    want = one_device(grad, x, w, c)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # d/dx sum(y * c) = c @ W_hat^T, in float64.
    exact = c.astype(np.float64) @ np.asarray(dequantize(w), np.float64).T
    np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4)
    return {"collectives": collectives(compiled.as_text())}


# ---- decoders --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Decoder:
    """A quantized decoder family: what the generation scenario needs of it.

    ``generate(params, ids, mask) -> (tokens, logits)`` must be jittable; ``shard(params,
    mesh)`` places params Megatron-style over the mesh's ``tp`` axis.
    """

    params: Any
    generate: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    shard: Callable[[Any, jax.sharding.Mesh], Any]
    prompts: tuple[tuple[int, ...], ...]
    pad_token_id: int


def _greedy_generation(model: Any) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """``generate(params, ids, mask) -> (tokens, logits)``: `NEW_TOKENS` greedy tokens."""

    def generate(params: Any, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = models.generate(
            model, params, ids, mask, max_new_tokens=NEW_TOKENS, return_logits=True,
            stop_at_eos=False,
        )  # fmt: skip
        return out.tokens, out.logits

    return generate


def opt_decoder() -> Decoder:
    # g = 32: out_proj has 4 groups along K and fc2 8, so row-parallel splits them over 4.
    config = opt.OPTConfig(
        vocab_size=128,
        hidden_size=128,
        num_hidden_layers=1,
        ffn_dim=256,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    params = opt.init_params(config, 2, logit_std=2.0)  # seed 2: tokens that change
    qparams = opt.quantize_model(params, bits=BITS, group_size=32, method="greedy")
    return Decoder(
        params=jax.tree.map(np.asarray, qparams),
        generate=_greedy_generation(opt.OPT(config)),
        shard=tp.shard_params,
        prompts=((2, 5, 6, 7, 8, 9, 10), (2, 40, 41)),
        pad_token_id=config.pad_token_id,
    )


def llama_decoder() -> Decoder:
    # GQA (8 query heads, 4 KV heads: one KV head and its two query heads per device) with
    # heads * head_dim = 128 and an intermediate size of 256: o_proj has 4 groups of 32 along K
    # and down_proj 8, so row-parallel splits them over 4.
    config = models.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=16,
        max_position_embeddings=64,
    )
    params = models.init_params(config)
    # Canonical: k/v_proj (N = 64) split 4 ways leaves 16 columns per shard, fewer than the "cpu"
    # layout's 32-column blocks.
    qparams = models.quantize_model(
        params, bits=BITS, group_size=32, method="greedy", layout="canonical"
    )
    column, row = tp.layer_lists(config)
    return Decoder(
        params=jax.tree.map(np.asarray, qparams),
        generate=_greedy_generation(models.from_config(config)),
        shard=lambda params, mesh: tp.shard_params(params, mesh, column=column, row=row),
        prompts=((1, 5, 6, 7, 8, 9, 10), (1, 40, 41)),
        pad_token_id=0,
    )


DECODERS: dict[str, Callable[[], Decoder]] = {"opt": opt_decoder, "llama": llama_decoder}
"""Decoder families the generation scenario runs, by name."""


def tensor_parallel_generation(family: str) -> dict[str, Any]:
    decoder = DECODERS[family]()
    ids, mask = opt.pad_batch(decoder.prompts, decoder.pad_token_id)
    want_tokens, want_logits = one_device(decoder.generate, decoder.params, ids, mask)
    mesh = tp.make_mesh({"tp": jax.device_count()})
    sharded = decoder.shard(decoder.params, mesh)
    gids, gmask = (global_array(a, mesh, P()) for a in (ids, mask))
    with jax.set_mesh(mesh):
        compiled = jax.jit(decoder.generate).lower(sharded, gids, gmask).compile()
        tokens, logits = (gathered(a) for a in compiled(sharded, gids, gmask))
    np.testing.assert_array_equal(tokens, want_tokens)
    # Row-parallel partial sums are added in another order than on one device.
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
    return {"tokens": tokens.tolist(), "collectives": collectives(compiled.as_text())}


# ---- checkpoints -----------------------------------------------------------------------------


def _checkpoint_tree(mesh: jax.sharding.Mesh) -> dict[str, Any]:
    w = weight()
    bias = np.linspace(-1, 1, N, dtype=np.float32)
    return {
        "column": global_weight(w, mesh, P(None, "tp")),
        "row": global_weight(w, mesh, P("tp", None)),
        "bias": global_array(bias, mesh, P("tp")),
        "scale": global_array(np.float32(0.5), mesh, P()),
    }


class _WriteAudit:
    """Records the files this process opens for writing under ``directory`` (an audit hook)."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.opened: list[str] = []
        self.active = False
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event != "open" or not isinstance(args[0], (str, bytes)):
            return
        path, mode, flags = args
        writes = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) if isinstance(flags, int) else 0
        if isinstance(mode, str) and set(mode) & set("wax+"):
            writes = 1
        if writes and os.path.abspath(os.fsdecode(path)).startswith(self.directory):
            self.opened.append(os.fsdecode(path))


def checkpoint_round_trip(tmpdir: str) -> dict[str, Any]:
    mesh = tp.make_mesh({"tp": jax.device_count()})
    tree = _checkpoint_tree(mesh)
    path = os.path.join(tmpdir, "sharded.safetensors")
    audit = _WriteAudit(tmpdir)
    audit.active = True
    checkpoint.save(path, tree, metadata={"run": "two processes"})
    audit.active = False
    assert os.path.exists(path), "save returned before the file existed on this process"
    assert checkpoint.read_metadata(path) == {"run": "two processes"}

    loaded = checkpoint.load(path, like=tree)
    for (name, got), want in zip(
        jax.tree_util.tree_leaves_with_path(loaded), jax.tree.leaves(tree), strict=True
    ):
        assert got.sharding == want.sharding, f"{name}: {got.sharding} != {want.sharding}"
        for a, b in zip(got.addressable_shards, want.addressable_shards, strict=True):
            assert a.index == b.index and a.device == b.device, name
            np.testing.assert_array_equal(a.data, b.data, err_msg=str(name))
    # The file holds the whole tensors (here read without `like`, on one device).
    plain = checkpoint.load(path)
    for name in ("column", "row"):
        for field in ("bits", "alpha", "offset"):
            got, want = getattr(plain[name], field), getattr(weight(), field)
            np.testing.assert_array_equal(got, want, err_msg=f"{name}.{field}")
    np.testing.assert_array_equal(plain["bias"], gathered(tree["bias"]))
    np.testing.assert_array_equal(plain["scale"], np.float32(0.5))
    return {"opened_for_writing": audit.opened, "size": os.path.getsize(path)}


def _failing_save(path: str, tree: Any, why: str) -> str:
    """Runs a `checkpoint.save` that must raise; checks that it left ``path`` as it was and no
    temporary file behind, and returns the error as ``"Type: message"``."""
    before = open(path, "rb").read()
    try:
        checkpoint.save(path, tree)
    except (checkpoint.CheckpointError, OSError) as e:
        error = f"{type(e).__name__}: {e}"
    else:
        raise AssertionError(f"save succeeded although {why}")
    assert open(path, "rb").read() == before, f"{why}: the previous checkpoint was changed"
    directory, name = os.path.split(path)
    leftovers = [f for f in os.listdir(directory) if f.startswith(f".{name}.")]
    assert not leftovers, f"{why}: temporary files left behind: {leftovers}"
    return error


def checkpoint_failure(tmpdir: str) -> dict[str, Any]:
    """Process 1 raises while preparing its part of a save; the processes pass different trees;
    process 0 fails mid-write. Each time every process raises and the destination keeps its
    previous content.
    """
    mesh = tp.make_mesh({"tp": jax.device_count()})
    tree = _checkpoint_tree(mesh)
    path = os.path.join(tmpdir, "failing.safetensors")
    if jax.process_index() == 0:  # a process-local tree: saved by whoever calls save
        checkpoint.save(path, {"previous": np.arange(3, dtype=np.int32)})
    multihost_utils.sync_global_devices("previous checkpoint written")

    bad = dict(tree)
    if jax.process_index() == 1:  # a leaf the format cannot store, on process 1 only
        bad["extra"] = np.zeros(2, np.complex64)
    errors = [_failing_save(path, bad, "process 1 failed")]
    differing = dict(tree, note=np.zeros(2 + jax.process_index(), np.float32))
    errors.append(_failing_save(path, differing, "the processes passed different trees"))

    write = checkpoint._write_chunks

    def write_half_then_fail(f: Any, chunks: list[Any]) -> None:
        write(f, chunks[:2])
        raise OSError("disk full (simulated)")

    if jax.process_index() == 0:
        checkpoint._write_chunks = write_half_then_fail
    try:
        errors.append(_failing_save(path, tree, "process 0 failed to write"))
    finally:
        checkpoint._write_chunks = write
    return {"errors": errors}


SCENARIOS: dict[str, Callable[[str], dict[str, Any]]] = {
    "column_parallel": lambda tmpdir: column_parallel(),
    "row_parallel": lambda tmpdir: row_parallel(),
    "data_parallel": lambda tmpdir: data_parallel(),
    "row_parallel_grad": lambda tmpdir: row_parallel_grad(),
    **{
        f"generation_{family}": functools.partial(
            lambda tmpdir, family: tensor_parallel_generation(family), family=family
        )
        for family in DECODERS
    },
    "checkpoint_round_trip": checkpoint_round_trip,
    "checkpoint_failure": checkpoint_failure,
}


def main(argv: list[str]) -> int:
    parser = add_distributed_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("tmpdir", help="a directory for the checkpoint scenarios")
    args = parser.parse_args(argv)
    assert initialize_from_args(args), "no distributed runtime to join"
    assert jax.process_count() == args.num_processes, jax.process_count()
    assert jax.local_device_count() == 2, jax.local_devices()
    failed = False
    for name, scenario in SCENARIOS.items():
        print(f"START {name}", flush=True)
        start = time.perf_counter()
        try:
            result = {"name": name, "ok": True, **scenario(args.tmpdir)}
        except Exception:
            failed = True
            result = {"name": name, "ok": False, "error": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - start, 2)
        print("RESULT " + json.dumps(result), flush=True)
    jax.distributed.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
