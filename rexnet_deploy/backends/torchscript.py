"""TorchScript backend: trace + freeze, channels-last. FP32 on CPU, FP16 on CUDA.

torch 2.14 deprecates ``torch.jit.trace`` in favour of ``torch.export``, but libtorch (C++)
services load TorchScript files and nothing else, so this backend keeps it and keeps the
deprecation noise away from users. The artifact records the torch version needed to load it.

On CUDA an engine warms its batch sizes at load (TorchScript compiles on the first calls of
each new shape), can replay CUDA graphs, and takes GPU tensors without host copies: see
:class:`TorchScriptEngine`.

Why channels-last and no ``optimize_for_inference`` (measured on this project's 2-core CPU,
rexnet_100, p50 at batch 1 / 32): eager 54.6 / 1716 ms; frozen 40.8 / 1391; frozen +
optimize_for_inference 48.5 / 1512 (and a module saved after it fails to load again); frozen
channels-last 32.2 / 932. ReXNet's depthwise convolutions run much faster in NHWC.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..batch_shapes import batch_buckets, pad_to, padded_size
from ..engine import Engine, from_dlpack_of
from ..outputs import output_list
from ..errors import BackendUnavailable, BuildError, InputError, UsageError, one_line

if TYPE_CHECKING:  # pragma: no cover
    from ..log import BuildLog
    from ..spec import BuildSpec

PAYLOAD = "model.ts"


@contextlib.contextmanager
def _quiet_jit():
    """Silence TorchScript's deprecation and tracer warnings (they are about our use, not the user's)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript.*")
        warnings.filterwarnings("ignore", message=".*torch.jit.*")
        import torch

        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _torch_version() -> tuple[int, int]:
    import torch

    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def validate(spec: BuildSpec, options: dict[str, Any]) -> dict[str, Any]:
    """FP16 on CUDA only; CUDA present when asked for (TorchScript takes no build options)."""
    if spec.precision == "fp16" and spec.device != "cuda":
        raise UsageError("TorchScript FP16 needs --device cuda (FP16 convolutions on CPU are slow and not supported here)")
    if spec.device == "cuda" and _no_cuda():
        raise BackendUnavailable("--device cuda was asked for, but torch sees no CUDA GPU on this host")
    return dict(options)


def host_problem(precision: str) -> str | None:
    if precision == "fp16" and _no_cuda():
        return "FP16 TorchScript runs on CUDA; no CUDA GPU here"
    return None


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


def build(ref, spec: BuildSpec, writer, log: BuildLog, *, calib=None,
          options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trace the reference module into ``model.ts`` and prove it equals the reference at two batch sizes."""
    import torch

    dtype = torch.float16 if spec.precision == "fp16" else torch.float32
    device = torch.device(spec.device)

    module = ref.module.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()
    c, h, w = ref.data_config.input_size
    # trace at batch 2, so no size-1 batch dimension gets baked into the graph
    example = _to_input(torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0)), device, dtype)
    log("tracing and freezing")
    with _quiet_jit(), torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        torch.jit.save(frozen, str(writer.path(PAYLOAD)))
        # dynamic batch: the saved file, loaded as the runtime loads it, must match eager
        reloaded = _load(str(writer.path(PAYLOAD)), spec.device)

        def on(fn):  # numpy NCHW in, outputs as float32 numpy out, at the engine's device and dtype
            return lambda x: [o.float().cpu().numpy() for o in output_list(fn(_to_input(torch.from_numpy(x), device, dtype)))]

        # FP32 on CUDA: cuDNN runs convolutions in TF32 unless the process turns it off (torch's
        # default), with FP16's 10-bit mantissa; traced + frozen (BatchNorm folded) vs eager then
        # differ like FP16 does. The check against the reference reports what that costs.
        tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
        atol = 1e-2 if dtype == torch.float16 or tf32 else 1e-3
        for n, x, want in ref.probes(spec.batch, eager=on(module)):
            got = on(reloaded)(x)
            if any(g.shape != e.shape or not np.allclose(g, e, rtol=1e-2, atol=atol) for g, e in zip(got, want)):
                raise BuildError(f"the traced TorchScript module differs from eager at batch {n}; cannot build")
    # the reference module is shared with the harness: give it back as it came (FP32, NCHW, CPU)
    module.to(device="cpu", dtype=torch.float32, memory_format=torch.contiguous_format)
    major, minor = _torch_version()
    return {
        "payload": PAYLOAD,
        "backend_config": {"traced": True, "frozen": True, "memory_format": "channels_last",
                           "device": spec.device, "dtype": str(dtype).replace("torch.", ""),
                           **({"convolutions": "tf32 (torch.backends.cudnn.allow_tf32 was on)"} if tf32 else {})},
        "runtime": {"torch": f">={major}.{minor}"},
        "environment": {"torch": torch.__version__},
    }


def _load(path: str, device: str):
    import torch

    return torch.jit.load(path, map_location=device).eval()


def _to_input(x, device, dtype):
    """NCHW values in channels-last memory (the layout the frozen convolutions were traced in).
    Moved first, cast after: a cast of a host tensor runs on the CPU (slower than moving the
    float32 bytes), and on the device the cast and the layout change are one copy."""
    import torch

    return x.to(device).to(dtype=dtype, memory_format=torch.channels_last)


def default_warm_batches(lo: int, hi: int) -> tuple[int, ...]:
    """The batch sizes warmed at load unless ``warm_batches`` says otherwise: ``lo``, every power
    of two between, and ``hi``. A call of another size runs padded up to the next warmed one, so a
    service never meets a shape the engine has not run. Why all of them: on an H200 (torch 2.11),
    after warming 1, 16 and 256, a first call at batch 3 took 4.6 ms but one at batch 48 took
    2.56 s (steady 9.2 ms): TorchScript on CUDA still compiles for some new shapes. Padding costs
    at most 2x the work of an odd-sized batch; a compile on a request costs seconds."""
    return tuple(batch_buckets(lo, hi))


class CudaGraph:
    """One batch size as a CUDA graph: a static float32 NCHW input on the device, the whole
    forward in the graph (cast, channels-last, module, float32 outputs), and pinned host buffers
    for numpy I/O. Captured after warm-up on a side stream, as PyTorch's CUDA-graph docs do.
    ``check_finite``: the graph also reduces isfinite(input) to one flag, read with the outputs
    by numpy calls (an InputError for NaN/inf, at no extra launch or sync)."""

    def __init__(self, torch, forward, shape: tuple[int, ...], device, pool, *, check_finite: bool = False) -> None:
        self._torch = torch
        self.static_in = torch.zeros(shape, device=device, dtype=torch.float32)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                forward(self.static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.static_out = forward(self.static_in)
            self.static_ok = torch.isfinite(self.static_in).all().reshape(1) if check_finite else None
        self.host_in = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        self.host_in_np = self.host_in.numpy()
        self.host_out = [torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in self.static_out]
        self.host_ok = torch.empty(1, dtype=torch.bool, pin_memory=True) if check_finite else None

    def run_numpy(self, batch: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():  # the static tensors are inference tensors
            self.host_in_np[...] = batch
            self.static_in.copy_(self.host_in, non_blocking=True)
            self.graph.replay()
            for h, o in zip(self.host_out, self.static_out):
                h.copy_(o, non_blocking=True)
            if self.host_ok is not None:
                self.host_ok.copy_(self.static_ok, non_blocking=True)
            torch.cuda.current_stream(self.static_in.device).synchronize()
        if self.host_ok is not None and not bool(self.host_ok[0]):
            raise InputError("engine input contains NaN or inf values")
        return [h.numpy().copy() for h in self.host_out]  # the pinned buffers are reused by the next call

    def run_tensor(self, x) -> list:
        with self._torch.inference_mode():
            self.static_in.copy_(x)
            self.graph.replay()
            return [o.clone() for o in self.static_out]  # the static outputs are overwritten by the next replay


class TorchScriptEngine(Engine):
    """Options:

    * ``warm`` (default: on for CUDA engines): at load, run each of ``warm_batches`` until its
      latency is steady (:data:`rexnet_deploy.warmup.LOAD_RULES`): TorchScript on CUDA compiles
      on the first calls of every new shape (seconds), which a service must not pay on a request.
      ``engine.warmup`` holds what each size cost (first call, calls, seconds);
    * ``warm_batches``: the sizes to warm [:func:`default_warm_batches`]; on CUDA a call of
      another size runs padded to the next warmed size (:func:`~rexnet_deploy.batch_shapes.padded_size`);
    * ``cuda_graph``: also capture one CUDA graph per warmed size and replay it for calls of that
      size (numpy calls go through pinned host buffers); other sizes run the module. Calls are
      serialised by a lock; tensor calls must come from one CUDA stream at a time (the graphs
      share one memory pool).

    Tensor outputs are made under ``torch.inference_mode`` (clone one to change it in place
    outside that mode)."""

    def _setup(self, *, warm: bool | None = None, warm_batches: Sequence[int] | None = None,
               cuda_graph: bool = False) -> None:
        import torch

        need = self.manifest.runtime.get("torch", "")
        if need.startswith(">="):
            want = tuple(int(v) for v in need[2:].split(".")[:2])
            if _torch_version() < want:
                raise BackendUnavailable(
                    f"this TorchScript artifact needs torch {need} to load; installed torch is {torch.__version__}"
                )
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"this TorchScript artifact runs on {self.device}, but torch sees no CUDA GPU here")
        if self.device == "cpu" and self.manifest.backend_config.get("device") == "cuda":
            raise UsageError("this TorchScript artifact was built for CUDA; rebuild it with --device cpu")
        self._torch = torch
        self._dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self._device = torch.device(self.device)
        if self._device.type == "cuda" and self._device.index is None:  # tensors report their index
            self._device = torch.device("cuda", torch.cuda.current_device())
        self._graphs: dict[int, CudaGraph] = {}
        self._buckets = ()
        self._lock = threading.Lock()
        # numpy calls on a GPU check NaN/inf there: on the host it costs more than the network (b256: ~25 ms)
        self._finite_on_device = self._device.type == "cuda"
        self.warmup: dict[int, dict[str, Any]] = {}
        cuda = self._device.type == "cuda"
        if cuda_graph and not cuda:
            raise UsageError(f"cuda_graph needs a CUDA engine; this one runs on {self.device}")
        warm = cuda if warm is None else bool(warm)
        if warm_batches is not None and not (warm or cuda_graph):
            raise UsageError("warm_batches without warm: load with warm=True (or cuda_graph=True)")
        sizes = self._warm_sizes(warm_batches)
        with _quiet_jit():
            self._module = _load(str(self.artifact.file(self.manifest.payload)), self.device)
        if warm or cuda_graph:
            self._warm(sizes)
        if cuda_graph:
            self._capture(sizes)
        # on CUDA a call runs at a warmed size (padded with zero rows): a new shape can cost a compile
        self._buckets = tuple(sorted(sizes)) if cuda and (warm or cuda_graph) else ()

    def _warm_sizes(self, given: Sequence[int] | None) -> tuple[int, ...]:
        lo, hi = self.batch_range
        if given is None:
            return default_warm_batches(lo, hi)
        sizes = tuple(dict.fromkeys(int(n) for n in given))
        bad = [n for n in sizes if not lo <= n <= hi]
        if not sizes or bad:
            raise UsageError(f"warm_batches {list(bad or sizes)} must be batch sizes in this engine's range {lo}..{hi}")
        return sizes

    def _forward(self, x) -> list:
        """float32 NCHW on the engine's device → float32 outputs there (inside inference_mode)."""
        return [o.float() for o in output_list(self._module(_to_input(x, self._device, self._dtype)))]

    def _sync(self) -> None:
        if self._device.type == "cuda":
            self._torch.cuda.synchronize(self._device)

    def _warm(self, sizes: Sequence[int]) -> None:
        from ..warmup import LOAD_RULES, rule_for, warm_until_steady

        torch = self._torch
        rule = rule_for(self.device, LOAD_RULES)
        _, c, h, w = self.input_shape
        with torch.inference_mode():
            for n in sizes:
                x = torch.zeros((n, c, h, w), device=self._device)  # the tensor path sees what numpy calls do
                self.warmup[n] = warm_until_steady(lambda: self._forward(x), rule, after=self._sync).to_dict()

    def _capture(self, sizes: Sequence[int]) -> None:
        torch = self._torch
        _, c, h, w = self.input_shape
        pool = None
        try:
            with torch.inference_mode():
                for n in sizes:
                    graph = CudaGraph(torch, self._forward, (n, c, h, w), self._device, pool, check_finite=True)
                    pool = graph.graph.pool()  # one pool: graphs replay one at a time (the lock)
                    self._graphs[n] = graph
        except RuntimeError as exc:
            raise BackendUnavailable(f"capturing this TorchScript module as a CUDA graph failed ({one_line(exc)}); "
                                     "load it without cuda_graph") from None

    @property
    def module(self) -> Any:
        """The loaded TorchScript module (``torch.jit.ScriptModule``) this engine calls: to time or
        inspect it outside the engine. It takes channels-last input in :attr:`torch_dtype` on
        :attr:`torch_device` (what :meth:`run_batch` feeds it)."""
        return self._module

    @property
    def torch_device(self) -> Any:
        """The ``torch.device`` the module runs on (with its index on CUDA)."""
        return self._device

    @property
    def torch_dtype(self) -> Any:
        """The ``torch.dtype`` the module computes in: float16 for FP16 engines, else float32."""
        return self._dtype

    @property
    def graph_batches(self) -> tuple[int, ...]:
        """The batch sizes that replay a CUDA graph (empty without ``cuda_graph``)."""
        return tuple(self._graphs)

    def _infer(self, batch: np.ndarray) -> list[np.ndarray]:
        n = len(batch)
        return [o[:n] for o in self._infer_at(pad_to(batch, padded_size(n, self._buckets), fill="zeros"))]

    def _infer_at(self, batch: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            graph = self._graphs.get(len(batch))
            if graph is not None:
                with self._lock:
                    return graph.run_numpy(batch)
            x = torch.from_numpy(batch).to(self._device)
            if not self._finite_on_device:
                return [o.cpu().numpy() for o in self._forward(x)]
            finite = torch.isfinite(x).all()  # read after the outputs' copy, which waited for it anyway
            outs = [o.cpu().numpy() for o in self._forward(x)]
            if not bool(finite):
                raise InputError("engine input contains NaN or inf values")
            return outs

    def _infer_tensor(self, batch: Any) -> list:
        """A tensor where it lies: no host copies; outputs on the same device, as the caller's kind."""
        torch = self._torch
        back = None
        if isinstance(batch, torch.Tensor):
            x = batch
        else:
            back = from_dlpack_of(batch)
            try:
                x = torch.from_dlpack(batch)
            except (BufferError, TypeError, RuntimeError) as exc:
                raise InputError(f"cannot read this {type(batch).__name__} through DLPack: {one_line(exc)}") from None
        if x.device != self._device:
            raise UsageError(f"this tensor is on {x.device}, the engine runs on {self._device}: "
                             f"move it first (x.to({str(self._device)!r})) or pass a numpy array")
        self.check_layout(tuple(x.shape), str(x.dtype).replace("torch.", ""))
        with torch.inference_mode():
            if x.device.type == "cpu" and not bool(torch.isfinite(x).all()):  # on a GPU it would synchronise
                raise InputError("engine input contains NaN or inf values")
            n = x.shape[0]
            m = padded_size(n, self._buckets)
            x = pad_to(x, m, fill="zeros")
            graph = self._graphs.get(m)
            if graph is not None:
                with self._lock:
                    outs = graph.run_tensor(x)
            else:
                outs = self._forward(x)
            if m != n:
                outs = [o[:n] for o in outs]
        return outs if back is None else [back(o) for o in outs]

    def _release(self) -> None:
        self._graphs = {}
        self._module = None


ENGINE = TorchScriptEngine
