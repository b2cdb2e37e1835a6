"""Pre-quantized Hugging Face checkpoints (GPTQ, AWQ) imported exactly as uniform BCQ weights.

`quantization_scheme` recognises the ``quantization_config`` of ``config.json`` (or, for older
exports, ``quantize_config.json`` / ``quant_config.json`` next to it) in every spelling the
producers write: ``quant_method`` or ``method``; ``bits`` / ``w_bit`` / ``wbits``;
``group_size`` / ``q_group_size``; ``format`` / ``checkpoint_format`` / AWQ's ``version``;
``sym`` or AWQ's ``zero_point`` (its negation). Methods and packings it cannot convert exactly
are refused there, naming the file and the setting.

`quantized_params` builds the params of a family's model: every Linear stored as GPTQ/AWQ
tensors becomes a uniform `BCQWeight` (alpha = scale/2 per group, offset = scale*((2^q-1)/2 -
z)), everything else (embeddings, norms, biases, float Linears) loads as in
`lutgemm_jax.models.hf_checkpoint.params_from_state`. One Linear is converted at a time from the
memory-mapped files.

**Act-order.** A GPTQ Linear whose ``g_idx`` is not ``k // g`` is stored with its rows permuted
so that groups are contiguous (``W[P]``), and its input must be gathered the same way
(``x @ W == x[..., P] @ W[P]``). Where the producer of that input is elementwise-separable the
gather is folded into it exactly: for the Llama MLP, ``down_proj``'s input is
``silu(gate) * up``, so permuting the output columns of ``gate_proj`` and ``up_proj`` (and their
biases) by ``P`` removes the gather. Every other permuted Linear keeps ``P`` as the int32 param
``input_perm [K]`` next to its ``kernel``, and the model gathers ``x[..., input_perm]`` before
it (`lutgemm_jax.models.llama`).

**Scale dtype.** ``scale_dtype=float32`` (default) is exact: alpha is a float16 scale halved and
the offset is a float16 scale times a half-integer of at most 9 bits, at most 20 significant
bits. ``float16`` halves the scale bytes; alpha stays exact (barring a subnormal scale's last
bit) and so is the offset of symmetric GPTQ (``z = 2^(b-1)`` gives ``-scale/2``), but
asymmetric offsets (AWQ, GPTQ sym=false) are rounded once to float16.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from lutgemm_jax.config import BCQConfig
from lutgemm_jax.models import hf_checkpoint
from lutgemm_jax.models.awq_checkpoint import AWQScheme
from lutgemm_jax.models.gptq import GPTQScheme
from lutgemm_jax.models.hf_checkpoint import (
    LM_HEAD,
    HFCheckpointError,
    MissingTensorError,
    NameMap,
    _get,
    _set,
)
from lutgemm_jax.models.hf_config import config_path
from lutgemm_jax.models.uniform_linear import to_bcq

Scheme = GPTQScheme | AWQScheme
SIDE_CONFIG_FILES = ("quantize_config.json", "quant_config.json")
"""Files older GPTQ (AutoGPTQ) and AWQ (AutoAWQ) exports keep their settings in."""
SUPPORTED_METHODS = ("gptq", "awq")
INPUT_PERM = "input_perm"
"""Param name of an act-order Linear's input permutation (int32 ``[K]``, next to ``kernel``)."""

_SYNONYMS = {
    "method": ("quant_method", "method"),
    "bits": ("bits", "w_bit", "wbits"),
    "group_size": ("group_size", "q_group_size"),
    "format": ("format", "checkpoint_format", "version"),
}

FOLDS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "llama": {"mlp.down_proj": ("mlp.gate_proj", "mlp.up_proj")},
    "opt": {"fc2": ("fc1",)},
}
"""Family -> consumer Linear -> the Linears whose output columns can absorb the consumer's input
permutation exactly (the path in between is elementwise). Module paths relative to a layer."""
_LAYER = re.compile(r"(.*layers\.\d+)\.(.+)")
GATHERING_FAMILIES = ("llama",)
"""Families whose model applies ``input_perm`` before a Linear."""


def _normalized(qc: Mapping[str, Any]) -> dict[str, Any]:
    """``qc`` with every synonym resolved to one key (`_SYNONYMS`; ``zero_point`` -> ``sym``)."""
    out = dict(qc)
    for key, spellings in _SYNONYMS.items():
        for s in spellings:
            if qc.get(s) is not None:
                out[key] = qc[s]
                break
    if "zero_point" in qc:
        out["sym"] = not qc["zero_point"]
    return out


def _side_config(path: str) -> tuple[dict[str, Any] | None, str]:
    from lutgemm_jax.models.hf_config import read_config_json

    directory = path if os.path.isdir(path) else os.path.dirname(path)
    for name in SIDE_CONFIG_FILES:
        file = os.path.join(directory, name)
        if os.path.exists(file):
            return read_config_json(file), file
    return None, config_path(path)


def quantization_scheme(cfg: Mapping[str, Any], path: str | os.PathLike) -> Scheme | None:
    """The GPTQ / AWQ settings of the checkpoint whose ``config.json`` dict is ``cfg``, or None
    for a float checkpoint.

    ``path``: the model directory (or its config.json), where the side files are looked for.

    Raises:
      HFCheckpointError: a quantization method or setting this package cannot import exactly
        (other methods such as exl2, bitsandbytes, compressed-tensors; marlin/bitblas/gemv
        packings; pack_dtype other than int32; unsupported bits or group sizes), naming the
        file and the key.
    """
    path = os.fspath(path)
    qc, where = cfg.get("quantization_config"), config_path(path)
    if not qc:
        qc, where = _side_config(path)
        if qc is None:
            return None
    if not isinstance(qc, Mapping):
        raise HFCheckpointError(f"{where}: quantization_config must be an object, got {qc!r}")
    n = _normalized(qc)
    method = n.get("method")
    if method is None:  # side files of older exports omit it
        method = "awq" if "zero_point" in qc or "version" in qc else "gptq"
    method = str(method).lower()
    if method == "gptq":
        return GPTQScheme.from_config(n, where)
    if method == "awq":
        return AWQScheme.from_config(n, where)
    raise HFCheckpointError(
        f"{where}: quantization_config (quant_method {method!r}) is not supported; this loader "
        f"imports {SUPPORTED_METHODS} (GPTQ formats gptq/gptq_v2, AWQ version gemm). Load the "
        "float checkpoint and use quantize_model instead"
    )


def _other_packing(by_name: Mapping[str, str], prefix: str) -> str | None:
    """The name of a known non-GPTQ/AWQ packing whose tensors exist for Linear ``prefix``."""
    if prefix + ".q_weight" in by_name:
        return "EXL2 (exllamav2: q_weight/q_scale/q_groups)"
    if prefix + ".B" in by_name:
        return "Marlin (B/s tiles)"
    if prefix + ".weight_packed" in by_name:
        return "compressed-tensors (weight_packed)"
    return None


def quantized_params(
    state: Mapping[str, np.ndarray],
    names: NameMap,
    shapes: Mapping[tuple[str, ...], tuple[int, ...]],
    scheme: Scheme,
    *,
    family: str,
    dtype: Any = jnp.float32,
    scale_dtype: Any = jnp.float32,
    layout: str = "auto",
    source: Mapping[str, str] | None = None,
    where: str = "checkpoint",
) -> dict:
    """The params of a GPTQ / AWQ checkpoint: quantized Linears as uniform `BCQWeight`s.

    Args:
      state: tensor name -> array, read lazily
        (`lutgemm_jax.models.hf_checkpoint.LazySafetensors`).
      names, shapes: the family's name map and param shapes (as for ``params_from_state``).
      scheme: from `quantization_scheme`.
      family: the family's name (``"llama"``, ``"opt"``): which act-order folds and gathers
        its model supports.
      dtype: dtype of the float params (embeddings, norms, biases, float Linears).
      scale_dtype: alpha/offset dtype of the BCQ weights (float32 exact; float16 compact).
      layout: sign-word layout of the BCQ weights (``"auto"``: that of the default backend).
      source, where: name -> file, and the checkpoint's name, for messages.

    Raises:
      HFCheckpointError: any tensor that is missing, misshapen or corrupt, Linears in another
        packing (EXL2, Marlin, compressed-tensors), or an act-order Linear this family cannot
        gather for, naming the file and the tensor.
    """
    source = dict(source or {})
    layout = BCQConfig(layout=layout).resolve_layout()
    by_name = {k.removeprefix("model."): k for k in state}

    def file_of(name: str) -> str:
        return source.get(by_name.get(name.removeprefix("model."), name), where)

    def get(name: str) -> np.ndarray:
        key = by_name.get(name)
        if key is None:
            raise MissingTensorError(f"{where}: tensor {name!r} is missing")
        return state[key]

    quantized: dict[str, tuple[tuple[str, ...], int, int]] = {}  # prefix -> (path, K, N)
    float_names: NameMap = {}
    for name, (path, transpose) in names.items():
        prefix = name.removesuffix(".weight")
        if transpose and prefix + ".qweight" in by_name:
            k, n = shapes[path]
            quantized[prefix] = (path, k, n)
            continue
        if transpose and name not in by_name and (kind := _other_packing(by_name, prefix)):
            raise HFCheckpointError(
                f"{file_of(prefix)}: Linear {prefix!r} is stored in the {kind} packing, which "
                f"this loader does not import (config: {scheme.where})"
            )
        float_names[name] = (path, transpose)
    if LM_HEAD not in names and "lm_head.qweight" in by_name:
        raise HFCheckpointError(
            f"{file_of('lm_head.qweight')}: a quantized lm_head in a model whose config ties "
            "the head to the embeddings (tie_word_embeddings); set it false in config.json"
        )
    params = hf_checkpoint.params_from_state(
        state, float_names, shapes, dtype=dtype, source=source, where=where
    )

    perms = {p: scheme.row_perm(get, file_of, p, k) for p, (_, k, _) in quantized.items()}
    columns: dict[str, np.ndarray] = {}  # Linear prefix -> output-column permutation
    for prefix, perm in list(perms.items()):
        if perm is None:
            continue
        m = _LAYER.fullmatch(prefix)
        head, module = m.groups() if m else (prefix, "")
        producers = FOLDS.get(family, {}).get(module)
        if producers:
            for p in producers:
                columns[f"{head}.{p}"] = perm
            perms[prefix] = None
        elif family not in GATHERING_FAMILIES:
            raise HFCheckpointError(
                f"{file_of(prefix + '.g_idx')}: {prefix}.g_idx is an act-order permutation; the "
                f"{family!r} model cannot gather its inputs (supported: {GATHERING_FAMILIES})"
            )

    for prefix, (path, k, n) in _progress(quantized.items(), scheme):
        u = scheme.read_linear(get, file_of, prefix, k, n)
        cols = columns.get(prefix)
        w = to_bcq(u, dtype=scale_dtype, layout=layout, columns=cols)
        _set(params, path, w)
        if perms[prefix] is not None:
            _set(params, (*path[:-1], INPUT_PERM), jnp.asarray(perms[prefix], jnp.int32))
    for prefix, cols in columns.items():
        module = _get(params, names[prefix + ".weight"][0][:-1])
        if prefix not in quantized:
            module["kernel"] = module["kernel"][:, cols]
        if "bias" in module:
            module["bias"] = module["bias"][cols]
    return params


def _progress(items, scheme: Scheme):
    from tqdm.auto import tqdm

    items = list(items)
    return tqdm(items, desc=f"importing {scheme.method.upper()} Linears", disable=None)


__all__ = [
    "FOLDS",
    "INPUT_PERM",
    "SIDE_CONFIG_FILES",
    "SUPPORTED_METHODS",
    "Scheme",
    "quantization_scheme",
    "quantized_params",
]
