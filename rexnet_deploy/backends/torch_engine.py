"""The runtime shared by the backends whose payload torch runs (TorchScript, ``pt2``): one
:class:`TorchEngine` that loads a callable, warms its batch sizes, can replay CUDA graphs, and
runs numpy batches or tensors where they lie.

A subclass says only how its payload becomes a callable (:meth:`TorchEngine._load_callable`) and
what its callable takes (:meth:`TorchEngine._prepare`): TorchScript's frozen module takes
channels-last input in its dtype; a ``pt2`` package takes float32 NCHW and casts inside its graph.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import numpy as np

from ..batch_shapes import batch_buckets, pad_to, padded_size
from ..engine import Engine, from_dlpack_of
from ..errors import BackendUnavailable, InputError, UsageError, one_line
from ..outputs import output_list


def torch_version() -> tuple[int, int]:
    """The installed torch's (major, minor)."""
    import torch

    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def torch_dtype(precision: str):
    """The ``torch.dtype`` an engine of this precision computes in (float32 for fp32 and int8's I/O)."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


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
    forward in the graph (cast, layout, model, float32 outputs), and pinned host buffers
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


class TorchEngine(Engine):
    """Options:

    * ``warm`` (default: on for CUDA engines): at load, run each of ``warm_batches`` until its
      latency is steady (:data:`rexnet_deploy.warmup.LOAD_RULES`): a CUDA engine's first calls of
      a new shape cost seconds (TorchScript compiles; cuDNN and the caching allocator settle),
      which a service must not pay on a request. ``engine.warmup`` holds what each size cost;
    * ``warm_batches``: the sizes to warm [:func:`default_warm_batches`]; on CUDA a call of
      another size runs padded to the next warmed size (:func:`~rexnet_deploy.batch_shapes.padded_size`);
    * ``cuda_graph``: also capture one CUDA graph per warmed size and replay it for calls of that
      size (numpy calls go through pinned host buffers); other sizes run the module. Calls are
      serialised by a lock; tensor calls must come from one CUDA stream at a time (the graphs
      share one memory pool).

    Tensor outputs are made under ``torch.inference_mode`` (clone one to change it in place
    outside that mode)."""

    kind = "torch"  # how messages name the payload ("TorchScript", "pt2")

    def _setup(self, *, warm: bool | None = None, warm_batches: Sequence[int] | None = None,
               cuda_graph: bool = False) -> None:
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"this {self.kind} artifact runs on {self.device}, but torch sees no CUDA GPU here")
        if self.device == "cpu" and self.manifest.backend_config.get("device") == "cuda":
            raise UsageError(f"this {self.kind} artifact was built for CUDA; rebuild it with --device cpu")
        self._torch = torch
        self._dtype = torch_dtype(self.precision)
        self._device = torch.device(self.device)
        if self._device.type == "cuda" and self._device.index is None:  # tensors report their index
            self._device = torch.device("cuda", torch.cuda.current_device())
        self._graphs: dict[int, CudaGraph] = {}
        self._buckets: tuple[int, ...] = ()
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
        self._module = self._load_callable(cuda_graph=cuda_graph)
        if warm or cuda_graph:
            self._warm(sizes)
        if cuda_graph:
            self._capture(sizes)
        # on CUDA a call runs at a warmed size (padded with zero rows): a new shape can cost a compile
        self._buckets = tuple(sorted(sizes)) if cuda and (warm or cuda_graph) else ()

    # -- what a subclass provides --------------------------------------------------------------
    def _load_callable(self, *, cuda_graph: bool) -> Callable[[Any], Any]:  # pragma: no cover - subclasses
        """The payload as a callable of one input tensor (what :meth:`_prepare` makes)."""
        raise NotImplementedError

    def _prepare(self, x):
        """float32 NCHW on the engine's device → what the loaded callable takes (by default: itself)."""
        return x

    # -- the shared runtime ------------------------------------------------------------------
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
        return [o.float() for o in output_list(self._module(self._prepare(x)))]

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
            raise BackendUnavailable(f"capturing this {self.kind} model as a CUDA graph failed ({one_line(exc)}); "
                                     "load it without cuda_graph") from None

    @property
    def module(self) -> Any:
        """The loaded callable (a ``torch.jit.ScriptModule``, or AOTInductor's compiled model) this
        engine calls: to time or inspect it outside the engine. It takes what :meth:`run_batch`
        feeds it: for TorchScript channels-last input in :attr:`torch_dtype`, for ``pt2``
        float32 NCHW, both on :attr:`torch_device`."""
        return self._module

    def module_input(self, x) -> Any:
        """A float32 NCHW tensor on :attr:`torch_device` as :attr:`module` takes it."""
        return self._prepare(x)

    @property
    def torch_device(self) -> Any:
        """The ``torch.device`` the module runs on (with its index on CUDA)."""
        return self._device

    @property
    def torch_dtype(self) -> Any:
        """The ``torch.dtype`` the model computes in: float16/bfloat16 for FP16/BF16 engines, else float32."""
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
