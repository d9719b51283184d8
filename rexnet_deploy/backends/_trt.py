"""TensorRT 10/11 engine build and runtime (GPU hosts only; imported lazily).

Only the API that TensorRT 10 documents and TensorRT 11 keeps: a strongly typed network
(precision comes from the ONNX graph), ``OnnxParser``, ``set_memory_pool_limit``, one
optimization profile over the batch, ``builder_optimization_level``, a timing cache shared across
builds, ``build_serialized_network``; at runtime ``Runtime.deserialize_cuda_engine`` and named
I/O tensors (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``), execution
contexts with user-managed activation memory (``ExecutionContextAllocationStrategy.USER_MANAGED``,
``device_memory_size_v2``, ``set_device_memory``). Nothing that
TensorRT 11 removed: no builder precision flags, calibrators, binding indices, or the old engine
build and enqueue calls. (Checked against the TensorRT 11.4 bindings' own symbol list and the
10.x → 11.x migration guide.)

Device memory, pinned host memory, streams and CUDA graphs come from ``cuda-bindings``
(``cuda.bindings.runtime``), so the runtime does not import torch. The pure parts (which engine
record or I/O list fits this host, the timing-cache key and merge, the driver check, the CUDA-graph
capture's fallback and its per-batch-size bookkeeping, the logger's error record, stream handles)
take plain values, the cudart module or our own small seams as arguments, so a CPU host tests them.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import ArtifactError, BuildError, one_line

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
    """Why cuda-bindings cannot reach a GPU here (naming the driver when it is too old), or None.
    Never raises: without a driver the runtime answers with an error code (``cudaErrorNoDevice``,
    ``cudaErrorInsufficientDriver``), and a CUDA runtime library that cannot be loaded raises
    (RuntimeError, OSError) on the first call; every case is a reason, so callers (and test
    collection) skip instead of failing."""
    try:
        rt = _cudart()
    except ImportError:
        return f"cuda-bindings is not installed: {INSTALL}"
    try:
        err, *count = rt.cudaGetDeviceCount()
        if err != rt.cudaError_t.cudaSuccess:
            _e, driver = rt.cudaDriverGetVersion()  # the CUDA version the driver supports; 0 without a driver
            return driver_problem(int(driver or 0), _bindings_version()) or f"no usable CUDA GPU ({_error_name(err)})"
    except (RuntimeError, OSError, ValueError) as exc:  # (ValueError: an unparsable cuda-bindings version)
        return f"cuda-bindings cannot reach the CUDA runtime ({type(exc).__name__}: {one_line(exc)})"
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

    logger = trt_logger()
    mark = logger.mark()
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"TensorRT cannot parse {onnx_path.name}: {errors[0] if errors else logger.last_error(mark)}")
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
        raise BuildError(f"TensorRT could not build the engine: {logger.last_error(mark)}")
    engine_path.write_bytes(bytes(serialized))
    seconds = time.perf_counter() - started
    if cache_path:
        save_timing_cache(cache_path, config.get_timing_cache(), config.create_timing_cache, log)
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


def save_timing_cache(path: Path, cache, load: Callable[[bytes], Any], log: Callable[[str], None]) -> bool:
    """Write this build's timing ``cache`` to ``path`` merged with what is there now, as Polygraphy
    saves its timing cache: under an exclusive lock on ``path.lock`` (``fcntl.flock``), the file
    on disk is read again (another build may have written it since this one read it), loaded
    with ``load`` (``IBuilderConfig.create_timing_cache``) and combined into ``cache``
    (``ITimingCache.combine(other, ignore_mismatch=False)``: conflicting entries keep this
    build's, and a cache of another device or TensorRT is not merged), then ``cache.serialize()``
    is written to a temporary file renamed over ``path`` (readers never see half a file). Without
    the merge, of two parallel builds the last writer's timings alone would survive. Returns
    whether the file's entries were merged in (False: none there, or refused, said in the log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path.with_name(path.name + ".lock")):
        merged = False
        if path.is_file():
            try:
                other = load(path.read_bytes())
            except (OSError, RuntimeError, TypeError, ValueError):  # a damaged file: TensorRT's bindings raise
                other = None
            merged = other is not None and bool(cache.combine(other, False))
            if not merged:
                log(f"note: the timing cache {path} could not be merged (damaged, or of another device); "
                    "writing this build's timings in its place")
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(bytes(cache.serialize()))
        os.replace(tmp, path)
    return merged


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` (created, never deleted: a process that opens a
    deleted lock file would lock a different file). flock locks belong to the open file, so two
    threads of one process exclude each other too. Without fcntl (Windows) no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - TensorRT GPU hosts are Linux
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _strongly_typed_flags(trt) -> int:
    """TensorRT 10 needs STRONGLY_TYPED; TensorRT 11 is always strongly typed (the flag is kept,
    deprecated and ignored; if a later release drops it, 0 means the same)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


REBUILD_HINT = "rebuild it from the stored graph with --rebuild-engine (Python: Engine.load(path, rebuild_engine=True))"


class ErrorRecord:
    """The errors a TensorRT logger received, numbered, the last ``keep`` kept; thread-safe
    (TensorRT calls its logger from any thread). ``mark()`` before an operation and
    ``last_error(mark)`` after it name the last error that operation logged, not one an earlier
    operation left behind in the process's one logger."""

    def __init__(self, keep: int = 64) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._recent: collections.deque[tuple[int, str]] = collections.deque(maxlen=keep)

    def add(self, message: str) -> None:
        with self._lock:
            self._count += 1
            self._recent.append((self._count, message))

    def mark(self) -> int:
        with self._lock:
            return self._count

    def last_error(self, since: int = 0) -> str:
        with self._lock:
            if self._recent and self._recent[-1][0] > since:
                return self._recent[-1][1]
        return "no error was logged"


_LOGGER: Any = None
_LOGGER_LOCK = threading.Lock()


def trt_logger():
    """The process's one TensorRT logger, created on first use. TensorRT treats its logger as a
    singleton (every builder and runtime of a process must use the same one); a logger per
    runner would leave some runners' ``last_error()`` empty while another logger heard the error."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None:
            import tensorrt as trt

            _LOGGER = _recording_logger(trt)
        return _LOGGER


def _recording_logger(trt):
    """A logger that prints TensorRT's warnings and errors and records the errors (TensorRT says
    why a parse, build or deserialization failed only through its logger)."""
    severity = trt.ILogger.Severity
    errors = {severity.INTERNAL_ERROR, severity.ERROR}

    class RecordingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.record = ErrorRecord()

        def log(self, level, msg) -> None:
            if level in errors or level == severity.WARNING:
                print(f"[TensorRT] {msg}", file=sys.stderr)
            if level in errors:
                self.record.add(str(msg))

        def mark(self) -> int:
            return self.record.mark()

        def last_error(self, since: int = 0) -> str:
            return self.record.last_error(since)

    return RecordingLogger()


# -- runtime ---------------------------------------------------------------------------------------
class EngineRunner:
    """One CUDA stream, created non-blocking (a capture on a blocking stream is invalidated by
    any other thread's work on the legacy default stream); device buffers sized for the profile's
    max batch, and pinned host buffers of the same sizes (pageable memory would make every copy
    staged and synchronous). Calls are serialized by a lock (an execution context is not
    thread-safe); plain calls run one execution context at each call's batch size.

    Activation memory: every execution context is created ``USER_MANAGED`` and given the same
    device buffer of ``engine.device_memory_size_v2`` bytes (``set_device_memory``): the default
    (static) allocation would give each context its own buffer sized for the largest profile
    shape. Sharing is safe because the contexts never run at the same time (one lock, one
    stream); TensorRT forbids only using the memory for a parallel execution context.

    With ``cuda_graph``, each batch size gets an execution context of its own, its input shape
    set once, a first normal run, then one captured CUDA graph replayed on later calls (a graph
    freezes the shapes and the context state it was captured with, and TensorRT documents no
    replay of graphs captured at several shapes on one context). A batch size whose capture
    fails runs plainly from then on, without retrying; the other sizes keep their graphs
    (:class:`CudaGraphs`)."""

    def __init__(self, engine_path: Path, input_name: str, output_names: list[str], *, max_batch: int,
                 cuda_graph: bool = False):
        import tensorrt as trt

        self._trt = trt
        self._rt = _cudart()
        self._lock = threading.Lock()
        self._stream: Any = None
        self._stream_handle = 0  # the stream's address, as TensorRT's execute_async_v3 takes it
        self._context: Any = None
        self._activations: int | None = None  # the one activation buffer every context uses
        self._activation_bytes = 0
        self._device: dict[str, int] = {}  # name → device pointer, sized for max_batch
        self._host: dict[str, tuple[int, np.ndarray]] = {}  # name → (pinned pointer, numpy view of it)
        self._graphs = CudaGraphs(self._capture, _warn) if cuda_graph else None
        self._input, self._outputs = input_name, list(output_names)
        self._logger = trt_logger()
        self._runtime = trt.Runtime(self._logger)
        self._engine = deserialize(self._runtime.deserialize_cuda_engine, self._logger, Path(engine_path))
        problem = io_mismatch(engine_io(self._engine), input_name, self._outputs)
        if problem:
            raise RuntimeError(problem)
        self._sample_shape = tuple(self._engine.get_tensor_shape(input_name))[1:]
        rt = self._rt
        try:
            self._stream = new_stream(rt)
            self._stream_handle = native_handle(self._stream)
            self._activation_bytes = max(int(self._engine.device_memory_size_v2), 256)
            self._activations = int(_cuda(rt.cudaMalloc(self._activation_bytes)))  # 256-byte aligned
            self._context = self._new_context()
            self._set_shape(self._context, max_batch)
            for name in [input_name, *self._outputs]:
                shape = tuple(self._context.get_tensor_shape(name))
                nbytes = int(np.prod(shape)) * 4
                self._device[name] = int(_cuda(rt.cudaMalloc(nbytes)))
                pinned = int(_cuda(rt.cudaMallocHost(nbytes)))
                self._host[name] = (pinned, host_array(pinned, shape))
            self._bind(self._context)
        except BaseException:
            self.close()
            raise

    def _new_context(self):
        """An execution context without memory of its own, given the shared activation buffer."""
        mark = self._logger.mark()
        context = self._engine.create_execution_context(self._trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context: {self._logger.last_error(mark)}")
        context.set_device_memory(self._activations, self._activation_bytes)
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
        mark = self._logger.mark()
        if not context.execute_async_v3(self._stream_handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed: {self._logger.last_error(mark)}")

    def _enqueue(self, n: int):
        """Run batch ``n`` on the stream: by replaying its CUDA graph, else plainly on the shared
        context. Returns the context that ran it (its output shapes are this call's)."""
        slot = self._graphs.get(n) if self._graphs is not None else None
        if slot is not None:
            _cuda(self._rt.cudaGraphLaunch(slot[1], self._stream))
            return slot[0]
        self._set_shape(self._context, n)
        self._execute(self._context)
        return self._context

    def _capture(self, n: int) -> tuple[Any, Any] | None:
        """Batch ``n``'s own context and CUDA graph, or None when the engine cannot be captured
        at this batch size (:class:`CudaGraphs` remembers that)."""
        context = self._new_context()
        self._bind(context)
        self._set_shape(context, n)  # once: this context only ever runs batch n
        self._execute(context)  # a first run outside the capture: TensorRT's setup work is not capturable
        _cuda(self._rt.cudaStreamSynchronize(self._stream))
        graph_exec = capture_graph(self._rt, self._stream, lambda: context.execute_async_v3(self._stream_handle))
        return None if graph_exec is None else (context, graph_exec)

    def close(self) -> None:
        rt = self._rt
        with self._lock:
            if self._stream is not None:
                rt.cudaStreamSynchronize(self._stream)
            if self._graphs is not None:  # the graphs, and their contexts with them (contexts before their engine)
                for graph_exec in [graph_exec for _context, graph_exec in self._graphs.release()]:
                    rt.cudaGraphExecDestroy(graph_exec)
            self._context = None
            if self._activations is not None:  # after every context that used it
                rt.cudaFree(self._activations)
                self._activations = None
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


def deserialize(load: Callable[[bytes], Any], logger, engine_path: Path):
    """The engine in ``engine_path``, deserialized by ``load`` (``trt.Runtime.deserialize_cuda_engine``
    of a runtime made with ``logger``, :func:`trt_logger`). An engine TensorRT refuses (damaged,
    or of another TensorRT or GPU than its manifest says) is an ArtifactError carrying the error
    TensorRT logged during this call and the flag that rebuilds the engine."""
    mark = logger.mark()
    try:
        engine = load(engine_path.read_bytes())
        reason = logger.last_error(mark)
    except (RuntimeError, TypeError, ValueError) as exc:
        engine, reason = None, one_line(exc)
    if engine is None:
        raise ArtifactError(f"TensorRT could not deserialize {engine_path} ({reason}); {REBUILD_HINT}")
    return engine


class CudaGraphs:
    """Which batch sizes replay a CUDA graph: ``get(n)`` returns batch ``n``'s captured
    ``(context, graph_exec)``, capturing it on first use with ``capture(n)``; a capture that
    fails (``capture`` returns None) is remembered for that size alone, warned about once, and
    never retried: that size runs plainly, every other size keeps its graph."""

    def __init__(self, capture: Callable[[int], tuple[Any, Any] | None], warn: Callable[[str], None]):
        self._capture, self._warn = capture, warn
        self._slots: dict[int, tuple[Any, Any]] = {}
        self.failed: set[int] = set()

    def get(self, n: int) -> tuple[Any, Any] | None:
        slot = self._slots.get(n)
        if slot is not None or n in self.failed:
            return slot
        slot = self._capture(n)
        if slot is None:
            self.failed.add(n)
            self._warn(f"warning: batch {n} of the engine cannot be captured into a CUDA graph; "
                       "that batch size runs without one")
            return None
        self._slots[n] = slot
        return slot

    @property
    def captured(self) -> list[int]:
        return sorted(self._slots)

    def release(self) -> list[tuple[Any, Any]]:
        """Every captured slot, forgotten here (the caller destroys them)."""
        slots, self._slots = list(self._slots.values()), {}
        return slots


def _warn(message: str) -> None:
    print(f"[TensorRT] {message}", file=sys.stderr)


def host_array(ptr: int, shape: Sequence[int]) -> np.ndarray:
    """A float32 numpy view of the ``prod(shape)`` floats at host address ``ptr`` (pinned memory
    from ``cudaMallocHost``: numpy does not own it; whoever allocated it frees it)."""
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(ptr)).reshape(tuple(shape))


def new_stream(rt) -> Any:
    """A stream created ``cudaStreamNonBlocking``: no implicit synchronization with the legacy
    default stream, so another thread's work there (a ``cudaMemcpy``, a library on stream 0)
    neither waits on this stream nor invalidates a capture in progress on it."""
    return _cuda(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))


def capture_graph(rt, stream: Any, enqueue: Callable[[], bool]) -> Any | None:
    """Capture ``enqueue()`` (work put on ``stream``; False when it failed) into an instantiated
    CUDA graph, as trtexec does; None when that failed. It fails in three ways: the enqueue
    reports it (TensorRT returns False); the CUDA runtime invalidated the capture (an operation a
    capture does not allow), which only ``cudaStreamEndCapture`` reports, as
    ``cudaErrorStreamCaptureInvalidated`` with no graph; or ``cudaGraphInstantiate`` refuses the
    captured graph. Each way the capture is ended, any graph destroyed and a runtime error
    cleared, so the stream runs plainly afterwards. ``rt`` is ``cuda.bindings.runtime`` (an
    argument, so that this control flow is testable without a GPU)."""
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
        err, *graph_exec = rt.cudaGraphInstantiate(graph, 0)
    finally:
        _cuda(rt.cudaGraphDestroy(graph))  # the executable graph does not need it
    if err != rt.cudaError_t.cudaSuccess:
        rt.cudaGetLastError()  # clear it, so later calls do not see it; the caller runs plainly
        return None
    return graph_exec[0]


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


def native_handle(obj: Any) -> int:
    """The address a cuda-bindings object wraps (a ``cudaStream_t``, for TensorRT's
    ``execute_async_v3``): ``cuda.bindings.utils.get_cuda_native_handle`` (cuda-bindings 12.9.1+;
    ``int(obj)`` is deprecated there), ``int(obj)`` on older cuda-bindings that lack it."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


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
