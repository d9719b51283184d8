"""``build``: model → backend compile → artifact (→ check against the reference → publish).

The check runs on the finished artifact while it is still in its temporary directory, so a
build whose gate fails leaves nothing at ``--out``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from . import backends, calibration
from .artifact import ArtifactWriter, environment
from .engine import Engine
from .outputs import output_list
from .images import find_images
from .errors import GateFailed, UsageError
from .log import BuildLog, LogLike, as_build_log
from .models import create_reference, imagenet_labels
from .spec import BuildSpec, ModelSpec


def build(
    model: ModelSpec,
    spec: BuildSpec,
    out: str | os.PathLike,
    *,
    force: bool = False,
    calib: str | os.PathLike | None = None,
    calib_size: int = calibration.DEFAULT_SIZE,
    calib_seed: int = 0,
    backend_options: dict[str, Any] | None = None,
    check: bool = True,
    check_options: dict[str, Any] | None = None,
    check_size: int = calibration.HELD_OUT_LIMIT,
    eval_images: str | os.PathLike | None = None,
    bench_batches: list[int] | None = None,
    bench_seconds: float = 2.0,
    measure_refused: bool = False,
    log: LogLike = None,
) -> Engine:
    """Build and publish an artifact at ``out``; returns the loaded Engine (closed by the caller).

    INT8 builds calibrate on ``calib`` (a folder or CSV; ``calib_size`` images drawn with
    ``calib_seed``, see :mod:`rexnet_deploy.calibration`). ``backend_options`` are the backend's
    own build options (its :class:`~rexnet_deploy.backends.BackendInfo` ``options``), validated
    once, here, before any model is built. With ``check`` (default), the engine is compared with
    the FP32 reference before publishing (``check_options`` go to
    :func:`rexnet_deploy.harness.check.check`); without check images, an INT8 build checks on up to
    ``check_size`` held-out images of the calibration source (never calibration images). A failed
    gate raises GateFailed and nothing is written; with ``measure_refused`` the refused engine is
    still evaluated and benchmarked first, and the GateFailed carries those reports (``reports``:
    the figures of an engine that is never published). ``log``: a
    :class:`~rexnet_deploy.log.BuildLog` or a function taking each message.
    """
    log = as_build_log(log)
    info = backends.get(spec.backend)
    spec = dataclasses.replace(spec, backend=info.name, device=spec.device or info.default_device)
    backends.check_spec(info, spec, head=model.head)
    check_options = dict(check_options or {})
    given = check_options.get("images")
    if isinstance(given, (str, os.PathLike)) and not Path(given).exists():
        raise UsageError(f"--check-images {given} does not exist")
    replaced = [o.cli_flag for o in info.options if o.replaces_calib and (backend_options or {}).get(o.name) is not None]
    calib_set = _plan_calibration(spec, calib, calib_size, calib_seed, replaced[0] if replaced else None)
    check_eval_images(eval_images)
    backend = backends.load_module(info, for_build=True)
    options = backends.validate(info, backend, spec, backend_options)  # the one validation of the options
    with ArtifactWriter(out, force=force) as writer:
        log(f"creating the {model.name} reference ({model.weights.describe()})")
        ref = create_reference(model)
        if calib_set is not None:
            calib_set.load(ref.data_config, progress=log.progress)
            bad = f", {len(calib_set.skipped)} unreadable skipped" if calib_set.skipped else ""
            log(f"calibration set: {len(calib_set)} images from {calib_set.source}{bad}")
            held_out_check = check_options.get("images") is None
            overlap = _plan_check_images(calib_set, check_options, check_size, log)
        log(f"compiling for {info.name} {spec.precision}")
        part = backend.build(ref, spec, writer, log, calib=calib_set, options=options)

        labels = None
        if model.head == "classify":
            names = imagenet_labels(ref.label_subset, ref.num_classes)
            if names:
                writer.path("labels.txt").write_text("\n".join(names[0]) + "\n")
                writer.path("wnids.txt").write_text("\n".join(names[1]) + "\n")
                labels = {"file": "labels.txt", "wnids": "wnids.txt", "subset": ref.label_subset}

        import timm
        import torch

        c, h, w = ref.data_config.input_size
        manifest = {
            "backend": info.name,
            "precision": spec.precision,
            "device": spec.device,
            "model": {
                "name": model.name,
                "head": model.head,
                "num_classes": ref.num_classes,
                "test_size": model.test_size,
                "weights": ref.weights_record,
            },
            "input": {"name": "input", "dtype": "float32", "layout": "NCHW", "shape": [-1, c, h, w],
                      "batch": list(spec.batch)},
            "preprocess": ref.data_config.to_dict(),
            "outputs": _output_specs(ref, c, h, w),
            "labels": labels,
            "calibration": calib_set.record() if calib_set is not None else None,
            "payload": part["payload"],
            "backend_config": part.get("backend_config", {}),
            "runtime": part.get("runtime", {}),
            "environment": environment(**{"torch": torch.__version__, "timm": timm.__version__, **part.get("environment", {})}),
        }
        artifact = writer.finalize(manifest)
        # (a TensorRT build on a host without a GPU loads its graph on ONNX Runtime: emulate=True)
        engine = Engine.load(artifact.path, **part.get("load_options", {}))
        try:
            from .harness.reference import TorchReference

            reference = TorchReference(ref)  # the module in memory: no second model build
            refused = None
            if check:
                from .harness.check import check as run_check

                log("checking against the FP32 reference")
                report = run_check(engine, reference=reference, **check_options)
                if calib_set is not None and check_options.get("images") is not None:
                    report["images"]["calibration_overlap"] = overlap
                    if held_out_check:  # say which photos these are: in-distribution ones read high
                        report["images"]["held_out_of"] = str(calib_set.source)
                artifact.set_report("check", report)
                if not report["gate"]["passed"]:
                    refused = GateFailed("build gate failed, nothing written: " + "; ".join(report["gate"]["failures"]))
                    if not measure_refused:
                        raise refused
                    log("gate failed: measuring the engine all the same; it will not be published")
            if eval_images is not None:
                from .harness.check import check as run_check

                # photos of other classes than the calibration ones: the figures that carry over to
                # unseen inputs (recorded next to the gate's; informative, the gate stays the check's)
                log(f"evaluating on {eval_images}")
                if calib_set is not None and calib_set.overlap([eval_images]):
                    log("warning: the evaluation images include calibration images; agreement measured on them reads high")
                report = run_check(engine, reference=reference, images=eval_images, skip_bad=True,
                                   gate=check_options.get("gate"))
                artifact.set_report("eval", report)
            if bench_batches:
                from .harness.bench import bench

                log("benchmarking against the FP32 eager reference")
                artifact.set_report("bench", bench(engine, batches=bench_batches, reference=reference,
                                                      seconds=bench_seconds))
            if refused is not None:  # measured, handed over, and discarded with the staging folder
                refused.reports = dict(artifact.manifest["reports"])
                raise refused
            engine.artifact = writer.publish()
        except BaseException:
            engine.close()
            raise
    return engine


def check_eval_images(eval_images: str | os.PathLike | None) -> None:
    """Fail now, not after minutes of building, on a missing or image-less evaluation folder."""
    if eval_images is not None and (Path(eval_images).is_dir() or not Path(eval_images).exists()):
        find_images(eval_images)


def _plan_calibration(spec: BuildSpec, calib, size: int, seed: int,
                      replaced_by: str | None = None) -> calibration.CalibrationSet | None:
    """Pick the calibration sample before any model is built (bad input fails fast). A backend
    option may replace the images (``replaced_by``: TensorRT's --calib-cache)."""
    if replaced_by is not None and calib is not None:
        raise UsageError(f"{replaced_by} replaces --calib (the cache holds the calibrated ranges); give one of them")
    if calib is None:
        if spec.precision == "int8" and replaced_by is None:
            raise UsageError(calibration.MISSING)
        return None
    if spec.precision != "int8":
        raise UsageError(f"--calib is for --int8 builds; a {spec.precision} build does not calibrate")
    return calibration.select(calib, size, seed=seed)


def _plan_check_images(calib_set: calibration.CalibrationSet, check_options: dict[str, Any], check_size: int,
                       log: BuildLog) -> int:
    """Check on held-out images of the calibration source unless check images were given; warn
    when given check images overlap the calibration images (agreement on them reads high).
    Returns how many check images are calibration images."""
    given = check_options.get("images")
    if given is not None:
        n = calib_set.overlap([given] if isinstance(given, (str, os.PathLike)) else list(given))
        if n:
            log(f"warning: {n} check image(s) are calibration images; agreement measured on them reads high")
        return n
    held_out = calib_set.held_out[:check_size]
    if not held_out:
        log("warning: every image of the calibration source is used for calibration; checking on generated images")
        return 0
    check_options["images"] = held_out
    if check_options.get("labels") is None and calib_set.labels_csv is not None:
        check_options["labels"] = calib_set.labels_csv
    log(f"checking on {len(held_out)} held-out images of {calib_set.source} (not used for calibration)")
    return 0


def _output_specs(ref, c: int, h: int, w: int) -> list[dict[str, Any]]:
    """Output names and shapes, read off one eager forward pass at batch 1."""
    import torch

    with torch.inference_mode():
        out = ref.module(torch.zeros(1, c, h, w))
    return [{"name": name, "dtype": "float32", "shape": [-1, *o.shape[1:]]}
            for name, o in zip(ref.output_names, output_list(out))]
