"""The ``rexnet-deploy`` command: a shell — parse, call one library function, print. Every error
the library raises on purpose becomes ``error: <one line>`` and a non-zero exit (2 bad input, 1
failed gate). The backends' build flags come from the registry's option table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import backend_flags
from .backends import BACKENDS
from .calibration import HELD_OUT_LIMIT
from .console import OneLineErrors, progress_bar, status_log, stderr_console, warn
from .errors import GateFailed, UsageError
from .spec import HEADS, PRECISIONS, parse_gate


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rexnet-deploy")
def main() -> None:
    """Build ReXNet inference engines and prove them against the FP32 PyTorch reference."""


# -- shared helpers -------------------------------------------------------------------------------
def _write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        from .artifact import to_json

        Path(path).expanduser().write_text(to_json(data))


def _cap_onednn(engine_path: Any) -> None:
    """A command that runs one engine (bench) takes serve's oneDNN cap (rexnet_deploy.cpu.cap_onednn_for),
    so that its figures are the service's; the manifest alone is read (the command's own load verifies
    the payload), and an unreadable artifact is left to the command's own error."""
    from .artifact import load_artifact
    from .cpu import cap_onednn_for
    from .errors import RexnetDeployError

    try:
        manifest = load_artifact(engine_path, verify=False).manifest
    except (RexnetDeployError, OSError):
        return
    line = cap_onednn_for(manifest.backend, manifest.precision)
    if line:
        click.echo(line, err=True)


def _engine_options(**flags: Any) -> dict[str, Any]:
    """Engine.load options that were given: other backends reject options they do not know."""
    return {k: v for k, v in flags.items() if v}


def _images_arg(images: tuple[str, ...]) -> Any:
    if not images:
        return None
    return images[0] if len(images) == 1 else list(images)


def _max_image_pixels(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    """--max-image-pixels: the decode budget of this process and of the workers it starts."""
    if value is not None:
        from .images import set_max_image_pixels

        set_max_image_pixels(value, export=True)


max_image_pixels_option = click.option(
    "--max-image-pixels", type=click.IntRange(min=1), default=None, expose_value=False, callback=_max_image_pixels,
    help="Refuse images of more pixels, from their header, before decoding (serve: 413) [30 million; a WebP counts double].")


# -- commands -------------------------------------------------------------------------------------
@main.command(name="build", cls=backend_flags.WithBackendFlags, flags_after="calib_seed")
@click.option("--model", default="rexnet_100", show_default=True, help="ReXNet family member, optionally with a timm tag (rexnet_100.nav_in1k).")
@click.option("--head", type=click.Choice(HEADS), default="classify", show_default=True,
              help="classify: logits; embed: pooled features; features: the 5 multi-scale maps.")
@click.option("--backend", default="torchscript", show_default=True, help="Engine backend (see `rexnet-deploy backends`).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None, help="Engine precision [fp32].")
@click.option("--fp16", "precision_flag", flag_value="fp16", help="Shorthand for --precision fp16.")
@click.option("--bf16", "precision_flag", flag_value="bf16", help="Shorthand for --precision bf16.")
@click.option("--int8", "precision_flag", flag_value="int8", help="Shorthand for --precision int8.")
@click.option("--weights", default="pretrained", show_default=True,
              help="pretrained (timm hub), a local .safetensors/.pth file, or random (with --seed; not for production).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --weights random.")
@click.option("--device", default=None, help="cpu or cuda [the backend's: cuda for tensorrt, else cpu].")
@click.option("--batch", "batch_range", default="1:32", show_default=True,
              help="Batch range MIN:MAX the engine accepts; tensorrt also MIN:OPT:MAX (the profile's OPT, default MAX).")
@click.option("--test-size", is_flag=True, help="Use the model's test_input_size/test_crop_pct where timm has them.")
@click.option("--out", type=click.Path(), default=None, help="Artifact folder [engines/MODEL-BACKEND-PRECISION].")
@click.option("--force", is_flag=True, help="Replace --out if it is an existing artifact.")
@click.option("--calib", type=click.Path(), default=None, help="INT8: calibration images, a folder (recursive) or a CSV file list.")
@click.option("--calib-size", type=int, default=300, show_default=True, help="INT8: calibration images to sample (seeded, stratified by class folder).")
@click.option("--calib-seed", type=int, default=0, show_default=True, help="INT8: seed of the calibration sample.")
@click.option("--check-size", type=click.IntRange(min=1), default=HELD_OUT_LIMIT, show_default=True, help="INT8: held-out calibration-source images to check on (when no --check-images).")
@click.option("--check-images", type=click.Path(), default=None, help="Images to check the build on [generated images].")
@click.option("--labels", type=click.Path(), default=None, help="CSV file,class_index for --check-images.")
@click.option("--eval-images", type=click.Path(), default=None,
              help="Also measure fidelity on these photos (ideally of classes the calibration set lacks); recorded as the eval report.")
@click.option("--synthetic", type=int, default=32, show_default=True, help="Generated images to check on when no --check-images.")
@click.option("--skip-check", is_flag=True, help="Do not check the engine against the reference before publishing.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable check images instead of failing.")
@click.option("--gate", multiple=True, metavar="KEY=VALUE", help="Override a gate threshold (repeatable), e.g. --gate top1_agreement=0.97.")
@click.option("--bench", "bench_batches", default=None, metavar="BATCHES", help="Also benchmark these batch sizes, e.g. 1,8.")
@click.option("--json", "json_out", type=click.Path(), default=None, help="Write the manifest (with reports) here too.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def build_command(model, head, backend, precision, precision_flag, weights, seed, device, batch_range, test_size, out,
                  force, calib, calib_size, calib_seed, check_size, check_images, labels, eval_images, synthetic, skip_check,
                  skip_bad, gate, bench_batches, json_out, quiet, **backend_options) -> None:
    """Compile the model into an engine artifact, check it against the FP32 reference, publish it."""
    from . import backends
    from .builder import build
    from .harness.report import bench_markdown, check_markdown, fidelity_markdown, summary
    from .spec import BuildSpec, ModelSpec, WeightsSpec, parse_batch_list, parse_batch_profile

    if precision and precision_flag and precision != precision_flag:
        raise UsageError(f"--precision {precision} contradicts --{precision_flag}")
    precision = precision or precision_flag or "fp32"
    name = backends.get(backend).name
    model_spec = ModelSpec(name=model, head=head, weights=WeightsSpec.parse(weights, seed), test_size=test_size)
    lo, opt, hi = parse_batch_profile(batch_range)
    spec = BuildSpec(backend=name, precision=precision, device=device, batch=(lo, hi), batch_opt=opt)
    batches = parse_batch_list(bench_batches) if bench_batches else None
    out = out or f"engines/{model.replace('.', '_')}-{name}-{precision}"
    if model_spec.weights.source == "random" and not quiet:
        stderr_console().print(f"warning: random weights (seed {seed}): this engine is for testing, not for production")
    check_options = {"images": check_images, "labels": labels, "synthetic": synthetic, "skip_bad": skip_bad,
                     "gate": parse_gate(gate)}
    with status_log(quiet) as log:
        engine = build(model_spec, spec, out, force=force, calib=calib, calib_size=calib_size, calib_seed=calib_seed,
                       backend_options=backend_flags.given(backend_options), check=not skip_check, check_options=check_options,
                       check_size=check_size, eval_images=eval_images, bench_batches=batches, log=log)
    with engine:
        reports = engine.manifest.reports
        click.echo(f"built {engine.artifact.path} ({engine.backend} {precision}, {model})")
        if reports.get("check"):
            click.echo("\n" + check_markdown(reports["check"]))
        if reports.get("eval"):
            click.echo("\n" + fidelity_markdown({k: summary(reports[k]) for k in ("check", "eval") if reports.get(k)}))
        if reports.get("bench"):
            click.echo("\n" + bench_markdown(reports["bench"]))
        _write_json(json_out, engine.manifest.to_json())


@main.command(name="check")
@click.argument("engine_path", metavar="ENGINE", type=click.Path())
@click.option("--images", multiple=True, type=click.Path(), help="A folder (recursive) or image files; repeatable [generated images].")
@click.option("--labels", type=click.Path(), default=None, help="CSV with file,class_index columns (or use wnid-named subfolders; DIR/labels.csv is found by itself).")
@click.option("--synthetic", type=int, default=32, show_default=True, help="Generated images to use when no --images.")
@click.option("--limit", type=int, default=None, help="Check at most this many images.")
@click.option("--weights", type=click.Path(), default=None, help="The reference's weights file, if it moved since the build.")
@click.option("--gate", multiple=True, metavar="KEY=VALUE", help="Override a gate threshold (repeatable).")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (they are listed in the report).")
@click.option("--json", "json_out", type=click.Path(), default=None, help="Write the report as JSON.")
@click.option("--no-save", is_flag=True, help="Do not store the report in the artifact's manifest.")
@click.option("--emulate", is_flag=True, help="TensorRT artifacts: run the engine's ONNX graph on ONNX Runtime CPU instead of the engine.")
@click.option("--rebuild-engine", is_flag=True, help="TensorRT artifacts: compile the stored graph for this host's GPU first.")
@click.option("-q", "--quiet", is_flag=True)
def check_command(engine_path, images, labels, synthetic, limit, weights, gate, skip_bad, json_out, no_save, emulate,
                  rebuild_engine, quiet) -> None:
    """Compare an engine with the FP32 reference on the same images; exit 1 if the gate fails."""
    from .harness.check import check_artifact, raise_for_gate
    from .harness.report import check_markdown

    with progress_bar("checking", quiet) as update:
        report = check_artifact(engine_path, engine_options=_engine_options(emulate=emulate, rebuild_engine=rebuild_engine),
                                save_report=not no_save, warn=warn, images=_images_arg(images), labels=labels,
                                synthetic=synthetic, limit=limit, weights=weights, gate=parse_gate(gate),
                                skip_bad=skip_bad, progress=update)
    _write_json(json_out, report)
    click.echo(check_markdown(report))
    raise_for_gate(report)


@main.command(name="bench")
@click.argument("engine_path", metavar="ENGINE", type=click.Path())
@click.option("--batch", "batches", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Timed seconds per batch size, per model.")
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=None, help="Whole bench runs; speedups are their medians [1; 3 with --baseline/--save-baseline].")
@click.option("--no-reference", is_flag=True, help="Time the engine alone (no torch needed; no speedup ratios).")
@click.option("--weights", type=click.Path(), default=None, help="The reference's weights file, if it moved since the build.")
@click.option("--images", "images_dir", type=click.Path(), default=None, help="Also measure end to end: these files → top-k labels, decoding included.")
@click.option("--plot", "plot_path", type=click.Path(), default=None, help="Write a PNG chart of latency and throughput per batch.")
@click.option("--baseline", type=click.Path(), default=None, help="Regression gate: compare speedups and agreement with this baseline; exit 1 on a regression.")
@click.option("--max-regression", type=float, default=0.15, show_default=True, help="Largest allowed fractional drop of a speedup below the baseline's.")
@click.option("--confirm", type=click.IntRange(min=0), default=2, show_default=True, help="Re-measure a speedup below its floor up to N more times; the gate takes the best (a regression must reproduce).")
@click.option("--save-baseline", type=click.Path(), default=None, help="Write (or update) a baseline file with this run; an engine already there keeps the lower of the two speedups.")
@click.option("--json", "json_out", type=click.Path(), default=None, help="Write the report as JSON.")
@click.option("--no-save", is_flag=True, help="Do not store the report in the artifact's manifest.")
@click.option("--rebuild-engine", is_flag=True, help="TensorRT artifacts: compile the stored graph for this host's GPU first.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Engine threads (openvino, onnxruntime) [all cores].")
@click.option("-q", "--quiet", is_flag=True)
def bench_command(engine_path, batches, seconds, warmup, repeat, no_reference, weights, images_dir, plot_path, baseline,
                  max_regression, confirm, save_baseline, json_out, no_save, rebuild_engine, threads, quiet) -> None:
    """Latency (p50/p90/p99) and throughput per batch, engine and FP32 eager reference in one run;
    optionally end to end from image files, a chart, and a regression gate against a baseline."""
    from .harness import baseline as gate
    from .harness.bench_gate import bench_with_gate
    from .harness.report import bench_markdown
    from .spec import parse_batch_list

    sizes = parse_batch_list(batches)
    _cap_onednn(engine_path)
    with progress_bar("benchmarking", quiet) as update:
        report = bench_with_gate(engine_path, batches=sizes, seconds=seconds, warmup=warmup, repeat=repeat,
                                 reference=not no_reference, weights=weights, images=images_dir, baseline=baseline,
                                 max_regression=max_regression, confirm=confirm, save_baseline=save_baseline,
                                 save_report=not no_save,
                                 engine_options=_engine_options(rebuild_engine=rebuild_engine, threads=threads),
                                 progress=update, warn=lambda m: click.echo(m, err=True))
    _write_json(json_out, report)
    if plot_path:
        from .harness.plot import plot_bench

        plot_bench([report], plot_path)
    click.echo(bench_markdown(report))
    result = report.get("gate")
    if result is not None:
        click.echo("\n" + gate.markdown(result))
        if not result["passed"]:
            raise GateFailed("regression gate failed: " + "; ".join(result["failures"]))


@main.command(name="predict")
@click.argument("engine_path", metavar="ENGINE", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images instead of failing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--rebuild-engine", is_flag=True, help="TensorRT artifacts: compile the stored graph for this host's GPU first.")
def predict_command(engine_path, images, topk, skip_bad, as_json, rebuild_engine) -> None:
    """Top-k ImageNet labels for image files (a folder stands for the images below it)."""
    from .engine import Engine

    with Engine.load(engine_path, **_engine_options(rebuild_engine=rebuild_engine)) as engine:
        found = engine.predict_files(images, topk=topk, skip_bad=skip_bad)
    results = [{"image": name, "top": [p.to_dict() for p in preds]} for name, preds in zip(found.names, found.predictions)]
    if as_json:
        click.echo(json.dumps({"results": results, "skipped": [{"file": f, "reason": r} for f, r in found.skipped]}, indent=2))
        return
    for r in results:
        click.echo(r["image"])
        for p in r["top"]:
            click.echo(f"  {p['score']:7.2%}  {p['index']:4d}  {p['label']}")
    for f, why in found.skipped:
        click.echo(f"skipped {f}: {why}", err=True)


@main.command(name="serve")
@click.argument("engine_path", metavar="ENGINE", type=click.Path())
@max_image_pixels_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 exposes the service to the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: a free one, announced on stderr).")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True, help="Largest batch (clamped to the engine's batch range).")
@click.option("--max-delay-ms", type=click.FloatRange(min=0), default=2.0, show_default=True, help="Longest a request waits for its batch to fill.")
@click.option("--max-queue", type=click.IntRange(min=1), default=1024, show_default=True, help="Queued requests past which new ones get 503 (overloaded).")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=16.0, show_default=True, help="Request body limit (413 past it).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="uvicorn worker processes, each with its own engine.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Engine threads per worker (openvino, onnxruntime) [all cores].")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info", show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Keep compiled models here (openvino, onnxruntime): a fresh replica imports instead of compiling.")
@click.option("--fast-preprocess", is_flag=True,
              help="Decode large JPEGs at reduced scale and box-reduce before resizing (off timm's transform; docs/cold-start-and-preprocessing.md).")
@click.option("--header-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="Seconds a connection has to send a request's headers (408 and closed past it).")
@click.option("--body-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a request has to send its body after the headers (408 past it).")
@click.option("--keep-alive-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds an idle kept-alive connection stays open.")
@click.option("--max-connections", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Concurrent connections or requests past which new requests get 503.")
def serve_command(engine_path, host, port, max_batch, max_delay_ms, max_queue, max_body_mb, workers, threads,
                  log_level, cache_dir, fast_preprocess, header_timeout, body_timeout, keep_alive_timeout,
                  max_connections) -> None:
    """HTTP inference service: POST /v1/predict (image bytes), POST /v1/infer (tensor), GET /healthz, GET /metrics.
    Requests are batched dynamically (see docs/serving.md). Needs the serve extra."""
    from .serving.server import serve

    serve(engine_path, host=host, port=port, workers=workers, max_batch=max_batch, max_delay_ms=max_delay_ms,
          max_queue=max_queue, max_body_bytes=int(max_body_mb * 1024 * 1024),
          engine_options=_engine_options(threads=threads, cache_dir=cache_dir, fast_preprocess=fast_preprocess),
          log_level=log_level, header_timeout=header_timeout, body_timeout=body_timeout,
          keep_alive_timeout=keep_alive_timeout, max_connections=max_connections)


@main.command(name="matrix")
@click.option("--model", default="rexnet_100", show_default=True, help="ReXNet family member.")
@click.option("--weights", default="pretrained", show_default=True, help="pretrained, a weights file, or random (with --seed).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--calib", type=click.Path(), default=None, help="Calibration images for the INT8 engines (without: INT8 is skipped).")
@click.option("--calib-size", type=int, default=300, show_default=True)
@click.option("--images", type=click.Path(), default=None, help="Images every engine is checked on [with --calib: every engine on the held-out calibration images; without: generated].")
@click.option("--labels", type=click.Path(), default=None, help="CSV file,class_index for --images.")
@click.option("--eval-images", type=click.Path(), default=None,
              help="Also measure every engine on these photos (ideally of classes the calibration set lacks; labels "
                   "from DIR/labels.csv or wnid folders); their figures stand next to the check's.")
@click.option("--batch", "batches", default="1,8,32", show_default=True, help="Batch sizes to benchmark.")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Timed seconds per batch size, per model.")
@click.option("--only", multiple=True, metavar="BACKEND[/PRECISION]", help="Restrict to these engines (repeatable).")
@click.option("--out", type=click.Path(), default="runs/matrix", show_default=True, help="Folder for the engines, matrix.json/.md/.png.")
@click.option("-q", "--quiet", is_flag=True)
def matrix_command(model, weights, seed, calib, calib_size, images, labels, eval_images, batches, seconds, only, out,
                   quiet) -> None:
    """Build, check and benchmark every backend × precision this host can run; one table, JSON and a chart."""
    from .matrix import markdown, run
    from .spec import ModelSpec, WeightsSpec, parse_batch_list

    sizes = parse_batch_list(batches)
    model_spec = ModelSpec(name=model, weights=WeightsSpec.parse(weights, seed))
    with status_log(quiet) as log:
        result = run(model_spec, out, calib=calib, calib_size=calib_size, images=images, labels=labels,
                     eval_images=eval_images, batches=tuple(sizes), seconds=seconds, only=list(only) or None, log=log)
    click.echo(markdown(result))
    click.echo(f"\nwrote {Path(out) / 'matrix.json'}, {Path(out) / 'matrix.md'}"
               + (f", {result['chart']}" if result.get("chart") else ""))


@main.command(name="sensitivity")
@click.argument("target", metavar="ENGINE_OR_MODEL")
@click.option("--calib", type=click.Path(), required=True, help="Calibration images (folder or CSV); the held-out rest measures.")
@click.option("--weights", default="pretrained", show_default=True, help="For a model name: pretrained, a weights file, or random.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --weights random.")
@click.option("--calib-size", type=int, default=300, show_default=True, help="Calibration images to sample.")
@click.option("--calib-seed", type=int, default=0, show_default=True)
@click.option("--calib-method", type=click.Choice(BACKENDS["tensorrt"].option("calib_method").choices), default="entropy",
              show_default=True)
@click.option("--images", "n_images", type=int, default=100, show_default=True, help="Held-out images to measure on.")
@click.option("--max-drop", type=float, default=0.01, show_default=True, help="Top-1 agreement the INT8 graph may lose.")
@click.option("--json", "json_out", type=click.Path(), default=None, help="Write the report as JSON.")
@click.option("--exclude-out", type=click.Path(), default=None, help="Write the --exclude patterns here, one per line.")
@click.option("-q", "--quiet", is_flag=True)
def sensitivity_command(target, calib, weights, seed, calib_size, calib_seed, calib_method, n_images, max_drop,
                        json_out, exclude_out, quiet) -> None:
    """Rank ReXNet's layer groups by the INT8 agreement each costs (ONNX Runtime CPU) and give the
    TensorRT --exclude list that meets --max-drop."""
    from .int8.sensitivity import analyze, markdown

    with status_log(quiet) as log:
        report = analyze(target, calib=calib, weights=weights, seed=seed, calib_size=calib_size, calib_seed=calib_seed,
                         method=calib_method, images=n_images, max_drop=max_drop, log=log)
    _write_json(json_out, report)
    if exclude_out:
        Path(exclude_out).write_text("".join(p + "\n" for p in report["exclude"]))
    click.echo(markdown(report))


@main.command(name="info")
@click.argument("engine_path", metavar="ENGINE", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip the payload checksum verification.")
def info_command(engine_path, as_json, no_verify) -> None:
    """Describe an artifact (and verify its checksums)."""
    from .artifact import load_artifact, to_json
    from .harness.report import info_markdown

    artifact = load_artifact(engine_path, verify=not no_verify)
    if as_json:
        click.echo(to_json(artifact.manifest.to_json()), nl=False)
    else:
        click.echo(info_markdown(artifact.manifest, str(artifact.path)))
        click.echo("checksums: " + ("not verified" if no_verify else f"{len(artifact.manifest.files)} files verified"))


@main.command(name="backends")
def backends_command() -> None:
    """List backends, their precisions, and whether they are installed here."""
    from .backends import host_state

    for info in BACKENDS.values():
        click.echo(f"{info.name:12s} {','.join(info.precisions):20s} {host_state(info):12s} {info.summary}")


@main.command(name="models")
def models_command() -> None:
    """List the ReXNet family members and pretrained tags timm knows."""
    from .models import family

    click.echo("\n".join(family()))


@main.command(name="export-triton")
@click.argument("engine_paths", metavar="ENGINE...", nargs=-1, required=True, type=click.Path())
@click.option("--repo", type=click.Path(), required=True, help="Triton model repository folder (created if missing).")
@click.option("--name", "names", multiple=True, help="Model name, one per ENGINE in order [the artifact folder's name].")
@click.option("--max-batch", type=click.IntRange(min=1), default=None, help="max_batch_size [the engine's largest batch].")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Model instances (instance_group count).")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=500, show_default=True,
              help="dynamic_batching: how long Triton may hold a request to grow a batch.")
@click.option("--force", is_flag=True, help="Replace models of the same name in --repo.")
def export_triton_command(engine_paths, repo, names, max_batch, instances, max_queue_delay_us, force) -> None:
    """Write engine artifacts into a Triton Inference Server model repository (config.pbtxt + 1/model file)."""
    from .triton import export_triton

    for m in export_triton(engine_paths, repo, names=names or None, force=force, max_batch=max_batch,
                           instances=instances, max_queue_delay_us=max_queue_delay_us):
        click.echo(f"{m.path}: {m.platform}, max_batch_size {m.max_batch_size}, {m.kind}")


@main.command(name="batch")
@click.argument("engine_path", metavar="ENGINE", type=click.Path())
@click.argument("input_dir", metavar="INPUT_DIR", type=click.Path())
@max_image_pixels_option
@click.option("--out", type=click.Path(), required=True, help="Predictions Parquet file (file, indices, labels, scores, error).")
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Files per engine call.")
@click.option("--ray", "use_ray", is_flag=True, help="Run on Ray Data actors (needs the ray extra) instead of this process.")
@click.option("--actors", type=click.IntRange(min=1), default=None, help="With --ray: actors, each loading the engine once [2].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime/OpenVINO threads per engine (with --ray: per actor; 2 actors x 1 thread measured 1.65x local on 2 cores).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def batch_command(engine_path, input_dir, out, topk, batch_size, use_ray, actors, threads, force) -> None:
    """Predict every image below INPUT_DIR into one Parquet file, here or on Ray."""
    from .batch import batch_predict

    if actors is not None and not use_ray:
        raise UsageError("--actors needs --ray")
    result = batch_predict(engine_path, input_dir, out, topk=topk, batch_size=batch_size,
                           ray_actors=(actors or 2) if use_ray else None, force=force,
                           **_engine_options(threads=threads))
    click.echo(f"wrote {result.out}: {result.rows} files ({result.skipped} skipped), {result.seconds:.1f} s, "
               f"{result.images_per_s:.1f} images/s, {result.mode}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
