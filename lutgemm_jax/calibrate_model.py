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

`lutgemm_jax.nnx.quantize_model` takes ``calibrate(model)`` with the same stages
(`calibrate_stages`); NNX has no method interception, so each pass swaps the pending
``nnx.Linear`` layers for wrappers that offer their inputs to a `StageCapture`.

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
_INDEX = re.compile(r"^\d+$")


def stage_of(module_path: Sequence[Any]) -> tuple[Any, ...]:
    """The stage of a Dense / Linear at ``module_path`` (e.g. ``("decoder", "layers_3", "fc1")``):
    the path up to its first ``layers_{i}`` component (linen) or ``layers, i`` pair (an NNX
    ``nnx.List`` of blocks: ``("layers", "3", "fc1")``), or the whole path outside every block."""
    for i, name in enumerate(module_path):
        if _BLOCK.match(str(name)):
            return tuple(module_path[: i + 1])
        if (
            str(name) == "layers"
            and i + 2 < len(module_path)
            and _INDEX.match(str(module_path[i + 1]))
        ):
            return tuple(module_path[: i + 2])
    return tuple(module_path)


class StageCapture:
    """Accumulates the inputs of selected layers, one stage per pass (framework-neutral).

    ``pending`` maps a module path to its stage; only layers of one stage (the first one
    offered) are recorded per pass. ``stats[path]`` is the `Calibration` of the rows seen.
    ``where`` prefixes the error messages (the public function calibrating).
    """

    def __init__(
        self, pending: dict[tuple[str, ...], tuple[str, ...]], where: str = "quantize_params"
    ) -> None:
        self.pending = pending
        self.where = where
        self.stage: tuple[str, ...] | None = None
        self.stats: dict[tuple[str, ...], Calibration] = {}

    def offer(self, path: tuple[str, ...], x: Any) -> None:
        """Records ``x: [..., K]``, the input of the layer at ``path``, if it is selected and of
        this pass's stage."""
        stage = self.pending.get(path)
        if stage is not None and self.stage in (None, stage):
            self.stage = stage
            self._record(path, x)

    def _record(self, path: tuple[str, ...], x: Any) -> None:
        if isinstance(x, jax.core.Tracer):
            raise TypeError(
                f"{self.where}: calibrate must run the model eagerly (not under jax.jit, "
                f"vmap or nn.scan): layer {'/'.join(path)} received a traced input"
            )
        x = np.asarray(x, np.float64)
        rows = x.reshape(-1, x.shape[-1])
        stats = self.stats.get(path) or Calibration.empty(rows.shape[1])
        self.stats[path] = stats.update(rows)


class InputCapture(StageCapture):
    """An ``nn.intercept_methods`` interceptor offering the inputs of ``nn.Dense`` layers to a
    `StageCapture`."""

    def __call__(self, next_fun: Callable, args: Any, kwargs: Any, context: Any) -> Any:
        module = context.module
        if context.method_name == "__call__" and isinstance(module, nn.Dense) and args:
            self.offer(tuple(module.path), args[0])
        return next_fun(*args, **kwargs)


def run_stages(
    module_paths: dict[Key, tuple[str, ...]],
    calibrate: CalibrateFn,
    current_params: Callable[[], Any],
    quantize_stage: Callable[[dict[Key, Calibration]], None],
    *,
    progress: bool = False,
) -> None:
    """Quantizes the linen kernels ``module_paths`` (params key -> Dense module path) stage by
    stage.

    Each pass runs ``calibrate(current_params())`` under `intercept_dense` and an
    `InputCapture`, then hands the stage's ``{key: Calibration}`` to ``quantize_stage``, which
    must update what ``current_params`` returns. Errors as `calibrate_stages`.
    """
    from lutgemm_jax.linen import intercept_dense

    def run_pass(capture: StageCapture) -> None:
        with intercept_dense(), nn.intercept_methods(capture):
            calibrate(current_params())

    calibrate_stages(
        module_paths,
        calibrate,
        run_pass,
        quantize_stage,
        progress=progress,
        capture_type=InputCapture,
        hint="it must apply the model to its params argument",
    )


def calibrate_stages(
    module_paths: dict[Key, tuple[str, ...]],
    calibrate: Any,
    run_pass: Callable[[StageCapture], None],
    quantize_stage: Callable[[dict[Key, Calibration]], None],
    *,
    progress: bool = False,
    where: str = "quantize_params",
    hint: str = "",
    capture_type: type[StageCapture] = StageCapture,
) -> None:
    """The stage loop shared by linen and NNX: ``module_paths`` maps a key (a params key, a
    module path) to the layer's module path; one pass per stage calls ``run_pass(capture)``,
    which must run the model (with the stages done so far quantized) offering each selected
    layer's input to ``capture`` (`StageCapture.offer`); the stage's ``{key: Calibration}``
    then goes to ``quantize_stage``. ``capture_type``: the `StageCapture` (sub)class made per
    pass (linen: `InputCapture`, itself the method interceptor).

    Raises:
      TypeError: ``calibrate`` is not callable, or runs the model under a transform.
      ValueError: a pass reaches no remaining selected layer, or only part of a stage (the
        layers never reached are named; ``hint`` is added to the first message).
    """
    from lutgemm_jax.flax_common import progress_iter

    if not callable(calibrate):
        raise TypeError(f"{where}: calibrate must be a callable, got {calibrate!r}")
    key_of = {path: key for key, path in module_paths.items()}
    pending = {path: stage_of(path) for path in module_paths.values()}
    stages = len(set(pending.values()))
    for _ in progress_iter(range(stages), stages, progress, "calibrate"):
        capture = capture_type(pending, where)
        run_pass(capture)
        _check_pass(capture, pending, hint)
        quantize_stage({key_of[path]: stats for path, stats in capture.stats.items()})
        for path in capture.stats:
            del pending[path]


def check_calibrated_options(where: str, act_order: bool, damp: float) -> None:
    """``act_order`` / ``damp`` without ``calibrate=``: a `ValueError`, not silently ignored."""
    if act_order or damp != 0.01:
        raise ValueError(f"{where}: act_order and damp apply with calibrate= only")


def _check_pass(
    capture: StageCapture, pending: dict[tuple[str, ...], tuple[str, ...]], hint: str
) -> None:
    def names(paths: Any) -> str:
        return ", ".join(sorted("/".join(p) for p in paths))

    if capture.stage is None:
        raise ValueError(
            f"{capture.where}: calibrate never called the selected layers "
            f"{names(pending)}" + (f" ({hint})" if hint else "")
        )
    missed = [p for p, s in pending.items() if s == capture.stage and p not in capture.stats]
    if missed:
        raise ValueError(
            f"{capture.where}: calibrate never reached the selected layers {names(missed)} "
            f"of stage {'/'.join(capture.stage)}"
        )


__all__ = [
    "CalibrateFn",
    "InputCapture",
    "StageCapture",
    "calibrate_stages",
    "check_calibrated_options",
    "run_stages",
    "stage_of",
]
