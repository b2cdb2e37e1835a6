"""Reading Hugging Face ``config.json`` files: the JSON itself and the RoPE settings, in both
the transformers >= 5 spelling (``rope_parameters``) and the older one (top-level
``rope_theta`` plus ``rope_scaling`` with ``type`` or ``rope_type``).

Family dispatch on ``model_type`` lives in `lutgemm_jax.models.registry`; each family's config
class turns the dict into its frozen dataclass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from lutgemm_jax.models.hf_checkpoint import HFCheckpointError

DEFAULT_ROPE_THETA = 10000.0


def config_path(path: str | os.PathLike) -> str:
    """``path`` itself when it is a file, else ``path/config.json``."""
    path = os.fspath(path)
    return os.path.join(path, "config.json") if os.path.isdir(path) else path


def read_config_json(path: str | os.PathLike) -> dict[str, Any]:
    """The dict of a ``config.json`` (a file, or a directory holding one).

    Raises:
      HFCheckpointError: no such file, not JSON, or not a JSON object (naming the file).
    """
    file = config_path(path)
    if not os.path.exists(file):
        raise HFCheckpointError(f"{file}: no such file (a model directory needs config.json)")
    try:
        with open(file, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise HFCheckpointError(f"{file}: not a readable JSON file ({e})") from None
    if not isinstance(d, dict):
        raise HFCheckpointError(f"{file}: expected a JSON object, got {type(d).__name__}")
    return d


def rope_parameters(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The RoPE settings of a config dict as one dict with ``rope_type`` and ``rope_theta``
    (plus the scaling keys of that type, e.g. ``factor``), whichever spelling the file uses.

    transformers >= 5 writes ``rope_parameters`` (possibly nested per attention type, of which
    ``full_attention`` is the one used here); older files have a top-level ``rope_theta`` and a
    ``rope_scaling`` dict whose type key is ``rope_type`` or, older still, ``type``.
    """
    p = cfg.get("rope_parameters")
    if not p:
        p = {**(cfg.get("rope_scaling") or {})}
        p.setdefault("rope_theta", cfg.get("rope_theta", DEFAULT_ROPE_THETA))
    if not isinstance(p, Mapping):
        raise ValueError(f"rope_parameters / rope_scaling must be an object, got {p!r}")
    if "full_attention" in p:
        p = p["full_attention"]
    p = dict(p)
    p["rope_type"] = p.get("rope_type", p.get("type", "default"))
    p.pop("type", None)
    p.setdefault("rope_theta", cfg.get("rope_theta", DEFAULT_ROPE_THETA))
    return p


__all__ = ["config_path", "read_config_json", "rope_parameters"]
