"""INT8 for the OpenVINO backend: NNCF quantization on the calibration set.

Three paths:

* ``recipe="qad"`` (``--qad-steps N``): NNCF post-training quantization of the PyTorch
  model with the SE gates in FP32, then quantization-aware distillation toward the FP32 model on
  augmented calibration photos (at most N steps, stopped early on a held-out SQNR plateau),
  exported to IR (:mod:`rexnet_deploy.int8.qad`);
* ``nncf.quantize`` on the IR with this project's PTQ recipe (``recipe="rexnet"``; see RECIPES)
  or NNCF's own defaults (``recipe="nncf"``): about a minute;
* ``--max-drop X``: ``nncf.quantize_with_accuracy_control``, whose metric is the harness's top-1
  agreement with the FP32 model, so NNCF reverts the layers that cost agreement to floating
  point until the drop is at most X. The model is quantized at a static batch-1 shape (a partly
  reverted model compiled with a dynamic shape returned all-zero logits in OpenVINO 2026.4) and
  given its dynamic batch dimension back afterwards.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BuildError, UsageError
from ..int8.qad import NNCF_SCHEDULE, QadConfig, library_output, nncf_config, quiet_torch_notices
from ..int8.recipes import OPENVINO_DEFAULT, OPENVINO_RECIPES, QAD, resolve

if TYPE_CHECKING:  # pragma: no cover
    from ..log import BuildLog

# the recipes themselves (NNCF's overflow fix, ignored scope) and the measurements behind them: int8.recipes
RECIPES = OPENVINO_RECIPES


def validate(opts: dict[str, Any]) -> dict[str, Any]:
    """Check the INT8 build options (every declared one present, defaults filled in by the
    registry's table; names and choices already checked there); returns them normalised."""
    if opts["subset_size"] is not None and int(opts["subset_size"]) < 1:
        raise UsageError(f"--subset-size must be >= 1, got {opts['subset_size']}")
    if opts["max_drop"] is not None and not 0 <= float(opts["max_drop"]) < 1:
        raise UsageError(f"--max-drop is a top-1 agreement drop between 0 and 1, got {opts['max_drop']}")
    # --max-drop is NNCF's post-training accuracy control: it implies the post-training recipe
    default = "rexnet" if opts["max_drop"] is not None else OPENVINO_DEFAULT
    recipe, steps = resolve(opts["recipe"], opts.get("qad_steps"), default=default,
                            default_steps=NNCF_SCHEDULE["steps"])
    if recipe == QAD and opts["max_drop"] is not None:
        raise UsageError("--max-drop (accuracy control) is a post-training recipe; it does not combine with --recipe qad")
    # QAD measured best with asymmetric activations (see qad.QadConfig); the PTQ recipes with symmetric
    preset = opts.get("preset") or ("mixed" if recipe == "qad" else "performance")
    return {**opts, "recipe": recipe, "qad_steps": steps, "preset": preset,
            "fast_bias_correction": bool(opts["fast_bias_correction"])}


def quantize(model, ref, calib, opts: dict[str, Any], log: BuildLog) -> tuple[Any, dict[str, Any]]:
    """Quantize the OpenVINO ``model`` on ``calib`` (a loaded CalibrationSet) with the options
    :func:`validate` returned; returns the INT8 model and the manifest's record of how it was made."""
    quiet_torch_notices()  # NNCF imports torch internals that warn about a CPU host
    import nncf

    preset_name, recipe, fast_bc, max_drop = opts["preset"], opts["recipe"], opts["fast_bias_correction"], opts["max_drop"]
    if recipe == "qad":
        return _quantize_aware_distilled(model, ref, calib, nncf_config(opts["qad_steps"], activations=preset_name), log)
    subset_size = opts["subset_size"] or len(calib)
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    scope = RECIPES[recipe].ignored_scope
    overflow_fix = RECIPES[recipe].overflow_fix
    kwargs = dict(
        preset=nncf.QuantizationPreset.MIXED if preset_name == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        subset_size=min(subset_size, len(calib)),
        fast_bias_correction=fast_bc,
        ignored_scope=nncf.IgnoredScope(**scope, validate=False) if scope else None,
    )
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix))
    c, h, w = ref.data_config.input_size
    dataset = nncf.Dataset(calib.tensors())
    t0 = time.perf_counter()
    with library_output(log, verbose=max_drop is not None):
        if max_drop is None:
            log(f"INT8 recipe {recipe}: quantizing with NNCF on {len(calib)} calibration images")
            quantized = nncf.quantize(model, dataset, advanced_parameters=advanced, **kwargs)
        else:
            log(f"quantizing with accuracy control (max top-1 agreement drop {max_drop:g}); this can take minutes")
            quantized = _with_accuracy_control(model, calib, max_drop, dict(kwargs, advanced_quantization_parameters=advanced),
                                               (c, h, w))
    fq_before = _count(model, "FakeQuantize")
    record = {
        "tool": "nncf",
        "version": nncf.__version__,
        "method": "quantize_with_accuracy_control" if max_drop is not None else "quantize",
        "recipe": recipe,
        "preset": preset_name,
        "subset_size": kwargs["subset_size"],
        "fast_bias_correction": fast_bc,
        "overflow_fix": overflow_fix,
        "ignored_scope": scope,
        "max_drop": max_drop,
        "fake_quantize_ops": _count(quantized, "FakeQuantize") - fq_before,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if record["fake_quantize_ops"] == 0:
        raise BuildError("NNCF quantized nothing (no FakeQuantize in the result); cannot build an INT8 engine")
    return quantized, record


def _quantize_aware_distilled(model, ref, calib, config: QadConfig, log: BuildLog) -> tuple[Any, dict[str, Any]]:
    """The ``qad`` recipe: quantize and distill the PyTorch model, then convert it to IR."""
    from ..int8 import qad
    from .openvino_convert import convert

    t0 = time.perf_counter()
    log(f"INT8 recipe qad: NNCF PyTorch PTQ + up to {config.steps} distillation steps "
        "(the fast post-training one is --recipe rexnet)")
    result = qad.quantize_and_distill(ref.module, calib.tensors(), config, log)
    t1 = time.perf_counter()
    quantized = convert(ref, qad.strip(result.model, tuple(ref.data_config.input_size)))
    seconds = time.perf_counter() - t0
    record = {**result.record,
              "fake_quantize_ops": _count(quantized, "FakeQuantize") - _count(model, "FakeQuantize"),
              "export_seconds": round(time.perf_counter() - t1, 1),
              "seconds": round(seconds, 1)}
    d = result.record["distillation"] or {}
    log(f"INT8 recipe qad took {seconds:.0f} s: PTQ {result.record['ptq']['seconds']:.0f} s, "
        f"{d.get('steps', 0)} distillation steps {d.get('seconds', 0):.0f} s, export to IR {record['export_seconds']:.0f} s")
    if record["fake_quantize_ops"] == 0:
        raise BuildError("NNCF quantized nothing (no FakeQuantize in the result); cannot build an INT8 engine")
    return quantized, record


def _with_accuracy_control(model, calib, max_drop: float, kwargs: dict[str, Any], chw):
    """Accuracy control with top-1 agreement to the FP32 model as the metric (per item, so NNCF
    can rank layers by the items they flip)."""
    import nncf
    import openvino as ov

    static = model.clone()
    static.reshape({0: [1, *chw]})
    fp32 = ov.Core().compile_model(static, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    items = [(x, int(np.argmax(fp32(x)[0]))) for x in calib.tensors()]
    validation = nncf.Dataset(items, lambda item: item[0])

    def agreement(compiled, data) -> tuple[float, list[float]]:
        hits = [float(np.argmax(compiled(x)[0]) == want) for x, want in data]
        return float(np.mean(hits)) if hits else 0.0, hits

    quantized = nncf.quantize_with_accuracy_control(
        static, nncf.Dataset([x for x, _ in items]), validation, agreement, max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE, **kwargs)
    quantized.reshape({0: [-1, *chw]})
    return quantized


def _count(model, op_type: str) -> int:
    return sum(op.get_type_name() == op_type for op in model.get_ops())
