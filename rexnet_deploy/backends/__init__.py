"""The one table of backends. Adding a backend is one module here and one row below.

Each backend module exposes the same two things (compare Polygraphy's one runner per backend and
Ultralytics' export-format table):

* ``build(ref, spec, writer, log, *, calib=None, options=None) -> dict`` — compile the reference
  model into payload files in ``writer`` and return the backend's part of the manifest (``calib``
  is a loaded :class:`rexnet_deploy.calibration.CalibrationSet` for INT8; ``options`` are the
  backend's own build options);
* ``ENGINE`` — the :class:`rexnet_deploy.engine.Engine` subclass that ``Engine.load`` returns.

Modules are imported only when used, so a missing backend library never breaks the others.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

from ..errors import ArtifactError, BackendUnavailable, UsageError


@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str
    precisions: tuple[str, ...]
    extra: str                      # pip extra that installs what the runtime needs
    runtime_imports: tuple[str, ...]  # modules the runtime needs (checked before importing)
    build_imports: tuple[str, ...]    # modules a build needs beyond the runtime's (the ``build`` extra)
    summary: str
    extra_build_imports: tuple[str, ...] = ()  # build-only modules that come with ``extra`` (e.g. nncf)
    default_device: str = "cpu"

    def available(self, *, for_build: bool = False) -> bool:
        mods = self.runtime_imports + (self.build_imports + self.extra_build_imports if for_build else ())
        return all(importlib.util.find_spec(m) is not None for m in mods)


BACKENDS: dict[str, BackendInfo] = {
    "torchscript": BackendInfo(
        name="torchscript",
        module="rexnet_deploy.backends.torchscript",
        precisions=("fp32", "fp16"),
        extra="torchscript",
        runtime_imports=("torch",),
        build_imports=("timm",),
        summary="traced + frozen TorchScript (libtorch services load it); FP16 on CUDA",
    ),
    "openvino": BackendInfo(
        name="openvino",
        module="rexnet_deploy.backends.openvino",
        precisions=("fp32", "fp16", "bf16", "int8"),
        extra="openvino",
        runtime_imports=("openvino",),
        build_imports=("torch", "timm"),
        extra_build_imports=("nncf",),
        summary="OpenVINO IR for Intel CPUs; FP32 pinned to f32, FP16 weights, BF16, INT8 via NNCF; no torch at runtime",
    ),
    "onnxruntime": BackendInfo(
        name="onnxruntime",
        module="rexnet_deploy.backends.onnxruntime",
        precisions=("fp32", "fp16", "int8"),
        extra="onnxruntime",
        runtime_imports=("onnxruntime",),
        build_imports=("torch", "timm"),
        extra_build_imports=("onnx",),
        summary="ONNX graph on ONNX Runtime CPU; FP16 (ModelOpt autocast); INT8 as QDQ with uint8 activations "
                "(the CPU-fast format); no torch at runtime",
    ),
    "tensorrt": BackendInfo(
        name="tensorrt",
        module="rexnet_deploy.backends.tensorrt",
        precisions=("fp32", "fp16", "int8"),
        extra="trt",
        # the engine runtime needs tensorrt + cuda-bindings on a GPU host (extra tensorrt); the
        # module itself imports without them and says what is missing when an engine is loaded
        runtime_imports=(),
        build_imports=("torch", "timm"),
        extra_build_imports=("modelopt", "onnx", "onnxruntime"),
        summary="strongly typed TensorRT engine from an FP16 or INT8 Q/DQ ONNX graph (ModelOpt); "
                "on hosts without a GPU: the graph, checked on ONNX Runtime CPU",
        default_device="cuda",
    ),
}
ALIASES = {"ts": "torchscript", "jit": "torchscript", "ov": "openvino", "ort": "onnxruntime", "onnx": "onnxruntime", "trt": "tensorrt"}


def get(name: str) -> BackendInfo:
    key = ALIASES.get(name, name)
    if key not in BACKENDS:
        raise UsageError(f"unknown backend {name!r} (available: {', '.join(BACKENDS)})")
    return BACKENDS[key]


def check_precision(info: BackendInfo, precision: str) -> None:
    if precision not in info.precisions:
        raise UsageError(
            f"backend {info.name} does not support {precision} (it supports {', '.join(info.precisions)})"
        )


def load_module(info: BackendInfo, *, for_build: bool = False) -> ModuleType:
    """Import a backend module, turning a missing library into one clear line naming the extra."""
    own = info.runtime_imports + (info.extra_build_imports if for_build else ())
    mods = own + (info.build_imports if for_build else ())
    missing = [m for m in mods if importlib.util.find_spec(m) is None]
    if missing:
        extras = [e for e, need in ((info.extra, own), ("build", info.build_imports)) if set(missing) & set(need)]
        raise BackendUnavailable(
            f"the {info.name} backend needs {', '.join(missing)}, which is not installed: "
            f"pip install 'rexnet-deploy[{','.join(dict.fromkeys(extras))}]'"
        )
    return importlib.import_module(info.module)


def for_artifact(backend: str) -> BackendInfo:
    """The backend of a manifest; an unknown one means a foreign or newer artifact."""
    try:
        return get(backend)
    except UsageError:
        raise ArtifactError(
            f"artifact backend {backend!r} is not known to this rexnet-deploy (known: {', '.join(BACKENDS)})"
        ) from None
