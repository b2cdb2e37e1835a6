"""Calibrated quantization of whole linen models: sequential capture of each Dense's inputs.

`lutgemm_jax.linen.quantize_params` (and `lutgemm_jax.models.quantize_model`) take
``calibrate=``: a callable ``calibrate(params) -> Any`` that runs the model on the calibration
batches *eagerly* with the params it is given (its return value is ignored), e.g.::

    batches = [ids[i : i + 8] for i in range(0, len(ids), 8)]
    qparams = quantize_params(
        params, bits=3, calibrate=lambda p: [model.apply({"params": p}, x) for x in batches]
    )

Design (as GPTQ): the selected kernels are split into *stages*: all kernels inside one decoder
block (the first path component ``layers_{i}``) form one stage; a kernel outside every block
(e.g. an ``lm_head``) is a stage of its own. Quantization runs stage by stage; for each stage
the model is run once more (``calibrate(params)``) with

* the kernels of the stages done so far already quantized, executed through
  `lutgemm_jax.linen.intercept_dense`, so later layers see the quantized model's activations;
* an interceptor on ``nn.Dense.__call__`` that, for each selected layer of the *current* stage,
  adds its input rows ``x: [..., K]`` to a `Calibration` (``H = X^T X`` in float64): memory is
  ``O(K^2)`` per layer of one stage, never the inputs themselves.

The current stage of a pass is the stage of the first not-yet-quantized selected layer the
model calls: the first stage whose inputs are ready, whatever the model's structure. Within a
stage the inputs come from the float layers of that stage (the GPTQ reference does the same
per block). Each kernel is then quantized with `lutgemm_jax.calibrate.quantize_calibrated`.

``calibrate`` must not ``jax.jit`` the model: the interceptor reads concrete inputs (a traced
input raises a `TypeError`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from lutgemm_jax.calibration import Calibration

CalibrateFn = Callable[[Any], Any]
"""``calibrate(params)``: runs the model eagerly on the calibration batches with ``params``."""
Key = tuple[Any, ...]
_BLOCK = re.compile(r"^layers_\d+$")


def stage_of(module_path: Sequence[str]) -> tuple[str, ...]:
    """The stage of a Dense at ``module_path`` (e.g. ``("decoder", "layers_3", "fc1")``): the
    path up to its first ``layers_{i}`` component, or the whole path outside every block."""
    for i, name in enumerate(module_path):
        if _BLOCK.match(str(name)):
            return tuple(module_path[: i + 1])
    return tuple(module_path)


class InputCapture:
    """An ``nn.intercept_methods`` interceptor accumulating the inputs of selected Dense layers.

    ``pending`` maps a module path to its stage; only layers of one stage (the first one
    called) are recorded per pass. ``stats[path]`` is the `Calibration` of the rows seen.
    """

    def __init__(self, pending: dict[tuple[str, ...], tuple[str, ...]]) -> None:
        self.pending = pending
        self.stage: tuple[str, ...] | None = None
        self.stats: dict[tuple[str, ...], Calibration] = {}

    def __call__(self, next_fun: Callable, args: Any, kwargs: Any, context: Any) -> Any:
        module = context.module
        if context.method_name == "__call__" and isinstance(module, nn.Dense) and args:
            path = tuple(module.path)
            stage = self.pending.get(path)
            if stage is not None and self.stage in (None, stage):
                self.stage = stage
                self._record(path, args[0])
        return next_fun(*args, **kwargs)

    def _record(self, path: tuple[str, ...], x: Any) -> None:
        if isinstance(x, jax.core.Tracer):
            raise TypeError(
                f"quantize_params: calibrate must run the model eagerly (not under jax.jit, "
                f"vmap or nn.scan): layer {'/'.join(path)} received a traced input"
            )
        x = np.asarray(x, np.float64)
        rows = x.reshape(-1, x.shape[-1])
        stats = self.stats.get(path) or Calibration.empty(rows.shape[1])
        self.stats[path] = stats.update(rows)


def run_stages(
    module_paths: dict[Key, tuple[str, ...]],
    calibrate: CalibrateFn,
    current_params: Callable[[], Any],
    quantize_stage: Callable[[dict[Key, Calibration]], None],
    *,
    progress: bool = False,
) -> None:
    """Quantizes the kernels ``module_paths`` (params key -> Dense module path) stage by stage.

    Each pass runs ``calibrate(current_params())`` under `intercept_dense` and an
    `InputCapture`, then hands the stage's ``{key: Calibration}`` to ``quantize_stage``, which
    must update what ``current_params`` returns.

    Raises:
      TypeError: ``calibrate`` is not callable, or runs the model under a transform.
      ValueError: a pass reaches no remaining selected layer, or only part of a stage (the
        layers never reached are named).
    """
    from lutgemm_jax.flax_common import progress_iter
    from lutgemm_jax.linen import intercept_dense

    if not callable(calibrate):
        raise TypeError(f"quantize_params: calibrate must be a callable, got {calibrate!r}")
    key_of = {path: key for key, path in module_paths.items()}
    pending = {path: stage_of(path) for path in module_paths.values()}
    stages = len(set(pending.values()))
    for _ in progress_iter(range(stages), stages, progress, "calibrate"):
        capture = InputCapture(pending)
        with intercept_dense(), nn.intercept_methods(capture):
            calibrate(current_params())
        _check_pass(capture, pending)
        quantize_stage({key_of[path]: stats for path, stats in capture.stats.items()})
        for path in capture.stats:
            del pending[path]


def _check_pass(capture: InputCapture, pending: dict[tuple[str, ...], tuple[str, ...]]) -> None:
    def names(paths: Any) -> str:
        return ", ".join(sorted("/".join(p) for p in paths))

    if capture.stage is None:
        raise ValueError(
            "quantize_params: calibrate never called the selected layers "
            f"{names(pending)} (it must apply the model to its params argument)"
        )
    missed = [p for p, s in pending.items() if s == capture.stage and p not in capture.stats]
    if missed:
        raise ValueError(
            f"quantize_params: calibrate never reached the selected layers {names(missed)} "
            f"of stage {'/'.join(capture.stage)}"
        )


__all__ = ["CalibrateFn", "InputCapture", "run_stages", "stage_of"]
