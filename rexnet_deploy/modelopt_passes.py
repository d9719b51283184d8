"""ModelOpt's precision passes on the exported ONNX graph (FP16 autocast, INT8 Q/DQ), the
TensorRT calibration cache, and TensorRT's rules for Q/DQ graphs. Used by the TensorRT backend
(whose strongly typed networks take their precision from the graph), by the ONNX Runtime backend's
FP16, and by the INT8 sensitivity sweep.

TensorRT 10.1+ deprecates and TensorRT 11 removes implicit precision (builder flags, INT8
calibrators): the precision is in the graph. NVIDIA's ModelOpt writes both graphs:

* FP16: ``modelopt.onnx.autocast.convert_to_mixed_precision`` (FP16 inside, FP32 input/output);
* INT8: ``modelopt.onnx.quantization.quantize`` — explicit Q/DQ (symmetric int8, zero-point 0,
  per-channel weights, per-tensor activations), calibrated with ``entropy`` or ``max`` on ONNX
  Runtime CPU.

The INT8 graph keeps FP32 between the Q/DQ pairs (``high_precision_dtype="fp32"``): ModelOpt's
default, FP16 there, gave garbage on ReXNet (0% top-1 agreement; see the TensorRT issue's note).

Calibrated activation ranges are saved as a TensorRT-format calibration cache (``calib.cache``:
a header line, then ``tensor: <big-endian float32 scale in hex>``), the format ModelOpt reads
back with ``calibration_cache_path`` — so an INT8 graph can be rebuilt without the images.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import BuildError, UsageError, one_line
from .onnx_export import prune, prune_file

CACHE_HEADER = "TRT-rexnet-deploy-{method}"  # ModelOpt skips the first line, TensorRT's own header
Warn = Callable[[str], None]


# -- FP16 ---------------------------------------------------------------------------------------
def to_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """ModelOpt autocast: FP16 graph with FP32 input and output (TensorRT casts at the edges)."""
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    started = time.perf_counter()
    with _quiet_modelopt(), _ort_unpatched_after():
        model = convert_to_mixed_precision(str(src), low_precision_type="fp16", keep_io_types=True,
                                           providers=["cpu"])
    prune(model)  # every graph we store is free of unread nodes and initializers (see onnx_export)
    onnx.save(model, str(dst))
    fp32_nodes = _fp32_compute_nodes(model)
    return {
        "tool": "modelopt.onnx.autocast.convert_to_mixed_precision",
        "modelopt": _modelopt_version(),
        "low_precision": "fp16",
        "io": "fp32",
        "nodes_kept_fp32": fp32_nodes,
        "seconds": round(time.perf_counter() - started, 1),
    }


# -- INT8 ---------------------------------------------------------------------------------------
def quantize_int8(src: Path, dst: Path, *, calib=None, method: str = "entropy", exclude: Sequence[str] = (),
                  cache: Path | None = None, warn: Warn = lambda _m: None) -> dict[str, Any]:
    """Write the Q/DQ graph of ``src`` to ``dst``, calibrated on ``calib`` (a loaded
    CalibrationSet) or, without images, on the activation scales of ``cache``.

    ``exclude``: op types (``Gemm``) or regular expressions searched in node names
    (``features\\.0/``), kept in FP32; a pattern that matches nothing is a warning. ``method`` is
    ``entropy`` or ``max`` (the choices of the TensorRT backend's ``calib_method`` option, checked there).
    """
    import onnx
    from modelopt.onnx.quantization import quantize

    graph = onnx.load(str(src)).graph
    op_types, node_names = resolve_exclude(graph, exclude, warn)
    cached = None
    if cache is not None:
        cached = read_calib_cache(cache)
        check_cache_matches(cached, graph, cache)
    data = None if calib is None else {"input": np.concatenate(calib.tensors())}
    started = time.perf_counter()
    with _quiet_modelopt(), _ort_unpatched_after():
        # Exact names, anchored: ModelOpt re.match()es each entry against node names.
        quantize(str(src), quantize_mode="int8", calibration_data=data, calibration_method=method,
                 calibration_cache_path=str(cache) if cache is not None else None,
                 calibration_eps=["cpu"], high_precision_dtype="fp32",
                 op_types_to_exclude=op_types or None,
                 nodes_to_exclude=[re.escape(n) + "$" for n in node_names] or None,
                 output_path=str(dst), log_level="CRITICAL")
    if not dst.exists():
        raise BuildError("ModelOpt wrote no quantized graph")
    prune_file(dst)  # every graph we store is free of unread nodes and initializers (see onnx_export)
    model = onnx.load(str(dst))
    problems = trt_rule_violations(model)
    if problems:
        raise BuildError(f"the Q/DQ graph breaks TensorRT's rules: {problems[0]} ({len(problems)} problem(s))")
    scales = activation_scales(model)
    if cached is not None:
        missing = sorted(set(cached) - set(scales))
        if missing:
            raise UsageError(f"the calibration cache {cache} does not match the graph: "
                             f"{len(missing)} cached tensor(s) were not quantized (e.g. {missing[0]})")
    quantized, kept = conv_precision(model)
    return {
        "tool": "modelopt.onnx.quantization.quantize",
        "modelopt": _modelopt_version(),
        "format": "QDQ",
        "activations": "int8 symmetric, per-tensor",
        "weights": "int8 symmetric, per-channel",
        "high_precision": "fp32",
        "calib_method": method,
        "calib_source": "cache" if calib is None else "images",
        "exclude": list(exclude),
        "excluded_nodes": sorted(node_names),
        "excluded_op_types": sorted(op_types),
        "quantize_linear_nodes": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
        "activation_tensors": len(scales),
        "convs_quantized": len(quantized),
        # ModelOpt leaves some depthwise convs in high precision (channels not a multiple of 8 on
        # ReXNet); the manifest says which, so nobody has to diff graphs to find out.
        "convs_kept_fp32": kept,
        "seconds": round(time.perf_counter() - started, 1),
    }


def resolve_exclude(graph, patterns: Iterable[str], warn: Warn) -> tuple[list[str], list[str]]:
    """Split ``--exclude`` patterns into op types and node names; warn about patterns that match nothing."""
    ops = {n.op_type for n in graph.node}
    op_types: list[str] = []
    names: set[str] = set()
    for pattern in patterns:
        if pattern in ops:
            op_types.append(pattern)
            continue
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"--exclude {pattern!r} is not a valid regular expression: {exc}") from None
        hits = {n.name for n in graph.node if rx.search(n.name)}
        if not hits:
            warn(f"warning: --exclude {pattern!r} matches no op type or node name of the graph")
        names |= hits
    return op_types, sorted(names)


# -- calibration cache --------------------------------------------------------------------------
def activation_scales(model) -> dict[str, float]:
    """Per-tensor scale of every quantized activation (tensor → scale) in a Q/DQ graph."""
    init = _initializers(model.graph)
    scales = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in init:
            scales[node.input[0]] = float(np.asarray(init[node.input[1]]).reshape(-1)[0])
    return scales


def write_calib_cache(model, path: Path, method: str) -> int:
    """Write the TensorRT-format calibration cache of a Q/DQ graph; returns the entry count."""
    scales = activation_scales(model)
    lines = [CACHE_HEADER.format(method=method)]
    lines += [f"{name}: {struct.pack('!f', scale).hex()}" for name, scale in sorted(scales.items())]
    path.write_text("\n".join(lines) + "\n")
    return len(scales)


def read_calib_cache(path: Path) -> dict[str, float]:
    """Tensor → scale from a TensorRT-format calibration cache; bad files are one-line errors."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the calibration cache {path}: {one_line(exc)}") from None
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        try:
            if not sep:
                raise ValueError
            scale = struct.unpack("!f", bytes.fromhex(value.strip()))[0]
        except (ValueError, struct.error):
            raise UsageError(f"{path} is not a TensorRT calibration cache (line {number}: {line[:60]!r})") from None
        if not np.isfinite(scale) or scale <= 0:
            raise UsageError(f"the calibration cache {path} has a non-positive scale for {name}")
        scales[name] = scale
    if not scales:
        raise UsageError(f"the calibration cache {path} holds no scales")
    return scales


def check_cache_matches(scales: dict[str, float], graph, path: Path) -> None:
    """Every cached tensor must be a tensor of this graph (another model's cache is refused)."""
    tensors = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    unknown = sorted(set(scales) - tensors)
    if unknown:
        raise UsageError(f"the calibration cache {path} does not match the graph: {len(unknown)} of "
                         f"{len(scales)} tensors are not in it (e.g. {unknown[0]})")


# -- TensorRT's rules for explicit quantization ---------------------------------------------------
def trt_rule_violations(model) -> list[str]:
    """What in a Q/DQ graph TensorRT would reject or run differently: every zero-point int8 and 0;
    weights per-channel on the output-channel axis; activations per-tensor (scalar scale);
    scales positive and finite."""
    init = _initializers(model.graph)
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    problems = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"{node.op_type} {node.name or node.output[0]}"
        if len(node.input) < 3 or node.input[2] not in init:
            problems.append(f"{where}: no int8 zero-point (the default is uint8)")
            continue
        zero, scale = init[node.input[2]], init.get(node.input[1])
        if zero.dtype != np.int8:
            problems.append(f"{where}: zero-point is {zero.dtype}, not int8")
        if np.any(zero != 0):
            problems.append(f"{where}: zero-point is not 0 (TensorRT quantization is symmetric)")
        if scale is None:
            problems.append(f"{where}: scale is not a constant")
            continue
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            problems.append(f"{where}: scale is not positive and finite")
        weight = node.input[0] if node.op_type == "QuantizeLinear" else None
        if weight is not None and weight in init:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            w = init[weight]
            users = {c.op_type for d in consumers.get(node.output[0], []) for c in consumers.get(d.output[0], [])}
            if "Conv" in users and (scale.ndim != 1 or axis != 0 or scale.shape[0] != w.shape[0]):
                problems.append(f"{where}: conv weights need per-channel scales on axis 0 "
                                f"(scale shape {list(scale.shape)}, axis {axis})")
        elif weight is not None and scale.size != 1:
            problems.append(f"{where}: activation scale has shape {list(scale.shape)}, not per-tensor")
    return problems


def conv_precision(model) -> tuple[list[str], list[str]]:
    """(quantized convs, convs left in high precision) of a Q/DQ graph."""
    producer = {o: n for n in model.graph.node for o in n.output}
    quantized, kept = [], []
    for node in model.graph.node:
        if node.op_type == "Conv":
            src = producer.get(node.input[0])
            (quantized if src is not None and src.op_type == "DequantizeLinear" else kept).append(node.name)
    return quantized, kept


# -- helpers -------------------------------------------------------------------------------------
def _initializers(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def _fp32_compute_nodes(model) -> list[str]:
    """Nodes of an autocast graph that still compute in FP32 (besides the I/O casts)."""
    import onnx

    fp32 = {v.name for v in list(model.graph.value_info) + list(model.graph.input)
            if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    return sorted(n.name for n in model.graph.node
                  if n.op_type not in ("Cast", "Constant") and any(i in fp32 for i in n.input))


def _modelopt_version() -> str:
    import modelopt

    return modelopt.__version__


@contextlib.contextmanager
def _ort_unpatched_after() -> Iterator[None]:
    """ModelOpt's ONNX quantization monkeypatches ONNX Runtime's calibrators and quantizers process-wide
    (``ort_patching.patch_ort_modules``); a later ``quantize_static`` in the same process (the
    onnxruntime backend after a TensorRT build: matrix, benchmarks) then fails with "Quantization
    parameters are not specified for param input". Put ONNX Runtime's own functions back."""
    from onnxruntime.quantization import base_quantizer, calibrate, qdq_quantizer

    owners = [calibrate, calibrate.CalibraterBase, calibrate.MinMaxCalibrater, calibrate.HistogramCalibrater,
              calibrate.HistogramCollector, qdq_quantizer.QDQQuantizer, base_quantizer.BaseQuantizer]
    saved = [(owner, dict(vars(owner))) for owner in owners]
    try:
        yield
    finally:
        for owner, attrs in saved:
            for name, value in attrs.items():
                if vars(owner).get(name) is not value:  # what the pass replaced (dunders never are)
                    setattr(owner, name, value)


@contextlib.contextmanager
def _quiet_modelopt() -> Iterator[None]:
    """ModelOpt logs at INFO and warns about NVML on GPU-less hosts (re-configuring its loggers on
    each call), and ONNX Runtime's histogram calibrator prints a line and a progress bar per tensor
    batch; what matters goes in the manifest. Logging and Python-level output are off for the call."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        logging.disable(previous)
