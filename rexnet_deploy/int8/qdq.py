"""Facts about a Q/DQ ONNX graph: TensorRT's rules for explicit quantization (checked on every Q/DQ
graph a build writes, whichever recipe made it) and its QuantizeLinear count (the manifest's record)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import BuildError

if TYPE_CHECKING:  # pragma: no cover
    import onnx


def initializers(graph: "onnx.GraphProto") -> dict[str, np.ndarray]:
    """Name → numpy array of every initializer of ``graph``."""
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def trt_rule_violations(model: "onnx.ModelProto") -> list[str]:
    """What in a Q/DQ graph TensorRT would reject or run differently: every zero-point int8 and 0;
    weights per-channel on the output-channel axis; activations per-tensor (scalar scale);
    scales positive and finite."""
    init = initializers(model.graph)
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


def require_trt_rules(model: "onnx.ModelProto", graph: str) -> None:
    """Raise BuildError naming ``graph`` (e.g. "the FP16 Q/DQ graph") when it breaks TensorRT's rules."""
    problems = trt_rule_violations(model)
    if problems:
        raise BuildError(f"{graph} breaks TensorRT's rules: {problems[0]} ({len(problems)} problem(s))")


def quantize_linear_count(model: "onnx.ModelProto") -> int:
    """How many QuantizeLinear nodes ``model`` (an ``onnx.ModelProto``) has."""
    return sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
