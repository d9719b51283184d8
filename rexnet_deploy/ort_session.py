"""The one way this project opens an ONNX Runtime session: on the CPU provider, ONNX Runtime's own
log kept at errors unless ``REXNET_DEPLOY_DEBUG=1``. The export check, the ONNX Runtime engine, the
TensorRT graph emulation and the sensitivity sweep all open theirs here. Imports only onnxruntime,
when called (runtimes import this module; it never imports torch)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime


def ort_log_level() -> int:
    """``SessionOptions.log_severity_level`` for our ONNX Runtime sessions: errors only (3), or
    ONNX Runtime's default, warnings (2), with ``REXNET_DEPLOY_DEBUG=1``. Its warnings are notes
    about its own graph rewrites, printed to the process's stderr on every load; not the user's to act on."""
    return 2 if os.environ.get("REXNET_DEPLOY_DEBUG") == "1" else 3


def cpu_session(source: str | os.PathLike | Any, *, optimization: Any = None, threads: int | None = None,
                save_optimized_to: str | os.PathLike | None = None,
                log_level: int | None = None) -> "onnxruntime.InferenceSession":
    """An ONNX Runtime session on the CPU provider, of a file or of an in-memory ``onnx.ModelProto``.

    ``optimization``: a ``GraphOptimizationLevel`` (default: ONNX Runtime's, all); ``threads``:
    intra-op threads (default: all cores); ``save_optimized_to``: where ONNX Runtime writes the
    graph as optimized for this CPU; ``log_level``: default :func:`ort_log_level`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = ort_log_level() if log_level is None else log_level
    if optimization is not None:
        options.graph_optimization_level = optimization
    if save_optimized_to is not None:
        options.optimized_model_filepath = str(save_optimized_to)
    if threads:
        options.intra_op_num_threads = int(threads)
    model = source.SerializeToString() if hasattr(source, "SerializeToString") else str(source)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
