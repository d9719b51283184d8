"""ONNX export of the reference model, proven against PyTorch on ONNX Runtime before it is used.

One graph serves the ONNX Runtime backend and (next) the TensorRT backend: opset 17, a dynamic
batch dimension, the input named ``input`` and the outputs named as the manifest names them.
TorchScript-based export (``dynamo=False``): the dynamo exporter needs onnxscript and gives the
same graph for this convolutional model.

Every graph written to an artifact (this export and the INT8/FP16 graphs derived from it) goes
through :func:`prune_file`: no node whose outputs nothing reads, no initializer nothing reads.
ONNX Runtime turns leftovers of either kind into a "Removing initializer … It is not used by any
node" warning on every load (``quantize_static`` leaves the ``Constant`` inputs of each ReLU6 it
folds into Q/DQ). Our sessions (:mod:`rexnet_deploy.ort_session`) also keep ONNX Runtime's own
log at errors unless ``REXNET_DEPLOY_DEBUG=1``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BuildError, one_line
from .ort_session import cpu_session

OPSET = 17
MAX_ABS_ERROR = 1e-4  # FP32 graph vs eager PyTorch, on logits


def export(ref, path: Path, *, opset: int = OPSET, batch: tuple[int, int] = (1, 32)) -> dict[str, Any]:
    """Write ``path`` (ONNX, FP32), check it with ``onnx.checker`` and run it on ONNX Runtime
    against eager PyTorch at two batch sizes; raise BuildError if they differ by more than 1e-4."""
    import onnx
    import torch

    c, h, w = ref.data_config.input_size
    names = list(ref.output_names)
    dynamic = {"input": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    example = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter deprecation and tracer warnings are about us
        torch.onnx.export(ref.module.eval(), (example,), str(path), input_names=["input"], output_names=names,
                          opset_version=opset, dynamic_axes=dynamic, dynamo=False)
    prune_file(path)
    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise BuildError(f"the exported ONNX graph is invalid: {one_line(exc)}") from None
    worst = 0.0
    session = cpu_session(path)
    for _n, x, want in ref.probes(batch):
        got = session.run(names, {"input": x})
        for g, e in zip(got, want):
            worst = max(worst, float(np.abs(g - e).max()))
    if worst > MAX_ABS_ERROR:
        raise BuildError(f"the ONNX graph differs from PyTorch by {worst:.3g} (limit {MAX_ABS_ERROR:g}); cannot build")
    return {"opset": opset, "exporter": "torch.onnx (TorchScript)", "max_abs_error_vs_torch": worst}


def prune(model) -> dict[str, int]:
    """Remove, in place, the nodes none of whose outputs is read (by a node, a subgraph or a graph
    output) and the initializers nothing reads; returns how many of each went."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    nodes = 0
    while True:
        read = outputs | _names_read(graph)
        dead = [n for n in graph.node if not any(o and o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
        nodes += len(dead)
    unused = [i for i in graph.initializer if i.name not in read]
    for i in unused:
        graph.initializer.remove(i)
    known = read | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    stale = [v for v in graph.value_info if v.name not in known]  # shapes of tensors that no longer exist
    for v in stale:
        graph.value_info.remove(v)
    return {"nodes": nodes, "initializers": len(unused)}


def prune_file(path: str | os.PathLike) -> dict[str, int]:
    """:func:`prune` an ONNX file; rewritten only when something was removed."""
    import onnx

    model = onnx.load(str(path))
    removed = prune(model)
    if any(removed.values()):
        onnx.save(model, str(path))
    return removed


def constants_to_initializers(graph: Any) -> int:
    """Turn ``Constant`` nodes into initializers (the exporter writes scales and zero-points as
    Constant nodes; ModelOpt's opset upgrade writes ReduceMean's axes so); returns how many were moved."""
    moved = [n for n in graph.node if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"]
    for node in moved:
        tensor = node.attribute[0].t
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
    return len(moved)


def _names_read(graph) -> set[str]:
    """Every tensor name a node of ``graph`` or of its subgraphs (If/Loop bodies) takes as input."""
    names = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                names |= _names_read(sub)
    return names
