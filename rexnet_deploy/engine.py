"""``Engine``: one interface over every backend's artifact. numpy in, numpy out; no torch here.

``Engine.load(path)`` reads and verifies the artifact, looks its backend up in the one registry
(:mod:`rexnet_deploy.backends`) and returns that backend's ``Engine`` subclass. Only the backend
the artifact uses is imported.

Tensors: ``engine(x)`` and ``engine.run(x)`` also take any DLPack-capable array (a torch tensor,
a CuPy array, ...) and return outputs of the same kind:

* TorchScript engines run it where it lies, without host copies: a CUDA tensor in, CUDA tensors
  out (on the caller's current stream; synchronise before reading them on the host). The tensor
  must be on the engine's device (no silent transfers);
* every other backend runs on host memory: a CPU tensor is viewed as numpy without a copy (DLPack)
  and the outputs come back as that library's tensors, also without a copy; a tensor in GPU
  memory is a UsageError saying to pass ``x.cpu()`` (a hidden device→host copy would make
  "GPU-resident" a lie).

Tensors are detected by duck typing (``__dlpack__``), so this module never imports torch.

``engine.run_batch(x)`` is the one path from a host batch to the backend (``__call__``, ``run``
and ``infer`` end there; TorchScript runs a tensor where it lies instead); ``run_batch(x, check=False)`` skips the whole-batch validation for
callers that checked every row already (the serving batcher). Input checks and padding are
:mod:`rexnet_deploy.batch_shapes`'.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import backends
from .artifact import Artifact, load_artifact
from .backends.base import check_load_options
from .batch_shapes import check_array, check_layout, pad_to
from .errors import ArtifactError, InputError, RexnetDeployError, UsageError, one_line
from .images import LoadedImages, expand_paths, load_images
from .manifest import Manifest
from .preprocess import PreprocessConfig, preprocess_batch


@dataclass(frozen=True)
class Prediction:
    """One of an image's top-k classes."""

    index: int
    label: str
    score: float  # softmax probability

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PredictedFiles:
    """``Engine.predict_files``: the top-k of each readable file, and the files skipped."""

    names: list[str]
    predictions: list[list[Prediction]]
    skipped: list[tuple[str, str]]  # (file, why)


class Engine:
    """Base of the backend runtimes. Subclasses implement ``_setup`` and ``_infer``."""

    emulation: str | None = None  # set when the engine's graph runs on another runtime (TensorRT → ONNX Runtime)
    _finite_on_device = False  # True: the backend checks numpy input for NaN/inf on its device, not validate()

    def __init__(self, artifact: Artifact, *, device: str | None = None, cache_dir: str | os.PathLike | None = None,
                 fast_preprocess: bool = False, **options: Any):
        self.artifact = artifact
        # compiled-model cache root (OpenVINO, ONNX Runtime); other backends have nothing to cache
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        inp = artifact.manifest.input
        self.input_name: str = inp.name
        self.input_shape: tuple[int, ...] = tuple(inp.shape)  # -1 for the batch dimension
        self.batch_range: tuple[int, int] = tuple(inp.batch)
        self.output_names: list[str] = [o.name for o in artifact.manifest.outputs]
        self.device = device or artifact.manifest.device
        self._labels: list[str] | None = None
        self._preprocess = PreprocessConfig.from_data_config(artifact.manifest.preprocess)
        # JPEG draft decoding + integer reduction before the resize: not within 1e-5 of timm (docs/cold-start-and-preprocessing.md)
        self.fast_preprocess = bool(fast_preprocess)
        self._draft = self._preprocess if self.fast_preprocess else None
        self._closed = False
        check_load_options(type(self), artifact.manifest.backend, options)  # the one check, for every backend
        try:
            self._setup(**options)
        except RexnetDeployError:
            raise
        except Exception as exc:  # the runtime library rejected the payload: a damaged or foreign artifact
            raise ArtifactError(
                f"cannot load the {artifact.manifest.backend} payload of {artifact.path}: {one_line(exc)}"
            ) from None

    # -- loading ---------------------------------------------------------------------------
    @staticmethod
    def load(path: str | os.PathLike, *, device: str | None = None, verify: bool = True, **options: Any) -> "Engine":
        """Open an artifact directory. ``verify`` checks every payload checksum first.
        ``cache_dir``: a folder where OpenVINO and ONNX Runtime keep their compiled models, so a
        fresh process skips compiling (see :mod:`rexnet_deploy.cache`). ``fast_preprocess``:
        cheaper decoding and resizing of large images in ``predict``/``preprocess``, off timm's
        transform by a measured bound (see :mod:`rexnet_deploy.preprocess`)."""
        artifact = load_artifact(path, verify=verify)
        info = backends.for_artifact(artifact.manifest.backend)
        module = backends.load_module(info)
        return module.ENGINE(artifact, device=device, **options)

    # -- backend hooks ---------------------------------------------------------------------
    def _setup(self, **options: Any) -> None:  # pragma: no cover - every backend overrides
        raise NotImplementedError

    def _infer(self, batch: np.ndarray) -> list[np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _release(self) -> None:
        """Free backend resources (override when there are any)."""

    def _cache_folder(self, runtime: str, version: str) -> Path | None:
        """This engine's folder under ``cache_dir`` (None without one); see :mod:`.cache`."""
        if self.cache_dir is None:
            return None
        from .cache import cache_folder

        return cache_folder(self.cache_dir, self.artifact, runtime, version)

    # -- public API ------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        return self.artifact.manifest

    @property
    def backend(self) -> str:
        return self.manifest.backend

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def head(self) -> str:
        return self.manifest.model.head

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self._preprocess

    @property
    def labels(self) -> list[str] | None:
        """Class names in index order, from the artifact's labels file (None if it has none)."""
        if self._labels is None:
            entry = self.manifest.labels or {}
            if entry.get("file"):
                self._labels = self.artifact.file(entry["file"]).read_text().splitlines()
        return self._labels

    def validate(self, batch: Any) -> np.ndarray:
        """Check a float32 NCHW batch against the input spec; raise InputError with the fix."""
        if not isinstance(batch, np.ndarray):
            raise InputError(f"engine input must be a numpy array, got {type(batch).__name__} "
                             "(or a DLPack tensor: a torch tensor, a CuPy array)")
        return check_array(batch, self.input_shape, self.batch_range, scan_finite=not self._finite_on_device)

    def check_layout(self, shape: tuple[int, ...], dtype: str) -> None:
        """The shape/dtype/batch-range part of :meth:`validate`, for arrays of any library
        (``dtype`` by name: ``float32``). Tensors in GPU memory are not scanned for NaN/inf:
        that would synchronise the device on every call."""
        check_layout(shape, dtype, self.input_shape, self.batch_range)

    def run_batch(self, batch: np.ndarray, *, check: bool = True) -> list[np.ndarray]:
        """The outputs, in ``output_names`` order, of one numpy batch of a size in ``batch_range``.
        ``check=False`` skips :meth:`validate` (shape, dtype, range, the NaN/inf scan of the whole
        batch), as Polygraphy's ``infer(check_inputs=False)`` does: for callers that checked every
        row already, e.g. the serving batcher, which checks each request on its own. An unchecked
        bad batch fails however the runtime fails."""
        self._check_open()
        return self._infer(self.validate(batch) if check else batch)

    def run(self, batch: Any) -> dict[str, Any]:
        """All outputs by name for one validated batch (numpy, or tensors for a tensor batch)."""
        self._check_open()
        return dict(zip(self.output_names, self._dispatch(batch)))

    def __call__(self, batch: Any) -> Any:
        """The output for one batch: an array, or a tuple of arrays for the ``features`` head.
        A DLPack tensor in gives tensors of its kind out (see the module docstring)."""
        self._check_open()
        outputs = self._dispatch(batch)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _dispatch(self, batch: Any) -> list:
        if isinstance(batch, np.ndarray) or not hasattr(batch, "__dlpack__"):
            return self.run_batch(batch)  # validate names what is wrong with a non-array
        return self._infer_tensor(batch)

    def _infer_tensor(self, batch: Any) -> list:
        """A DLPack tensor on a host-memory runtime: a zero-copy numpy view in, the outputs as the
        caller's library's tensors out (zero-copy too). Backends that run tensors where they lie
        (TorchScript) override this."""
        kind, where = dlpack_device(batch)
        if kind != DLPACK_CPU:
            raise UsageError(f"{self.backend} engines run on host memory; this {type(batch).__name__} is in "
                             f"{where} memory: pass x.cpu() (GPU-resident input and output: TorchScript engines on CUDA)")
        back = from_dlpack_of(batch)
        try:
            array = np.from_dlpack(batch)
        except (BufferError, TypeError, RuntimeError) as exc:
            raise InputError(f"cannot view this {type(batch).__name__} as an array: {one_line(exc)}") from None
        return [back(out if out.flags.writeable else out.copy()) for out in self.run_batch(array)]

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Any number of images: chunks of at most the largest batch, a short last chunk padded
        up to the smallest (and the padding dropped from the outputs)."""
        self._check_open()
        if not (isinstance(batch, np.ndarray) and batch.ndim == 4 and batch.shape[0] >= 1):
            return self.run_batch(batch)  # validate raises the precise error
        lo, hi = self.batch_range
        parts = []
        for start in range(0, len(batch), hi):
            chunk = batch[start:start + hi]
            n = len(chunk)
            parts.append([out[:n] for out in self.run_batch(pad_to(chunk, max(n, lo)))])
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def preprocess(self, images: Any, *, skip_bad: bool = False) -> np.ndarray:
        """Paths, PIL images or uint8 HxWx3 arrays → the float32 NCHW batch this engine takes."""
        loaded = load_images(_as_list(images), skip_bad=skip_bad, draft=self._draft)
        return preprocess_batch(loaded.images, self._preprocess, fast=self.fast_preprocess)

    def predict(self, images: Any, topk: int = 5, *, skip_bad: bool = False) -> list[list[Prediction]]:
        """Top-k classes per image (paths, PIL images or uint8 arrays; one or a list)."""
        self._check_predict(topk)
        return self._predict(load_images(_as_list(images), skip_bad=skip_bad, draft=self._draft), topk)

    def predict_files(self, paths: Iterable[str | os.PathLike], topk: int = 5, *,
                      skip_bad: bool = False) -> PredictedFiles:
        """Top-k classes per image file (a folder stands for the images below it), each decoded
        once; with ``skip_bad`` unreadable files are skipped and returned with the reason."""
        self._check_predict(topk)
        loaded = load_images(expand_paths(paths), skip_bad=skip_bad, draft=self._draft)
        return PredictedFiles(loaded.names, self._predict(loaded, topk), loaded.skipped)

    def _check_predict(self, topk: int) -> None:
        if self.head != "classify":
            raise UsageError(f"predict needs a classify engine; this one has the {self.head!r} head: call engine(batch)")
        if topk < 1:
            raise UsageError(f"topk must be >= 1, got {topk}")

    def _predict(self, loaded: LoadedImages, topk: int) -> list[list[Prediction]]:
        logits = self.infer(preprocess_batch(loaded.images, self._preprocess, fast=self.fast_preprocess))[0]
        return topk_predictions(logits, topk, self.labels)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this engine is closed")

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.manifest.model.name} {self.backend}/{self.precision} {self.artifact.path}>"


DLPACK_CPU = 1  # DLPack device types: kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLROCM = 10, ...
_DLPACK_NAMES = {1: "host", 2: "CUDA", 3: "CUDA pinned host", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 10: "ROCm",
                 13: "CUDA managed", 14: "oneAPI"}


def dlpack_device(x: Any) -> tuple[int, str]:
    """``(DLPack device type, its name)`` of a DLPack-capable object (CPU when it does not say)."""
    get = getattr(x, "__dlpack_device__", None)
    kind = int(get()[0]) if get is not None else DLPACK_CPU
    return kind, _DLPACK_NAMES.get(kind, f"device type {kind}")


def from_dlpack_of(x: Any) -> Callable[[Any], Any]:
    """The ``from_dlpack`` of the library ``x`` comes from (``torch.from_dlpack`` for a torch
    tensor, ``cupy.from_dlpack``, ...): how outputs go back to the caller as their own kind."""
    root = type(x).__module__.partition(".")[0]
    fn = getattr(sys.modules.get(root), "from_dlpack", None)
    if fn is None:
        raise UsageError(f"cannot return outputs as {root}.{type(x).__name__} (its library has no from_dlpack): "
                         "pass a numpy array or a torch tensor")
    return fn


def _as_list(images: Any) -> Sequence:
    if isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, "getpixel"):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    raise InputError(f"cannot use a {type(images).__name__} as images")




def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk_predictions(logits: np.ndarray, topk: int, labels: list[str] | None) -> list[list[Prediction]]:
    probs = softmax(logits)
    k = min(topk, probs.shape[-1])
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [
        [Prediction(int(i), labels[i] if labels and i < len(labels) else str(int(i)), float(p[i])) for i in row]
        for p, row in zip(probs, order)
    ]


__all__ = ["Engine", "PredictedFiles", "Prediction", "dlpack_device", "from_dlpack_of", "softmax",
           "topk_predictions"]
