"""``Engine``: one interface over every backend's artifact. numpy in, numpy out; no torch here.

``Engine.load(path)`` reads and verifies the artifact, looks its backend up in the one registry
(:mod:`rexnet_deploy.backends`) and returns that backend's ``Engine`` subclass. Only the backend
the artifact uses is imported.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from . import backends
from .artifact import Artifact, load_artifact
from .errors import ArtifactError, InputError, RexnetDeployError, UsageError, one_line
from .images import LoadedImages, expand_paths, load_images
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

    def __init__(self, artifact: Artifact, *, device: str | None = None, **options: Any):
        self.artifact = artifact
        inp = artifact.manifest["input"]
        self.input_name: str = inp["name"]
        self.input_shape: tuple[int, ...] = tuple(inp["shape"])  # -1 for the batch dimension
        self.batch_range: tuple[int, int] = tuple(inp["batch"])
        self.output_names: list[str] = [o["name"] for o in artifact.manifest["outputs"]]
        self.device = device or artifact.manifest.get("device", "cpu")
        self._labels: list[str] | None = None
        self._preprocess = PreprocessConfig.from_data_config(artifact.manifest["preprocess"])
        self._closed = False
        try:
            self._setup(**options)
        except RexnetDeployError:
            raise
        except Exception as exc:  # the runtime library rejected the payload: a damaged or foreign artifact
            raise ArtifactError(
                f"cannot load the {artifact.backend} payload of {artifact.path}: {one_line(exc)}"
            ) from None

    # -- loading ---------------------------------------------------------------------------
    @staticmethod
    def load(path: str | os.PathLike, *, device: str | None = None, verify: bool = True, **options: Any) -> "Engine":
        """Open an artifact directory. ``verify`` checks every payload checksum first."""
        artifact = load_artifact(path, verify=verify)
        info = backends.for_artifact(artifact.backend)
        module = backends.load_module(info)
        return module.ENGINE(artifact, device=device, **options)

    # -- backend hooks ---------------------------------------------------------------------
    def _setup(self, **options: Any) -> None:  # pragma: no cover - every backend overrides
        raise NotImplementedError

    def _infer(self, batch: np.ndarray) -> list[np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _release(self) -> None:
        """Free backend resources (override when there are any)."""

    # -- public API ------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        return self.artifact.manifest

    @property
    def backend(self) -> str:
        return self.artifact.backend

    @property
    def precision(self) -> str:
        return self.artifact.precision

    @property
    def head(self) -> str:
        return self.manifest["model"]["head"]

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self._preprocess

    @property
    def labels(self) -> list[str] | None:
        """Class names in index order, from the artifact's labels file (None if it has none)."""
        if self._labels is None:
            entry = self.manifest.get("labels") or {}
            if entry.get("file"):
                self._labels = self.artifact.file(entry["file"]).read_text().splitlines()
        return self._labels

    def validate(self, batch: Any) -> np.ndarray:
        """Check a float32 NCHW batch against the input spec; raise InputError with the fix."""
        if not isinstance(batch, np.ndarray):
            raise InputError(f"engine input must be a numpy array, got {type(batch).__name__}")
        _, c, h, w = self.input_shape
        if batch.ndim == 3 and batch.shape == (c, h, w):
            raise InputError(f"engine input must be a batch NCHW; add the batch axis: x[None] (shape (1, {c}, {h}, {w}))")
        if batch.ndim != 4:
            raise InputError(f"engine input must be 4-D NCHW (N, {c}, {h}, {w}), got shape {batch.shape}")
        if batch.shape[1:] != (c, h, w):
            if batch.shape[1:] == (h, w, c):
                raise InputError(
                    f"engine input looks NHWC {batch.shape}; expected NCHW: use x.transpose(0, 3, 1, 2)"
                )
            raise InputError(f"engine input must have shape (N, {c}, {h}, {w}), got {batch.shape}")
        if batch.dtype != np.float32:
            raise InputError(
                f"engine input must be float32 (normalized, see engine.preprocess), got {batch.dtype}"
            )
        lo, hi = self.batch_range
        if not lo <= batch.shape[0] <= hi:
            raise InputError(f"batch size {batch.shape[0]} is outside this engine's range {lo}..{hi}")
        if not np.isfinite(batch).all():
            raise InputError("engine input contains NaN or inf values")
        return np.ascontiguousarray(batch)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs by name for one validated batch."""
        self._check_open()
        return dict(zip(self.output_names, self._infer(self.validate(batch))))

    def __call__(self, batch: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """The output for one batch: an array, or a tuple of arrays for the ``features`` head."""
        self._check_open()
        outputs = self._infer(self.validate(batch))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Any number of images: chunks of at most the largest batch, a short last chunk padded
        up to the smallest (and the padding dropped from the outputs)."""
        self._check_open()
        if not (isinstance(batch, np.ndarray) and batch.ndim == 4 and batch.shape[0] >= 1):
            return self._infer(self.validate(batch))  # validate raises the precise error
        lo, hi = self.batch_range
        parts = []
        for start in range(0, len(batch), hi):
            chunk = batch[start:start + hi]
            n = len(chunk)
            if n < lo:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], lo - n, axis=0)])
            parts.append([out[:n] for out in self._infer(self.validate(chunk))])
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def preprocess(self, images: Any, *, skip_bad: bool = False) -> np.ndarray:
        """Paths, PIL images or uint8 HxWx3 arrays → the float32 NCHW batch this engine takes."""
        loaded = load_images(_as_list(images), skip_bad=skip_bad)
        return preprocess_batch(loaded.images, self._preprocess)

    def predict(self, images: Any, topk: int = 5, *, skip_bad: bool = False) -> list[list[Prediction]]:
        """Top-k classes per image (paths, PIL images or uint8 arrays; one or a list)."""
        self._check_predict(topk)
        return self._predict(load_images(_as_list(images), skip_bad=skip_bad), topk)

    def predict_files(self, paths: Iterable[str | os.PathLike], topk: int = 5, *,
                      skip_bad: bool = False) -> PredictedFiles:
        """Top-k classes per image file (a folder stands for the images below it), each decoded
        once; with ``skip_bad`` unreadable files are skipped and returned with the reason."""
        self._check_predict(topk)
        loaded = load_images(expand_paths(paths), skip_bad=skip_bad)
        return PredictedFiles(loaded.names, self._predict(loaded, topk), loaded.skipped)

    def _check_predict(self, topk: int) -> None:
        if self.head != "classify":
            raise UsageError(f"predict needs a classify engine; this one has the {self.head!r} head: call engine(batch)")
        if topk < 1:
            raise UsageError(f"topk must be >= 1, got {topk}")

    def _predict(self, loaded: LoadedImages, topk: int) -> list[list[Prediction]]:
        logits = self.infer(preprocess_batch(loaded.images, self._preprocess))[0]
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
        return f"<{type(self).__name__} {self.manifest['model']['name']} {self.backend}/{self.precision} {self.artifact.path}>"


def _as_list(images: Any) -> Sequence:
    if isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, "getpixel"):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    raise InputError(f"cannot use a {type(images).__name__} as images")


def output_list(out: Any) -> list:
    """A model call's result as a list of outputs (one tensor, or a tuple/list of them)."""
    return list(out) if isinstance(out, (list, tuple)) else [out]


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


__all__ = ["Engine", "PredictedFiles", "Prediction", "output_list", "softmax", "topk_predictions"]
