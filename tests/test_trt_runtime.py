"""The TensorRT runtime's own logic (``backends/_trt.py``), without TensorRT: which engine record
and I/O list fit a host, the timing-cache key and its merge under a file lock, the driver check,
the logger's error record and the deserialization error, the pinned-buffer view, stream handles,
and the CUDA-graph capture's fallback and per-batch-size bookkeeping, driven through a recording
cudart that answers with the real ``cuda.bindings`` error codes or through fakes of our own seams
(callables we pass in; never a fake TensorRT). The last tests run the capture, the stream and the
pinned buffers on a real GPU through cuda-bindings (no TensorRT needed); they are skipped without one."""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import time

import numpy as np
import pytest

from rexnet_deploy.backends import _trt
from rexnet_deploy.errors import ArtifactError

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
H200 = {"name": "NVIDIA H200", "compute_capability": "9.0"}


def _record(gpu: dict, tensorrt: str = "10.13.3.9") -> dict:
    return {"tensorrt": tensorrt, "gpu": gpu["name"], "compute_capability": gpu["compute_capability"]}


# -- engine records and I/O -------------------------------------------------------------------------
def test_an_engine_of_another_gpu_with_the_same_compute_capability_is_refused():
    assert _trt.record_mismatch(_record(H100), "10.13.3.9", H100) is None
    why = _trt.record_mismatch(_record(H100), "10.13.3.9", H200)
    assert why == ("the engine was built for NVIDIA H100 80GB HBM3 (compute capability 9.0), "
                   "this host has NVIDIA H200 (9.0)")
    why = _trt.record_mismatch(_record(H100), "11.4.0.106", H100)
    assert why == "the engine was built with TensorRT 10.13.3.9, this host has TensorRT 11.4.0.106"
    ada = {**_record(H100), "compute_capability": "8.9"}
    assert "compute capability 8.9), this host" in _trt.record_mismatch(ada, "10.13.3.9", H100)


IO = [{"name": "input", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1, 3, 224, 224]},
      {"name": "logits", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, 1000]}]


@pytest.mark.parametrize("io, names, fragment", [
    (IO, ("input", ["logits"]), None),
    (IO, ("images", ["logits"]), "the engine's inputs are ['input'], the artifact's input is 'images'"),
    (IO, ("input", ["logits", "embedding"]), "outputs are ['logits'], the artifact's are ['embedding', 'logits']"),
    (IO + [{"name": "mask", "mode": "INPUT", "dtype": "FLOAT", "shape": [-1]}], ("input", ["logits"]),
     "inputs are ['input', 'mask']"),
    ([IO[0], {**IO[1], "dtype": "HALF"}], ("input", ["logits"]), "engine tensor logits is HALF, expected float32"),
])
def test_engine_io_is_checked_against_the_engines_own_tensor_list(io, names, fragment):
    why = _trt.io_mismatch(io, *names)
    assert why is None if fragment is None else fragment in why


# -- timing cache, driver ---------------------------------------------------------------------------
def test_the_timing_cache_file_is_keyed_by_tensorrt_version_and_gpu(tmp_path):
    base = tmp_path / "tensorrt-timing.cache"
    h100 = _trt.timing_cache_file(base, "10.13.3.9", H100)
    assert h100 == tmp_path / "tensorrt-timing-trt10.13.3.9-nvidia-h100-80gb-hbm3-sm90.cache"
    others = {_trt.timing_cache_file(base, "10.13.3.9", H200), _trt.timing_cache_file(base, "11.4.0.106", H100),
              _trt.timing_cache_file(base, "10.13.3.9", {**H100, "compute_capability": "8.9"})}
    assert h100 not in others and len(others) == 3


def test_the_driver_is_named_when_it_is_too_old_for_cuda_bindings():
    why = _trt.driver_problem(12080, "13.5.0")
    assert why == ("the NVIDIA driver supports CUDA 12.8, and cuda-bindings 13.5.0 needs CUDA 13.0 (driver r580+): "
                   "update the driver or pip install 'rexnet-deploy[tensorrt-cu12]'")
    assert _trt.driver_problem(13000, "13.5.0") is None and _trt.driver_problem(12020, "12.9.4") is None
    assert "cuda-bindings 12.9.4 needs CUDA 12.0 (driver r525+)" in _trt.driver_problem(11080, "12.9.4")
    assert _trt.driver_problem(0, "13.5.0").startswith("no NVIDIA driver")


class FakeTimingCache:
    """What :func:`_trt.save_timing_cache` asks of TensorRT's ITimingCache (``combine``: append
    the other cache's entries, conflicting ones skipped; ``serialize``), over a dict; ``pause``
    widens the window between reading the file and writing it, where parallel builds race."""

    def __init__(self, entries: dict, pause: float = 0.0):
        self.entries, self.pause = dict(entries), pause

    @classmethod
    def load(cls, data: bytes) -> "FakeTimingCache":
        return cls(json.loads(data))

    def combine(self, other: "FakeTimingCache", ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False  # a cache of another device is never merged in
        time.sleep(self.pause)
        for key, value in other.entries.items():
            self.entries.setdefault(key, value)
        return True

    def serialize(self) -> bytes:
        return json.dumps(self.entries).encode()


def test_the_timing_cache_is_merged_with_the_file_not_overwritten(tmp_path):
    path = tmp_path / "cache" / "t.cache"
    notes: list[str] = []
    assert _trt.save_timing_cache(path, FakeTimingCache({"a": 1}), FakeTimingCache.load, notes.append) is False
    assert _trt.save_timing_cache(path, FakeTimingCache({"b": 2, "a": 9}), FakeTimingCache.load, notes.append)
    assert json.loads(path.read_bytes()) == {"a": 9, "b": 2}  # this build's timing wins a conflict
    assert notes == [] and (tmp_path / "cache" / "t.cache.lock").exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["t.cache", "t.cache.lock"]  # no temporary left


def test_a_damaged_timing_cache_is_replaced_and_said(tmp_path):
    path = tmp_path / "t.cache"
    path.write_bytes(b"\x00 not a cache")
    notes: list[str] = []

    def load(data: bytes):
        raise RuntimeError("TensorRT: invalid timing cache")  # what TensorRT's bindings do with garbage

    assert _trt.save_timing_cache(path, FakeTimingCache({"a": 1}), load, notes.append) is False
    assert json.loads(path.read_bytes()) == {"a": 1}
    assert len(notes) == 1 and "could not be merged" in notes[0]


def test_parallel_builds_keep_every_builds_timings(tmp_path):
    """Eight builds save at once, each slow between reading the file and writing it: without the
    lock and the merge, the last writer's entries alone survive."""
    path = tmp_path / "t.cache"
    errors: list[BaseException] = []

    def build(i: int) -> None:
        try:
            _trt.save_timing_cache(path, FakeTimingCache({f"layer{i}": i}, pause=0.02), FakeTimingCache.load,
                                   lambda _m: None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(path.read_bytes()) == {f"layer{i}": i for i in range(8)}


class DeadCudart:
    """cuda.bindings.runtime as a host without a usable CUDA runtime answers: ``fail`` is raised
    by the first call (a libcudart that cannot be loaded), else ``count_error`` is returned."""

    def __init__(self, fail: BaseException | None = None, count_error: str = "cudaErrorNoDevice", driver: int = 0):
        runtime = pytest.importorskip("cuda.bindings.runtime")
        self.cudaError_t = runtime.cudaError_t
        self.fail, self.count_error, self.driver = fail, getattr(runtime.cudaError_t, count_error), driver

    def cudaGetDeviceCount(self):
        if self.fail is not None:
            raise self.fail
        return (self.count_error, None)

    def cudaDriverGetVersion(self):
        return (self.cudaError_t.cudaSuccess, self.driver)

    def cudaGetErrorName(self, err):
        return (self.cudaError_t.cudaSuccess, err.name.encode())


@pytest.mark.parametrize("cudart, expected", [
    (lambda: DeadCudart(fail=RuntimeError("Failed to dlopen libcudart.so.13")),
     "cuda-bindings cannot reach the CUDA runtime (RuntimeError: Failed to dlopen libcudart.so.13)"),
    (lambda: DeadCudart(fail=OSError("libcuda.so.1: cannot open shared object file")),
     "cuda-bindings cannot reach the CUDA runtime (OSError: libcuda.so.1: cannot open shared object file)"),
    (lambda: DeadCudart(count_error="cudaErrorInsufficientDriver"),
     "no NVIDIA driver is loaded (cudaDriverGetVersion reports none)"),
    (lambda: DeadCudart(count_error="cudaErrorNoDevice", driver=99000), "no usable CUDA GPU (cudaErrorNoDevice)"),
])
def test_cuda_problem_is_a_reason_never_an_exception(monkeypatch, cudart, expected):
    fake = cudart()
    monkeypatch.setattr(_trt, "_cudart", lambda: fake)
    assert _trt.cuda_problem() == expected


def test_cuda_problem_without_cuda_bindings_names_the_extra(monkeypatch):
    def missing():
        raise ImportError("No module named 'cuda'")

    monkeypatch.setattr(_trt, "_cudart", missing)
    assert _trt.cuda_problem().startswith("cuda-bindings is not installed: pip install 'rexnet-deploy[tensorrt-cu13]'")


# -- the logger's record, the deserialization error ---------------------------------------------------
def test_the_error_record_names_the_last_error_of_an_operation_not_an_older_one():
    record = _trt.ErrorRecord(keep=3)
    assert record.last_error() == "no error was logged"
    record.add("an earlier build failed")
    mark = record.mark()
    assert record.last_error(mark) == "no error was logged"  # the process's one logger heard it, not this call
    assert record.last_error() == "an earlier build failed"
    for i in range(5):
        record.add(f"error {i}")
    assert record.last_error(mark) == "error 4" and record.mark() == mark + 5


def test_an_engine_tensorrt_refuses_is_an_artifact_error_with_its_reason_and_the_rebuild_flag(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    logger = _trt.ErrorRecord()
    logger.add("an old error from another runner")

    def refuse(data: bytes):  # deserialize_cuda_engine's documented failure: an error logged, None returned
        assert data == b"not an engine"
        logger.add("IRuntime::deserializeCudaEngine: Error Code 1: Serialization (magic tag does not match)")
        return None

    with pytest.raises(ArtifactError, match=r"could not deserialize .*model\.engine \(IRuntime::deserializeCudaEngine: "
                                            r"Error Code 1: Serialization \(magic tag does not match\)\); rebuild it "
                                            r"from the stored graph with --rebuild-engine"):
        _trt.deserialize(refuse, logger, engine)

    def raises(data: bytes):
        raise RuntimeError("std::bad_alloc\nmore")

    with pytest.raises(ArtifactError, match=r"\(std::bad_alloc\); rebuild it .*--rebuild-engine"):
        _trt.deserialize(raises, logger, engine)
    assert _trt.deserialize(lambda _d: "engine", logger, engine) == "engine"


def test_cuda_problem_on_this_host_is_the_real_one():
    runtime = pytest.importorskip("cuda.bindings.runtime")
    err, count = runtime.cudaGetDeviceCount()
    if err == runtime.cudaError_t.cudaSuccess and count:
        assert _trt.cuda_problem() is None
        return
    _e, driver = runtime.cudaDriverGetVersion()
    assert _trt.cuda_problem() == (_trt.driver_problem(driver, _trt._bindings_version())
                                   or f"no usable CUDA GPU ({_trt._error_name(err)})")


# -- pinned buffers ----------------------------------------------------------------------------------
def test_host_array_is_a_float32_view_of_the_memory_at_the_address():
    memory = (ctypes.c_float * 24)()
    view = _trt.host_array(ctypes.addressof(memory), (2, 3, 4))
    assert view.shape == (2, 3, 4) and view.dtype == np.float32 and not view.flags.owndata
    view[1, 2, 3] = 5.5
    assert memory[23] == 5.5
    memory[0] = -1.0
    assert view[0, 0, 0] == -1.0


# -- streams ---------------------------------------------------------------------------------------
def test_a_stream_handle_comes_from_get_cuda_native_handle_or_int_on_older_bindings(monkeypatch):
    runtime = pytest.importorskip("cuda.bindings.runtime")
    stream = runtime.cudaStream_t(0x7F00)
    assert _trt.native_handle(stream) == 0x7F00
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # cuda-bindings < 12.9.1: no such function
    assert _trt.native_handle(stream) == 0x7F00


def test_the_stream_is_created_non_blocking():
    rt = RecordingCudart()
    assert _trt.new_stream(rt) == "stream"
    assert rt.calls == [("create-stream", rt.cudaStreamNonBlocking)]


# -- CUDA-graph capture and its fallback -------------------------------------------------------------
class RecordingCudart:
    """The cudart calls :func:`_trt.capture_graph` and :func:`_trt.new_stream` make, answering
    with real cuda.bindings codes: ``end_error`` is what cudaStreamEndCapture returns (with no
    graph when it is an error), ``instantiate_error`` what cudaGraphInstantiate returns."""

    def __init__(self, end_error=None, instantiate_error=None):
        self._runtime = pytest.importorskip("cuda.bindings.runtime")
        self.cudaError_t = self._runtime.cudaError_t
        self.cudaStreamCaptureMode = self._runtime.cudaStreamCaptureMode
        self.cudaStreamNonBlocking = self._runtime.cudaStreamNonBlocking
        self.end_error = end_error or self.cudaError_t.cudaSuccess
        self.instantiate_error = instantiate_error or self.cudaError_t.cudaSuccess
        self.calls: list = []

    def cudaStreamCreateWithFlags(self, flags):
        self.calls.append(("create-stream", flags))
        return self._ok("stream")

    def _ok(self, *values):
        return (self.cudaError_t.cudaSuccess, *values)

    def cudaStreamBeginCapture(self, stream, mode):
        self.calls.append(("begin", mode))
        return self._ok()

    def cudaStreamEndCapture(self, stream):
        self.calls.append("end")
        failed = self.end_error != self.cudaError_t.cudaSuccess
        return (self.end_error, None if failed else "graph")

    def cudaGetLastError(self):
        self.calls.append("clear")
        return (self.end_error,)

    def cudaGraphInstantiate(self, graph, flags):
        self.calls.append(("instantiate", graph))
        if self.instantiate_error != self.cudaError_t.cudaSuccess:
            return (self.instantiate_error, None)
        return self._ok("graph-exec")

    def cudaGraphDestroy(self, graph):
        self.calls.append(("destroy", graph))
        return self._ok()


def test_a_captured_enqueue_becomes_an_executable_graph():
    rt = RecordingCudart()
    assert _trt.capture_graph(rt, "stream", lambda: True) == "graph-exec"
    assert rt.calls == [("begin", rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal), "end",
                        ("instantiate", "graph"), ("destroy", "graph")]


def test_an_invalidated_capture_falls_back_instead_of_raising():
    """What trtexec handles: the capture was invalidated (a call that capture does not allow), which
    only cudaStreamEndCapture reports, with no graph. The capture is ended and the error cleared."""
    runtime = pytest.importorskip("cuda.bindings.runtime")
    rt = RecordingCudart(end_error=runtime.cudaError_t.cudaErrorStreamCaptureInvalidated)
    for enqueued in (True, False):  # whether or not TensorRT noticed
        rt.calls.clear()
        assert _trt.capture_graph(rt, "stream", lambda: enqueued) is None
        assert rt.calls[1:] == ["end", "clear"]


def test_an_enqueue_that_fails_under_capture_falls_back_and_its_graph_is_destroyed():
    rt = RecordingCudart()
    assert _trt.capture_graph(rt, "stream", lambda: False) is None
    assert rt.calls[1:] == ["end", ("destroy", "graph")]


def test_an_enqueue_that_raises_still_ends_the_capture():
    rt = RecordingCudart()

    def enqueue():
        raise RuntimeError("TensorRT blew up")

    with pytest.raises(RuntimeError, match="blew up"):
        _trt.capture_graph(rt, "stream", enqueue)
    assert rt.calls[1:] == ["end", ("destroy", "graph")]


def test_a_graph_that_cannot_be_instantiated_falls_back_instead_of_raising():
    runtime = pytest.importorskip("cuda.bindings.runtime")
    rt = RecordingCudart(instantiate_error=runtime.cudaError_t.cudaErrorNotSupported)
    assert _trt.capture_graph(rt, "stream", lambda: True) is None
    assert rt.calls[1:] == ["end", ("instantiate", "graph"), ("destroy", "graph"), "clear"]


def test_a_failed_capture_is_remembered_for_its_batch_size_alone():
    """Batch 4 cannot be captured, batch 1 can: 4 runs plainly from then on without a second
    attempt (one warning), 1 keeps replaying its graph, and a later new size is still captured."""
    attempts: list[int] = []
    warnings: list[str] = []

    def capture(n: int):
        attempts.append(n)
        return None if n == 4 else (f"context{n}", f"graph{n}")

    graphs = _trt.CudaGraphs(capture, warnings.append)
    assert graphs.get(1) == ("context1", "graph1")
    assert graphs.get(4) is None
    for n in (4, 1, 4, 1):
        graphs.get(n)
    assert graphs.get(2) == ("context2", "graph2")
    assert attempts == [1, 4, 2] and graphs.failed == {4} and graphs.captured == [1, 2]
    assert len(warnings) == 1 and "batch 4" in warnings[0]
    assert graphs.release() == [("context1", "graph1"), ("context2", "graph2")] and graphs.captured == []


def test_any_other_end_capture_error_is_raised_by_name():
    runtime = pytest.importorskip("cuda.bindings.runtime")
    rt = RecordingCudart(end_error=runtime.cudaError_t.cudaErrorStreamCaptureWrongThread)
    with pytest.raises(RuntimeError, match="^cudaErrorStreamCaptureWrongThread$"):
        _trt.capture_graph(rt, "stream", lambda: True)


# -- on a real GPU (cuda-bindings; no TensorRT needed) ------------------------------------------------
CUDA_PROBLEM = _trt.cuda_problem()


@pytest.fixture()
def cuda():
    """(cudart, a stream, a 4 KiB device buffer); freed after the test."""
    rt = _trt._cudart()
    stream = _trt.new_stream(rt)
    ptr = _trt._cuda(rt.cudaMalloc(4096))
    yield rt, stream, ptr
    rt.cudaStreamSynchronize(stream)
    rt.cudaFree(ptr)
    rt.cudaStreamDestroy(stream)


def _pinned(rt, shape):
    pinned = int(_trt._cuda(rt.cudaMallocHost(int(np.prod(shape)) * 4)))
    return pinned, _trt.host_array(pinned, shape)


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_PROBLEM is not None, reason=f"needs a CUDA GPU: {CUDA_PROBLEM}")
def test_pinned_host_buffers_round_trip_through_the_gpu(cuda):
    rt, stream, ptr = cuda
    kind = rt.cudaMemcpyKind
    src, a = _pinned(rt, (32, 32))
    dst, b = _pinned(rt, (32, 32))
    try:
        a[:] = np.arange(1024, dtype=np.float32).reshape(32, 32)
        _trt._cuda(rt.cudaMemcpyAsync(ptr, src, a.nbytes, kind.cudaMemcpyHostToDevice, stream))
        _trt._cuda(rt.cudaMemcpyAsync(dst, ptr, b.nbytes, kind.cudaMemcpyDeviceToHost, stream))
        _trt._cuda(rt.cudaStreamSynchronize(stream))
        np.testing.assert_array_equal(a, b)
    finally:
        _trt._cuda(rt.cudaFreeHost(src))
        _trt._cuda(rt.cudaFreeHost(dst))


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_PROBLEM is not None, reason=f"needs a CUDA GPU: {CUDA_PROBLEM}")
def test_the_real_stream_is_non_blocking_and_its_handle_is_its_address(cuda):
    rt, stream, _ptr = cuda
    assert _trt._cuda(rt.cudaStreamGetFlags(stream)) == rt.cudaStreamNonBlocking
    assert _trt.native_handle(stream) == int(stream) != 0


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_PROBLEM is not None, reason=f"needs a CUDA GPU: {CUDA_PROBLEM}")
def test_a_real_capture_is_replayed(cuda):
    rt, stream, ptr = cuda
    graph_exec = _trt.capture_graph(rt, stream, lambda: rt.cudaMemsetAsync(ptr, 7, 4096, stream)[0]
                                    == rt.cudaError_t.cudaSuccess)
    assert graph_exec is not None
    try:
        _trt._cuda(rt.cudaMemset(ptr, 0, 4096))
        _trt._cuda(rt.cudaGraphLaunch(graph_exec, stream))
        _trt._cuda(rt.cudaStreamSynchronize(stream))
        host = (ctypes.c_uint8 * 4096)()
        _trt._cuda(rt.cudaMemcpy(ctypes.addressof(host), ptr, 4096, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost))
        assert set(bytes(host)) == {7}
    finally:
        _trt._cuda(rt.cudaGraphExecDestroy(graph_exec))


@pytest.mark.gpu
@pytest.mark.skipif(CUDA_PROBLEM is not None, reason=f"needs a CUDA GPU: {CUDA_PROBLEM}")
def test_a_real_invalidated_capture_falls_back_and_the_stream_works_after(cuda):
    """A stream synchronize inside the capture is not allowed: the CUDA runtime invalidates the
    capture, and the enqueue claims success (as an engine whose op TensorRT does not check would)."""
    rt, stream, ptr = cuda

    def enqueue() -> bool:
        rt.cudaMemsetAsync(ptr, 1, 4096, stream)
        rt.cudaStreamSynchronize(stream)  # invalidates the capture
        return True

    assert _trt.capture_graph(rt, stream, enqueue) is None
    _err, status = rt.cudaStreamIsCapturing(stream)
    assert status == rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
    assert rt.cudaGetLastError()[0] == rt.cudaError_t.cudaSuccess  # the capture's error was cleared
    _trt._cuda(rt.cudaMemsetAsync(ptr, 3, 4096, stream))  # the stream runs plainly afterwards
    _trt._cuda(rt.cudaStreamSynchronize(stream))


def test_every_cuda_runtime_name_used_exists_in_cuda_bindings():
    """Every cudart name _trt uses, through ``rt.``/``self._rt.`` or straight through
    ``_cudart().`` (as ``gpu()`` does), exists in cuda.bindings.runtime (checked where
    cuda-bindings is installed); the pinned-memory, stream and device-query calls are among them."""
    import inspect
    import re

    runtime = pytest.importorskip("cuda.bindings.runtime")
    source = inspect.getsource(_trt)
    names = set(re.findall(r"(?:\b_?rt|\b_cudart\(\))\.(cuda\w+(?:\.\w+)*)", source))
    assert {"cudaMallocHost", "cudaFreeHost", "cudaStreamEndCapture", "cudaGetLastError", "cudaDriverGetVersion",
            "cudaError_t.cudaErrorStreamCaptureInvalidated", "cudaStreamCreateWithFlags", "cudaStreamNonBlocking",
            "cudaGetDeviceProperties", "cudaGetErrorName", "cudaError_t.cudaSuccess"} <= names
    assert "cudaStreamCreate" not in names  # every stream is made non-blocking (new_stream)
    for dotted in names:
        obj = runtime
        for part in dotted.split("."):
            assert hasattr(obj, part), f"cuda.bindings.runtime has no {dotted}"
            obj = getattr(obj, part)
