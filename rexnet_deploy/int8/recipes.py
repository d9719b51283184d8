"""The INT8 recipes of each backend, and the one resolution of ``--recipe`` / ``--qad-steps``.

A recipe is how the INT8 graph is made: post-training ranges in the backend's own tool (NNCF on the
IR, ModelOpt on the ONNX graph, ONNX Runtime's ``quantize_static``), or PyTorch quantizers plus
``--qad-steps`` of quantization-aware distillation (:mod:`.qad`). The backends' ``validate`` call
:func:`resolve`; their ``recipe`` choices are the keys below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError

MAX_STEPS = 5000  # ~2 h on 2 cores: anything above is a typo, not a plan
# the cap on distillation steps of the 224 px constant-lr schedule (ModelOpt, PT2E students): gains came
# in the first 50-100 steps and then flattened, and the early stop on a held-out SQNR plateau
# (int8.qad.QadConfig) usually ends sooner; OpenVINO's NNCF schedule has its own cap (qad.NNCF_SCHEDULE)
DEFAULT_STEPS = 100
QAD = "qad"
# the recipes whose graph is made by PyTorch quantizers (BatchNorm folded): a Q/DQ graph of those
# has no calibration cache, and its layers are not the FP32 export's (see int8.sensitivity)
PYTORCH_QDQ_RECIPES = ("rexnet", QAD)


@dataclass(frozen=True)
class Recipe:
    description: str
    overflow_fix: str  # NNCF OverflowFix value: "enable" | "first_layer_only" | "disable"
    ignored_scope: dict[str, list[str]] = field(default_factory=dict)


# OpenVINO (NNCF). Measured on rexnet_100 with the trained stand-in weights, 300 calibration photos,
# 100 held-out photos (top-1 agreement / min cosine vs FP32): NNCF defaults 94% / 0.981; overflow fix
# on every layer 98% / 0.991; overflow fix off 78% / 0.878. No single block, SE gate, SiLU input, stem
# or head explained the loss when kept in FP32 (each within ±2%, the noise of 100 images); the
# weights' int16 saturation did. CPUs without VNNI/AMX (AVX2, AVX-512 without VNNI) multiply u8×s8
# pairs into int16 (vpmaddubsw), which saturates; 7-bit weights cannot. NNCF fixes only the first
# layer by default. An artifact can be served on another CPU than it was built on, so the recipe
# uses 7-bit weights everywhere (on a VNNI CPU that costs one bit of weight resolution, no speed).
# The names are the choices of the registry's ``recipe`` option (tests/test_backend_protocol.py).
OPENVINO_RECIPES: dict[str, Recipe] = {
    QAD: Recipe("NNCF PyTorch PTQ (SE gates FP32, 7-bit weights) + quantization-aware distillation", "enable"),
    "rexnet": Recipe("NNCF defaults with the overflow fix (7-bit weights) on every layer", "enable"),
    "nncf": Recipe("NNCF's own defaults (overflow fix on the first layer only)", "first_layer_only"),
}
# The default of every INT8 backend is the recipe with the best unseen-photo fidelity that builds in
# <= 3 min on 2 idle cores. OpenVINO: ``qad`` with its NNCF schedule (int8.qad.NNCF_SCHEDULE), 2 min 25 s
# on a 2-vCPU Xeon, dev/ 34.9 dB, min cosine 0.9989 (docs/int8-fidelity.md, "QAD as the default");
# ``rexnet`` (post-training, about a minute) is the quick one; --max-drop implies it (openvino_int8.validate)
OPENVINO_DEFAULT = QAD
# TensorRT: the best measured on unseen photos within 5 min on 2 cores (docs/int8-fidelity.md)
TENSORRT_DEFAULT = QAD
TENSORRT_ONNX_PTQ = "modelopt"  # the recipe that --calib-method/--exclude/--calib-cache imply
# ONNX Runtime: quantize_static's u8 graph (the placement ONNX Runtime fuses into QLinearConv), its
# weights distilled in place for 40 steps (int8.ort_fused.SCHEDULE): 1 min 42 s on 2 idle cores, dev/
# 34.65 dB / min cosine 0.9992 against quantize_static's 30.0 dB at the same speed
# (docs/int8-fidelity.md "ONNX Runtime"); ``quantize_static`` (post-training, under a minute) is the quick one
ONNXRUNTIME_FUSED = "fused-qad"
ONNXRUNTIME_DEFAULT = ONNXRUNTIME_FUSED
# pt2 (PT2E, X86InductorQuantizer): post-training ranges measured 0.890 top-1 agreement on dev/; distillation
PT2_DEFAULT = QAD


def check_steps(value: Any) -> int:
    """``--qad-steps`` as an int in range (one check, one message: QadConfig calls it too)."""
    steps = int(value)
    if not 0 <= steps <= MAX_STEPS:
        raise UsageError(f"--qad-steps must be between 0 and {MAX_STEPS}, got {steps}")
    return steps


def resolve(recipe: str | None, qad_steps: Any, *, default: str, default_steps: int | Mapping[str, int] = DEFAULT_STEPS,
            distilled: tuple[str, ...] = (QAD,)) -> tuple[str, int | None]:
    """The INT8 recipe and its distillation steps: the recipe asked for, else ``default``, unless
    ``--qad-steps`` is given and ``default`` takes none (then ``qad``, which ``--qad-steps`` implies).
    ``--qad-steps`` is checked and is only for the ``distilled`` recipes, whose steps default to
    ``default_steps`` (one number, or one per recipe with :data:`DEFAULT_STEPS` for the others);
    other recipes have none (None)."""
    recipe = recipe or (default if qad_steps is None or default in distilled else QAD)
    if qad_steps is not None:
        steps = check_steps(qad_steps)
        if recipe not in distilled:
            raise UsageError(f"--qad-steps is for --recipe {' or '.join(distilled)}, not --recipe {recipe}")
        return recipe, steps
    if recipe not in distilled:
        return recipe, None
    return recipe, default_steps.get(recipe, DEFAULT_STEPS) if isinstance(default_steps, Mapping) else default_steps
