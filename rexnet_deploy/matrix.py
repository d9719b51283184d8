"""``matrix``: every backend × precision this host can build, built, checked and benchmarked
against the FP32 reference in one run; one table (Markdown), JSON and a chart. With evaluation
photos, every engine's figures on them stand next to its check figures, and the chart's third
panel sets each engine's agreement against its throughput (the fidelity/speed frontier).

What cannot run here is listed with the reason (a backend not installed, TensorRT without a GPU
host, INT8 without calibration images, FP16 TorchScript without CUDA, BF16 on a CPU without it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from . import backends
from .errors import GateFailed, RexnetDeployError, UsageError
from .harness.plot import FrontierPoint
from .harness.report import summary
from .log import LogLike, as_build_log
from .spec import BuildSpec, ModelSpec


def candidates(only: list[str] | None = None) -> list[tuple[str, str]]:
    """(backend, precision) pairs the matrix measures: each registry row's measured precisions, in
    table order; ``only``: those named as BACKEND or BACKEND/PRECISION."""
    every = [(info.name, precision) for info in backends.BACKENDS.values() for precision in info.measured_precisions]
    return [c for c in every if not only or f"{c[0]}/{c[1]}" in only or c[0] in only]


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
        images: str | None = None, labels: str | None = None, eval_images: str | None = None,
        batches: tuple[int, ...] = (1, 8, 32), seconds: float = 2.0, only: list[str] | None = None,
        log: LogLike = None) -> dict[str, Any]:
    """Build, check and bench every candidate into ``out``/engines; write matrix.json/.md/.png.

    ``eval_images``: every engine is also measured on these photos (its manifest's eval report).
    An engine its accuracy gate refuses is measured all the same and listed as refused; nothing of
    it is published."""
    from .artifact import to_json
    from .builder import build, check_eval_images

    log = as_build_log(log)
    for path, flag in ((calib, "--calib"), (images, "--images"), (labels, "--labels")):
        if path is not None and not Path(path).exists():
            raise UsageError(f"{flag} {path} does not exist")
    check_eval_images(eval_images)  # bad evaluation photos fail before the first engine is built
    out = Path(out)
    rows, reports, started = [], [], time.perf_counter()
    check: dict[str, Any] = {"images": images, "labels": labels} if images else {}
    if not images and calib:
        # every engine on the same real photos: the calibration source's held-out rest (with its labels)
        from .calibration import held_out_check, select

        check = held_out_check(select(calib, calib_size), labels=labels) or {}
    for backend, precision in candidates(only):
        key = f"{backend}/{precision}"
        reason = skip_reason(backend, precision, calib=calib)
        if reason:
            log(f"skipping {key}: {reason}")
            rows.append({"engine": key, "skipped": reason})
            continue
        log(f"{key}: building, checking, benchmarking")
        t = time.perf_counter()
        try:
            # measure_refused: a refused engine's figures come back on the exception, its files are discarded
            engine = build(model, BuildSpec(backend=backend, precision=precision, batch=(min(batches), max(batches))),
                           out / "engines" / f"{backend}-{precision}", force=True,
                           calib=calib if precision == "int8" else None, calib_size=calib_size,
                           check_options=dict(check), eval_images=eval_images, bench_batches=list(batches),
                           bench_seconds=seconds, measure_refused=True, log=log.prefixed(key))
        except RexnetDeployError as exc:  # one engine failing (e.g. its gate) does not stop the matrix
            measured = exc.reports if isinstance(exc, GateFailed) else {}
            log(f"{key}: {'refused' if measured else 'failed'}: {exc}")
            if measured.get("bench"):
                rows.append(_row(key, measured, time.perf_counter() - t, refused=str(exc)))
                reports.append(measured["bench"])
            else:
                rows.append({"engine": key, "failed": str(exc), "build_seconds": round(time.perf_counter() - t, 1)})
            continue
        with engine:
            rows.append(_row(key, engine.manifest.reports, time.perf_counter() - t, path=engine.artifact.path))
            reports.append(engine.manifest.reports["bench"])
    checked_on = images or (f"{len(check['images'])} held-out images of {calib}" if check else "generated images")
    result = {"model": model.name, "weights": model.weights.describe(), "batches": list(batches),
              "calibration": calib, "check_images": str(checked_on), "eval_images": eval_images, "rows": rows,
              "seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.json").write_text(to_json(result))
    (out / "matrix.md").write_text(markdown(result) + "\n")
    if reports:
        try:
            from .harness.plot import save_figure

            save_figure(chart(result, reports), out / "matrix.png")
            result["chart"] = str(out / "matrix.png")
        except RexnetDeployError as exc:  # matplotlib missing: the table still stands
            log(f"no chart: {exc}")
    return result


def _row(key: str, reports: dict[str, Any], build_seconds: float, *, path: str | os.PathLike | None = None,
         refused: str | None = None) -> dict[str, Any]:
    """A measured engine's figures: ``path`` when published, ``refused`` (the gate's message) when not."""
    check, bench = reports.get("check"), reports["bench"]
    last = bench["results"][-1]
    first = str(bench["results"][0]["batch"])
    size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if path else None
    return {
        "engine": key,
        "size_mb": size / 1e6 if size is not None else None,
        "build_seconds": round(build_seconds, 1),
        "check": summary(check) if check else None,
        "eval": summary(reports["eval"]) if reports.get("eval") else None,
        "p50_ms_first_batch": bench["results"][0]["p50_ms"],
        "first_batch": int(first),
        "throughput_last_batch": last["throughput_ips"],
        "last_batch": last["batch"],
        "speedup_first_batch": (bench.get("speedup") or {}).get(first),
        "speedup_last_batch": (bench.get("speedup") or {}).get(str(last["batch"])),
        "gate": ((check or {}).get("gate") or {}).get("passed"),
        "refused": refused,
        "path": str(path) if path else None,
    }


def _measured(row: dict[str, Any]) -> bool:
    """Built and measured (published, or refused by its gate), not skipped or failed."""
    return "check" in row


def frontier_points(rows: list[dict[str, Any]], figures: str = "eval") -> list[FrontierPoint]:
    """One point per measured engine: its top-1 agreement on ``figures`` ("eval" or "check")
    against its last batch size's throughput; refused engines are kept, flagged."""
    return [FrontierPoint(r["engine"], r["throughput_last_batch"], r[figures]["top1_agreement"], bool(r["refused"]))
            for r in rows if _measured(r) and (r[figures] or {}).get("top1_agreement") is not None]


def chart(result: dict[str, Any], reports: list[dict[str, Any]]):
    """The matrix chart: latency and throughput per batch, and agreement against throughput
    (on the evaluation photos when there are some, else on the check photos)."""
    from .harness.plot import matrix_figure

    rows = [r for r in result["rows"] if _measured(r)]
    figures = "eval" if result.get("eval_images") else "check"
    # the folder goes in the title: a path in the axis label overflows the panel
    where, folder = (("evaluation photos", result["eval_images"]) if figures == "eval"
                     else ("check photos", result["check_images"]))
    return matrix_figure(
        reports, frontier_points(rows, figures), refused={r["engine"] for r in rows if r["refused"]},
        agreement_label=f"top-1 agreement with FP32, {where}",
        throughput_label=f"throughput at batch {result['batches'][-1]} (images/s)",
        title=f"{result['model']}: latency and throughput per batch (dashed: the FP32 eager reference of the first "
              f"engine's run)\nright: fidelity against speed on the {where} ({folder}; hollow: refused by its "
              "accuracy gate)")


# (header, summary key, digits): the fidelity columns, each with the check and eval figures side by side
FIDELITY_COLUMNS = [("top-1 agr.", "top1_agreement", 4), ("decisive top-1 agr.", "top1_agreement_decisive", 4),
                    ("top-2 cont.", "top2_containment", 4), ("min cosine", "cosine_min", 4), ("SQNR dB", "sqnr_db", 1)]


def _f(v: float | None, digits: int = 4, suffix: str = "") -> str:
    return "–" if v is None else f"{v:.{digits}f}{suffix}"


def _labelled(figures: dict[str, Any] | None) -> str:
    """Labelled top-1 of the engine (of the reference), or a dash without labels."""
    if not figures or figures.get("labelled_top1") is None:
        return "–"
    return f"{_f(figures['labelled_top1'], 3)} ({_f(figures.get('labelled_reference_top1'), 3)})"


def _fidelity_cells(row: dict[str, Any], with_eval: bool) -> list[str]:
    sets = ("check", "eval") if with_eval else ("check",)
    cells = [" / ".join(_f((row[s] or {}).get(key), digits) for s in sets) for _h, key, digits in FIDELITY_COLUMNS]
    return cells + [" / ".join(_labelled(row[s]) for s in sets)]


def markdown(result: dict[str, Any]) -> str:
    built = [r for r in result["rows"] if _measured(r)]
    with_eval = bool(result.get("eval_images"))
    b0, b1 = (built[0]["first_batch"], built[0]["last_batch"]) if built else (result["batches"][0], result["batches"][-1])
    pair = " check / eval" if with_eval else ""
    fidelity = [h + pair for h, _k, _d in FIDELITY_COLUMNS] + [f"labelled top-1 (ref){pair}"]
    header = ["engine", "MB", "s (build+check+bench)", *fidelity, f"p50 ms b{b0}", f"img/s b{b1}", f"speedup b{b0} / b{b1}"]
    sets = f"check: {result['check_images']}"
    if with_eval:
        sets += f"; eval: {result['eval_images']} (figures as check / eval)"
    lines = [f"### matrix: {result['model']} ({result['weights']}), {result['seconds']:.0f} s",
             f"{sets}; speedups against the FP32 eager reference of the same run", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in result["rows"]:
        if not _measured(r):
            why = "skipped: " + r["skipped"] if "skipped" in r else "FAILED: " + r["failed"]
            lines.append(f"| {r['engine']} | {why} |" + " |" * (len(header) - 2))
            continue
        name = r["engine"] + (" (REFUSED by its gate)" if r["refused"] else "")
        lines.append("| " + " | ".join([
            name, _f(r["size_mb"], 1), f"{r['build_seconds']:.0f}", *_fidelity_cells(r, with_eval),
            f"{r['p50_ms_first_batch']:.1f}", f"{r['throughput_last_batch']:.1f}",
            f"{_f(r['speedup_first_batch'], 2, '×')} / {_f(r['speedup_last_batch'], 2, '×')}"]) + " |")
    refused = [r for r in built if r["refused"]]
    if refused:
        lines += [""] + [f"{r['engine']}: {r['refused']} (measured before it was discarded)" for r in refused]
    return "\n".join(lines)
