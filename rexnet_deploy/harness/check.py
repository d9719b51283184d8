"""``check``: run an engine and the FP32 reference on the same images, compare, gate."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..engine import Engine
from ..errors import GateFailed, ImageError, InputError, UsageError
from ..images import describe_bad, expand_paths, find_images, load_images
from ..log import Progress
from ..preprocess import preprocess_batch
from ..synthetic import synthetic_images
from .labelsets import has_wnid_folders, labels_for, read_labels_csv
from .metrics import Comparison, evaluate_gate, gate_thresholds
from .report import calibration_note, summary

Reference = Callable[[np.ndarray], list]


def check(
    engine: Engine,
    *,
    images: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    labels: str | os.PathLike | None = None,
    synthetic: int = 32,
    seed: int = 0,
    reference: Reference | None = None,
    weights: str | os.PathLike | None = None,
    gate: dict[str, float] | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Compare ``engine`` with the FP32 reference on ``images`` (a folder or file list), or on
    ``synthetic`` generated images when none are given. Returns the JSON-ready report; raises
    nothing on a failed gate (see ``report['gate']['passed']`` and :func:`raise_for_gate`)."""
    if images is None and synthetic < 1:
        raise UsageError(f"synthetic (the number of generated images to check on) must be >= 1, got {synthetic}")
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be >= 1, got {limit}")
    if reference is None:
        from .reference import TorchReference

        reference = TorchReference.from_manifest(engine.manifest, weights=weights)
    classify = engine.head == "classify"
    root: Path | None = None
    files: list[Path] | None = None
    if images is None:
        source = {"kind": "synthetic", "n": synthetic, "seed": seed}
    elif isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        root = Path(images)
        files = find_images(root)
        source = {"kind": "folder", "path": str(root.resolve())}
    elif isinstance(images, (str, os.PathLike)):
        files = [Path(images)]
        source = {"kind": "files"}
    else:
        # a folder among the files stands for the images below it, as it does alone
        files = expand_paths(images)
        if not files:
            raise ImageError("no images given to check")
        source = {"kind": "files"}
    if files is not None and limit:
        files = files[:limit]

    label_source = None
    truth: np.ndarray | None = None
    if files is not None and classify:
        table = None
        if labels is not None:
            table, label_source = read_labels_csv(labels), str(labels)
        elif root is not None and (root / "labels.csv").is_file():
            table, label_source = read_labels_csv(root / "labels.csv"), str(root / "labels.csv")
        wnids = _artifact_wnids(engine) if table is None and root is not None and has_wnid_folders(root) else None
        if wnids is not None:
            label_source = "wnid folders"
        truth = labels_for(files, root, table, wnids, engine.manifest.model.num_classes or 10**9)
        if labels is not None and truth is None:
            raise InputError(f"no image in the check set has a label in {labels}")

    comparison = Comparison(engine.output_names, classify)
    step = batch_size or min(engine.batch_range[1], 32)
    skipped: list[tuple[str, str]] = []
    total = synthetic if files is None else len(files)
    done = 0
    t0 = time.perf_counter()
    for start in range(0, total, step):
        if files is None:
            pil = synthetic_images(min(step, total - start), seed=seed * 100_003 + start)
            batch_truth = None
        else:
            chunk = files[start:start + step]
            try:
                loaded = load_images(chunk, skip_bad=True)  # collect every bad file, decide below
            except ImageError as exc:  # every file of this chunk is bad: not fatal with skip_bad
                skipped += exc.bad
                done += len(chunk)
                continue
            skipped += loaded.skipped
            pil = loaded.images
            if truth is not None:
                ok = {n for n in loaded.names}
                batch_truth = np.array([t for f, t in zip(chunk, truth[start:start + step]) if str(f) in ok])
            else:
                batch_truth = None
        batch = preprocess_batch(pil, engine.preprocess_config)
        comparison.update(reference(batch), engine.infer(batch), batch_truth)
        done += len(pil) if files is None else len(chunk)
        if progress:
            progress("checking", done, total)
    if skipped and not skip_bad:
        raise ImageError(describe_bad(skipped, hint=True), skipped)
    if comparison.n == 0:
        raise ImageError("no readable image to check")

    metrics = comparison.metrics()
    thresholds = gate_thresholds(engine.precision, gate)
    from ..cpu import isa_class

    return {
        "kind": "check",
        "engine": {"backend": engine.backend, "precision": engine.precision,
                   # a TensorRT graph run on ONNX Runtime CPU: correctness of the graph, not of TensorRT
                   **({"emulation": engine.emulation} if engine.emulation else {})},
        "model": engine.manifest.model.name,
        "head": engine.head,
        "images": source,
        "n_images": comparison.n,
        "skipped": [{"file": f, "reason": r} for f, r in skipped],
        "labels": label_source,
        # which calibration sample made an INT8 engine: its agreement moves by points with another sample
        **({"calibration": calibration_note(engine.manifest.calibration)} if engine.manifest.calibration else {}),
        "metrics": metrics,
        "labelled": comparison.labelled_accuracy(),
        "gate": evaluate_gate(metrics, thresholds),
        # an INT8 engine's fidelity depends on the CPU's int8 dot-product path (int16 saturation without VNNI)
        "host": {"cpu_isa": isa_class()},
        "seconds": round(time.perf_counter() - t0, 2),
    }


def check_artifact(engine_path: str | os.PathLike, *, engine_options: dict[str, Any] | None = None,
                   save_report: bool = True, warn: Callable[[str], None] = lambda _m: None,
                   **options: Any) -> dict[str, Any]:
    """Load the artifact at ``engine_path`` (``engine_options`` go to ``Engine.load``), run
    :func:`check` on it with ``options``, and keep the report in its manifest unless told not to."""
    from .report import store_report

    with Engine.load(engine_path, **(engine_options or {})) as engine:
        stored = engine.manifest.reports
        report = check(engine, **options)
        # the figures the artifact already holds (the build's held-out check, its evaluation set), so a
        # reader sees this run's images next to them: in-distribution agreement reads high
        report["stored"] = {k: summary(stored[k]) for k in ("check", "eval") if stored.get(k)}
        if save_report:
            store_report(engine, "check", report, warn)
    return report


def raise_for_gate(report: dict[str, Any]) -> None:
    if not report["gate"]["passed"]:
        raise GateFailed(f"{report['kind']} gate failed: {'; '.join(report['gate']['failures'])}")


def _artifact_wnids(engine: Engine) -> list[str] | None:
    entry = engine.manifest.labels or {}
    if entry.get("wnids"):
        return engine.artifact.file(entry["wnids"]).read_text().splitlines()
    return None
