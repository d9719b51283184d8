"""The one way this project opens an ONNX Runtime session: on the CPU provider, ONNX Runtime's own
log kept at errors unless ``REXNET_DEPLOY_DEBUG=1``. The export check, the ONNX Runtime engine, the
TensorRT graph emulation and the sensitivity sweep all open theirs here. Imports only onnxruntime,
when called (runtimes import this module; it never imports torch); :func:`pad_amx_widths` also
imports onnx and numpy, when called.

AMX hosts (microsoft/onnxruntime#26324): ONNX Runtime's u8×s8 GEMM on AMX-INT8 CPUs (Xeon 4th gen
and later; MLAS ``MlasGemmU8S8DispatchAmx``, which also serves u8×u8) returns wrong rows when the
output width N has ``N % 32`` in 17..31 (the second 16-column tile partly filled) and the GEMM has
32 rows or more (a convolution's output pixels, a Gemm's batch). Measured here on onnxruntime-gpu
1.24.4 with one QDQ convolution, fused (QLinearConv) against the same graph unfused: every width with
``N % 32 > 16`` was off by up to 255 levels, every other width within 1; 31 rows exact, 32 wrong. The
fix upstream is microsoft/onnxruntime#27671 (merged 2026-03, "corrects the AMX U8S8 32-row kernel
path"); which release carries it is not verified here. No session option or environment variable
selects another kernel (MLAS picks AMX whenever the CPU and OS allow it). :func:`pad_amx_widths`
widens those layers' outputs to the next multiple of 32 with zero filters and slices the extra
channels off after their QuantizeLinear, so the kernel never sees such a width, on any CPU.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

AMX_ISSUE = "microsoft/onnxruntime#26324"
AMX_TILE = 32  # two 16-column AMX tiles: widths with N % 32 in 17..31 are the ones computed wrong


def ort_log_level() -> int:
    """``SessionOptions.log_severity_level`` for our ONNX Runtime sessions: errors only (3), or
    ONNX Runtime's default, warnings (2), with ``REXNET_DEPLOY_DEBUG=1``. Its warnings are notes
    about its own graph rewrites, printed to the process's stderr on every load; not the user's to act on."""
    return 2 if os.environ.get("REXNET_DEPLOY_DEBUG") == "1" else 3


def amx_int8_host(flags: Any = None) -> bool:
    """Whether this CPU has AMX-INT8 (``amx_tile`` and ``amx_int8`` in ``/proc/cpuinfo``), where ONNX
    Runtime's u8×s8 GEMM runs on the AMX kernel of :data:`AMX_ISSUE`. ``flags``: the CPU's flags
    (default: this host's)."""
    from .cpu import cpuinfo_flags

    have = set(cpuinfo_flags() if flags is None else flags)
    return {"amx_tile", "amx_int8"} <= have


def amx_bad_width(n: int) -> bool:
    """An output width the AMX u8×s8 GEMM computes wrong (:data:`AMX_ISSUE`): ``n % 32`` in 17..31."""
    return n % AMX_TILE > AMX_TILE // 2


def pad_amx_widths(model: Any) -> list[dict[str, Any]]:
    """Rewrite, in place, the quantized layers ONNX Runtime would run on the broken AMX GEMM
    (:data:`AMX_ISSUE`) so that it never gets one of their widths; returns one
    ``{"node", "width", "padded_to"}`` per layer changed.

    A layer is a ``Conv`` with ``group=1`` or a ``Gemm`` with ``transB=1`` (weights ``[N, ...]``)
    whose only consumer is a ``QuantizeLinear`` (the pattern ONNX Runtime fuses into QLinearConv /
    QGemm), weights a DequantizeLinear of an initializer or a float initializer (ONNX Runtime
    quantizes those itself), and ``amx_bad_width(N)``. Its weights, their per-channel scales and zero
    points, and its bias grow to the next multiple of 32 with zero filters (scales repeat the last
    channel's); a ``Slice`` on the channel axis after its QuantizeLinear gives the consumers the
    original tensor. The first N channels are computed exactly as before, so the graph's values do
    not change; depthwise convolutions (their own kernel) are left alone."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in graph.output}
    changed: list[dict[str, Any]] = []
    stale: set[str] = set()
    replaced: set[str] = set()
    passed: list = []  # Identity nodes between a layer and its initializers

    def grow(name: str, extra: int, new: str, repeat_last: bool) -> str:
        a = numpy_helper.to_array(inits[name])
        if a.ndim == 0 or a.size == 1:  # per-tensor: nothing to widen
            return name
        tail = np.repeat(a[-1:], extra, 0) if repeat_last else np.zeros((extra, *a.shape[1:]), a.dtype)
        graph.initializer.append(numpy_helper.from_array(np.concatenate([a, tail]), new))
        replaced.add(name)
        return new

    def initializer_of(name: str) -> str | None:
        """The initializer ``name`` is, or is an Identity (chain) of (the exporter shares equal tensors so)."""
        while name not in inits and name in producer and producer[name].op_type == "Identity":
            passed.append(producer[name])
            name = producer[name].input[0]
        return name if name in inits else None

    def widener(name: str, tag: str) -> Any:
        """How to widen a weight (or bias) input ``name`` (a function giving the new input name), or
        None when it is not a layout this rewrites. Nothing is changed until the function is called."""
        if initializer_of(name) is not None:
            return lambda extra: grow(initializer_of(name), extra, tag, False)
        dq = producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or initializer_of(dq.input[0]) is None:
            return None
        if len(consumers.get(dq.output[0], [])) != 1:
            return None  # shared with another node: leave it
        attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
        if attrs.get("axis", 1) != 0 and numpy_helper.to_array(inits[initializer_of(dq.input[1])]).size > 1:
            return None  # per-channel along another axis: not a layout this rewrites
        if any(initializer_of(i) is None for i in dq.input[1:] if i):
            return None

        def apply(extra: int) -> str:
            dq.input[0] = grow(initializer_of(dq.input[0]), extra, tag, False)
            dq.input[1] = grow(initializer_of(dq.input[1]), extra, f"{tag}_scale", True)
            if len(dq.input) > 2 and dq.input[2]:
                dq.input[2] = grow(initializer_of(dq.input[2]), extra, f"{tag}_zero_point", False)
            return dq.output[0]
        return apply

    for node in list(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and attrs.get("group", 1) != 1:
            continue
        if node.op_type == "Gemm" and (attrs.get("transB", 0) != 1 or attrs.get("transA", 0) != 0):
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or node.output[0] in graph_outputs:
            continue
        weight = node.input[1]
        source = initializer_of(weight)
        if source is None and weight in producer:
            source = initializer_of(producer[weight].input[0])
        if source is None or not inits[source].dims:
            continue
        width = int(inits[source].dims[0])
        if not amx_bad_width(width):
            continue
        extra = -width % AMX_TILE
        tag = f"{node.name or node.output[0]}_amx_pad"
        has_bias = len(node.input) > 2 and bool(node.input[2])
        widen_weight = widener(weight, f"{tag}_w")
        widen_bias = widener(node.input[2], f"{tag}_b") if has_bias else None
        if widen_weight is None or (has_bias and widen_bias is None):
            continue
        node.input[1] = widen_weight(extra)
        if has_bias:
            node.input[2] = widen_bias(extra)
        quant = users[0]
        original = quant.output[0]
        quant.output[0] = f"{tag}_quantized"
        for suffix, value in (("starts", 0), ("ends", width), ("axes", 1)):
            graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), f"{tag}_{suffix}"))
        graph.node.insert(list(graph.node).index(quant) + 1, helper.make_node(
            "Slice", [quant.output[0], f"{tag}_starts", f"{tag}_ends", f"{tag}_axes"], [original], name=f"{tag}_slice"))
        changed.append({"node": node.name, "width": width, "padded_to": width + extra})
        stale.update(i for i in node.input[1:3] if i)
        stale.add(node.output[0])
    # the widened tensors' recorded shapes are stale: ONNX Runtime infers them again
    for v in [v for v in graph.value_info if v.name in stale]:
        graph.value_info.remove(v)
    # the narrow originals nothing reads any more (and the Identity nodes that passed them on)
    while True:
        read = _names_read(graph) | {o.name for o in graph.output}
        unread = [n for n in graph.node if any(n is p for p in passed) and n.output[0] not in read]
        if not unread:
            break
        for node in unread:
            graph.node.remove(node)
            replaced.add(node.input[0])
    for t in [t for t in graph.initializer if t.name in replaced and t.name not in read]:
        graph.initializer.remove(t)
    return changed


def _names_read(graph: Any) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= _names_read(sub)
    return names


def cpu_session(source: str | os.PathLike | Any, *, optimization: Any = None, threads: int | None = None,
                save_optimized_to: str | os.PathLike | None = None,
                log_level: int | None = None) -> "onnxruntime.InferenceSession":
    """An ONNX Runtime session on the CPU provider, of a file or of an in-memory ``onnx.ModelProto``.

    ``optimization``: a ``GraphOptimizationLevel`` (default: ONNX Runtime's, all); ``threads``:
    intra-op threads (default: all cores); ``save_optimized_to``: where ONNX Runtime writes the
    graph as optimized for this CPU; ``log_level``: default :func:`ort_log_level`.

    On an AMX-INT8 host an in-memory model runs with :func:`pad_amx_widths` applied to a copy (the
    graphs our builds write to files have it already; the ONNX Runtime engine refuses older ones)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = ort_log_level() if log_level is None else log_level
    if optimization is not None:
        options.graph_optimization_level = optimization
    if save_optimized_to is not None:
        options.optimized_model_filepath = str(save_optimized_to)
    if threads:
        options.intra_op_num_threads = int(threads)
    if hasattr(source, "SerializeToString") and amx_int8_host() and _has_quantize(source):
        padded = type(source)()
        padded.CopyFrom(source)
        if pad_amx_widths(padded):
            source = padded
    model = source.SerializeToString() if hasattr(source, "SerializeToString") else str(source)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _has_quantize(model: Any) -> bool:
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)
