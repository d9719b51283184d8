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
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailable, BuildError, UsageError
from ..outputs import output_list
from .torch_engine import TorchEngine, torch_dtype, torch_version

if TYPE_CHECKING:  # pragma: no cover
    from ..log import BuildLog
    from ..spec import BuildSpec

PAYLOAD = "model.ts"


DEPRECATION_NOTE = ("TorchScript is deprecated upstream (torch {version} warns on every torch.jit call): "
                    "--backend pt2 (torch.export + AOTInductor) is its successor")


@contextlib.contextmanager
def _quiet_jit(deprecations: list[str] | None = None):
    """Keep TorchScript's deprecation and tracer warnings from the user (they are about our use,
    not their model); the deprecation messages seen are appended to ``deprecations``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch

        yield
    ours = (DeprecationWarning, FutureWarning, torch.jit.TracerWarning)
    for w in caught:
        if not issubclass(w.category, ours):  # someone else's warning: pass it on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif deprecations is not None and "deprecat" in str(w.message).lower():
            deprecations.append(str(w.message))


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

    dtype = torch_dtype(spec.precision)
    device = torch.device(spec.device)

    module = ref.module.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()
    c, h, w = ref.data_config.input_size
    # trace at batch 2, so no size-1 batch dimension gets baked into the graph
    example = _to_input(torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0)), device, dtype)
    log("tracing and freezing")
    deprecations: list[str] = []
    with _quiet_jit(deprecations), torch.inference_mode(False), torch.no_grad():
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
    if deprecations:  # one line instead of torch's warning on every call
        log(DEPRECATION_NOTE.format(version=torch.__version__.split("+")[0]))
    # the reference module is shared with the harness: give it back as it came (FP32, NCHW, CPU)
    module.to(device="cpu", dtype=torch.float32, memory_format=torch.contiguous_format)
    major, minor = torch_version()
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


class TorchScriptEngine(TorchEngine):
    """The frozen module on its device; the options are :class:`~.torch_engine.TorchEngine`'s
    (``warm``, ``warm_batches``, ``cuda_graph``)."""

    kind = "TorchScript"

    def _load_callable(self, *, cuda_graph: bool):
        need = self.manifest.runtime.get("torch", "")
        if need.startswith(">="):
            want = tuple(int(v) for v in need[2:].split(".")[:2])
            if torch_version() < want:
                raise BackendUnavailable(
                    f"this TorchScript artifact needs torch {need} to load; installed torch is {self._torch.__version__}"
                )
        with _quiet_jit():
            return _load(str(self.artifact.file(self.manifest.payload)), self.device)

    def _prepare(self, x):
        return _to_input(x, self._device, self._dtype)


ENGINE = TorchScriptEngine
