"""ONNX export of the reference model, proven against PyTorch on ONNX Runtime before it is used.

One graph serves the ONNX Runtime backend and (next) the TensorRT backend: opset 17, a dynamic
batch dimension, the input named ``input`` and the outputs named as the manifest names them.
TorchScript-based export (``dynamo=False``): the dynamo exporter needs onnxscript and gives the
same graph for this convolutional model.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BuildError, one_line

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
    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise BuildError(f"the exported ONNX graph is invalid: {one_line(exc)}") from None
    worst = 0.0
    session = cpu_session(path)
    lo, hi = batch
    for n in sorted({lo, min(hi, 3)}):
        x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(n))
        with torch.inference_mode():
            want = ref.module(x)
        want = [t.numpy() for t in (want if isinstance(want, (list, tuple)) else [want])]
        got = session.run(names, {"input": x.numpy()})
        for g, e in zip(got, want):
            worst = max(worst, float(np.abs(g - e).max()))
    if worst > MAX_ABS_ERROR:
        raise BuildError(f"the ONNX graph differs from PyTorch by {worst:.3g} (limit {MAX_ABS_ERROR:g}); cannot build")
    return {"opset": opset, "exporter": "torch.onnx (TorchScript)", "max_abs_error_vs_torch": worst}


def cpu_session(path: Path):
    """An ONNX Runtime session on the CPU provider (ONNX Runtime's default graph optimizations)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
