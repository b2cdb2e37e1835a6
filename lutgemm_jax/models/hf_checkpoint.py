"""Hugging Face checkpoint directories in and out, for every family, through a name map.

A family describes its parameters with a *name map*: Hugging Face tensor name (without the
``model.`` prefix; ``lm_head.weight`` never has one) -> ``(param path, transpose)``. Linear
weights are stored ``[out, in]`` by PyTorch and used as Flax kernels ``[in, out]``
(``transpose=True``); embeddings and norm weights keep their shape.

Reading never touches the network and never unpickles: ``config.json`` plus ``*.safetensors``
(one file, or shards listed in ``model.safetensors.index.json``). Every problem with a model
directory is an `HFCheckpointError` naming the file and, where there is one, the tensor.
(`lutgemm_jax.checkpoint.CheckpointError` is the other error type: it covers the package's own
packed-weight files, not Hugging Face directories.)
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

NameMap = dict[str, tuple[tuple[str, ...], bool]]
"""HF tensor name (no ``model.`` prefix) -> (param path, transpose?)."""

LM_HEAD = "lm_head.weight"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class HFCheckpointError(ValueError):
    """A Hugging Face model directory that cannot be used: missing or malformed files, missing
    or misshapen tensors, unsupported ``model_type`` or config features. The message names the
    file and the tensor or config key."""


class MissingTensorError(HFCheckpointError, KeyError):
    """A tensor the model needs is absent from the checkpoint (also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def hf_key(name: str, prefix: str = "model.") -> str:
    """The stored name of map entry ``name`` (``lm_head.weight`` is never prefixed)."""
    return name if name == LM_HEAD else prefix + name


# ---- reading ---------------------------------------------------------------------------------


def safetensors_files(path: str) -> list[str]:
    """The weight files of directory ``path`` (shards from the index file when there is one)."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise HFCheckpointError(f"{index}: not a safetensors index ({e})") from None
        missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
        if missing:
            raise HFCheckpointError(f"{index} lists shards that are not there: {missing}")
        return [os.path.join(path, f) for f in files]
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if files:
        return [os.path.join(path, f) for f in files]
    torch_files = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth")))
    if torch_files:
        raise HFCheckpointError(
            f"{path} holds PyTorch pickle weights ({', '.join(torch_files)}) and no *.safetensors. "
            "This loader reads safetensors only (pickles can run code and need torch). Convert "
            "once on a machine with torch + transformers:\n"
            '    python -c "from transformers import AutoModelForCausalLM as M; '
            f"M.from_pretrained('{path}').save_pretrained('{path}', safe_serialization=True)\"\n"
            "or, with plain torch + safetensors:\n"
            '    python -c "import torch; from safetensors.torch import save_file; '
            f"sd = torch.load('{os.path.join(path, torch_files[0])}', map_location='cpu'); "
            "save_file({k: v.contiguous() for k, v in sd.items()}, "
            f"'{os.path.join(path, SINGLE_FILE)}')\""
        )
    raise HFCheckpointError(f"no *.safetensors weights in {path}")


def _check_safetensors_header(file: str) -> None:
    """Parses the header (u64 length, JSON) and checks that every tensor's bytes lie inside the
    file, so that a truncated file is reported by the first tensor it cuts off."""
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HFCheckpointError(f"{file}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise HFCheckpointError(
                f"{file}: truncated safetensors file: header of {n} bytes, file of {size} bytes"
            )
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise HFCheckpointError(f"{file}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise HFCheckpointError(f"{file}: corrupt safetensors header (not a JSON object)")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = int(info["data_offsets"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            raise HFCheckpointError(f"{file}: tensor {name!r} has no valid data_offsets") from None
        if end > data:
            raise HFCheckpointError(
                f"{file}: truncated: tensor {name!r} ends at data byte {end} but the file holds "
                f"only {data} data bytes"
            )


def read_safetensors(files: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of ``files``: ``(name -> numpy array, name -> file it came from)``.

    BF16 tensors come back as ``ml_dtypes.bfloat16`` arrays."""
    from safetensors import safe_open

    state: dict[str, np.ndarray] = {}
    source: dict[str, str] = {}
    for file in files:
        _check_safetensors_header(file)
        try:
            with safe_open(file, framework="np") as f:
                for name in f.keys():
                    try:
                        state[name] = f.get_tensor(name)
                    except Exception as e:  # the library's own error types vary by version
                        raise HFCheckpointError(f"{file}: cannot read tensor {name!r}: {e}") from e
                    source[name] = file
        except HFCheckpointError:
            raise
        except Exception as e:
            raise HFCheckpointError(f"{file}: not a readable safetensors file: {e}") from e
    return state, source


class LazySafetensors(Mapping):
    """The tensors of ``files`` as a read-only mapping that reads one tensor per lookup.

    The files stay memory-mapped by safetensors; only the tensor asked for is copied out, so a
    converter that handles one tensor at a time holds about one tensor beyond its result.
    ``source`` maps each name to its file. Headers are checked up front (truncation is reported
    by the first tensor it cuts off); a missing name raises `MissingTensorError`.
    """

    def __init__(self, files: list[str]):
        from safetensors import safe_open

        self.source: dict[str, str] = {}
        self._handles: dict[str, Any] = {}
        for file in files:
            _check_safetensors_header(file)
            try:
                handle = safe_open(file, framework="np")
            except Exception as e:  # the library's own error types vary by version
                raise HFCheckpointError(f"{file}: not a readable safetensors file: {e}") from e
            self._handles[file] = handle
            self.source.update(dict.fromkeys(handle.keys(), file))

    def __getitem__(self, name: str) -> np.ndarray:
        file = self.source.get(name)
        if file is None:
            raise MissingTensorError(f"the checkpoint has no tensor {name!r}")
        try:
            return self._handles[file].get_tensor(name)
        except Exception as e:
            raise HFCheckpointError(f"{file}: cannot read tensor {name!r}: {e}") from e

    def __iter__(self):
        return iter(self.source)

    def __len__(self) -> int:
        return len(self.source)


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]):
    for p in path:
        tree = tree[p]
    return tree


def params_from_state(
    state: Mapping[str, Any],
    names: NameMap,
    shapes: Mapping[tuple[str, ...], tuple[int, ...]],
    *,
    dtype=jnp.float32,
    embed_path: tuple[str, ...] = ("embed_tokens", "embedding"),
    source: Mapping[str, str] | None = None,
    where: str = "checkpoint",
) -> dict:
    """Converts a Hugging Face state dict (numpy arrays, keys with or without ``model.``) to a
    params tree through ``names``, checking each tensor against ``shapes`` (param path -> Flax
    shape).

    ``lm_head.weight`` outside ``names`` (a tied family) is dropped when it equals the
    embedding and otherwise kept as an untied ``lm_head/kernel``.

    Raises:
      MissingTensorError: tensors of ``names`` absent from ``state`` (named, with ``where``).
      HFCheckpointError: a tensor of the wrong shape (named, with its file).
    """
    source = source or {}
    by_name = {k.removeprefix("model."): k for k in state}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise MissingTensorError(
            f"{where} is missing {len(missing)} tensors the config.json implies, e.g. "
            f"{missing[:4]}; is it a checkpoint of this model family matching its config.json?"
        )
    params: dict = {}
    for name, (path, transpose) in names.items():
        key = by_name[name]
        x = np.asarray(state[key])
        if transpose:
            x = x.T
        want = tuple(shapes[path])
        if x.shape != want:
            stored = x.T.shape if transpose else x.shape
            expect = want[::-1] if transpose else want
            raise HFCheckpointError(
                f"{source.get(key, where)}: tensor {key!r} has shape {stored}, config.json "
                f"implies {expect}"
            )
        _set(params, path, jnp.asarray(x, dtype))
    head = by_name.get(LM_HEAD)
    if head is not None and LM_HEAD not in names:
        embed = np.asarray(_get(params, embed_path))
        x = np.asarray(state[head])
        if x.shape != embed.shape:
            raise HFCheckpointError(
                f"{source.get(head, where)}: tensor {head!r} has shape {x.shape}, expected "
                f"{embed.shape} (the embedding's)"
            )
        if not np.array_equal(x.astype(embed.dtype), embed):
            params["lm_head"] = {"kernel": jnp.asarray(x.T, dtype)}
    return params


def params_to_state(params, names: NameMap, *, prefix: str = "model.", dtype=np.float32) -> dict:
    """The inverse of `params_from_state`: a Hugging Face state dict of numpy arrays. An untied
    ``lm_head`` in ``params`` is written as ``lm_head.weight`` even when ``names`` has none."""
    state = {}
    for name, (path, transpose) in names.items():
        x = np.asarray(_get(params, path), dtype)
        state[hf_key(name, prefix)] = np.ascontiguousarray(x.T if transpose else x)
    if "lm_head" in params and LM_HEAD not in names:
        state[LM_HEAD] = np.ascontiguousarray(np.asarray(params["lm_head"]["kernel"], dtype).T)
    return state


# ---- writing ---------------------------------------------------------------------------------


def write_checkpoint(
    path: str | os.PathLike,
    state: Mapping[str, np.ndarray],
    config_dict: Mapping[str, Any],
    *,
    num_shards: int = 1,
) -> None:
    """Writes ``config.json`` + ``model.safetensors`` (or ``num_shards`` shards with
    ``model.safetensors.index.json``) the way ``save_pretrained`` lays them out."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(dict(config_dict), f, indent=2)
    if num_shards <= 1:
        save_file(dict(state), os.path.join(path, SINGLE_FILE), metadata={"format": "pt"})
        return
    keys = list(state)
    weight_map = {}
    for s in range(num_shards):
        name = f"model-{s + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {k: state[k] for k in keys[s::num_shards]}
        weight_map.update(dict.fromkeys(part, name))
        save_file(part, os.path.join(path, name), metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": int(sum(v.nbytes for v in state.values()))},
        "weight_map": weight_map,
    }
    with open(os.path.join(path, INDEX_FILE), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)


__all__ = [
    "HFCheckpointError",
    "LazySafetensors",
    "MissingTensorError",
    "NameMap",
    "params_from_state",
    "params_to_state",
    "read_safetensors",
    "safetensors_files",
    "write_checkpoint",
]
