"""The model families by ``config.json`` ``model_type``, and the entry points that dispatch on
it: reading and writing Hugging Face directories, building a model from a config, presets."""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from lutgemm_jax.models import hf_checkpoint, llama, opt, prequantized
from lutgemm_jax.models.family import Family, param_shapes
from lutgemm_jax.models.hf_checkpoint import HFCheckpointError
from lutgemm_jax.models.hf_config import config_path, read_config_json

FAMILIES: tuple[Family, ...] = (opt.FAMILY, llama.FAMILY)
MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)


def family_of(config_or_type: Any) -> Family:
    """The `Family` of a config object (or a ``model_type`` string)."""
    if isinstance(config_or_type, str):
        for f in FAMILIES:
            if config_or_type in f.model_types:
                return f
        raise ValueError(
            f"model_type {config_or_type!r} is not supported; supported: {list(MODEL_TYPES)}"
        )
    for f in FAMILIES:
        if isinstance(config_or_type, f.config_cls):
            return f
    raise TypeError(f"not a model config: {type(config_or_type).__name__}")


def config_from_dict(d: dict[str, Any]):
    """The family config of a ``config.json`` dict, chosen by its ``model_type``."""
    return family_of(d.get("model_type", "<missing>")).config_cls.from_dict(d)


def read_config(path: str | os.PathLike, model_types: tuple[str, ...] = MODEL_TYPES):
    """The family config of ``config.json`` (a file or a model directory).

    Raises:
      HFCheckpointError: unreadable file, a ``model_type`` outside ``model_types``, or a config
        feature the family does not compute (naming the file and the key).
    """
    d = read_config_json(path)
    file = config_path(path)
    prequantized.quantization_scheme(d, path)  # refuses what cannot be imported
    mt = d.get("model_type")
    if mt not in model_types:
        raise HFCheckpointError(
            f"{file}: model_type {mt!r} is not supported; supported: {list(model_types)}"
        )
    try:
        return family_of(mt).config_cls.from_dict(d)
    except (ValueError, TypeError) as e:
        raise HFCheckpointError(f"{file}: {e}") from None


def from_config(config: Any, dtype=jnp.float32):
    """The linen model of ``config`` (``dtype``: the computation dtype)."""
    return family_of(config).model_cls(config, dtype)


def init_params(config: Any, seed: int = 0, *, dtype=jnp.float32) -> dict:
    """Deterministic random weights for ``config`` (the family's ``init_params``)."""
    return family_of(config).init_params(config, seed, dtype=dtype)


def load_hf_checkpoint(
    path: str | os.PathLike,
    dtype=jnp.float32,
    *,
    model_types: tuple[str, ...] = MODEL_TYPES,
    scale_dtype=jnp.float32,
    layout: str = "auto",
) -> tuple[Any, dict]:
    """Reads a local Hugging Face checkpoint directory: ``(config, params)``.

    Needs ``config.json`` (``model_type`` opt, llama, mistral, qwen2 or qwen3) and
    ``*.safetensors`` (one file, or shards listed in ``model.safetensors.index.json``).
    fp16/bf16 weights are converted to ``dtype``. No network access, no pickles.

    A GPTQ or AWQ checkpoint (a ``quantization_config`` in config.json, or AutoGPTQ's /
    AutoAWQ's side file) is recognised by itself: its quantized Linears become exact uniform
    `BCQWeight` kernels with alpha/offset in ``scale_dtype`` (float32 exact; float16 compact,
    exact for symmetric GPTQ only) and sign layout ``layout``; act-order Linears get an
    ``input_perm`` (`lutgemm_jax.models.prequantized`). Tensors are read one at a time.

    Raises:
      HFCheckpointError: anything wrong with the directory, naming the file and the tensor or
        config key: no directory, no or bad config.json, unsupported model_type or feature, no
        safetensors (PyTorch pickles get a conversion recipe), a truncated or corrupt file, a
        missing tensor (`MissingTensorError`) or one of the wrong shape; for GPTQ / AWQ also
        a quantization method, packing or setting that has no exact import, packed tensors of
        the wrong shape or dtype, corrupt v1 zero points, or act-order the family cannot gather.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise HFCheckpointError(f"{path} is not a directory (expected a local model directory)")
    config = read_config(path, model_types)
    family = family_of(config)
    files = hf_checkpoint.safetensors_files(path)
    shapes = param_shapes(family.model_cls(config))
    where = files[0] if len(files) == 1 else path
    scheme = prequantized.quantization_scheme(read_config_json(path), path)
    if scheme is not None:
        state = hf_checkpoint.LazySafetensors(files)
        params = prequantized.quantized_params(
            state,
            family.hf_names(config),
            shapes,
            scheme,
            family=family.name,
            dtype=dtype,
            scale_dtype=scale_dtype,
            layout=layout,
            source=state.source,
            where=where,
        )
        return config, params
    state, source = hf_checkpoint.read_safetensors(files)
    params = hf_checkpoint.params_from_state(
        state,
        family.hf_names(config),
        shapes,
        dtype=dtype,
        source=source,
        where=where,
    )
    return config, params


def save_hf_checkpoint(
    path: str | os.PathLike, params, config: Any, *, num_shards: int = 1, dtype=np.float32
) -> None:
    """Writes ``params`` as a Hugging Face directory (``config.json`` + safetensors, sharded
    over ``num_shards`` files with an index when > 1), in the family's names and shapes."""
    state = hf_checkpoint.params_to_state(params, family_of(config).hf_names(config), dtype=dtype)
    hf_checkpoint.write_checkpoint(path, state, config.to_dict(), num_shards=num_shards)


def presets() -> dict[str, Any]:
    """Every family's preset shapes by name (OPT ones as ``opt-125m``, ...)."""
    out = {f"opt-{k}": v for k, v in opt.PRESETS.items()}
    out.update(llama.PRESETS)
    return out


def preset(name: str):
    """The config of preset ``name`` (see `presets`)."""
    table = presets()
    key = name.lower().split("/")[-1]
    if key not in table:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(table)}")
    return table[key]


__all__ = [
    "FAMILIES",
    "MODEL_TYPES",
    "config_from_dict",
    "family_of",
    "from_config",
    "init_params",
    "load_hf_checkpoint",
    "preset",
    "presets",
    "read_config",
    "save_hf_checkpoint",
]
