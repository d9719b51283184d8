"""The TensorRT runtime's own logic (``backends/_trt.py``), without TensorRT: which engine record
and I/O list fit a host, the timing-cache key, the driver check, the pinned-buffer view, and the
CUDA-graph capture's fallback, driven through a recording cudart that answers with the real
``cuda.bindings`` error codes. The last tests run the capture and the pinned buffers on a real GPU
through cuda-bindings (no TensorRT needed); they are skipped without one."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from rexnet_deploy.backends import _trt

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


# -- CUDA-graph capture and its fallback -------------------------------------------------------------
class RecordingCudart:
    """The cudart calls :func:`_trt.capture_graph` makes, answering with real cuda.bindings
    codes: ``end_error`` is what cudaStreamEndCapture returns (with no graph when it is an error)."""

    def __init__(self, end_error=None):
        self._runtime = pytest.importorskip("cuda.bindings.runtime")
        self.cudaError_t = self._runtime.cudaError_t
        self.cudaStreamCaptureMode = self._runtime.cudaStreamCaptureMode
        self.end_error = end_error or self.cudaError_t.cudaSuccess
        self.calls: list = []

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
    stream = _trt._cuda(rt.cudaStreamCreate())
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
    """Every ``rt.cuda*`` name _trt uses exists in cuda.bindings.runtime (checked where cuda-bindings
    is installed), and the pinned-memory calls are among them."""
    import inspect
    import re

    runtime = pytest.importorskip("cuda.bindings.runtime")
    source = inspect.getsource(_trt)
    names = set(re.findall(r"\b_?rt\.(cuda\w+(?:\.\w+)*)", source))
    assert {"cudaMallocHost", "cudaFreeHost", "cudaStreamEndCapture", "cudaGetLastError",
            "cudaDriverGetVersion", "cudaError_t.cudaErrorStreamCaptureInvalidated"} <= names
    for dotted in names:
        obj = runtime
        for part in dotted.split("."):
            assert hasattr(obj, part), f"cuda.bindings.runtime has no {dotted}"
            obj = getattr(obj, part)
