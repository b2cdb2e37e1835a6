"""Checkpoints of quantized params as safetensors files: `save`, `load`, `read_metadata`.

The file is a standard safetensors file (readable by ``safetensors.safe_open``): an 8-byte
little-endian header length, a JSON header, then the raw little-endian tensor bytes. No pickle.

Every leaf of the tree becomes one tensor named by its ``/``-joined key path; a `BCQWeight`
leaf becomes up to three tensors, ``<path>/bits``, ``<path>/alpha`` and ``<path>/offset``. The
header's string-to-string ``__metadata__`` holds:

* ``format`` = ``"lutgemm_jax.checkpoint"`` and ``format_version``: 1, or 2 when the file holds
  a weight that readers of version 1 cannot represent (group size 16 or uniform scales), so that
  an older lutgemm_jax refuses it by version instead of by shape;
* ``lutgemm_jax.tree``: JSON ``{"entries": [...], "sha256": {tensor: hex digest}}`` with one
  entry per leaf: ``{"path": [keys], "kind": "array", "tensor": name}`` or
  ``{"path": [...], "kind": "bcq", "K", "N", "q", "g", "has_offset", "dtype", "layout",
  "uniform", "tensors": {"bits": name, "alpha": name, "offset": name}}`` (keys are JSON strings
  or ints; ``uniform``: alpha is ``[G, 1, N]``, one scale per group, see
  `lutgemm_jax.format`; entries written before it existed are per-plane);
* ``lutgemm_jax.user``: JSON of the caller's ``metadata`` (str -> str);
* ``lutgemm_jax.header_sha256``: SHA-256 of the rest of the header (`_header_digest`: its JSON
  with sorted keys and no whitespace), so that a corrupted header is detected like corrupted
  tensor data. Integrity only: anyone can recompute it, it is not a signature.

``bits`` are always stored in the canonical layout; ``layout`` (`lutgemm_jax.format.LAYOUTS`)
is the layout the weight had when saved, restored by `load` (an entry without it, as written
before layouts existed, loads as ``"canonical"``). So the tensors mean the same for every reader,
including versions of lutgemm_jax that ignore the field.

Writes are atomic: a temporary file in the destination directory is written, flushed, fsynced,
then renamed over the destination, so a failure leaves any previous file intact. `load` checks
everything (header and its SHA-256, sizes, offsets, SHA-256 of every tensor, the `BCQWeight`
shapes, and the structure, shapes and dtypes of ``like``) before building a single array, and raises
`CheckpointError` with the reason.

Trees: nested dicts/lists/tuples of arrays and `BCQWeight` (linen params), and NNX state:
``save(path, nnx.state(model))`` then ``nnx.update(model, load(path, like=nnx.state(model)))``.

Several processes (``jax.distributed``): a tree holding global arrays sharded over other
processes' devices makes `save` collective, so every process must call it with the same path and
tree. One file is written, by process 0 only: the processes first check their trees and vote
(any failure, or trees that differ, and all raise before anything moves), then each sharded leaf
is gathered (fully replicated ones are not: process 0 already holds them), process 0 writes it
atomically as above, and a last vote makes every process raise if that write failed, and return
only once the file is in place. A process that dies (rather than raises) leaves the others
waiting in a collective until the distributed runtime reports it; the destination is never
half-written. `load` with a ``like`` of global arrays reads the file on every process (the
checksums cover whole tensors; the path must be readable by every host, e.g. a shared file
system) and places only each process's own shards on its devices. A tree of process-local
values (numpy, or arrays on this process's devices) is saved by whichever process calls `save`,
as in a single process.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import struct
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any, BinaryIO

import jax
import jax.numpy as jnp
import numpy as np

from lutgemm_jax.flax_common import variable_value
from lutgemm_jax.format import HALF_WORD_GROUP, BCQWeight, convert_bits

__all__ = ["FORMAT", "FORMAT_VERSION", "CheckpointError", "load", "read_metadata", "save"]

FORMAT = "lutgemm_jax.checkpoint"
FORMAT_VERSION = 2
"""The newest version: `load` reads versions up to this one. `save` writes the oldest version
that describes the tree: 2 only for group size 16 or uniform scales (`_file_version`)."""

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(jnp.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64),
    "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_BCQ_FIELDS = ("bits", "alpha", "offset")
_MAX_HEADER = 100 * 1024 * 1024
_HEADER_DIGEST = "lutgemm_jax.header_sha256"


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupted, of an unknown version, or does not match."""


# ---- tree <-> entries ----------------------------------------------------------------------


@functools.cache
def _variable_types() -> tuple[type, ...]:
    """NNX variable classes: ``nnx.Variable`` (and ``nnx.VariableState`` on flax < 0.12)."""
    from flax import nnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # an alias of Variable on 0.12
        state = getattr(nnx, "VariableState", None)
    return tuple({nnx.Variable, state} - {None})


def _is_variable(x: Any) -> bool:
    return isinstance(x, _variable_types())


def _is_leaf(x: Any) -> bool:
    return isinstance(x, BCQWeight) or _is_variable(x)


def _key(entry: Any) -> str | int:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            value = getattr(entry, attr)
            return (
                value
                if isinstance(value, (int, str)) and not isinstance(value, bool)
                else str(value)
            )
    raise CheckpointError(f"unsupported tree key {entry!r}")


def _flatten(tree: Any) -> tuple[list[tuple[list[str | int], Any]], Any]:
    """``[(path keys, value)]`` with NNX variables unwrapped, and the tree's treedef."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_leaf)
    out = []
    for path, leaf in leaves:
        value = variable_value(leaf) if _is_variable(leaf) else leaf
        out.append(([_key(p) for p in path], value))
    return out, treedef


def _rebuild_leaf(template: Any, value: Any) -> Any:
    """``value`` in the place of ``template`` (re-wrapped in an NNX variable if it was one)."""
    if not _is_variable(template):
        return value
    structure = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(structure, jax.tree_util.tree_leaves(value))


# ---- save ----------------------------------------------------------------------------------


def save(path: str | os.PathLike, tree: Any, *, metadata: Mapping[str, str] | None = None) -> None:
    """Writes ``tree`` (arrays and `BCQWeight` leaves) to a safetensors file, atomically.

    Args:
      path: destination file; an existing file is replaced only once the new one is complete.
      tree: a pytree: nested dicts/lists of arrays and `BCQWeight` (linen params), or an NNX
        ``State``. ``None`` leaves are dropped.
      metadata: extra ``str -> str`` entries stored in the header (see `read_metadata`).

    With global arrays sharded over several processes, every process must call `save` with
    the same arguments, and process 0 writes the file (see the module docstring).

    Raises:
      CheckpointError: a leaf that is not an array, or two leaves with the same name; in a
        multi-process save, also a failure on another process or trees that differ.
    """
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError("metadata must map str to str")
    leaves, _ = _flatten(tree)
    if not _spans_processes(tree):
        _write_leaves(path, leaves, metadata)
        return
    leaves = _gather_for_save(os.fspath(path), leaves)
    if jax.process_index() == _WRITER:
        try:
            _write_leaves(path, leaves, metadata)
        except BaseException:
            _agree(f"writing on process {_WRITER}", False, os.fspath(path))
            raise
    _agree(f"writing on process {_WRITER}", True, os.fspath(path))


def _write_leaves(
    path: str | os.PathLike, leaves: list[tuple[list[str | int], Any]], metadata: Any
) -> None:
    entries, tensors = [], {}

    def add(name: str, value: Any) -> str:
        if name in tensors:
            raise CheckpointError(f"two leaves map to the same tensor name {name!r}")
        array = np.asarray(value)
        if array.dtype not in _CODES:
            raise CheckpointError(f"leaf {name!r} has unsupported dtype {array.dtype}")
        # np.asarray(order="C"), not np.ascontiguousarray: that one turns 0-d leaves into [1].
        tensors[name] = np.asarray(array.astype(array.dtype.newbyteorder("<")), order="C")
        return name

    for keys, value in leaves:
        name = "/".join(map(str, keys))
        if isinstance(value, BCQWeight):
            value.validate()
            bits = convert_bits(np.asarray(value.bits), value.layout, "canonical")
            names = {"bits": add(f"{name}/bits", bits), "alpha": add(f"{name}/alpha", value.alpha)}
            if value.has_offset:
                names["offset"] = add(f"{name}/offset", value.offset)
            entries.append(
                {
                    "path": keys,
                    "kind": "bcq",
                    "K": value.in_features,
                    "N": value.out_features,
                    "q": value.num_bits,
                    "g": value.group_size,
                    "has_offset": value.has_offset,
                    "dtype": str(jnp.dtype(value.dtype)),
                    "layout": value.layout,
                    "uniform": _per_group_scale(value),
                    "tensors": names,
                }
            )
        elif (hasattr(value, "shape") and hasattr(value, "dtype")) or isinstance(
            value, (bool, int, float, np.generic)
        ):
            entries.append({"path": keys, "kind": "array", "tensor": add(name, value)})
        else:
            raise CheckpointError(f"leaf {name!r} of type {type(value).__name__} is not an array")

    header: dict[str, Any] = {}
    offset = 0
    for name, array in tensors.items():
        header[name] = {
            "dtype": _CODES[array.dtype.newbyteorder("=")],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    digests = {
        name: hashlib.sha256(a.reshape(-1).view(np.uint8).data).hexdigest()
        for name, a in tensors.items()
    }
    header["__metadata__"] = {
        "format": FORMAT,
        "format_version": str(_file_version(leaves)),
        "lutgemm_jax.tree": json.dumps({"entries": entries, "sha256": digests}),
        "lutgemm_jax.user": json.dumps(dict(metadata or {})),
    }
    header["__metadata__"][_HEADER_DIGEST] = _header_digest(header)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    _atomic_write(os.fspath(path), [struct.pack("<Q", len(blob)), blob, *tensors.values()])


def _per_group_scale(w: BCQWeight) -> bool:
    """Whether ``w`` stores uniform scales that a per-plane reader could not take (``q > 1``;
    for ``q = 1`` both forms are the same array)."""
    return w.uniform and w.num_bits > 1


def _file_version(leaves: list[tuple[list[str | int], Any]]) -> int:
    """1 unless a weight has group size 16 or uniform scales (version 2)."""
    new = any(
        isinstance(v, BCQWeight) and (v.group_size == HALF_WORD_GROUP or _per_group_scale(v))
        for _, v in leaves
    )
    return 2 if new else 1


# ---- saving from several processes -----------------------------------------------------------

_WRITER = 0
"""The process that writes the file of a multi-process save."""


def _spans_processes(tree: Any) -> bool:
    """Whether ``tree`` holds a global array with shards on other processes' devices."""
    return any(
        isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(tree)
    )


def _leaf_signature(name: str, value: Any) -> list[Any]:
    """What every process must agree on about one leaf; raises `CheckpointError` if unsavable."""
    if isinstance(value, BCQWeight):
        value.validate()
        fields = [getattr(value, f) for f in _BCQ_FIELDS if getattr(value, f) is not None]
        return [name, _describe(value), *[[list(a.shape), str(a.dtype)] for a in fields]]
    if not hasattr(value, "dtype") and not isinstance(value, (bool, int, float)):
        raise CheckpointError(f"leaf {name!r} of type {type(value).__name__} is not an array")
    dtype = np.asarray(value).dtype if not hasattr(value, "dtype") else np.dtype(value.dtype)
    if dtype not in _CODES:
        raise CheckpointError(f"leaf {name!r} has unsupported dtype {dtype}")
    return [name, list(np.shape(value)), str(dtype)]


def _agree(step: str, ok: bool, path: str, signature: bytes = b"") -> None:
    """A collective vote of all processes: raises `CheckpointError` unless every one is ``ok``
    and all passed the same ``signature``. A process that is not ``ok`` re-raises its own error
    after the vote, so this only reports the others' failures."""
    from jax.experimental import multihost_utils

    mine = np.frombuffer(bytes([ok]) + hashlib.sha256(signature).digest(), np.uint8)
    votes = np.asarray(multihost_utils.process_allgather(mine))
    failed = [i for i, vote in enumerate(votes) if not vote[0]]
    if not ok:
        return
    if failed:
        raise CheckpointError(
            f"{path}: save failed on process(es) {failed} ({step}); see their errors. The "
            "destination was not changed."
        )
    if any((vote != votes[0]).any() for vote in votes):
        raise CheckpointError(
            f"{path}: the processes passed different trees to save (leaf names, shapes, dtypes "
            "or BCQWeight metadata differ); the destination was not changed"
        )


def _host_value(x: Any) -> Any:
    """A global array's full value as numpy, gathered across processes where it must be."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return x
    if x.is_fully_replicated:  # every process already holds all of it
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _gather_for_save(
    path: str, leaves: list[tuple[list[str | int], Any]]
) -> list[tuple[list[str | int], Any]]:
    """The collective part of a multi-process `save`: checks, votes, gathers.

    Every process checks its leaves, then all vote (so that a process failing here does not
    leave the others waiting in a gather), then every sharded leaf is gathered, one at a time in
    the same order on every process. The writer keeps the gathered values; the others drop each
    at once, so their peak host memory is one leaf.
    """
    try:
        names = ["/".join(map(str, keys)) for keys, _ in leaves]
        signature = json.dumps(
            [_leaf_signature(n, v) for n, (_, v) in zip(names, leaves, strict=True)]
        ).encode()
    except BaseException:
        _agree("checking the tree", False, path)
        raise
    _agree("checking the tree", True, path, signature)
    writer = jax.process_index() == _WRITER
    out = []
    for keys, value in leaves:
        if isinstance(value, BCQWeight):
            arrays = {f: _host_value(getattr(value, f)) for f in _BCQ_FIELDS}
            value = dataclasses.replace(value, **arrays)
        else:
            value = _host_value(value)
        out.append((keys, value if writer else None))
    return out


def _header_digest(header: dict[str, Any]) -> str:
    """SHA-256 of the header without its own digest entry, in a canonical JSON form."""
    meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != _HEADER_DIGEST}
    canonical = json.dumps({**header, "__metadata__": meta}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _write_chunks(f: BinaryIO, chunks: list[Any]) -> None:
    for chunk in chunks:
        f.write(chunk.reshape(-1).view(np.uint8).data if isinstance(chunk, np.ndarray) else chunk)


def _atomic_write(path: str, chunks: list[Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _write_chunks(f, chunks)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# ---- load ----------------------------------------------------------------------------------


def _read(path: str) -> tuple[dict[str, Any], dict[str, str], memoryview]:
    """Header tensors, ``__metadata__`` and the data section, checked for consistency."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {e}") from e
    if len(raw) < 8:
        raise CheckpointError(f"{path}: truncated file ({len(raw)} bytes, no safetensors header)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER or 8 + n > len(raw):
        raise CheckpointError(
            f"{path}: truncated or corrupted file: header of {n} bytes announced, file has "
            f"{len(raw)} bytes"
        )
    try:
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupted safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupted safetensors header: not a JSON object")
    meta = header.get("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupted safetensors header: bad __metadata__")
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a lutgemm_jax checkpoint (header format {meta.get('format')!r})"
        )
    version = meta.get("format_version")
    if not (isinstance(version, str) and version.isdigit()):
        raise CheckpointError(f"{path}: corrupted header: format_version {version!r}")
    if not 1 <= int(version) <= FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is not supported by this lutgemm_jax "
            f"(reads versions 1..{FORMAT_VERSION}); upgrade lutgemm_jax"
        )
    if meta.get(_HEADER_DIGEST) != _header_digest(header):
        raise CheckpointError(
            f"{path}: corrupted header: checksum mismatch (SHA-256 of the header differs from "
            f"its {_HEADER_DIGEST!r} entry)"
        )
    header.pop("__metadata__", None)
    data = memoryview(raw)[8 + n :]
    end = 0
    for name, info in sorted(header.items(), key=lambda kv: _offsets(kv[1])[0]):
        if not isinstance(info, dict) or info.get("dtype") not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r}: bad header entry {info!r}")
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise CheckpointError(f"{path}: tensor {name!r}: bad shape {shape!r}")
        start, stop = _offsets(info)
        size = int(np.prod(shape)) * _DTYPES[info["dtype"]].itemsize
        if start != end or stop - start != size:
            raise CheckpointError(
                f"{path}: corrupted header: tensor {name!r} occupies bytes [{start}, {stop}) of "
                f"the data, expected [{end}, {end + size}) for shape {shape} {info['dtype']}"
            )
        end = stop
    if end != len(data):
        what = "truncated" if end > len(data) else "corrupted (trailing bytes)"
        raise CheckpointError(
            f"{path}: {what} file: the header describes {end} bytes of tensor data, the file "
            f"has {len(data)}"
        )
    return header, meta, data


def _offsets(info: Any) -> tuple[int, int]:
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
    ):
        raise CheckpointError(f"corrupted header: bad data_offsets in {info!r}")
    return offsets[0], offsets[1]


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata`` that `save` was given (after checking the file like `load` does)."""
    path = os.fspath(path)
    _, meta, _ = _read(path)
    try:
        return dict(json.loads(meta.get("lutgemm_jax.user", "{}")))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupted user metadata: {e}") from None


def load(path: str | os.PathLike, *, like: Any = None) -> Any:
    """Reads a checkpoint written by `save`, checking it completely before returning anything.

    Args:
      path: the safetensors file.
      like: optional tree of the expected structure (arrays, ``jax.ShapeDtypeStruct``s or
        `BCQWeight`s; e.g. the params of a freshly initialised model, ``jax.eval_shape`` of an
        init, or ``nnx.state(model)``). The file must hold exactly its leaves, with the same
        shapes, dtypes and `BCQWeight` metadata (K, N, q, g, offset, layout); the result has its
        structure (NNX variables included) and, for array leaves with a sharding, its sharding.

    Returns:
      With ``like``: a tree like ``like``. Without: nested dicts keyed by the saved path keys
      (list indices become int keys), with jax arrays and `BCQWeight` leaves.

    Raises:
      CheckpointError: truncated or corrupted file (bad header, sizes, checksums), unsupported
        format version, inconsistent `BCQWeight` metadata, or a mismatch with ``like``.
    """
    path = os.fspath(path)
    header, meta, data = _read(path)
    try:
        tree_info = json.loads(meta.get("lutgemm_jax.tree", ""))
        entries, digests = tree_info["entries"], tree_info["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupted header: bad tree description ({e})") from None
    if set(digests) != set(header):
        raise CheckpointError(f"{path}: corrupted header: checksums do not cover the tensors")

    arrays: dict[str, np.ndarray] = {}
    for name, info in header.items():
        start, stop = _offsets(info)
        chunk = data[start:stop]
        if hashlib.sha256(chunk).hexdigest() != digests[name]:
            raise CheckpointError(
                f"{path}: corrupted file: checksum mismatch in tensor {name!r} (SHA-256 of its "
                "bytes differs from the header's)"
            )
        dtype = _DTYPES[info["dtype"]].newbyteorder("<")
        arrays[name] = np.frombuffer(chunk, dtype=dtype).reshape(info["shape"])

    try:
        values = [_entry_value(path, entry, arrays) for entry in entries]
        used = [
            n
            for e in entries
            for n in (e["tensors"].values() if e["kind"] == "bcq" else [e["tensor"]])
        ]
        if sorted(used) != sorted(header):
            raise CheckpointError(f"{path}: corrupted header: tree entries and tensors disagree")
        paths = [tuple(e["path"]) for e in entries]
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: corrupted header: bad tree entry ({e!r})") from None

    if like is None:
        return _to_device(_nest(path, paths, values), None)
    like_leaves, treedef = _flatten(like)
    like_paths = [tuple(keys) for keys, _ in like_leaves]
    if sorted(map(repr, like_paths)) != sorted(map(repr, paths)):
        missing = set(like_paths) - set(paths)
        extra = set(paths) - set(like_paths)
        raise CheckpointError(
            f"{path}: checkpoint does not match `like`: missing {_names(missing)}, unexpected "
            f"{_names(extra)}"
        )
    by_path = dict(zip(paths, values, strict=True))
    out = []
    for keys, expected in like_leaves:
        value = by_path[tuple(keys)]
        _check_like(path, "/".join(map(str, keys)), value, expected)
        out.append(_to_device(value, expected))
    templates = jax.tree_util.tree_leaves(like, is_leaf=_is_leaf)
    rebuilt = [_rebuild_leaf(t, v) for t, v in zip(templates, out, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, rebuilt)


def _names(paths: set[tuple[Any, ...]]) -> str:
    names = sorted("/".join(map(str, p)) for p in paths)
    return "[" + ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") + "]"


def _entry_value(path: str, entry: Any, arrays: dict[str, np.ndarray]) -> Any:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), list):
        raise CheckpointError(f"{path}: corrupted header: bad tree entry {entry!r}")
    name = "/".join(map(str, entry["path"]))
    try:
        if entry["kind"] == "array":
            return arrays[entry["tensor"]]
        if entry["kind"] != "bcq":
            raise CheckpointError(f"{path}: {name}: unknown entry kind {entry['kind']!r}")
        tensors = entry["tensors"]
        if set(tensors) != (
            {"bits", "alpha", "offset"} if entry["has_offset"] else {"bits", "alpha"}
        ):
            raise CheckpointError(
                f"{path}: {name}: tensors {sorted(tensors)} do not match has_offset"
            )
        w = BCQWeight(
            bits=arrays[tensors["bits"]],
            alpha=arrays[tensors["alpha"]],
            offset=arrays[tensors["offset"]] if entry["has_offset"] else None,
            in_features=entry["K"],
            out_features=entry["N"],
            num_bits=entry["q"],
            group_size=entry["g"],
            layout=entry.get("layout", "canonical"),
        )
    except KeyError as e:
        raise CheckpointError(f"{path}: corrupted header: tree entry {name!r} lacks {e}") from None
    try:
        w.validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {name}: inconsistent BCQWeight: {e}") from None
    if str(jnp.dtype(w.dtype)) != entry["dtype"]:
        raise CheckpointError(
            f"{path}: {name}: alpha is {w.dtype}, the header says {entry['dtype']}"
        )
    if entry.get("uniform", False) != _per_group_scale(w):
        raise CheckpointError(
            f"{path}: {name}: alpha has shape {list(w.alpha.shape)}, the header says "
            f"uniform={entry.get('uniform', False)}"
        )
    return dataclasses.replace(w, bits=convert_bits(w.bits, "canonical", w.layout))


def _nest(path: str, paths: list[tuple[Any, ...]], values: list[Any]) -> dict[Any, Any]:
    root: dict[Any, Any] = {}
    for keys, value in zip(paths, values, strict=True):
        if not keys:
            raise CheckpointError(f"{path}: the checkpoint holds a single leaf; pass `like`")
        node = root
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"{path}: corrupted header: path {keys} collides")
        if keys[-1] in node:
            raise CheckpointError(f"{path}: corrupted header: duplicate path {keys}")
        node[keys[-1]] = value
    return root


def _describe(x: Any) -> str:
    if isinstance(x, BCQWeight):
        return (
            f"BCQWeight(K={x.in_features}, N={x.out_features}, q={x.num_bits}, g={x.group_size}, "
            f"offset={x.has_offset}, uniform={x.uniform}, dtype={jnp.dtype(x.dtype)}, "
            f"batch={x.batch_shape}, layout={x.layout})"
        )
    return f"{jnp.dtype(x.dtype)}{list(x.shape)}"


def _check_like(path: str, name: str, value: Any, expected: Any) -> None:
    if isinstance(expected, BCQWeight) != isinstance(value, BCQWeight):
        ok = False
    elif isinstance(expected, BCQWeight):
        ok = _describe(value) == _describe(expected) and all(
            tuple(getattr(value, f).shape) == tuple(getattr(expected, f).shape)
            and jnp.dtype(getattr(value, f).dtype) == jnp.dtype(getattr(expected, f).dtype)
            for f in _BCQ_FIELDS
            if getattr(value, f) is not None
        )
    else:
        ok = (
            hasattr(expected, "shape")
            and tuple(value.shape) == tuple(expected.shape)
            and jnp.dtype(value.dtype) == jnp.dtype(expected.dtype)
        )
    if not ok:
        raise CheckpointError(
            f"{path}: {name}: checkpoint holds {_describe(value)}, expected {_describe(expected)}"
        )


def _to_device(tree: Any, like: Any) -> Any:
    def put(x: np.ndarray, template: Any) -> jax.Array:
        sharding = getattr(template, "sharding", None)
        return jax.device_put(x, sharding) if sharding is not None else jnp.asarray(x)

    if like is None:
        return jax.tree.map(lambda x: put(x, None), tree)
    return jax.tree.map(put, tree, like)
