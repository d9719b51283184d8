"""INT8 for the ``pt2`` backend: PyTorch 2 export quantization (``torchao.quantization.pt2e``)
with ``X86InductorQuantizer``, compiled by AOTInductor into oneDNN INT8 kernels.

Two recipes (``--recipe``):

* ``ptq``: the quantizer's x86 defaults (uint8 asymmetric activations with histogram ranges,
  int8 per-channel symmetric weights) on the calibration images, the squeeze-excitation gates
  left in FP32 (and with ``--float-depthwise`` the depthwise convolutions: see :func:`kept_float`);
* ``qad`` (default): ``prepare_qat_pt2e`` with the same quantizer in QAT mode (fake-quantize with
  moving-average ranges), ranges seeded on the calibration images, then ``--qad-steps`` of
  distillation toward the FP32 logits on augmented calibration photos
  (:func:`rexnet_deploy.int8.qad.distill`, the recipe that lifted the other backends' INT8 from
  ~0.89 to ~0.95 top-1 agreement on unseen photos).

BatchNorm is folded into the convolutions before export for both, so the weights trained and
calibrated are those the INT8 kernels see.

Either ends in ``convert_pt2e`` and a fresh ``torch.export`` over the artifact's batch range, which
the backend compiles. Importing the quantizer registers torchao's Inductor passes that fuse the
quantize/dequantize pairs into oneDNN's quantized convolutions.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..models import DEPTHWISE, SE_GATES, fold_batchnorm
from .qad import QadConfig, distill

if TYPE_CHECKING:  # pragma: no cover
    from ..log import BuildLog
    from ..spec import BuildSpec

CALIB_BATCH = 25
# the fake-quantized model's ranges follow moving averages, not learnt scales (like ModelOpt's fixed
# ones): small weight steps (see int8.qad.MODELOPT_LR)
QAT_LR = 1e-5
# the batch range of the graph that is quantized and trained (the calibration and distillation
# batches); the converted graph is exported again over the artifact's own range
TRAINING_BATCH = (1, 256)


def quantize(ref, spec: "BuildSpec", calib, options: dict[str, Any], log: "BuildLog"):
    """The INT8 ExportedProgram of ``ref`` for ``spec`` (to compile), and the manifest record."""
    import torch
    import torchao
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

    from ..torch_export import export, exportable, quiet_export

    recipe, steps = options["recipe"], options.get("qad_steps") or 0
    qat = recipe == "qad"
    chw = tuple(ref.data_config.input_size)
    x = torch.from_numpy(np.concatenate(calib.tensors()))
    started = time.perf_counter()
    # BatchNorm folded first: the quantizer sees the convolutions' final weights, and torchao's QAT
    # conv-BN fusion (prepare_qat_pt2e) fails on a convolution left unquantized (the SE gates'
    # fc1: IndexError in _update_conv_input_qspec_map_after_replacement, torchao 0.18)
    model = exportable(fold_batchnorm(copy.deepcopy(ref.module)).eval(), torch.float32)
    log(f"exporting for PT2E quantization ({'QAT' if qat else 'PTQ'} graph)")
    graph = export(model, TRAINING_BATCH, chw, "cpu", None).module()
    kinds = kept_float(bool(options.get("float_depthwise")))
    quantizer, kept = _quantizer(model, qat, kinds)
    with quiet_export():
        prepared = (prepare_qat_pt2e if qat else prepare_pt2e)(graph, quantizer)
        allow_exported_model_train_eval(prepared)
        prepared.eval()  # BatchNorm on its running statistics (QAT: while the ranges are seeded, and in training)
        log(f"calibrating {len(x)} images (X86InductorQuantizer{', QAT' if qat else ''}; left in FP32: "
        f"{', '.join(layer.description.split(' (')[0] for layer in kinds)})")
        with torch.no_grad():
            for i in range(0, len(x), CALIB_BATCH):
                prepared(x[i:i + CALIB_BATCH])
                log.progress("calibration", min(i + CALIB_BATCH, len(x)), len(x))
    record: dict[str, Any] = {
        "tool": "torchao.quantization.pt2e", "version": torchao.__version__, "recipe": recipe,
        "quantizer": "X86InductorQuantizer", "activations": "uint8 asymmetric (per tensor)",
        "weights": "int8 symmetric (per channel)",
        "unquantized": [layer.description.split(" (")[0] + " (FP32)" for layer in kinds],
        "kept_modules": len(kept),
        "images": len(x),
        "method": "quantization-aware distillation" if qat and steps else "post-training quantization",
    }
    if qat and steps:
        # every step, no early stop: on dev/ it stopped at step 50 (kept 40) at 30.7 dB / top-1 0.89,
        # against 31.5 dB / 0.915 for the 100 steps (docs/int8-fidelity.md, pt2 INT8)
        config = QadConfig(steps=steps, lr=QAT_LR, ignored_patterns=(), patience=0)
        teacher = copy.deepcopy(ref.module).eval()
        record["distillation"] = distill(prepared, teacher, x, config, log)
    with quiet_export():
        converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)
    converted.eval()
    log(f"exporting the INT8 graph (dynamic batch {spec.batch[0]}..{spec.batch[1]})")
    exported = export(converted, spec.batch, chw, "cpu", None)
    record["seconds"] = round(time.perf_counter() - started, 1)
    return exported, record


def kept_float(float_depthwise: bool) -> tuple:
    """The layer kinds left in FP32: the squeeze-excitation gates (as every recipe here), and with
    ``float_depthwise`` the depthwise convolutions. On dev/ (stand-in weights, 300 calibration
    photos, PTQ, eager converted graph): everything else quantized 0.875 top-1 / 29.4 dB, depthwise
    in FP32 0.940 / 34.9 dB (the first five alone 0.920; the head in FP32 0.880). But the depthwise
    convolutions are where INT8 pays on CPU: b32 on the Xeon `amx` host, all INT8 175 ms, first two
    in FP32 267 ms, first five 358 ms, FP32 model 394 ms."""
    return (SE_GATES, DEPTHWISE) if float_depthwise else (SE_GATES,)


def _quantizer(model, qat: bool, kept_kinds: tuple):
    """X86InductorQuantizer, x86 defaults (7-bit activations are not needed: INT8 builds and
    packages need VNNI), with the ``kept_kinds`` modules left unquantized."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=qat))
    marks = {layer.module for layer in kept_kinds}
    kept = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in marks]
    for name in kept:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer, kept
