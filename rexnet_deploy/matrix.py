"""``matrix``: every backend × precision this host can build, built, checked and benchmarked
against the FP32 reference in one run; one table (Markdown), JSON and a chart.

What cannot run here is listed with the reason (a backend not installed, TensorRT without a GPU
host, INT8 without calibration images, FP16 TorchScript without CUDA, BF16 on a CPU without it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from . import backends
from .errors import RexnetDeployError, UsageError
from .log import LogLike, as_build_log
from .spec import BuildSpec, ModelSpec

CANDIDATES = [("torchscript", "fp32"), ("torchscript", "fp16"), ("openvino", "fp32"), ("openvino", "fp16"),
              ("openvino", "bf16"), ("openvino", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
              ("onnxruntime", "int8"), ("tensorrt", "fp16"), ("tensorrt", "int8")]


def skip_reason(backend: str, precision: str, *, calib: str | None) -> str | None:
    """Why ``backend/precision`` cannot be built and measured on this host, or None."""
    info = backends.get(backend)
    missing = backends.not_installed(info)
    if missing:
        return missing
    if precision == "int8" and calib is None:
        return "INT8 needs --calib"
    return backends.host_reason(info, precision)


def run(model: ModelSpec, out: str | os.PathLike, *, calib: str | None = None, calib_size: int = 300,
        images: str | None = None, labels: str | None = None, batches: tuple[int, ...] = (1, 8, 32),
        seconds: float = 2.0, only: list[str] | None = None, log: LogLike = None) -> dict[str, Any]:
    """Build, check and bench every candidate into ``out``/engines; write matrix.json/.md/.png."""
    from .artifact import to_json
    from .builder import build

    log = as_build_log(log)
    for path, flag in ((calib, "--calib"), (images, "--images"), (labels, "--labels")):
        if path is not None and not Path(path).exists():
            raise UsageError(f"{flag} {path} does not exist")
    out = Path(out)
    rows, reports, started = [], [], time.perf_counter()
    check: dict[str, Any] = {"images": images, "labels": labels} if images else {}
    if not images and calib:
        # every engine on the same real photos: the calibration source's held-out rest (with its labels)
        from .calibration import HELD_OUT_LIMIT, select

        plan = select(calib, calib_size)
        held = plan.candidates[calib_size:]
        if held:
            check = {"images": held[:HELD_OUT_LIMIT], "labels": labels or plan.labels_csv}
    candidates = [c for c in CANDIDATES if not only or f"{c[0]}/{c[1]}" in only or c[0] in only]
    for backend, precision in candidates:
        key = f"{backend}/{precision}"
        reason = skip_reason(backend, precision, calib=calib)
        if reason:
            log(f"skipping {key}: {reason}")
            rows.append({"engine": key, "skipped": reason})
            continue
        log(f"{key}: building, checking, benchmarking")
        t = time.perf_counter()
        try:
            engine = build(model, BuildSpec(backend=backend, precision=precision, batch=(min(batches), max(batches))),
                           out / "engines" / f"{backend}-{precision}", force=True,
                           calib=calib if precision == "int8" else None, calib_size=calib_size,
                           check_options=dict(check), bench_batches=list(batches), bench_seconds=seconds,
                           log=log.prefixed(key))
        except RexnetDeployError as exc:  # one engine failing (e.g. its gate) does not stop the matrix
            log(f"{key}: failed: {exc}")
            rows.append({"engine": key, "failed": str(exc), "build_seconds": round(time.perf_counter() - t, 1)})
            continue
        with engine:
            rows.append(_row(key, engine, time.perf_counter() - t))
            reports.append(engine.manifest["reports"]["bench"])
    checked_on = images or (f"{len(check['images'])} held-out images of {calib}" if check else "generated images")
    result = {"model": model.name, "weights": model.weights.describe(), "batches": list(batches),
              "calibration": calib, "check_images": str(checked_on), "rows": rows,
              "seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.json").write_text(to_json(result))
    (out / "matrix.md").write_text(markdown(result) + "\n")
    if reports:
        try:
            from .harness.plot import plot_bench

            plot_bench(reports, out / "matrix.png", title=f"{model.name}: latency and throughput per batch "
                       "(dashed: the FP32 eager reference of the first engine's run)")
            result["chart"] = str(out / "matrix.png")
        except RexnetDeployError as exc:  # matplotlib missing: the table still stands
            log(f"no chart: {exc}")
    return result


def _row(key: str, engine, build_seconds: float) -> dict[str, Any]:
    m = engine.manifest
    check, bench = m["reports"].get("check") or {}, m["reports"]["bench"]
    metrics, labelled = check.get("metrics") or {}, check.get("labelled") or {}
    last = bench["results"][-1]
    size = sum(p.stat().st_size for p in Path(engine.artifact.path).rglob("*") if p.is_file())
    first = str(bench["results"][0]["batch"])
    return {
        "engine": key,
        "size_mb": size / 1e6,
        "build_seconds": round(build_seconds, 1),
        "check_images": check.get("n_images"),
        "top1_agreement": metrics.get("top1_agreement"),
        "cosine_min": metrics.get("cosine_min"),
        "sqnr_db": metrics.get("sqnr_db"),
        "labelled_top1": labelled.get("engine_top1"),
        "reference_top1": labelled.get("reference_top1"),
        "p50_ms_first_batch": bench["results"][0]["p50_ms"],
        "first_batch": int(first),
        "throughput_last_batch": last["throughput_ips"],
        "last_batch": last["batch"],
        "speedup_first_batch": (bench.get("speedup") or {}).get(first),
        "speedup_last_batch": (bench.get("speedup") or {}).get(str(last["batch"])),
        "gate": (check.get("gate") or {}).get("passed"),
        "path": str(engine.artifact.path),
    }


def markdown(result: dict[str, Any]) -> str:
    def f(v, digits=4, suffix=""):
        return "–" if v is None else f"{v:.{digits}f}{suffix}"

    built = [r for r in result["rows"] if "size_mb" in r]
    b0, b1 = (built[0]["first_batch"], built[0]["last_batch"]) if built else (result["batches"][0], result["batches"][-1])
    lines = [f"### matrix: {result['model']} ({result['weights']}), {result['seconds']:.0f} s",
             f"checked on {result['check_images']}; speedups against the FP32 eager reference of the same run", "",
             f"| engine | MB | s (build+check+bench) | top-1 agr. | min cosine | SQNR dB | labelled top-1 (ref) | "
             f"p50 ms b{b0} | img/s b{b1} | speedup b{b0} / b{b1} |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if "size_mb" not in r:
            lines.append(f"| {r['engine']} | {'skipped: ' + r['skipped'] if 'skipped' in r else 'FAILED: ' + r['failed']} "
                         "| | | | | | | | |")
            continue
        acc = f"{f(r['labelled_top1'], 3)} ({f(r['reference_top1'], 3)})" if r["labelled_top1"] is not None else "–"
        lines.append(f"| {r['engine']} | {r['size_mb']:.1f} | {r['build_seconds']:.0f} | {f(r['top1_agreement'])} | "
                     f"{f(r['cosine_min'])} | {f(r['sqnr_db'], 1)} | {acc} | {r['p50_ms_first_batch']:.1f} | "
                     f"{r['throughput_last_batch']:.1f} | {f(r['speedup_first_batch'], 2, '×')} / "
                     f"{f(r['speedup_last_batch'], 2, '×')} |")
    return "\n".join(lines)
