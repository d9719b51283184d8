"""TensorRT 10/11 engine build and runtime (GPU hosts only; imported lazily).

Only the API that TensorRT 10 documents and TensorRT 11 keeps: a strongly typed network
(precision comes from the ONNX graph), ``OnnxParser``, ``set_memory_pool_limit``, one
optimization profile over the batch, ``builder_optimization_level``, a timing cache shared across
builds, ``build_serialized_network``; at runtime ``Runtime.deserialize_cuda_engine`` and named
I/O tensors (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``). Nothing that
TensorRT 11 removed: no builder precision flags, calibrators, binding indices, or the old engine
build and enqueue calls. (Checked against the TensorRT 11.4 bindings' own symbol list and the
10.x → 11.x migration guide.)

Device memory and streams come from ``cuda-bindings`` (``cuda.bindings.runtime``), so the runtime
does not import torch.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BuildError

WORKSPACE_MIB = 1024
MIB = 1 << 20


@dataclass(frozen=True)
class Profile:
    """The batch dimension of TensorRT's one optimization profile."""

    min: int
    opt: int
    max: int

    def text(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class BuildSettings:
    profile: Profile
    workspace_mib: int = WORKSPACE_MIB
    opt_level: int = 3
    timing_cache: Path | None = None
    tf32: bool = True  # off for FP32 engines

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.to_dict(), "workspace_mib": self.workspace_mib, "opt_level": self.opt_level,
                "timing_cache": str(self.timing_cache) if self.timing_cache else None, "tf32": self.tf32}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BuildSettings":
        """From a manifest; the timing cache is this host's default (the build host's path means nothing here)."""
        return cls(Profile(**d["profile"]), int(d["workspace_mib"]), int(d["opt_level"]), default_timing_cache(),
                   bool(d.get("tf32", True)))


def default_timing_cache() -> Path:
    """One timing cache per user, shared by every build on the host (it only speeds builds up)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "rexnet-deploy" / "tensorrt-timing.cache"


# -- host ------------------------------------------------------------------------------------------
def host_problem() -> str | None:
    """Why this host cannot build or run a TensorRT engine, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed: pip install 'rexnet-deploy[tensorrt]' on a GPU host"
    try:
        count = _cuda(_cudart().cudaGetDeviceCount())
    except ImportError:
        return "cuda-bindings is not installed: pip install 'rexnet-deploy[tensorrt]'"
    except RuntimeError as exc:
        return f"no usable CUDA GPU ({exc})"
    return None if count else "no CUDA GPU"


def gpu() -> dict[str, str]:
    """Name and compute capability of device 0 (the one engines are built for and run on)."""
    props = _cuda(_cudart().cudaGetDeviceProperties(0))
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return {"name": name, "compute_capability": f"{props.major}.{props.minor}"}


def graph_environment() -> dict[str, str]:
    """Versions of the tools that wrote the graph (the build host's)."""
    import modelopt
    import onnx
    import onnxruntime

    return {"modelopt": modelopt.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def engine_mismatch(record: dict[str, Any]) -> str | None:
    """Why an engine built as ``record`` says cannot run here (TensorRT engines are tied to the
    TensorRT version and to the GPU's compute capability), or None."""
    import tensorrt as trt

    here = gpu()
    if record.get("tensorrt") != trt.__version__:
        return (f"the engine was built with TensorRT {record.get('tensorrt')}, this host has TensorRT {trt.__version__}")
    if record.get("compute_capability") != here["compute_capability"]:
        return (f"the engine was built for {record.get('gpu')} (compute capability {record.get('compute_capability')}), "
                f"this host has {here['name']} ({here['compute_capability']})")
    return None


# -- build -----------------------------------------------------------------------------------------
def compile_engine(onnx_path: Path, engine_path: Path, settings: BuildSettings,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Parse ``onnx_path`` into a strongly typed network, build and write the serialized engine;
    the timing cache file is read before and written back after the build."""
    import tensorrt as trt

    logger = _recording_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"TensorRT cannot parse {onnx_path.name}: {errors[0] if errors else logger.last_error()}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib * MIB)
    config.builder_optimization_level = settings.opt_level
    if not settings.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default; an FP32 engine means FP32 math
    profile = builder.create_optimization_profile()
    inp = network.get_input(0)
    c, h, w = tuple(inp.shape)[1:]
    p = settings.profile
    profile.set_shape(inp.name, (p.min, c, h, w), (p.opt, c, h, w), (p.max, c, h, w))
    config.add_optimization_profile(profile)
    cache_path = settings.timing_cache
    old = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    # ignore_mismatch: a cache written by another TensorRT version or GPU is skipped, not fatal
    timing_cache = config.create_timing_cache(old)
    config.set_timing_cache(timing_cache, True)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if not serialized:
        raise BuildError(f"TensorRT could not build the engine: {logger.last_error()}")
    engine_path.write_bytes(bytes(serialized))
    seconds = time.perf_counter() - started
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(cache_path.name + f".{os.getpid()}.tmp")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        os.replace(tmp, cache_path)  # atomic: parallel builds never read a half-written cache
    here = gpu()
    return {
        "tensorrt": trt.__version__,
        "gpu": here["name"],
        "compute_capability": here["compute_capability"],
        "network": "strongly typed",
        "tf32": settings.tf32,
        "build_seconds": round(seconds, 1),
        "timing_cache": {"path": str(cache_path) if cache_path else None, "reused": bool(old)},
        "size_bytes": engine_path.stat().st_size,
        "runtime": {"tensorrt": trt.__version__},
    }


def _strongly_typed_flags(trt) -> int:
    """TensorRT 10 needs STRONGLY_TYPED; TensorRT 11 is always strongly typed (the flag is kept,
    deprecated and ignored; if a later release drops it, 0 means the same)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _recording_logger(trt):
    """A logger that prints TensorRT's warnings and errors and keeps the last error (TensorRT
    says why a parse, build or deserialization failed only through its logger)."""
    severity = trt.ILogger.Severity
    errors = {severity.INTERNAL_ERROR, severity.ERROR}

    class RecordingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level, msg) -> None:
            if level in errors or level == severity.WARNING:
                print(f"[TensorRT] {msg}", file=sys.stderr)
            if level in errors:
                self.errors.append(str(msg))

        def last_error(self) -> str:
            return self.errors[-1] if self.errors else "no error was logged"

    return RecordingLogger()


# -- runtime ---------------------------------------------------------------------------------------
class EngineRunner:
    """One execution context, one CUDA stream, device buffers sized for the profile's max batch.
    Calls are serialized by a lock (an execution context is not thread-safe). With ``cuda_graph``,
    each batch size is captured once into a CUDA graph after a first normal run, then replayed."""

    def __init__(self, engine_path: Path, input_name: str, output_names: list[str], *, max_batch: int,
                 cuda_graph: bool = False):
        import tensorrt as trt

        self._rt = _cudart()
        self._logger = _recording_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize the engine: {self._logger.last_error()}")
        for name in [input_name, *output_names]:
            dtype = self._engine.get_tensor_dtype(name)
            if dtype != trt.DataType.FLOAT:
                raise RuntimeError(f"engine tensor {name} is {dtype}, expected float32 input/output")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"TensorRT could not create an execution context: {self._logger.last_error()}")
        self._input = input_name
        self._outputs = list(output_names)
        self._lock = threading.Lock()
        self._stream = _cuda(self._rt.cudaStreamCreate())
        self._graphs: dict[int, Any] = {}
        self._use_graphs = cuda_graph
        self._sample_shape = tuple(self._engine.get_tensor_shape(input_name))[1:]
        self._buffers: dict[str, int] = {}  # name → device pointer, sized for max_batch
        self._set_shape(max_batch)
        for name in [input_name, *self._outputs]:
            shape = tuple(self._context.get_tensor_shape(name))
            ptr = int(_cuda(self._rt.cudaMalloc(int(np.prod(shape)) * 4)))
            self._buffers[name] = ptr
            if not self._context.set_tensor_address(name, ptr):
                raise RuntimeError(f"TensorRT refused the device address of {name}")

    def _set_shape(self, n: int) -> None:
        if not self._context.set_input_shape(self._input, (n, *self._sample_shape)):
            raise RuntimeError(f"batch {n} is outside the engine's optimization profile")
        missing = self._context.infer_shapes()
        if missing:
            raise RuntimeError(f"TensorRT cannot infer output shapes (unspecified inputs: {', '.join(missing)})")

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        rt, kind = self._rt, self._rt.cudaMemcpyKind
        with self._lock:
            self._set_shape(x.shape[0])
            _cuda(rt.cudaMemcpyAsync(self._buffers[self._input], x.ctypes.data, x.nbytes,
                                     kind.cudaMemcpyHostToDevice, self._stream))
            self._enqueue(x.shape[0])
            outs = []
            for name in self._outputs:
                out = np.empty(tuple(self._context.get_tensor_shape(name)), dtype=np.float32)
                _cuda(rt.cudaMemcpyAsync(out.ctypes.data, self._buffers[name], out.nbytes,
                                         kind.cudaMemcpyDeviceToHost, self._stream))
                outs.append(out)
            _cuda(rt.cudaStreamSynchronize(self._stream))
        return outs

    def _execute(self) -> None:
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed: {self._logger.last_error()}")

    def _enqueue(self, n: int) -> None:
        """Run the engine on the stream: plainly, or by replaying batch ``n``'s CUDA graph (a
        graph freezes shapes and addresses; addresses are fixed here, shapes are per graph)."""
        if not self._use_graphs:
            return self._execute()
        rt = self._rt
        graph_exec = self._graphs.get(n)
        if graph_exec is None:
            self._execute()  # first run outside the capture: TensorRT's setup work is not capturable
            _cuda(rt.cudaStreamSynchronize(self._stream))
            _cuda(rt.cudaStreamBeginCapture(self._stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            captured = self._context.execute_async_v3(int(self._stream))
            graph = _cuda(rt.cudaStreamEndCapture(self._stream))
            if not captured:  # the engine holds work a capture does not allow: run it plainly
                rt.cudaGraphDestroy(graph)
                self._use_graphs = False
                return self._execute()
            graph_exec = _cuda(rt.cudaGraphInstantiate(graph, 0))
            _cuda(rt.cudaGraphDestroy(graph))
            self._graphs[n] = graph_exec
        _cuda(rt.cudaGraphLaunch(graph_exec, self._stream))

    def close(self) -> None:
        rt = self._rt
        with self._lock:
            for graph_exec in self._graphs.values():
                rt.cudaGraphExecDestroy(graph_exec)
            self._graphs.clear()
            if self._stream is not None:
                rt.cudaStreamSynchronize(self._stream)
            for ptr in self._buffers.values():
                rt.cudaFree(ptr)
            self._buffers.clear()
            if self._stream is not None:
                rt.cudaStreamDestroy(self._stream)
                self._stream = None
            self._context = self._engine = None


def _cudart():
    from cuda.bindings import runtime

    return runtime


def _cuda(result: tuple) -> Any:
    """cuda-bindings calls return ``(error, *values)``: raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    rt = _cudart()
    if err != rt.cudaError_t.cudaSuccess:
        _e, name = rt.cudaGetErrorName(err)
        raise RuntimeError(name.decode() if isinstance(name, bytes) else str(name))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
