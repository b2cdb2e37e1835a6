"""Checkpoints: exact round trips (linen trees, nnx state), corruption detection, atomic writes,
interoperability (the safetensors library reads the files; orbax checkpoints BCQWeight trees)."""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lutgemm_jax import checkpoint
from lutgemm_jax.checkpoint import CheckpointError, load, read_metadata, save
from lutgemm_jax.format import BCQWeight, to_layout
from lutgemm_jax.nnx import LutLinear
from lutgemm_jax.testing import random_weight


def linen_tree(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    w1, _ = random_weight(rng, 64, 48, 3, group_size=32, has_offset=False)
    w2, _ = random_weight(rng, 48, 16, 4, group_size=None, alpha_dtype=jnp.bfloat16)
    w3, _ = random_weight(rng, 32, 8, 2, group_size=32, alpha_dtype=jnp.float16)
    stacked = jax.tree.map(
        lambda a, b: jnp.stack([a, b]),
        w3,
        random_weight(rng, 32, 8, 2, 32, alpha_dtype=jnp.float16)[0],
    )
    return {
        "params": {
            "Dense_0": {"kernel": w1, "bias": jnp.asarray(rng.normal(size=48), jnp.float32)},
            "Dense_1": {"kernel": w2},
            "scan": {"kernel": stacked},
            "embed": {"embedding": jnp.asarray(rng.normal(size=(10, 64)), jnp.bfloat16)},
            "layers": [jnp.arange(3, dtype=jnp.int32), jnp.asarray([True, False])],
        }
    }


def assert_trees_identical(a, b) -> None:
    is_bcq = lambda v: isinstance(v, BCQWeight)  # noqa: E731
    assert jax.tree.structure(a, is_leaf=is_bcq) == jax.tree.structure(b, is_leaf=is_bcq)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))


@pytest.fixture
def saved(tmp_path):
    tree = linen_tree()
    path = tmp_path / "model.safetensors"
    save(path, tree, metadata={"model": "mlp", "bits": "3"})
    return path, tree


def test_linen_round_trip_is_exact(saved):
    path, tree = saved
    assert_trees_identical(load(path, like=tree), tree)
    # Without `like`: nested dicts with the saved keys (list indices become int keys).
    plain = load(path)
    assert isinstance(plain["params"]["Dense_0"]["kernel"], BCQWeight)
    assert plain["params"]["scan"]["kernel"].batch_shape == (2,)
    assert_trees_identical(plain["params"]["Dense_1"], tree["params"]["Dense_1"])
    np.testing.assert_array_equal(plain["params"]["layers"][1], [True, False])
    assert read_metadata(path) == {"model": "mlp", "bits": "3"}
    # `like` may be abstract (jax.eval_shape / ShapeDtypeStruct leaves).
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    assert_trees_identical(load(path, like=abstract), tree)


def test_header_describes_every_bcq_weight(saved):
    path, _ = saved
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + n])["__metadata__"]
    assert meta["format"] == "lutgemm_jax.checkpoint" and meta["format_version"] == "1"
    entries = {
        "/".join(map(str, e["path"])): e for e in json.loads(meta["lutgemm_jax.tree"])["entries"]
    }
    e = entries["params/Dense_1/kernel"]
    assert (e["K"], e["N"], e["q"], e["g"], e["has_offset"], e["dtype"]) == (
        48,
        16,
        4,
        64,
        True,
        "bfloat16",
    )
    assert entries["params/Dense_0/kernel"]["has_offset"] is False
    assert not any(e.get("uniform") for e in entries.values())  # per-plane scales: version 1


def test_safetensors_library_reads_the_file(saved):
    safetensors = pytest.importorskip("safetensors")
    path, tree = saved
    with safetensors.safe_open(str(path), framework="numpy") as f:
        assert f.metadata()["format"] == "lutgemm_jax.checkpoint"
        np.testing.assert_array_equal(
            f.get_tensor("params/Dense_0/kernel/bits"), tree["params"]["Dense_0"]["kernel"].bits
        )


def test_nnx_state_round_trip(tmp_path):
    def make(seed):
        w, _ = random_weight(np.random.default_rng(seed), 64, 32, 3, group_size=32)

        class Net(nnx.Module):
            def __init__(self, rngs):
                self.lut = LutLinear(64, 32, kernel=w, lora_rank=2, rngs=rngs)
                self.head = nnx.Linear(32, 4, rngs=rngs)

        return Net(nnx.Rngs(seed))

    model = make(0)
    model.lut.lora_b = nnx.Param(jnp.full((2, 32), 0.25))
    path = tmp_path / "nnx.safetensors"
    save(path, nnx.state(model))
    other = make(1)  # different packed codes, LoRA factors and head
    before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(other)))
    state = load(path, like=nnx.state(other))
    assert type(state) is type(nnx.state(other))
    nnx.update(other, state)
    assert_trees_identical(nnx.to_pure_dict(nnx.state(other)), nnx.to_pure_dict(nnx.state(model)))
    after = nnx.to_pure_dict(nnx.state(other))
    assert not np.array_equal(before["head"]["kernel"], after["head"]["kernel"])
    assert not np.array_equal(before["lut"]["kernel"].bits, after["lut"]["kernel"].bits)
    x = jnp.ones((2, 64))
    np.testing.assert_array_equal(other.lut(x), model.lut(x))
    # Pure-dict route: load without `like`, then nnx.replace_by_pure_dict.
    third = make(2)
    st = nnx.state(third)
    nnx.replace_by_pure_dict(st, load(path))
    nnx.update(third, st)
    np.testing.assert_array_equal(third.head(jnp.ones((1, 32))), model.head(jnp.ones((1, 32))))


def test_load_fails_on_mismatch_with_like(saved):
    path, tree = saved
    bad_shape = jax.tree.map(lambda a: a, tree)
    bad_shape["params"]["Dense_0"]["bias"] = jnp.zeros(47)
    with pytest.raises(
        CheckpointError, match=r"Dense_0/bias.*float32\[48\].*expected float32\[47\]"
    ):
        load(path, like=bad_shape)
    bad_q = jax.tree.map(lambda a: a, tree)
    bad_q["params"]["Dense_0"]["kernel"] = random_weight(
        np.random.default_rng(0), 64, 48, 2, 32, has_offset=False
    )[0]
    with pytest.raises(CheckpointError, match=r"Dense_0/kernel.*q=3.*expected.*q=2"):
        load(path, like=bad_q)
    bad_dtype = jax.tree.map(lambda a: a, tree)
    bad_dtype["params"]["embed"]["embedding"] = jnp.zeros((10, 64), jnp.float32)
    with pytest.raises(CheckpointError, match="embedding"):
        load(path, like=bad_dtype)
    missing = {"params": dict(tree["params"], extra=jnp.zeros(1))}
    with pytest.raises(CheckpointError, match=r"missing \[params/extra\]"):
        load(path, like=missing)


def corrupt(path, position: int, xor: int = 0x10) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= xor
    path.write_bytes(bytes(raw))


def test_truncated_files_raise(saved):
    path, _ = saved
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    for cut in (0, 5, 8, 8 + n // 2, 8 + n, len(raw) - 1, len(raw) // 2 + n // 2):
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match="truncated|corrupted"):
            load(path)
    path.write_bytes(raw + b"\0")
    with pytest.raises(CheckpointError, match="trailing bytes"):
        load(path)


def test_bit_flips_are_detected(saved):
    path, _ = saved
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    data_start = 8 + n
    for offset in (0, 7, (len(raw) - data_start) // 2, len(raw) - data_start - 1):
        path.write_bytes(raw)
        corrupt(path, data_start + offset, xor=0x01)
        with pytest.raises(CheckpointError, match="checksum mismatch"):
            load(path)
    # A flipped bit in the header breaks its JSON or its numbers.
    path.write_bytes(raw)
    corrupt(path, 8 + raw[8:data_start].index(b'"shape":[') + 9, xor=0x02)
    with pytest.raises(CheckpointError):
        load(path)
    path.write_bytes(raw)
    corrupt(path, 9, xor=0x80)
    with pytest.raises(CheckpointError, match="corrupted"):
        load(path)


def rewrite_metadata(path, **changes) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"].update(changes)
    # Re-sign the header, so that the check under test (not the header checksum) rejects it.
    header["__metadata__"]["lutgemm_jax.header_sha256"] = checkpoint._header_digest(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def test_wrong_version_and_foreign_files(saved, tmp_path):
    path, _ = saved
    rewrite_metadata(path, format_version="3")
    with pytest.raises(CheckpointError, match=r"version 3 is not supported.*versions 1\.\.2"):
        load(path)
    rewrite_metadata(path, format_version="1", format="something-else")
    with pytest.raises(CheckpointError, match="not a lutgemm_jax checkpoint"):
        load(path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load(tmp_path / "missing.safetensors")


def test_inconsistent_bcq_metadata_is_rejected(saved):
    path, _ = saved
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    tree = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["lutgemm_jax.tree"])
    for e in tree["entries"]:
        if e["path"][-2] == "Dense_0":
            e["K"] = 128
    rewrite_metadata(path, **{"lutgemm_jax.tree": json.dumps(tree)})
    with pytest.raises(CheckpointError, match="Dense_0/kernel: inconsistent BCQWeight"):
        load(path)


def _rewrite_entries(path, edit) -> None:
    """Applies ``edit(entry)`` to every tree entry of the header (re-signed)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    tree = json.loads(json.loads(raw[8 : 8 + n])["__metadata__"]["lutgemm_jax.tree"])
    for e in tree["entries"]:
        edit(e)
    rewrite_metadata(path, **{"lutgemm_jax.tree": json.dumps(tree)})


def test_layout_is_saved_and_restored(tmp_path):
    tree = linen_tree()
    cpu = to_layout(tree, "cpu")
    path = tmp_path / "cpu.safetensors"
    save(path, cpu)
    assert_trees_identical(load(path, like=cpu), cpu)  # the treedefs hold the layout
    plain = load(path)["params"]
    assert plain["Dense_0"]["kernel"].layout == plain["scan"]["kernel"].layout == "cpu"
    # bits are stored canonical: the tensors mean the same to readers that ignore the layout
    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(str(path), framework="numpy") as f:
        np.testing.assert_array_equal(
            f.get_tensor("params/scan/kernel/bits"), tree["params"]["scan"]["kernel"].bits
        )
    with pytest.raises(CheckpointError, match=r"layout=cpu\), expected .*layout=canonical\)"):
        load(path, like=tree)


def test_entries_without_layout_load_canonical(saved):
    path, tree = saved
    _rewrite_entries(path, lambda e: e.pop("layout", None))
    assert_trees_identical(load(path, like=tree), tree)
    _rewrite_entries(path, lambda e: e.update(layout="gpu") if e["kind"] == "bcq" else None)
    with pytest.raises(CheckpointError, match="inconsistent BCQWeight: BCQWeight.layout"):
        load(path)


def test_failed_write_keeps_the_old_file(saved, monkeypatch):
    path, tree = saved
    original = path.read_bytes()
    real_write = checkpoint._write_chunks

    def write_half_then_fail(f, chunks):
        real_write(f, chunks[: len(chunks) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_chunks", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save(path, {"other": jnp.zeros(3)})
    monkeypatch.undo()

    def no_rename(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="rename failed"):
        save(path, {"other": jnp.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert os.listdir(path.parent) == [path.name]  # no temporary files left behind
    assert_trees_identical(load(path, like=tree), tree)


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(CheckpointError, match="not an array"):
        save(tmp_path / "x.safetensors", {"a": "text"})
    with pytest.raises(CheckpointError, match="str to str"):
        save(tmp_path / "x.safetensors", {"a": jnp.zeros(1)}, metadata={"a": 1})
    with pytest.raises(CheckpointError, match="same tensor name"):
        save(tmp_path / "x.safetensors", {"a/b": jnp.zeros(1), "a": {"b": jnp.zeros(1)}})
    assert not os.listdir(tmp_path)


def test_orbax_checkpoints_a_bcq_tree(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    tree = linen_tree()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp_path / "orbax", tree)
        ckptr.wait_until_finished()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
        restored = ckptr.restore(tmp_path / "orbax", abstract)
    assert_trees_identical(restored, tree)


# ---- group size 16 and uniform scales (format version 2) ------------------------------------


def new_format_tree(seed: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    g16, _ = random_weight(rng, 77, 40, 3, group_size=16)
    uniform, _ = random_weight(rng, 96, 33, 4, group_size=32, uniform=True)
    both = [random_weight(rng, 48, 64, 2, 16, alpha_dtype=jnp.float16, uniform=True)[0]]
    both.append(random_weight(rng, 48, 64, 2, 16, alpha_dtype=jnp.float16, uniform=True)[0])
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), *both).to_layout("cpu")
    return {"g16": g16, "uniform": uniform, "scan": stacked, "bias": jnp.ones(3)}


def _entries(path) -> tuple[dict, dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + n])["__metadata__"]
    tree = json.loads(meta["lutgemm_jax.tree"])
    return meta, {"/".join(map(str, e["path"])): e for e in tree["entries"]}


def test_group_size_16_and_uniform_round_trip_as_version_2(tmp_path):
    tree = new_format_tree()
    path = tmp_path / "v2.safetensors"
    save(path, tree)
    meta, entries = _entries(path)
    assert meta["format_version"] == "2"  # version-1 readers refuse it by version
    assert entries["g16"]["g"] == 16 and entries["g16"]["uniform"] is False
    assert entries["uniform"]["uniform"] is True and entries["scan"]["uniform"] is True
    assert_trees_identical(load(path, like=tree), tree)
    plain = load(path)
    assert plain["uniform"].alpha.shape == (3, 1, 33) and plain["uniform"].uniform
    assert plain["scan"].layout == "cpu" and plain["scan"].batch_shape == (2,)
    assert plain["g16"].group_size == 16 and plain["g16"].alpha.shape == (6, 3, 40)
    for name in ("g16", "uniform"):
        np.testing.assert_array_equal(plain[name].dequantize(), tree[name].dequantize())


@pytest.mark.parametrize("name", ["g16", "uniform"])
def test_one_new_format_weight_makes_the_file_version_2(tmp_path, name):
    path = tmp_path / "one.safetensors"
    save(path, {"w": new_format_tree()[name], "old": linen_tree()["params"]["Dense_0"]})
    assert _entries(path)[0]["format_version"] == "2"
    q1, _ = random_weight(np.random.default_rng(0), 64, 8, 1, 32, uniform=True)
    save(path, {"q1": q1})  # q = 1: the uniform and per-plane forms are the same array
    meta, entries = _entries(path)
    assert meta["format_version"] == "1" and entries["q1"]["uniform"] is False
    assert_trees_identical(load(path, like={"q1": q1}), {"q1": q1})


def test_uniform_and_per_plane_weights_do_not_mix_up(tmp_path):
    tree = new_format_tree()
    path = tmp_path / "v2.safetensors"
    save(path, tree)
    planes = dict(
        tree, uniform=dataclasses.replace(tree["uniform"], alpha=tree["uniform"].plane_alpha())
    )
    with pytest.raises(
        CheckpointError, match=r"uniform: checkpoint holds .*uniform=True.*expected .*uniform=False"
    ):
        load(path, like=planes)
    # A header whose uniform flag contradicts alpha's shape is corrupted.
    _rewrite_entries(path, lambda e: e.update(uniform=False) if e["path"] == ["uniform"] else None)
    with pytest.raises(
        CheckpointError,
        match=r"uniform: alpha has shape \[3, 1, 33\], the header says uniform=False",
    ):
        load(path)


def test_version_1_files_without_uniform_entries_still_load(saved):
    """Files written before uniform scales existed have no ``uniform`` entries: per-plane."""
    path, tree = saved
    _rewrite_entries(path, lambda e: e.pop("uniform", None))
    assert_trees_identical(load(path, like=tree), tree)
