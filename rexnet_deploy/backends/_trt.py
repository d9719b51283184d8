"""TensorRT 10/11 engine build and runtime (GPU hosts only; imported lazily).

Only the API that TensorRT 10 documents and TensorRT 11 keeps: a strongly typed network
(precision comes from the ONNX graph), ``OnnxParser``, ``set_memory_pool_limit``, one
optimization profile over the batch, ``builder_optimization_level``, a timing cache shared across
builds, ``build_serialized_network``; at runtime ``Runtime.deserialize_cuda_engine`` and named
I/O tensors (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``). Nothing that
TensorRT 11 removed: no builder precision flags, calibrators, binding indices, or the old engine
build and enqueue calls. (Checked against the TensorRT 11.4 bindings' own symbol list and the
10.x → 11.x migration guide.)

Device memory, pinned host memory, streams and CUDA graphs come from ``cuda-bindings``
(``cuda.bindings.runtime``), so the runtime does not import torch. The pure parts (which engine
record or I/O list fits this host, the timing-cache key, the driver check, the CUDA-graph capture's
fallback) take plain values or the cudart module as arguments, so a CPU host tests them.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

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
    """One timing cache per user, shared by every build on the host (it only speeds builds up);
    the file read and written is this path keyed by TensorRT version and GPU (:func:`timing_cache_file`)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "rexnet-deploy" / "tensorrt-timing.cache"


def timing_cache_file(base: Path, tensorrt: str, gpu: dict[str, str]) -> Path:
    """``base`` keyed by TensorRT version, GPU name and compute capability. Timings hold only for
    the TensorRT and device that measured them, and TensorRT warns that a cache from another device
    can give functional or performance bugs: a cache of another TensorRT or GPU is never offered."""
    name = re.sub(r"[^a-z0-9]+", "-", gpu["name"].lower()).strip("-") or "gpu"
    sm = gpu["compute_capability"].replace(".", "")
    return base.with_name(f"{base.stem}-trt{tensorrt}-{name}-sm{sm}{base.suffix}")


# -- host ------------------------------------------------------------------------------------------
INSTALL = ("pip install 'rexnet-deploy[tensorrt-cu13]' for a CUDA 13 driver (r580+), "
           "'rexnet-deploy[tensorrt-cu12]' for CUDA 12")
DRIVER_BRANCH = {12: "r525", 13: "r580"}  # the first Linux driver branch of each CUDA major


def host_problem() -> str | None:
    """Why this host cannot build or run a TensorRT engine, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return f"tensorrt is not installed: on a GPU host, {INSTALL}"
    return cuda_problem()


def cuda_problem() -> str | None:
    """Why cuda-bindings cannot reach a GPU here (naming the driver when it is too old), or None."""
    try:
        rt = _cudart()
    except ImportError:
        return f"cuda-bindings is not installed: {INSTALL}"
    err, *count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess:
        _e, driver = rt.cudaDriverGetVersion()  # the CUDA version the driver supports; 0 without a driver
        return driver_problem(int(driver or 0), _bindings_version()) or f"no usable CUDA GPU ({_error_name(err)})"
    return None if count and count[0] else "no CUDA GPU"


def driver_problem(driver: int, bindings: str) -> str | None:
    """Why a driver whose CUDA version is ``driver`` (``cudaDriverGetVersion``: 1000 × major +
    10 × minor, 0 without a driver) cannot serve cuda-bindings ``bindings``: cuda-bindings N.x
    calls the CUDA N driver API, so the driver must support CUDA N.0."""
    major = int(bindings.split(".")[0])
    if driver >= major * 1000:
        return None
    if driver <= 0:
        return "no NVIDIA driver is loaded (cudaDriverGetVersion reports none)"
    other = "tensorrt-cu12" if major >= 13 else "tensorrt-cu13"
    return (f"the NVIDIA driver supports CUDA {driver // 1000}.{driver % 1000 // 10}, and cuda-bindings {bindings} "
            f"needs CUDA {major}.0 (driver {DRIVER_BRANCH.get(major, 'newer')}+): update the driver or "
            f"pip install 'rexnet-deploy[{other}]'")


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
    """Why an engine built as ``record`` says cannot run on this host, or None."""
    import tensorrt as trt

    return record_mismatch(record, trt.__version__, gpu())


def record_mismatch(record: dict[str, Any], tensorrt: str, here: dict[str, str]) -> str | None:
    """Why an engine record does not fit TensorRT ``tensorrt`` on GPU ``here`` (``gpu()``), or
    None. Engines are tied to the TensorRT version, and tuned for one GPU: the same compute
    capability is not enough (an H100 engine's tactics were timed on H100 clocks and memory, not
    an H200's), so the GPU's name must match too."""
    if record.get("tensorrt") != tensorrt:
        return f"the engine was built with TensorRT {record.get('tensorrt')}, this host has TensorRT {tensorrt}"
    if record.get("gpu") != here["name"] or record.get("compute_capability") != here["compute_capability"]:
        built = f"{record.get('gpu')} (compute capability {record.get('compute_capability')})"
        return f"the engine was built for {built}, this host has {here['name']} ({here['compute_capability']})"
    return None


def io_mismatch(io: Sequence[dict[str, Any]], input_name: str, output_names: Sequence[str]) -> str | None:
    """Why an engine whose I/O tensors are ``io`` (``{"name", "mode", "dtype", "shape"}`` each, as
    :func:`engine_io` lists them and the build records them) does not take ``input_name`` and give
    ``output_names``, all float32; or None. (Asking an engine for the dtype of a name it does not
    have answers FLOAT: the names must be checked against its tensor list.)"""
    inputs = [t["name"] for t in io if t["mode"] == "INPUT"]
    outputs = [t["name"] for t in io if t["mode"] == "OUTPUT"]
    if inputs != [input_name]:
        return f"the engine's inputs are {inputs}, the artifact's input is {input_name!r}"
    if sorted(outputs) != sorted(output_names):
        return f"the engine's outputs are {sorted(outputs)}, the artifact's are {sorted(output_names)}"
    wrong = next((t for t in io if t["mode"] in ("INPUT", "OUTPUT") and t["dtype"] != "FLOAT"), None)
    if wrong is not None:
        return f"engine tensor {wrong['name']} is {wrong['dtype']}, expected float32 (FLOAT) input/output"
    return None


def engine_io(engine) -> list[dict[str, Any]]:
    """The I/O tensors of a deserialized engine, from its own tensor list."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return [{"name": n, "mode": engine.get_tensor_mode(n).name, "dtype": engine.get_tensor_dtype(n).name,
             "shape": [int(d) for d in engine.get_tensor_shape(n)]} for n in names]


def network_io(network) -> list[dict[str, Any]]:
    """The I/O tensors of a parsed network (the engine built from it has the same), for the manifest."""
    def row(t, mode: str) -> dict[str, Any]:
        return {"name": t.name, "mode": mode, "dtype": t.dtype.name, "shape": [int(d) for d in t.shape]}

    return ([row(network.get_input(i), "INPUT") for i in range(network.num_inputs)]
            + [row(network.get_output(i), "OUTPUT") for i in range(network.num_outputs)])


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
    here = gpu()
    cache_path = timing_cache_file(settings.timing_cache, trt.__version__, here) if settings.timing_cache else None
    old = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    reused = _attach_timing_cache(config, old, log)
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
    return {
        "tensorrt": trt.__version__,
        "gpu": here["name"],
        "compute_capability": here["compute_capability"],
        "network": "strongly typed",
        "tf32": settings.tf32,
        "build_seconds": round(seconds, 1),
        "timing_cache": {"path": str(cache_path) if cache_path else None, "reused": reused},
        "io": network_io(network),
        "size_bytes": engine_path.stat().st_size,
        "runtime": {"tensorrt": trt.__version__},
    }


def _attach_timing_cache(config, old: bytes, log: Callable[[str], None]) -> bool:
    """Attach the cache read from disk, never ignoring a mismatch (``ignore_mismatch=False``);
    when TensorRT refuses it (another CUDA, a damaged file), a fresh one. True when ``old`` is used."""
    if old:
        try:
            cache = config.create_timing_cache(old)
        except (RuntimeError, TypeError, ValueError):  # a damaged file: TensorRT's bindings raise
            cache = None
        if cache is not None and config.set_timing_cache(cache, False):
            return True
        log("note: TensorRT refused the stored timing cache; timing this build afresh")
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise BuildError("TensorRT refused an empty timing cache")
    return False


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
    """One CUDA stream; device buffers sized for the profile's max batch, and pinned host buffers
    of the same sizes (pageable memory would make every copy staged and synchronous). Calls are
    serialized by a lock (an execution context is not thread-safe); plain calls run one execution
    context at each call's batch size. With ``cuda_graph``, each batch size gets an execution
    context of its own, its input shape set once, a first normal run, then one captured CUDA graph
    replayed on later calls: a graph freezes the shapes and the context state it was captured
    with, and TensorRT documents no replay of graphs captured at several shapes on one context.
    (Each of those contexts holds its own activation memory: one per batch size used.)"""

    def __init__(self, engine_path: Path, input_name: str, output_names: list[str], *, max_batch: int,
                 cuda_graph: bool = False):
        import tensorrt as trt

        self._rt = _cudart()
        self._lock = threading.Lock()
        self._stream: Any = None
        self._context: Any = None
        self._device: dict[str, int] = {}  # name → device pointer, sized for max_batch
        self._host: dict[str, tuple[int, np.ndarray]] = {}  # name → (pinned pointer, numpy view of it)
        self._graphs: dict[int, tuple[Any, Any]] = {}  # batch → (its execution context, its graph exec)
        self._use_graphs = cuda_graph
        self._input, self._outputs = input_name, list(output_names)
        self._logger = _recording_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize the engine: {self._logger.last_error()}")
        problem = io_mismatch(engine_io(self._engine), input_name, self._outputs)
        if problem:
            raise RuntimeError(problem)
        self._sample_shape = tuple(self._engine.get_tensor_shape(input_name))[1:]
        try:
            self._stream = _cuda(self._rt.cudaStreamCreate())
            self._context = self._new_context()
            self._set_shape(self._context, max_batch)
            for name in [input_name, *self._outputs]:
                shape = tuple(self._context.get_tensor_shape(name))
                nbytes = int(np.prod(shape)) * 4
                self._device[name] = int(_cuda(self._rt.cudaMalloc(nbytes)))
                pinned = int(_cuda(self._rt.cudaMallocHost(nbytes)))
                self._host[name] = (pinned, host_array(pinned, shape))
            self._bind(self._context)
        except BaseException:
            self.close()
            raise

    def _new_context(self):
        context = self._engine.create_execution_context()
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context: {self._logger.last_error()}")
        return context

    def _bind(self, context) -> None:
        for name, ptr in self._device.items():
            if not context.set_tensor_address(name, ptr):
                raise RuntimeError(f"TensorRT refused the device address of {name}")

    def _set_shape(self, context, n: int) -> None:
        if not context.set_input_shape(self._input, (n, *self._sample_shape)):
            raise RuntimeError(f"batch {n} is outside the engine's optimization profile")
        missing = context.infer_shapes()
        if missing:
            raise RuntimeError(f"TensorRT cannot infer output shapes (unspecified inputs: {', '.join(missing)})")

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        n = batch.shape[0]
        rt, kind = self._rt, self._rt.cudaMemcpyKind
        with self._lock:
            pinned, host = self._host[self._input]
            host[:n] = batch  # into pinned memory, so that the copy to the GPU is truly asynchronous
            _cuda(rt.cudaMemcpyAsync(self._device[self._input], pinned, host[:n].nbytes,
                                     kind.cudaMemcpyHostToDevice, self._stream))
            context = self._enqueue(n)
            outs = []
            for name in self._outputs:
                shape = tuple(context.get_tensor_shape(name))
                pinned, host = self._host[name]
                out = host.reshape(-1)[:int(np.prod(shape))].reshape(shape)
                _cuda(rt.cudaMemcpyAsync(pinned, self._device[name], out.nbytes, kind.cudaMemcpyDeviceToHost,
                                         self._stream))
                outs.append(out)
            _cuda(rt.cudaStreamSynchronize(self._stream))
            return [o.copy() for o in outs]  # the pinned buffers are the next call's

    def _execute(self, context) -> None:
        if not context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"TensorRT execute_async_v3 failed: {self._logger.last_error()}")

    def _enqueue(self, n: int):
        """Run batch ``n`` on the stream: by replaying its CUDA graph, else plainly on the shared
        context. Returns the context that ran it (its output shapes are this call's)."""
        if self._use_graphs:
            slot = self._graphs.get(n) or self._capture(n)
            if slot is not None:
                _cuda(self._rt.cudaGraphLaunch(slot[1], self._stream))
                return slot[0]
        self._set_shape(self._context, n)
        self._execute(self._context)
        return self._context

    def _capture(self, n: int) -> tuple[Any, Any] | None:
        """Batch ``n``'s own context and CUDA graph; None (and no more graphs) when the engine
        cannot be captured."""
        context = self._new_context()
        self._bind(context)
        self._set_shape(context, n)  # once: this context only ever runs batch n
        self._execute(context)  # a first run outside the capture: TensorRT's setup work is not capturable
        _cuda(self._rt.cudaStreamSynchronize(self._stream))
        graph_exec = capture_graph(self._rt, self._stream, lambda: context.execute_async_v3(int(self._stream)))
        if graph_exec is None:
            print("[TensorRT] warning: the engine cannot be captured into a CUDA graph; running it without one",
                  file=sys.stderr)
            self._use_graphs = False
            return None
        self._graphs[n] = (context, graph_exec)
        return self._graphs[n]

    def close(self) -> None:
        rt = self._rt
        with self._lock:
            if self._stream is not None:
                rt.cudaStreamSynchronize(self._stream)
            for _context, graph_exec in self._graphs.values():
                rt.cudaGraphExecDestroy(graph_exec)
            self._graphs.clear()  # (and the graphs' contexts: contexts go before their engine)
            self._context = None
            for ptr in self._device.values():
                rt.cudaFree(ptr)
            self._device.clear()
            for pinned, _view in self._host.values():
                rt.cudaFreeHost(pinned)
            self._host.clear()  # the numpy views over the freed memory go with it
            if self._stream is not None:
                rt.cudaStreamDestroy(self._stream)
                self._stream = None
            self._engine = None


def host_array(ptr: int, shape: Sequence[int]) -> np.ndarray:
    """A float32 numpy view of the ``prod(shape)`` floats at host address ``ptr`` (pinned memory
    from ``cudaMallocHost``: numpy does not own it; whoever allocated it frees it)."""
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(ptr)).reshape(tuple(shape))


def capture_graph(rt, stream: Any, enqueue: Callable[[], bool]) -> Any | None:
    """Capture ``enqueue()`` (work put on ``stream``; False when it failed) into an instantiated
    CUDA graph, as trtexec does; None when the capture failed. A capture fails in two ways: the
    enqueue reports it (TensorRT returns False), or the CUDA runtime invalidated the capture (an
    operation a capture does not allow), which only ``cudaStreamEndCapture`` reports, as
    ``cudaErrorStreamCaptureInvalidated`` with no graph. Either way the capture is ended, any
    half graph destroyed and the error cleared, so the stream runs plainly afterwards. ``rt`` is
    ``cuda.bindings.runtime`` (an argument, so that this control flow is testable without a GPU)."""
    _cuda(rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
    try:
        ok = bool(enqueue())
    except BaseException:
        _destroy_graph(rt, _end_capture(rt, stream))  # never leave the stream capturing
        raise
    graph = _end_capture(rt, stream)
    if graph is None or not ok:
        _destroy_graph(rt, graph)
        return None
    try:
        return _cuda(rt.cudaGraphInstantiate(graph, 0))
    finally:
        _cuda(rt.cudaGraphDestroy(graph))  # the executable graph does not need it


def _end_capture(rt, stream: Any) -> Any | None:
    """End the capture on ``stream``: its graph, or None when the capture was invalidated."""
    err, *graph = rt.cudaStreamEndCapture(stream)
    if err == rt.cudaError_t.cudaErrorStreamCaptureInvalidated:
        rt.cudaGetLastError()  # clear the capture's error, as trtexec does, so later calls do not see it
        return None
    _cuda((err, *graph))
    return graph[0]


def _destroy_graph(rt, graph: Any | None) -> None:
    if graph is not None:
        _cuda(rt.cudaGraphDestroy(graph))


def _cudart():
    from cuda.bindings import runtime

    return runtime


def _bindings_version() -> str:
    """The installed cuda-bindings' version (its major is the CUDA driver API it calls)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cuda-bindings")
    except PackageNotFoundError:
        import cuda.bindings

        return str(cuda.bindings.__version__)


def _error_name(err: Any) -> str:
    _e, name = _cudart().cudaGetErrorName(err)
    return name.decode() if isinstance(name, bytes) else str(name)


def _cuda(result: tuple) -> Any:
    """cuda-bindings calls return ``(error, *values)``: raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != _cudart().cudaError_t.cudaSuccess:
        raise RuntimeError(_error_name(err))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
