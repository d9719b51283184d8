"""Calibration data: a deterministic, stratified sample of real images, preprocessed exactly as the
runtime preprocesses them. Shared by every backend that quantizes (OpenVINO/NNCF, ONNX/TensorRT).

A source is a folder of images (recursive) or a CSV whose ``file`` column names images relative
to the CSV's folder. The sample is seeded; when the images sit in class subfolders (an
ImageFolder) or the CSV has a ``class_index``/``wnid`` column, it is drawn round-robin across
classes so every class is represented before any class gets a second image. Files not chosen
are the *held-out* slice: the build checks the engine on those, never on calibration images.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import ImageError, InputError, UsageError
from .images import IMAGE_EXTENSIONS, find_images, load_image
from .log import Progress
from .preprocess import PreprocessConfig, preprocess_image

DEFAULT_SIZE = 300
HELD_OUT_LIMIT = 500  # held-out images an INT8 build (or matrix) checks on, at most
MIN_IMAGES = 16  # below this, ranges come from too few activations to trust
MISSING = "--int8 needs calibration images: --calib DIR (a folder of real photos, or a CSV file list)"


@dataclass
class CalibrationSet:
    """The chosen calibration files (in sample order) and the held-out rest of the source."""

    source: Path
    kind: str  # "folder" | "csv"
    candidates: list[Path]  # every source file in sample order: chosen ones first
    size: int
    seed: int
    stratified: bool
    n_classes: int | None
    labels_csv: Path | None = None  # a labels table for the held-out check, when the source has one
    files: list[Path] = field(default_factory=list)  # filled by load()
    skipped: list[tuple[str, str]] = field(default_factory=list)
    _tensors: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def held_out(self) -> list[Path]:
        """Source files that are not calibration images (bad ones excluded), in sample order.
        Before ``load``: the candidates past the first ``size`` (load takes the next ones in
        place of unreadable images, so a loaded set's held-out slice can start later)."""
        if not self.files and not self.skipped:
            return self.candidates[self.size:]
        used = set(self.files) | {Path(f) for f, _ in self.skipped}
        return [p for p in self.candidates if p not in used]

    def load(self, config: PreprocessConfig, *, minimum: int = MIN_IMAGES,
             progress: Progress | None = None) -> "CalibrationSet":
        """Decode and preprocess ``size`` images, skipping unreadable ones (each is counted and named
        in the record) and taking the next candidates in their place."""
        self.files, self.skipped, self._tensors = [], [], []
        want = min(self.size, len(self.candidates))
        for path in self.candidates:
            if len(self.files) >= want:
                break
            try:
                img = load_image(path)
            except ImageError as exc:
                self.skipped += exc.bad
                continue
            self._tensors.append(preprocess_image(img, config))
            self.files.append(path)
            if progress:
                progress("reading calibration images", len(self.files), want)
        if len(self.files) < minimum:
            bad = f" ({len(self.skipped)} unreadable)" if self.skipped else ""
            raise InputError(
                f"calibration needs at least {minimum} readable images; {self.source} has "
                f"{len(self.files)}{bad}"
            )
        return self

    def __len__(self) -> int:
        return len(self._tensors)

    def tensors(self) -> list[np.ndarray]:
        """One float32 (1, C, H, W) array per calibration image, in sample order."""
        if not self._tensors:
            raise UsageError("calibration set is not loaded (call load(config) first)")
        return [t[None] for t in self._tensors]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The calibration images as float32 NCHW batches of at most ``batch_size``."""
        tensors = self.tensors()
        for start in range(0, len(tensors), batch_size):
            yield np.concatenate(tensors[start:start + batch_size])

    def list_sha256(self) -> str:
        """Hash of the chosen file list (paths relative to the source), in sample order."""
        names = "\n".join(_relative(p, self._root) for p in self.files)
        return hashlib.sha256(names.encode()).hexdigest()

    @property
    def _root(self) -> Path:
        return self.source if self.kind == "folder" else self.source.parent

    def record(self) -> dict[str, Any]:
        """What goes into the manifest: enough to know which images calibrated the engine."""
        return {
            "source": str(self.source.resolve()),
            "kind": self.kind,
            "n": len(self.files),
            "requested": self.size,
            "seed": self.seed,
            "stratified": self.stratified,
            "classes": self.n_classes,
            "list_sha256": self.list_sha256(),
            "unreadable": len(self.skipped),
            "unreadable_files": [f"{Path(f).name}: {r}" for f, r in self.skipped[:10]],
        }

    def overlap(self, paths: Sequence[str | os.PathLike]) -> int:
        """How many of ``paths`` (files or folders) are calibration images."""
        chosen = {p.resolve() for p in self.files}
        found = 0
        for p in paths:
            p = Path(p)
            for f in (find_images(p) if p.is_dir() else [p]):
                found += f.resolve() in chosen
        return found


def held_out_check(calib_set: CalibrationSet, limit: int = HELD_OUT_LIMIT,
                   labels: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The check set of engines calibrated on ``calib_set``'s source: up to ``limit`` held-out
    images, with ``labels`` or else the source's labels table (the ``images``/``labels`` options
    of ``harness.check.check``); None when every image calibrates. ``build`` and ``matrix`` both
    check on this, so every engine of a matrix is measured on the same photos."""
    held = calib_set.held_out[:limit]
    if not held:
        return None
    return {"images": held, "labels": labels if labels is not None else calib_set.labels_csv}


def select(source: str | os.PathLike, size: int = DEFAULT_SIZE, *, seed: int = 0) -> CalibrationSet:
    """Plan a calibration sample from a folder or CSV (nothing is decoded yet; see ``load``)."""
    if size < 1:
        raise UsageError(f"--calib-size must be >= 1, got {size}")
    src = Path(source)
    if not src.exists():
        raise InputError(f"calibration source not found: {src}")
    if src.is_dir():
        try:
            files = find_images(src)
        except ImageError as exc:
            raise InputError(f"calibration folder: {exc}") from None
        groups = _folder_groups(src, files)
        kind, labels_csv = "folder", (src / "labels.csv" if (src / "labels.csv").is_file() else None)
    elif src.suffix.lower() == ".csv":
        files, groups, labelled = _read_csv(src)
        kind, labels_csv = "csv", (src if labelled else None)
    else:
        raise InputError(f"--calib must be an image folder or a .csv file list, got {src}")
    order = _sample_order(files, groups, seed)
    return CalibrationSet(
        source=src, kind=kind, candidates=[files[i] for i in order], size=size, seed=seed,
        stratified=groups is not None, n_classes=len(set(groups)) if groups is not None else None,
        labels_csv=labels_csv,
    )


def _folder_groups(root: Path, files: list[Path]) -> list[str] | None:
    """Class of each file when the folder is an ImageFolder (images under ≥ 2 subfolders)."""
    parents = [f.parent for f in files]
    if any(p == root for p in parents):
        return None
    groups = [f.relative_to(root).parts[0] for f in files]
    return groups if len(set(groups)) >= 2 else None


def _read_csv(path: Path) -> tuple[list[Path], list[str] | None, bool]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read calibration list {path}: {exc}") from None
    if not rows or "file" not in rows[0]:
        raise InputError(f"calibration list {path} needs a header row with a 'file' column")
    key = next((k for k in ("class_index", "label", "wnid") if k in rows[0]), None)
    files, groups = [], []
    for row in rows:
        name = (row.get("file") or "").strip()
        if not name:
            continue
        p = Path(name) if Path(name).is_absolute() else path.parent / name
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        files.append(p)
        groups.append(str(row.get(key, "")).strip() if key else "")
    if not files:
        raise InputError(f"calibration list {path} names no image files")
    return files, (groups if key and len(set(groups)) >= 2 else None), "class_index" in rows[0]


def _sample_order(files: list[Path], groups: list[str] | None, seed: int) -> list[int]:
    """A seeded permutation; with groups, round-robin over shuffled classes (stratified)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return [int(i) for i in rng.permutation(len(files))]
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    names = sorted(by_group)
    queues = [[by_group[n][j] for j in rng.permutation(len(by_group[n]))] for n in names]
    class_order = [int(k) for k in rng.permutation(len(names))]
    order: list[int] = []
    depth = 0
    while len(order) < len(files):
        for k in class_order:
            if depth < len(queues[k]):
                order.append(queues[k][depth])
        depth += 1
    return order


def _relative(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()
