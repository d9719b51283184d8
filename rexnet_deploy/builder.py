"""``build``: model → compile → verify → publish, three stages with one job each.

:func:`compile` builds the reference, calibrates, runs the backend and writes the artifact into a
hidden staging folder beside ``--out`` (its manifest written, its engine loaded); :func:`verify`
checks that engine against the FP32 reference (the gate), evaluates and benchmarks it;
:func:`publish` renames the staging folder into place. A build whose gate fails, or that fails
anywhere before publishing, leaves nothing at ``--out``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import backends, calibration
from .artifact import Artifact, ArtifactWriter, environment
from .engine import Engine
from .images import find_images
from .errors import GateFailed, UsageError
from .log import BuildLog, LogLike, as_build_log
from .manifest import InputSpec, Manifest, ModelRecord, OutputSpec
from .models import ReferenceModel, create_reference, imagenet_labels
from .outputs import output_list
from .spec import BuildSpec, ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    from .backends import BackendInfo
    from .harness.reference import TorchReference


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
    check_options = dict(check_options or {})
    check_verify_inputs(check_options, eval_images)  # bad images fail before minutes of building
    with compile(model, spec, out, force=force, calib=calib, calib_size=calib_size, calib_seed=calib_seed,
                 backend_options=backend_options, log=log) as staged:
        verify(staged.engine, staged.reference, calib_set=staged.calib_set, check=check,
               check_options=check_options, check_size=check_size, eval_images=eval_images,
               bench_batches=bench_batches, bench_seconds=bench_seconds, measure_refused=measure_refused, log=log)
        return publish(staged)


@dataclasses.dataclass
class StagedBuild:
    """A compiled artifact in its staging folder beside ``--out``, loaded as ``engine``, not yet
    published. Leaving its ``with`` block unpublished discards it (engine closed, folder removed)."""

    writer: ArtifactWriter
    engine: Engine
    reference: "TorchReference"  # the FP32 module the artifact was compiled from, still in memory
    calib_set: calibration.CalibrationSet | None
    published: bool = False

    @property
    def artifact(self) -> Artifact:
        return self.engine.artifact

    def discard(self) -> None:
        self.engine.close()
        self.writer.abort()

    def __enter__(self) -> "StagedBuild":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.published:
            self.discard()


def compile(
    model: ModelSpec,
    spec: BuildSpec,
    out: str | os.PathLike,
    *,
    force: bool = False,
    calib: str | os.PathLike | None = None,
    calib_size: int = calibration.DEFAULT_SIZE,
    calib_seed: int = 0,
    backend_options: dict[str, Any] | None = None,
    log: LogLike = None,
) -> StagedBuild:
    """Compile ``model`` for ``spec`` into a staging folder beside ``out`` (published there by
    :func:`publish`): the FP32 reference, the calibration set (INT8), the backend's payload, the
    labels and the manifest; the engine is loaded from it. Spec, calibration source and backend
    options are validated before any model is built; a failure removes the staging folder."""
    log = as_build_log(log)
    info = backends.get(spec.backend)
    spec = dataclasses.replace(spec, backend=info.name, device=spec.device or info.default_device)
    backends.check_spec(info, spec, head=model.head)
    backend = backends.load_module(info, for_build=True)
    options = backends.validate(info, backend, spec, backend_options)  # the one validation of the options
    replaced = [o.cli_flag for o in info.options if o.replaces_calib and (backend_options or {}).get(o.name) is not None]
    calib_set = _plan_calibration(spec, calib, calib_size, calib_seed, replaced[0] if replaced else None)
    writer, engine = ArtifactWriter(out, force=force), None
    try:
        from .harness.reference import TorchReference

        log(f"creating the {model.name} reference ({model.weights.describe()})")
        ref = create_reference(model)
        if calib_set is not None:
            calib_set.load(ref.data_config, progress=log.progress)
            bad = f", {len(calib_set.skipped)} unreadable skipped" if calib_set.skipped else ""
            log(f"calibration set: {len(calib_set)} images from {calib_set.source}{bad}")
        log(f"compiling for {info.name} {spec.precision}")
        part = backend.build(ref, spec, writer, log, calib=calib_set, options=options)
        labels = _write_labels(writer, ref) if model.head == "classify" else None
        artifact = writer.finalize(_manifest(info, spec, model, ref, part, labels, calib_set))
        # (a TensorRT build on a host without a GPU loads its graph on ONNX Runtime: emulate=True)
        engine = Engine.load(artifact.path, **part.get("load_options", {}))
        return StagedBuild(writer, engine, TorchReference(ref), calib_set)  # the module in memory: no second build
    except BaseException:
        if engine is not None:
            engine.close()
        writer.abort()
        raise


def verify(
    engine: Engine,
    reference: "TorchReference | None" = None,
    *,
    calib_set: calibration.CalibrationSet | None = None,
    check: bool = True,
    check_options: dict[str, Any] | None = None,
    check_size: int = calibration.HELD_OUT_LIMIT,
    eval_images: str | os.PathLike | None = None,
    bench_batches: list[int] | None = None,
    bench_seconds: float = 2.0,
    measure_refused: bool = False,
    log: LogLike = None,
) -> dict[str, Any]:
    """Check ``engine`` against ``reference`` (the gate; None: rebuilt from the manifest's model
    record), evaluate it on ``eval_images`` and benchmark it at ``bench_batches``, each report
    stored in its artifact's manifest; returns the reports. An engine calibrated on ``calib_set`` checks on its held-out images unless
    ``check_options`` names images (see :func:`build`). A failed gate raises GateFailed; with
    ``measure_refused``, only after the evaluation and the benchmark, carrying their reports."""
    log = as_build_log(log)
    if reference is None:
        from .harness.reference import TorchReference

        reference = TorchReference.from_manifest(engine.manifest)
    refused = None
    if check:
        report = _gate_check(engine, reference, calib_set, dict(check_options or {}), check_size, log)
        if not report["gate"]["passed"]:
            refused = GateFailed("build gate failed, nothing written: " + "; ".join(report["gate"]["failures"]))
            if not measure_refused:
                raise refused
            log("gate failed: measuring the engine all the same; it will not be published")
    if eval_images is not None:
        _evaluate(engine, reference, eval_images, calib_set, (check_options or {}).get("gate"), log)
    if bench_batches:
        from .harness.bench import bench

        log("benchmarking against the FP32 eager reference")
        engine.artifact.set_report("bench", bench(engine, batches=bench_batches, reference=reference,
                                                  seconds=bench_seconds))
    reports = dict(engine.manifest.reports)
    if refused is not None:  # measured, handed over, and discarded with the staging folder
        refused.reports = reports
        raise refused
    return reports


def publish(staged: StagedBuild) -> Engine:
    """Rename the staged artifact into place at the ``out`` it was compiled for (its staging folder
    sits beside it, so the rename is atomic); returns its engine, now reading from there."""
    staged.engine.artifact = staged.writer.publish()
    staged.published = True
    return staged.engine


def check_verify_inputs(check_options: dict[str, Any], eval_images: str | os.PathLike | None) -> None:
    """Fail now, not after minutes of building, on missing check images or evaluation photos."""
    given = check_options.get("images")
    if isinstance(given, (str, os.PathLike)) and not Path(given).exists():
        raise UsageError(f"--check-images {given} does not exist")
    check_eval_images(eval_images)


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
    held_out = calibration.held_out_check(calib_set, check_size, labels=check_options.get("labels"))
    if held_out is None:
        log("warning: every image of the calibration source is used for calibration; checking on generated images")
        return 0
    check_options.update(held_out)
    log(f"checking on {len(held_out['images'])} held-out images of {calib_set.source} (not used for calibration)")
    return 0


def _gate_check(engine: Engine, reference: "TorchReference", calib_set: calibration.CalibrationSet | None,
                check_options: dict[str, Any], check_size: int, log: BuildLog) -> dict[str, Any]:
    """The build's check against the FP32 reference, stored as the artifact's ``check`` report."""
    from .harness.check import check as run_check

    held_out = check_options.get("images") is None
    overlap = _plan_check_images(calib_set, check_options, check_size, log) if calib_set is not None else 0
    log("checking against the FP32 reference")
    report = run_check(engine, reference=reference, **check_options)
    if calib_set is not None and check_options.get("images") is not None:
        report["images"]["calibration_overlap"] = overlap
        if held_out:  # say which photos these are: in-distribution ones read high
            report["images"]["held_out_of"] = str(calib_set.source)
    engine.artifact.set_report("check", report)
    return report


def _evaluate(engine: Engine, reference: "TorchReference", eval_images: str | os.PathLike,
              calib_set: calibration.CalibrationSet | None, gate: dict[str, Any] | None, log: BuildLog) -> None:
    """Photos of other classes than the calibration ones: the figures that carry over to unseen
    inputs (recorded next to the gate's as the ``eval`` report; informative, the gate stays the check's).
    Logged steady figures first (SQNR, min cosine), then agreement with its 95% interval and the
    calibration seed: on a few hundred photos agreement moves by points between samples, SQNR does not."""
    from .harness.check import check as run_check
    from .harness.report import fidelity_line

    log(f"evaluating on {eval_images}")
    if calib_set is not None and calib_set.overlap([eval_images]):
        log("warning: the evaluation images include calibration images; agreement measured on them reads high")
    report = run_check(engine, reference=reference, images=eval_images, skip_bad=True, gate=gate)
    engine.artifact.set_report("eval", report)
    log(f"evaluation ({report['n_images']} images): {fidelity_line(report)}")


def _write_labels(writer: ArtifactWriter, ref: ReferenceModel) -> dict[str, Any] | None:
    """A classifier's class names and WordNet ids beside the payload; the manifest's ``labels``."""
    names = imagenet_labels(ref.label_subset, ref.num_classes)
    if not names:
        return None
    writer.path("labels.txt").write_text("\n".join(names[0]) + "\n")
    writer.path("wnids.txt").write_text("\n".join(names[1]) + "\n")
    return {"file": "labels.txt", "wnids": "wnids.txt", "subset": ref.label_subset}


def _manifest(info: "BackendInfo", spec: BuildSpec, model: ModelSpec, ref: ReferenceModel, part: dict[str, Any],
              labels: dict[str, Any] | None, calib_set: calibration.CalibrationSet | None) -> Manifest:
    """The manifest of a compiled artifact (its ``files`` and ``created`` are set at finalize)."""
    import timm
    import torch

    c, h, w = ref.data_config.input_size
    return Manifest(
        backend=info.name,
        precision=spec.precision,
        device=spec.device,
        model=ModelRecord(name=model.name, head=model.head, num_classes=ref.num_classes, test_size=model.test_size,
                          weights=ref.weights_record),
        input=InputSpec(name="input", dtype="float32", layout="NCHW", shape=[-1, c, h, w], batch=tuple(spec.batch)),
        preprocess=ref.data_config.to_dict(),
        outputs=_output_specs(ref, c, h, w),
        labels=labels,
        calibration=calib_set.record() if calib_set is not None else None,
        payload=part["payload"],
        backend_config=part.get("backend_config", {}),
        runtime=part.get("runtime", {}),
        environment=environment(**{"torch": torch.__version__, "timm": timm.__version__, **part.get("environment", {})}),
    )


def _output_specs(ref: ReferenceModel, c: int, h: int, w: int) -> list[OutputSpec]:
    """Output names and shapes, read off one eager forward pass at batch 1."""
    import torch

    with torch.inference_mode():
        out = ref.module(torch.zeros(1, c, h, w))
    return [OutputSpec(name=name, dtype="float32", shape=[-1, *o.shape[1:]])
            for name, o in zip(ref.output_names, output_list(out))]
