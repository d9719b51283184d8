"""ONNX Runtime backend (CPU): FP32, FP16, and INT8 in the format ONNX Runtime's CPU kernels run fast.

FP32 is the exported graph (:mod:`rexnet_deploy.onnx_export`, proven against PyTorch to 1e-4).
INT8 is ONNX Runtime's static quantization on the calibration set: QDQ format, uint8 activations
(asymmetric), int8 per-channel weights. That is the CPU-fast format; the default recipe, ``fused-qad``,
then distils that graph's weights in place for 40 steps (:mod:`rexnet_deploy.int8.ort_fused`; the
placement ONNX Runtime fuses into QLinearConv unchanged): on unseen photos 34.4-34.6 dB SQNR, min
cosine 0.9991 against 30.0 dB for ``--recipe quantize_static`` (post-training alone, the quick
recipe), at the same speed (docs/int8-fidelity.md). The SE gates, the stem (``models.STEM``) and the
classifier head stay FP32 in both (:func:`_head_nodes`). TensorRT needs symmetric int8 activations
instead, which ONNX Runtime's CPU kernels run about 3× slower; that graph belongs to the TensorRT
backend (``--recipe qad`` builds it here too).

FP16 is ModelOpt's autocast graph (FP32 input/output), the graph the TensorRT backend compiles for
``--fp16``; it needs the ``trt`` extra. CPUs without FP16 arithmetic run it slower than FP32: it is
here to run that graph anywhere, not for speed.

``reduce_range`` (7-bit weights) is on: CPUs without VNNI multiply u8×s8 pairs into int16, which
saturates with 8-bit weights. The OpenVINO backend measured the same effect on ReXNet (see
``openvino_int8.py``).

Every INT8 graph is written with :func:`~rexnet_deploy.ort_session.pad_amx_widths` applied, on every
build host: ONNX Runtime's u8×s8 GEMM on AMX-INT8 CPUs (Xeon 4th gen+) computes output widths with
``N % 32`` in 17..31 wrong (microsoft/onnxruntime#26324; ReXNet-1.0 has 13 such 1×1 convolutions:
27, 50, 61, 84, 95, 117, 151, 185, 504, 570, 636, 702, 1044 channels), which took the stand-in's
INT8 engine to 3.3 dB SQNR on an AMX Xeon. The padded graph computes the same values on every CPU, so
an artifact built on one CPU class is right on another. An INT8 artifact built before this
(``backend_config`` without ``amx_workaround``) is refused on an AMX-INT8 host, in one line.

The runtime imports only onnxruntime and numpy. ``InferenceSession.run`` is thread-safe.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine import Engine
from ..errors import BackendUnavailable, UsageError
from ..int8.recipes import ONNXRUNTIME_FUSED, QAD

if TYPE_CHECKING:  # pragma: no cover
    from ..log import BuildLog
    from ..spec import BuildSpec

PAYLOAD = "model.onnx"
OPTIMIZED = "optimized.onnx"  # the cached graph, in the engine's cache folder


def validate(spec: BuildSpec, options: dict[str, Any]) -> dict[str, Any]:
    """The INT8 recipe resolved (``--recipe``, default ``fused-qad``) and its steps in range; FP16
    and the ``qad`` graph need ModelOpt."""
    from ..int8.ort_fused import SCHEDULE
    from ..int8.recipes import ONNXRUNTIME_DEFAULT, resolve

    opts = dict(options)
    # both distilled graphs take --qad-steps: quantize_static's in place (fused-qad, 40 by default) and
    # ModelOpt's (qad, 100)
    opts["recipe"], opts["qad_steps"] = resolve(opts.get("recipe"), opts["qad_steps"], default=ONNXRUNTIME_DEFAULT,
                                                default_steps={ONNXRUNTIME_FUSED: SCHEDULE["steps"]},
                                                distilled=(ONNXRUNTIME_FUSED, QAD))
    if (spec.precision == "fp16" or opts["recipe"] == QAD) and importlib.util.find_spec("modelopt") is None:
        raise BackendUnavailable(f"onnxruntime {spec.precision} graphs are made by ModelOpt, which is not installed: "
                                 "pip install 'rexnet-deploy[trt]'")
    return opts


def host_problem(precision: str) -> str | None:
    return None  # ONNX Runtime's CPU provider runs every precision on every CPU


def build(ref, spec: BuildSpec, writer, log: BuildLog, *, calib=None,
          options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export the FP32 graph to ``model.onnx``; for INT8, quantize it on ``calib`` in place."""
    import onnx
    import onnxruntime as ort

    from .. import onnx_export

    log("exporting ONNX (opset 17) and checking it against PyTorch on ONNX Runtime")
    target = writer.path(PAYLOAD)
    fp32 = target if spec.precision == "fp32" else target.with_name("fp32.tmp.onnx")
    export = onnx_export.export(ref, fp32, batch=spec.batch)
    config: dict[str, Any] = {"export": export, "graph_optimization": "all", "provider": "CPUExecutionProvider"}
    recipe = (options or {}).get("recipe")
    if spec.precision == "int8" and recipe == QAD:
        from ..int8 import qad

        config["quantization"] = qad.qdq_graph(ref, calib, int(options["qad_steps"]), target, log)
    elif spec.precision == "int8" and recipe == ONNXRUNTIME_FUSED:
        config["quantization"] = _fused(ref, fp32, target, calib, int(options["qad_steps"]), log)
    elif spec.precision == "int8":
        log(f"quantizing with ONNX Runtime on {len(calib)} calibration images (min-max ranges)")
        config["quantization"] = _quantize(fp32, target, calib)
    elif spec.precision == "fp16":
        from ..int8 import modelopt_passes

        log("converting the graph to FP16 (ModelOpt autocast, FP32 input/output)")
        config["precision_pass"] = modelopt_passes.to_fp16(fp32, target)
    if spec.precision == "int8":
        config["amx_workaround"] = _pad_for_amx(target, log)
    if fp32 != target:
        fp32.unlink()
    return {
        "payload": PAYLOAD,
        "backend_config": config,
        "runtime": {"onnxruntime": ort.__version__},
        "environment": {"onnxruntime": ort.__version__, "onnx": onnx.__version__},
    }


# Min-max ranges averaged over batches of this many images (ONNX Runtime's CalibMovingAverage):
# the per-batch extremes, not the single most extreme pixel of all 300 photos. On dev/ (unseen
# classes) it measured 0.865 top-1 agreement / 29.0 dB against 0.84 / 27.1 dB for the global min-max.
CALIB_BATCH = 10


def _fused(ref, src, dst, calib, steps: int, log: BuildLog) -> dict[str, Any]:
    """The ``fused-qad`` recipe: :func:`_quantize`'s graph (the placement ONNX Runtime fuses into
    QLinearConv), its weights then distilled in place (:mod:`rexnet_deploy.int8.ort_fused`)."""
    import time

    from ..int8 import ort_fused

    t0 = time.perf_counter()
    log(f"INT8 recipe {ONNXRUNTIME_FUSED}: ONNX Runtime's quantize_static graph on {len(calib)} calibration images, "
        f"then {steps} distillation steps of its weights in that graph")
    ptq = _quantize(src, dst, calib)
    ptq_seconds = time.perf_counter() - t0
    record = ort_fused.distill_graph(dst, src, ref.module, calib.tensors(), steps, log)
    seconds = time.perf_counter() - t0
    d = record["distillation"] or {}
    log(f"INT8 recipe {ONNXRUNTIME_FUSED} took {seconds:.0f} s: quantize_static {ptq_seconds:.0f} s, "
        f"{d.get('steps', 0)} distillation steps {d.get('seconds', 0):.0f} s")
    return {**ptq, **record, "ptq_seconds": round(ptq_seconds, 1), "seconds": round(seconds, 1)}


def _quantize(src, dst, calib) -> dict[str, Any]:
    """Min-max ranges, averaged per batch: ONNX Runtime's entropy and percentile calibrators ran
    out of 24 GiB on 300 ReXNet images here (they keep every activation histogram of every image)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from ..int8.qdq import quantize_linear_count
    from ..models import SE_GATES, STEM
    from ..onnx_export import prune_file

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = calib.batches(CALIB_BATCH)

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {"input": item}

    # ReXNet's squeeze-excitation gates stay FP32: +0.3 dB, +1.5 points; so do the head (_head_nodes) and
    # the stem (models.STEM: +1.5 dB after PTQ on dev/ at the same speed; its convolution is 3% of the work)
    fp32_model = onnx.load(str(src))
    se_nodes, head_nodes, stem_nodes = SE_GATES.onnx_nodes(fp32_model), _head_nodes(fp32_model), STEM.onnx_nodes(fp32_model)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs per-node notices on the root logger
    try:
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=se_nodes + head_nodes + stem_nodes,
                        extra_options={"CalibMovingAverage": True})
    finally:
        root.setLevel(level)
    prune_file(dst)  # the Constant min/max of each ReLU6 (Clip) it folded into Q/DQ stay behind, unread
    model = onnx.load(str(dst))
    return {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "activations": "uint8 asymmetric, per-tensor",
        "weights": "int8 symmetric, per-channel, 7-bit range (reduce_range)",
        "calib_method": "minmax",
        "calib_moving_average_batch": CALIB_BATCH,
        "fp32_nodes": f"{len(se_nodes)} squeeze-excitation nodes, {len(head_nodes)} head nodes, {len(stem_nodes)} stem nodes",
        "quantize_linear_nodes": quantize_linear_count(model),
    }


def _head_nodes(model: Any) -> list[str]:
    """The classifier head left FP32: the global pool, the classifier and the activation feeding the
    pool, back to the last convolution (ReXNet's final SiLU: Sigmoid, Mul). The pool's 1280-channel input
    was the activation quantizer that cost most (models.GLOBAL_POOL); in the u8 graph keeping the head
    FP32 measured +1.6 dB on dev/ after fused-qad (33.7-33.8 dB against 31.7-32.6 over three distillation
    seeds; top-2 0.995-1.000 against 0.990-0.995; top-1 0.905-0.925 against 0.920-0.945) at ~1% of the
    speed: every convolution stays a QLinearConv (docs/int8-fidelity.md, "ONNX Runtime")."""
    from ..models import HEAD

    producer = {o: n for n in model.graph.node for o in n.output}
    names = HEAD.onnx_nodes(model)
    pools = [n for n in model.graph.node if n.op_type == "GlobalAveragePool"]
    pending = [pools[0].input[0]] if len(pools) == 1 else []
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.op_type == "Conv" or node.name in names:
            continue
        names.append(node.name)
        pending.extend(node.input)
    return names


def _pad_for_amx(path, log: BuildLog) -> dict[str, Any]:
    """Apply :func:`~rexnet_deploy.ort_session.pad_amx_widths` to the INT8 graph at ``path``; the
    manifest's record of it (what the engine checks for on AMX hosts)."""
    import onnx

    from ..ort_session import AMX_ISSUE, pad_amx_widths

    model = onnx.load(str(path))
    changed = pad_amx_widths(model)
    if changed:
        onnx.save(model, str(path))
        log(f"widened {len(changed)} int8 layer(s) to a multiple of 32 output channels (the extra ones sliced off): "
            f"ONNX Runtime's AMX int8 GEMM computes their widths wrong ({AMX_ISSUE})")
    return {
        "upstream": f"{AMX_ISSUE} (fix: microsoft/onnxruntime#27671)",
        "why": "ONNX Runtime's u8xs8 GEMM on AMX-INT8 CPUs computes output widths with N % 32 in 17..31 wrong "
               "(GEMMs of 32+ rows); those layers get zero filters up to the next multiple of 32 and a Slice "
               "after their QuantizeLinear, so the graph's values are unchanged and no CPU runs that case",
        "padded": [f"{c['node']}: {c['width']}->{c['padded_to']}" for c in changed],
    }


class OnnxRuntimeEngine(Engine):
    """Options: ``threads`` (intra-op threads; default all cores); ``cache_dir`` (``Engine.load``):
    the graph as optimized for this CPU is saved there once and later sessions load it with graph
    optimizations off (ONNX Runtime's offline mode: the saved graph may hold this CPU's layout
    kernels, so the folder is keyed by runtime version and CPU, see :mod:`rexnet_deploy.cache`). The
    saved graph's sha256 is recorded beside it and checked before it is opened: a damaged one is
    rebuilt from the payload."""

    def _setup(self, *, threads: int | None = None) -> None:
        if self.device != "cpu":
            raise UsageError(f"onnxruntime engines run on cpu here, not {self.device}")
        import onnxruntime as ort

        self._refuse_unpadded_int8()
        self._threads = threads
        source = self.artifact.file(self.manifest.payload)
        cache = self._cache_folder("onnxruntime", ort.__version__)
        self.cache_folder = cache
        cached = None if cache is None else cache / OPTIMIZED
        self.cache_hit = False
        if cache is None:
            self._session = self._open(source, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
            return
        from ..cache import VerifiedFolder

        verified = VerifiedFolder(cache)
        # a damaged or unrecorded optimized.onnx is removed (one warning) and rebuilt below
        if not verified.check():  # ... or, stuck in a read-only folder, not read: optimize here, save nothing
            self.cache_folder = None
            self._session = self._open(source, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
            return
        if cached.is_file():
            try:
                self._session = self._open(cached, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
                self.cache_hit = True
                return
            except Exception:  # recorded but unreadable (another runtime build, say): rebuild it from the payload
                cached.unlink(missing_ok=True)
        # written under a unique name, its checksum recorded, then renamed: replicas sharing the folder
        # never read half a file, and the record is what the next load verifies it against
        tmp = cached.with_name(f".{OPTIMIZED}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self._session = self._open(source, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, save_to=tmp)
            verified.publish(tmp, OPTIMIZED)
        finally:
            tmp.unlink(missing_ok=True)

    def _refuse_unpadded_int8(self) -> None:
        """An INT8 graph written before :func:`_pad_for_amx` existed gives wrong answers on an
        AMX-INT8 CPU (microsoft/onnxruntime#26324): say so in one line instead of serving them."""
        from ..ort_session import AMX_ISSUE, amx_int8_host

        if self.manifest.precision != "int8" or "amx_workaround" in self.manifest.backend_config:
            return
        if amx_int8_host():
            raise BackendUnavailable(
                f"this INT8 ONNX Runtime graph gives wrong answers on this AMX-INT8 CPU ({AMX_ISSUE}: ONNX Runtime's "
                "AMX int8 GEMM miscomputes some layer widths) and predates the workaround; rebuild it with this "
                "version of rexnet-deploy, or serve this model with the openvino or pt2 backend")

    def _open(self, path, level, save_to=None):
        from ..ort_session import cpu_session

        return cpu_session(path, optimization=level, threads=self._threads, save_optimized_to=save_to)

    def _infer(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._session.run(self.output_names, {self.input_name: batch})

    def _release(self) -> None:
        self._session = None


ENGINE = OnnxRuntimeEngine
