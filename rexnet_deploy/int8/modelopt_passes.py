"""ModelOpt's precision passes on the exported ONNX graph (FP16 autocast, INT8 Q/DQ) and the
TensorRT calibration cache; each Q/DQ graph is held to TensorRT's rules (:mod:`.qdq`). Used by the TensorRT backend
(whose strongly typed networks take their precision from the graph), by the ONNX Runtime backend's
FP16, and by the INT8 sensitivity sweep.

TensorRT 10.1+ deprecates and TensorRT 11 removes implicit precision (builder flags, INT8
calibrators): the precision is in the graph. NVIDIA's ModelOpt writes both graphs:

* FP16: ``modelopt.onnx.autocast.convert_to_mixed_precision`` (FP16 inside, FP32 input/output);
* INT8: ``modelopt.onnx.quantization.quantize`` — explicit Q/DQ (symmetric int8, zero-point 0,
  per-channel weights, per-tensor activations), calibrated with ``entropy`` or ``max`` on ONNX
  Runtime CPU.

The INT8 graph TensorRT compiles is FP16 between the Q/DQ pairs (``high_precision_dtype="fp16"``,
ModelOpt's default; :func:`qdq_to_fp16` does the same to the PyTorch recipes' graphs): a strongly
typed network runs what the graph says, so FP32 there would run FP32/TF32 and make the INT8 engine
slower than the FP16 one. ONNX Runtime's CPU ``QuantizeLinear`` truncates FP16 inputs instead of
rounding them (onnxruntime#18576; 0% top-1 agreement on ReXNet), so every CPU run of such a graph
goes through :func:`fp32_quantize_inputs` first: a Cast to FP32 before each QuantizeLinear, exact
for FP16 values.

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

from ..errors import BuildError, UsageError, one_line
from ..onnx_export import constants_to_initializers, prune, prune_file
from .qdq import initializers, quantize_linear_count, require_trt_rules

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
    fp32_nodes = fp32_compute_nodes(model)
    return {
        "tool": "modelopt.onnx.autocast.convert_to_mixed_precision",
        "modelopt": _modelopt_version(),
        "low_precision": "fp16",
        "io": "fp32",
        "nodes_in_fp32": fp32_nodes,  # (compute nodes reading FP32 besides the I/O casts; [] expected)
        "seconds": round(time.perf_counter() - started, 1),
    }


# -- INT8 ---------------------------------------------------------------------------------------
HIGH_PRECISION = ("fp32", "fp16")


def quantize_int8(src: Path, dst: Path, *, calib=None, method: str = "entropy", exclude: Sequence[str] = (),
                  cache: Path | None = None, high_precision: str = "fp32",
                  warn: Warn = lambda _m: None) -> dict[str, Any]:
    """Write the Q/DQ graph of ``src`` to ``dst``, calibrated on ``calib`` (a loaded
    CalibrationSet) or, without images, on the activation scales of ``cache``. ``high_precision``:
    the type between the Q/DQ pairs (``fp16`` for TensorRT; input and output stay FP32).

    ``exclude``: op types (``Gemm``) or regular expressions searched in node names
    (``features\\.0/``), left unquantized (in the high precision); a pattern that matches nothing
    is a warning. ``method`` is ``entropy`` or ``max`` (the choices of the TensorRT backend's
    ``calib_method`` option, checked there).
    """
    import onnx
    from modelopt.onnx.quantization import quantize

    if high_precision not in HIGH_PRECISION:
        raise ValueError(f"high_precision must be one of {HIGH_PRECISION}, got {high_precision!r}")
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
                 calibration_eps=["cpu"], high_precision_dtype=high_precision,
                 op_types_to_exclude=op_types or None,
                 nodes_to_exclude=[re.escape(n) + "$" for n in node_names] or None,
                 output_path=str(dst), log_level="CRITICAL")
    if not dst.exists():
        raise BuildError("ModelOpt wrote no quantized graph")
    prune_file(dst)  # every graph we store is free of unread nodes and initializers (see onnx_export)
    model = onnx.load(str(dst))
    require_trt_rules(model, "the Q/DQ graph")
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
        "high_precision": high_precision,
        "nodes_in_fp32": fp32_compute_nodes(model) if high_precision == "fp16" else None,
        "calib_method": method,
        "calib_source": "cache" if calib is None else "images",
        "exclude": list(exclude),
        "excluded_nodes": sorted(node_names),
        "excluded_op_types": sorted(op_types),
        "quantize_linear_nodes": quantize_linear_count(model),
        "activation_tensors": len(scales),
        "convs_quantized": len(quantized),
        # Convs without Q/DQ, run in ``high_precision`` (FP16 in TensorRT's graphs): --exclude's, and
        # the depthwise convs ModelOpt leaves unquantized (channels not a multiple of 8 on ReXNet);
        # the manifest says which, so nobody has to diff graphs to find out.
        "convs_unquantized": kept,
        "seconds": round(time.perf_counter() - started, 1),
    }


def qdq_to_fp16(path: Path) -> dict[str, Any]:
    """Convert, in place, the floating-point parts of a Q/DQ graph (the PyTorch recipes' export)
    to FP16, input and output kept FP32: ModelOpt's own conversion, the one its ONNX quantizer
    applies for ``high_precision_dtype="fp16"`` (FP16 scales need opset 19, which it sets)."""
    import onnx
    from modelopt.onnx.autocast.convert import convert_to_f16

    started = time.perf_counter()
    with _quiet_modelopt():
        model = convert_to_f16(onnx.load(str(path)), low_precision_type="fp16", keep_io_types=True)
    constants_to_initializers(model.graph)  # the opset upgrade writes ReduceMean's axes as Constant nodes
    prune(model)
    require_trt_rules(model, "the FP16 Q/DQ graph")
    onnx.save(model, str(path))
    return {"tool": "modelopt.onnx.autocast.convert_to_f16", "io": "fp32",
            "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            "nodes_in_fp32": fp32_compute_nodes(model), "seconds": round(time.perf_counter() - started, 1)}


def fp32_quantize_inputs(model) -> tuple[Any, int]:
    """A copy of ``model`` in which every QuantizeLinear of FP16 (input and scale, same type by
    the ONNX spec) reads both cast to FP32; returns it and how many were rewired. For ONNX Runtime
    CPU, whose FP16 QuantizeLinear truncates toward zero (onnxruntime#18576) where TensorRT and the
    ONNX spec round half to even: FP16 → FP32 is exact, so the FP32 kernel quantizes the same
    values. Everything else, DequantizeLinear included, stays FP16."""
    import onnx
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    fp16 = {i.name for i in out.graph.initializer if i.data_type == TensorProto.FLOAT16}
    fp16 |= {v.name for v in list(out.graph.value_info) + list(out.graph.input)
             if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    nodes, rewired = [], 0
    for node in out.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in fp16:
            for k in (0, 1):
                cast = f"{node.name or node.output[0]}/fp32_input_{k}"
                nodes.append(helper.make_node("Cast", [node.input[k]], [cast], name=cast, to=TensorProto.FLOAT))
                node.input[k] = cast
            rewired += 1
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, rewired


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
    init = initializers(model.graph)
    producer = {o: n for n in model.graph.node for o in n.output}
    scales = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in init:
            name = node.input[0]
            cast = producer.get(name)
            if cast is not None and cast.op_type == "Cast":  # the FP16 graph's cast of the FP32 input: same tensor
                name = cast.input[0]
            scales[name] = float(np.asarray(init[node.input[1]]).reshape(-1)[0])
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


# -- graph facts ----------------------------------------------------------------------------------
def conv_precision(model) -> tuple[list[str], list[str]]:
    """(quantized convs, unquantized convs: those run in the graph's high precision) of a Q/DQ graph."""
    producer = {o: n for n in model.graph.node for o in n.output}
    quantized, kept = [], []
    for node in model.graph.node:
        if node.op_type == "Conv":
            src = producer.get(node.input[0])
            (quantized if src is not None and src.op_type == "DequantizeLinear" else kept).append(node.name)
    return quantized, kept


# -- helpers -------------------------------------------------------------------------------------
def fp32_compute_nodes(model) -> list[str]:
    """Nodes of an FP16 graph (autocast, or Q/DQ with FP16 between the pairs) that still read an
    FP32 tensor, besides the I/O casts; the types come from ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    fp32 = {v.name for v in list(inferred.graph.value_info) + list(inferred.graph.input)
            if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    fp32 |= {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
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
