"""OpenVINO backend for Intel CPUs: FP32, FP16 (compressed weights), BF16, and INT8 (NNCF).

Build: ``openvino.convert_model`` with a dynamic batch dimension and named I/O, then per precision:
FP16 compresses the weights to fp16 in the IR; INT8 runs NNCF post-training quantization on the
calibration set (see :mod:`rexnet_deploy.backends.openvino_int8`).

Runtime (this module imports neither torch nor timm):

* The inference precision is pinned. On a CPU with bf16 (AVX-512 BF16 / AMX) OpenVINO's default
  runs an "FP32" model in bf16: slower for ReXNet and only 82.5% top-1 agreement. FP32 and INT8
  engines run f32; BF16 engines ask for bf16; FP16 engines take the CPU's own choice (bf16
  where it has it, f32 otherwise). The precision a compiled model actually uses is recorded.
* Every batch size is compiled at a **static** shape, on first use: static shapes ran faster
  than a dynamic batch dimension (INT8 4.1 vs 4.9 ms at batch 1), and a partly reverted INT8 model
  compiled with a dynamic shape has returned all-zero logits.
* Small batches use the LATENCY hint and one synchronous request. Batches from
  ``throughput_batch`` up are split into one part per stream of a THROUGHPUT-hint model and run
  through an ``AsyncInferQueue``.
* Thread safety: compiled models are created under a lock; infer requests and async queues come
  from pools, so concurrent callers never share one.
* The CPU plugin is created and destroyed on one thread the engine owns (``_PluginThread``), so
  ``close()`` may be called from any thread (see there why that matters).
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..batch_shapes import pad_to
from ..engine import Engine
from ..errors import BackendUnavailable, BuildError, UsageError
from .openvino_convert import convert

if TYPE_CHECKING:  # pragma: no cover
    from ..log import BuildLog
    from ..spec import BuildSpec

PAYLOAD = "model.xml"
WEIGHTS = "model.bin"
MODES = ("auto", "latency", "throughput")
# the hint given to the CPU plugin per engine precision; None = the plugin's own choice
RUNTIME_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16", "fp16": None}


# -- build ------------------------------------------------------------------------------------
def validate(spec: BuildSpec, options: dict[str, Any]) -> dict[str, Any]:
    """The INT8 options' own rules (see :mod:`.openvino_int8`); other precisions take none."""
    if spec.precision != "int8":
        return {}
    from .openvino_int8 import validate as validate_int8

    return validate_int8(options)


def host_problem(precision: str) -> str | None:
    if precision == "bf16":
        import openvino as ov

        if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return "this CPU has no bf16 arithmetic (OpenVINO would run it in f32)"
    return None


def build(ref, spec: BuildSpec, writer, log: BuildLog, *, calib=None,
          options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert the reference to OpenVINO IR (``model.xml`` + ``model.bin``) at ``spec.precision``."""
    import openvino as ov

    model = convert(ref)
    backend_config: dict[str, Any] = {}
    if spec.precision == "int8":
        from .openvino_int8 import quantize

        model, backend_config["quantization"] = quantize(model, ref, calib, options or {}, log)
    ov.save_model(model, str(writer.path(PAYLOAD)), compress_to_fp16=spec.precision == "fp16")
    hint = RUNTIME_PRECISION[spec.precision]
    effective = _verify(writer.path(PAYLOAD), ref, spec, hint, log)
    backend_config.update({
        "inference_precision_hint": hint,
        "inference_precision_here": effective,  # what the build host's CPU ran (bf16 needs CPU support)
        "weights_dtype": "f16" if spec.precision == "fp16" else ("i8" if spec.precision == "int8" else "f32"),
        "compiled_shapes": "static, one per batch size, on first use",
    })
    if spec.precision == "bf16" and effective != "bf16":
        log("this CPU has no bf16 support: the BF16 engine runs f32 here (it runs bf16 on a CPU that has it)")
    return {
        "payload": PAYLOAD,
        "backend_config": backend_config,
        "runtime": {"openvino": ov.__version__.split("-")[0]},
        "environment": {"openvino": ov.__version__, **_nncf_version(spec.precision)},
    }


def _verify(xml, ref, spec: BuildSpec, hint: str | None, log: BuildLog) -> str:
    """The saved IR, compiled as the runtime compiles it, against eager PyTorch at two batch sizes.
    FP32 must match closely; every precision must give finite, non-constant outputs at a static
    *and* a dynamic shape (the all-zero-logits failure mode shows up here)."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    config = _config("LATENCY", hint)
    c, h, w = ref.data_config.input_size
    effective = "f32"
    dynamic = core.compile_model(model, "CPU", config)
    for n, x, want in ref.probes(spec.batch):
        static_model = model.clone()
        static_model.reshape({0: [n, c, h, w]})
        compiled = core.compile_model(static_model, "CPU", config)
        effective = _precision_of(compiled)
        for label, cm in (("static", compiled), ("dynamic", dynamic)):
            res = cm.create_infer_request().infer({0: x})
            for k, expected in enumerate(want):
                got = np.asarray(res[k])
                if not np.isfinite(got).all() or np.ptp(got) == 0:
                    raise BuildError(f"the OpenVINO {spec.precision} model gives constant or non-finite outputs "
                                     f"({label} shape, batch {n}); cannot build")
                if spec.precision == "fp32" and not np.allclose(got, expected, rtol=1e-3, atol=1e-3):
                    err = float(np.abs(got - expected).max())
                    raise BuildError(f"the OpenVINO FP32 model differs from PyTorch at batch {n} "
                                     f"({label} shape, max abs error {err:.3g}); cannot build")
    return effective


def _precision_of(compiled) -> str:
    """The precision a compiled model runs in, as OpenVINO spells it (f32, bf16, f16)."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").to_string()


def _nncf_version(precision: str) -> dict[str, str]:
    if precision != "int8":
        return {}
    import nncf

    return {"nncf": nncf.__version__}


def _config(performance_hint: str, precision_hint: str | None, streams: int | None = None,
            threads: int | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"PERFORMANCE_HINT": performance_hint}
    if precision_hint:
        config["INFERENCE_PRECISION_HINT"] = precision_hint
    if streams:
        config["NUM_STREAMS"] = str(streams)
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


# -- runtime ----------------------------------------------------------------------------------
class OpenVINOEngine(Engine):
    """Options (``Engine.load(path, **options)``): ``mode`` auto|latency|throughput; ``threads``
    (CPU threads, default all); ``streams`` for throughput mode (default: the plugin's choice);
    ``throughput_batch`` (auto mode: batches this big and up use throughput mode; default 8);
    ``cache_dir`` (``Engine.load``): compiled batch sizes are exported there and imported by the
    next process instead of compiled again; each blob's sha256 is recorded after the compile that
    wrote it and checked before every compile (a damaged or unrecorded blob is removed and rebuilt)."""

    def _setup(self, *, mode: str = "auto", threads: int | None = None, streams: int | None = None,
               throughput_batch: int = 8) -> None:
        if mode not in MODES:
            raise UsageError(f"openvino mode must be one of {', '.join(MODES)}, got {mode!r}")
        if self.device != "cpu":
            raise UsageError(f"openvino engines run on cpu here, not {self.device}")
        try:
            import openvino as ov
        except ImportError as exc:  # a broken install, not a missing one (that is caught earlier)
            raise BackendUnavailable(f"cannot import openvino: {exc}") from None
        self._ov = ov
        self.mode, self.threads, self.streams = mode, threads, streams
        self.throughput_batch = max(1, int(throughput_batch))
        self._core = ov.Core()
        cache = self._cache_folder("openvino", ov.__version__)
        self._verified = None
        if cache is not None:  # OpenVINO keys each blob by model + compile config inside the folder
            from ..cache import VerifiedFolder

            # blobs that fail their recorded sha256, or have none, are removed before OpenVINO can import one
            self._verified = VerifiedFolder(cache)
            if self._verified.check():
                self._core.set_property({"CACHE_DIR": str(cache)})
            else:  # a bad blob it cannot remove (read-only folder): compile everything here
                self._verified, cache = None, None
        self.cache_folder = cache
        self._model = self._core.read_model(str(self.artifact.file(self.manifest.payload)))
        self._hint = self.manifest.backend_config.get(
            "inference_precision_hint", RUNTIME_PRECISION.get(self.precision))
        self._lock = threading.Lock()
        self._compiled: dict[tuple[str, int], Any] = {}
        self._pools: dict[tuple[str, int], queue.SimpleQueue] = {}
        self._n_streams: int | None = None  # of the THROUGHPUT-hint models, read on first use
        self._plugin_thread = _PluginThread(self._core)  # last: creates the CPU plugin there (see its docstring)

    # compiled models and request pools, created once per (hint, batch) under the lock
    def _compiled_for(self, kind: str, n: int):
        key = (kind, n)
        compiled = self._compiled.get(key)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(key)
                if compiled is None:
                    model = self._model.clone()
                    model.reshape({0: [n, *self.input_shape[1:]]})
                    streams = self.streams if kind == "THROUGHPUT" else None
                    if self._verified is not None and not self._verified.check():  # OpenVINO imports blobs here
                        self._core.set_property({"CACHE_DIR": ""})  # a bad blob stuck in the folder: stop reading it
                        self._verified = self.cache_folder = None
                    compiled = self._core.compile_model(model, "CPU", _config(kind, self._hint, streams, self.threads))
                    if self._verified is not None:  # the blob OpenVINO has just written, now complete
                        self._verified.record()
                    self._compiled[key] = compiled
                    self._pools[key] = queue.SimpleQueue()
        return compiled

    def _take(self, key, make):
        try:
            return self._pools[key].get_nowait()
        except queue.Empty:
            return make()

    def inference_precision(self, batch: int = 1) -> str:
        """The precision the CPU plugin runs this engine in (after the pinned hint)."""
        return _precision_of(self._compiled_for("LATENCY", batch))

    def _infer(self, batch: np.ndarray) -> list[np.ndarray]:
        n = len(batch)
        use_throughput = self.mode == "throughput" or (self.mode == "auto" and n >= self.throughput_batch)
        if use_throughput and n > 1:
            return self._infer_throughput(batch)
        key = ("LATENCY", n)
        compiled = self._compiled_for(*key)
        request = self._take(key, compiled.create_infer_request)
        try:
            request.infer({0: batch}, share_inputs=True)
            return [request.get_output_tensor(k).data.copy() for k in range(len(self.output_names))]
        finally:
            self._pools[key].put(request)

    def _infer_throughput(self, batch: np.ndarray) -> list[np.ndarray]:
        """Split the batch into one static-shape part per stream and run the parts concurrently
        through an ``AsyncInferQueue`` (a short last part is padded, so one compiled shape serves)."""
        if self._n_streams is None:
            probe = self._compiled_for("THROUGHPUT", 1)
            self._n_streams = max(1, int(probe.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        n = len(batch)
        part = -(-n // min(self._n_streams, n))
        padded = -(-n // part) * part
        batch = pad_to(batch, padded)
        key = ("THROUGHPUT", part)
        compiled = self._compiled_for(*key)
        # one AsyncInferQueue per caller at a time (pooled): a shared one would mix callers' results
        jobs = self._take(key, lambda: self._async_queue(compiled))
        outputs: list[np.ndarray | None] = [None] * len(self.output_names)
        lock = threading.Lock()
        try:
            for start in range(0, padded, part):
                jobs.start_async({0: batch[start:start + part]}, (outputs, lock, start, padded), share_inputs=True)
            jobs.wait_all()
        finally:
            self._pools[key].put(jobs)
        return [o[:n] for o in outputs]

    def _async_queue(self, compiled):
        jobs = self._ov.AsyncInferQueue(compiled, self._n_streams)
        # one callback for the queue's life. A new one per call (a closure) made OpenVINO drop the
        # previous one on an executor thread, which takes the GIL to do it; a close() right after
        # (a compiled model destroyed with the GIL held, joining that thread) then hung for ever
        jobs.set_callback(_collect_part)
        return jobs

    def _release(self) -> None:
        """Drop every OpenVINO object on the plugin's own thread (whichever thread calls close)."""
        owned = [self._compiled, self._pools, self._model, self._core]
        self._compiled, self._pools, self._model, self._core = {}, {}, None, None
        self._plugin_thread.call(owned.clear)  # the last references go there: the plugin is destroyed there
        self._plugin_thread.stop()


class _PluginThread:
    """A thread that creates an engine's OpenVINO CPU plugin (``core``'s first use of the device)
    and, at ``close``, destroys it. Why: the plugin installs an alternate signal stack (its own
    mmap, sized for AMX signal frames) on the thread that creates it, and its destructor restores
    the old one and unmaps that memory on whichever thread destroys it. Created on the loading
    thread and destroyed on another (``serve`` stops its service in a worker thread), the loading
    thread kept an alternate stack in unmapped memory, and the next signal it handled (SIGTERM
    re-raised at the end of a graceful stop) was a SIGSEGV: exit 139. Here the plugin is born and
    dies on this thread, which no caller shares, and which exits after."""

    def __init__(self, core: Any) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        # the thread holds the queue, not this object: an engine never closed frees the thread too
        self._thread = threading.Thread(target=_serve_jobs, args=(self._jobs,), name="openvino-plugin", daemon=True)
        self._thread.start()
        weakref.finalize(self, self._jobs.put, None)
        self.call(core.get_property, "CPU", "FULL_DEVICE_NAME")  # any device query creates the plugin

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on this thread; its result or exception here."""
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, args, done))
        return done.result()

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()


def _collect_part(request, userdata: tuple) -> None:
    """AsyncInferQueue callback: one part's outputs into the caller's arrays (made by the first
    part to finish, under the caller's lock: the callbacks run on several executor threads)."""
    outputs, lock, start, padded = userdata
    for k in range(len(outputs)):
        data = request.get_output_tensor(k).data
        with lock:
            if outputs[k] is None:
                outputs[k] = np.empty((padded, *data.shape[1:]), dtype=data.dtype)
        outputs[k][start:start + len(data)] = data


def _serve_jobs(jobs: queue.SimpleQueue) -> None:
    while (job := jobs.get()) is not None:
        fn, args, done = job
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            done.set_exception(exc)
        del job, fn, args, done  # hold no reference into the next wait


ENGINE = OpenVINOEngine
