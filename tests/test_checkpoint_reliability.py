"""Checkpoints under crashes and corruption (complements tests/test_checkpoint.py).

* Atomic writes: a subprocess saves a large tree to the same path in a loop and is SIGKILLed
  while a temporary file is being written; the destination then still loads, intact and equal
  to one complete save, and a leftover temporary file is never taken for the checkpoint (it has
  another name, and loading it fails or yields a complete save).
* Exhaustive corruption: one flipped bit at every byte of the header, at sampled bytes of the
  data, and truncation at many lengths: every one is rejected with `CheckpointError`, and no
  other exception escapes.
* Wrong shapes that keep the byte counts consistent are rejected.
* No code execution: loading never touches pickle (patched to fail), and object dtypes or a
  pickle payload are rejected.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_checkpoint import assert_trees_identical, linen_tree

from lutgemm_jax import checkpoint
from lutgemm_jax.checkpoint import CheckpointError, load, read_metadata, save

WRITER = """
import sys
import numpy as np
from lutgemm_jax.checkpoint import save

path = sys.argv[1]
big = np.arange(6 * 1024 * 1024, dtype=np.float32)  # 24 MiB: the write takes a while
for step in range(1, 10**6):
    save(path, {"step": np.int64(step), "big": big + step}, metadata={"step": str(step)})
    print(step, flush=True)
"""


def _check_complete(path: Path) -> int:
    """Loads ``path``; asserts it is one whole save of the writer; returns its step."""
    tree = load(path)
    step = int(tree["step"])
    assert read_metadata(path) == {"step": str(step)}
    big = np.asarray(tree["big"])
    assert big.shape == (6 * 1024 * 1024,)
    assert big[0] == step and big[-1] == 6 * 1024 * 1024 - 1 + step
    np.testing.assert_array_equal(big[:: 1 << 16], np.arange(0, big.size, 1 << 16) + step)
    return step


@pytest.mark.parametrize("kill", range(3))
def test_sigkill_mid_write_leaves_the_previous_file(tmp_path, kill):
    path = tmp_path / "model.safetensors"
    save(
        path,
        {"step": np.int64(0), "big": np.arange(6 * 1024 * 1024, dtype=np.float32)},
        metadata={"step": "0"},
    )
    proc = subprocess.Popen(
        [sys.executable, "-P", "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(180, proc.kill)  # a hung writer fails the test, not CI
    watchdog.start()
    try:
        # Let it complete 1 + kill saves, then kill it while a temporary file exists.
        for _ in range(1 + kill):
            assert proc.stdout.readline(), "writer died"
        deadline = time.monotonic() + 60
        while not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]:
            assert time.monotonic() < deadline, "no temporary file appeared"
            time.sleep(0.0005)
        time.sleep(0.002 * kill)  # early, later in the write
        tmp_at_kill = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert tmp_at_kill, "the kill did not land during a write"
    step = _check_complete(path)
    assert step >= 1 + kill  # the last announced save (or a later complete one)
    for name in os.listdir(tmp_path):
        if name == path.name:
            continue
        assert name.startswith(f".{path.name}.") and name.endswith(".tmp"), name
        try:  # a leftover is either incomplete (rejected) or a complete, unrenamed save
            _check_complete(tmp_path / name)
        except CheckpointError:
            pass


# ---- corruption --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save(path, linen_tree(), metadata={"model": "mlp", "bits": "3"})
    return path, path.read_bytes()


def _rejected(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with pytest.raises(CheckpointError):
        load(path)


REJECTED: dict[str, int] = {}


def test_every_header_bit_flip_is_rejected(saved, tmp_path):
    _, raw = saved
    (n,) = struct.unpack("<Q", raw[:8])
    target = tmp_path / "flipped.safetensors"
    for pos in range(8 + n):
        corrupted = bytearray(raw)
        corrupted[pos] ^= 1 << (pos % 8)
        _rejected(target, bytes(corrupted))
    REJECTED["header bit flips"] = 8 + n


def test_sampled_data_bit_flips_are_rejected(saved, tmp_path):
    _, raw = saved
    (n,) = struct.unpack("<Q", raw[:8])
    target = tmp_path / "flipped.safetensors"
    positions = np.random.default_rng(0).integers(8 + n, len(raw), 300)
    for i, pos in enumerate(positions):
        corrupted = bytearray(raw)
        corrupted[pos] ^= 1 << (i % 8)
        _rejected(target, bytes(corrupted))
    REJECTED["data bit flips"] = len(positions)


def test_truncations_and_extensions_are_rejected(saved, tmp_path):
    _, raw = saved
    target = tmp_path / "cut.safetensors"
    cuts = sorted(set(np.linspace(0, len(raw) - 1, 200).astype(int)))
    for cut in cuts:
        _rejected(target, raw[:cut])
    for extra in (b"\0", b" " * 8, raw[-64:]):
        _rejected(target, raw + extra)
    REJECTED["truncations/extensions"] = len(cuts) + 3


def _rewrite(raw: bytes, edit) -> bytes:
    """Applies ``edit(header)`` and re-signs the header (so only the edit is wrong)."""
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    header["__metadata__"]["lutgemm_jax.header_sha256"] = checkpoint._header_digest(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + raw[8 + n :]


def _set_shape(name, shape):
    def edit(header):
        header[name]["shape"] = shape

    return edit


def _set_dtype(name, dtype):
    def edit(header):
        header[name]["dtype"] = dtype

    return edit


# Edits that keep the byte counts consistent (and the checksums valid) but not the meaning.
SHAPE_EDITS = {
    "bits reshaped": (_set_shape("params/Dense_0/kernel/bits", [1, 3, 96]), "inconsistent"),
    "alpha transposed": (_set_shape("params/Dense_0/kernel/alpha", [3, 2, 48]), "inconsistent"),
    "offset flattened": (_set_shape("params/Dense_1/kernel/offset", [16]), "inconsistent"),
    "stacked bits unstacked": (_set_shape("params/scan/kernel/bits", [2, 2, 8]), "inconsistent"),
    "bias dtype I32": (_set_dtype("params/Dense_0/bias", "I32"), None),
    "alpha dtype I32": (_set_dtype("params/Dense_0/kernel/alpha", "I32"), "inconsistent"),
    "object dtype": (_set_dtype("params/Dense_0/bias", "O"), "bad header entry"),
    "pickle dtype": (_set_dtype("params/Dense_0/bias", "pickle"), "bad header entry"),
}


@pytest.mark.parametrize("name", list(SHAPE_EDITS))
def test_wrong_shapes_and_dtypes_are_rejected(saved, tmp_path, name):
    _, raw = saved
    edit, fragment = SHAPE_EDITS[name]
    target = tmp_path / "edited.safetensors"
    target.write_bytes(_rewrite(raw, edit))
    if fragment is None:  # a plain array's dtype is only wrong relative to the model
        with pytest.raises(CheckpointError, match="Dense_0/bias"):
            load(target, like=linen_tree())
    else:
        with pytest.raises(CheckpointError, match=fragment):
            load(target)
    REJECTED["wrong shape/dtype"] = len(SHAPE_EDITS)


def test_loading_never_unpickles(saved, tmp_path, monkeypatch):
    path, raw = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading a checkpoint")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    tree = linen_tree()
    assert_trees_identical(load(path, like=tree), tree)
    assert read_metadata(path) == {"model": "mlp", "bits": "3"}
    # A pickle payload in place of a tensor's bytes: only raw bytes are ever read; the checksum
    # (here re-signed for the payload) and the dtype decide, nothing is deserialized.
    payload = pickle.dumps(compile("raise SystemExit", "x", "exec").co_consts)
    target = tmp_path / "payload.safetensors"
    target.write_bytes(raw[: len(raw) - len(payload)] + payload)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load(target)
    source = Path(checkpoint.__file__).read_text()
    assert "import pickle" not in source and "allow_pickle" not in source
    assert "np.load(" not in source and "eval(" not in source and "exec(" not in source


def test_rejection_count():
    print(f"corrupted-checkpoint cases rejected: {sum(REJECTED.values())} {REJECTED}")


def test_scalar_leaves_keep_their_shape(tmp_path):
    # Regression: np.ascontiguousarray made 0-d leaves (an optimizer's step count, a scalar
    # parameter) [1]-shaped, so loading with `like` failed on a shape mismatch.
    tree = {"step": np.int32(7), "temperature": np.float32(0.5), "w": np.ones((2, 3), np.float32)}
    save(tmp_path / "s.safetensors", tree)
    loaded = load(tmp_path / "s.safetensors", like=tree)
    assert loaded["step"].shape == () and int(loaded["step"]) == 7
    assert loaded["temperature"].shape == () and float(loaded["temperature"]) == 0.5
    assert load(tmp_path / "s.safetensors")["step"].shape == ()
