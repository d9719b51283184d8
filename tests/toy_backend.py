"""A backend that lives outside the package: one module and one row (:data:`INFO`), registered
by tests/test_toy_backend.py. Its engine genuinely runs: the FP32 ONNX graph, built by the
ONNX Runtime backend's ``build`` and run by its engine class; what is its own is its row (a build
option, one head, its Triton target) and its rule for that option."""

from __future__ import annotations

from typing import Any

from rexnet_deploy.backends import BackendInfo
from rexnet_deploy.backends import onnxruntime as ort_backend
from rexnet_deploy.backends.base import Option, TritonTarget
from rexnet_deploy.errors import UsageError

INFO = BackendInfo(
    name="toy",
    title="Toy",
    module=__name__,
    precisions=("fp32",),
    extra="onnxruntime",
    runtime_imports=("onnxruntime",),
    build_imports=("torch", "timm"),
    extra_build_imports=("onnx",),
    summary="a test backend: the FP32 ONNX graph on ONNX Runtime",
    heads=("classify",),
    options=(Option("toy_note", "str", "a note the build records in its manifest.", default="hello"),),
    triton=TritonTarget("onnxruntime_onnx", {"model.onnx": "model.onnx"}),
)

ENGINE = ort_backend.OnnxRuntimeEngine


def validate(spec: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Its own rule only (the registry checked names, device, head, precision; defaults are in)."""
    if not options["toy_note"].strip():
        raise UsageError("--toy-note must not be blank")
    return options


def host_problem(precision: str) -> str | None:
    return None


def build(ref: Any, spec: Any, writer: Any, log: Any, *, calib: Any = None,
          options: dict[str, Any] | None = None) -> dict[str, Any]:
    part = ort_backend.build(ref, spec, writer, log)
    part["backend_config"] = {**part["backend_config"], "toy_note": (options or {})["toy_note"]}
    return part
