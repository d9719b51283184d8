"""Reports as Markdown (pasteable into a pull request) and JSON, and kept in the artifact."""

from __future__ import annotations

import math
from typing import Any, Callable

from ..manifest import Manifest


def store_report(engine, kind: str, report: dict[str, Any], warn: Callable[[str], None]) -> None:
    """Keep a check/bench report in the engine's manifest; a read-only artifact is a warning."""
    try:
        engine.artifact.set_report(kind, report)
    except OSError as exc:
        warn(f"warning: could not store the {kind} report in the manifest: {exc}")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        return f"{v:.{digits}f}"
    return str(v)


SUMMARY_KEYS = ("top1_agreement", "top1_agreement_decisive", "top2_containment", "cosine_mean", "cosine_min", "sqnr_db")
# (top-1 agreement, its decisive subset, top-2 containment: the proportions reported with an interval)
AGREEMENT_KEYS = ("top1_agreement", "top1_agreement_decisive", "top2_containment")
STEADY_NOTE = "agreement moves with the calibration sample; SQNR and min cosine are the steady figures"


def ci95(metrics: dict[str, Any], key: str, n: int | None) -> list[float] | None:
    """The 95% Wilson interval of the proportion ``metrics[key]`` over ``n`` images: the one the
    report stored, else (a report written before intervals were) from the value and ``n``."""
    stored = metrics.get(f"{key}_ci95")
    if stored is not None:
        return list(stored)
    value = metrics.get(key)
    if value is None or not n or not 0.0 <= value <= 1.0:
        return None
    from .metrics import wilson_interval

    return list(wilson_interval(round(value * n), n))  # value is hits / n: round() gives the hits back


def _count(metrics: dict[str, Any], key: str, n: int | None) -> int | None:
    """The images a proportion is over: the decisive ones for decisive agreement, else all."""
    return metrics.get("decisive_images") if key == "top1_agreement_decisive" else n


def agreement_text(value: float | None, ci: list[float] | None, n: int | None, *, label: bool = True) -> str:
    """``0.9450 (95% CI 0.904–0.969, n=200)``: a proportion with its interval and photo count."""
    if value is None:
        return "–"
    if ci is None:
        return _fmt(value) + (f" (n={n})" if n else "")
    return f"{_fmt(value)} ({'95% CI ' if label else ''}{ci[0]:.3f}–{ci[1]:.3f}" + (f", n={n})" if n else ")")


def _sqnr(metrics: dict[str, Any]) -> str:
    """SQNR in dB; a null in a report read back from JSON is an infinite SQNR (identical outputs)."""
    value = metrics.get("sqnr_db")
    return _fmt(math.inf if value is None and "sqnr_db" in metrics else value, 2)


def calibration_note(record: dict[str, Any]) -> dict[str, Any]:
    """What a check report keeps of the manifest's calibration record: which sample made the engine."""
    return {k: record.get(k) for k in ("source", "n", "seed", "list_sha256")}


def fidelity_line(report: dict[str, Any], *, calibration: bool = True) -> str:
    """A check/eval report's figures on one line, the steady ones first (SQNR, the worst-case
    cosine), then each agreement with its 95% interval, then an INT8 engine's calibration sample."""
    m, n = report["metrics"], report["n_images"]
    parts = [f"SQNR {_sqnr(m)} dB", f"min cosine {_fmt(m.get('cosine_min'), 6)}"]
    for key, name in zip(AGREEMENT_KEYS, ("top-1 agreement", "decisive agreement", "top-2 containment")):
        if m.get(key) is not None:
            count = _count(m, key, n)
            parts.append(f"{name} {agreement_text(m[key], ci95(m, key, count), count)}")
    cal = report.get("calibration")
    if calibration and cal:
        parts.append(f"calibration seed {cal.get('seed')} ({cal.get('n')} images)")
    return ", ".join(parts)


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The fidelity figures of a check report, with where its images came from."""
    src = report["images"]
    where = src.get("path") or (f"held-out photos of {src['held_out_of']}" if src.get("held_out_of") else src["kind"])
    m, n = report["metrics"], report["n_images"]
    cal = report.get("calibration") or {}
    return {"images": where, "n": n,
            **{k: m.get(k) for k in SUMMARY_KEYS},
            "labelled_top1": (report.get("labelled") or {}).get("engine_top1"),
            "labelled_reference_top1": (report.get("labelled") or {}).get("reference_top1"),
            "cpu_isa": (report.get("host") or {}).get("cpu_isa"),
            # added after the keys above (readers of older summaries find those where they were)
            **{f"{k}_ci95": ci95(m, k, _count(m, k, n)) for k in AGREEMENT_KEYS},
            "decisive_images": m.get("decisive_images"),
            "calibration_seed": cal.get("seed"), "calibration_images": cal.get("n")}


def check_markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    n = report["n_images"]
    src = report["images"]
    where = src.get("path") or (f"{src['n']} synthetic images (seed {src['seed']})" if src["kind"] == "synthetic" else "files")
    cal = report.get("calibration")
    lines = [
        f"### check: {report['model']} {report['engine']['backend']}/{report['engine']['precision']} vs FP32 reference"
        + (f" (the engine's graph emulated on {report['engine']['emulation']})" if report["engine"].get("emulation") else ""),
        f"{n} images from {where}" + (f", {len(report['skipped'])} skipped" if report["skipped"] else "")
        + (f"; CPU {report['host']['cpu_isa']}" if report.get("host") else ""),
        *([f"calibration: {cal.get('n')} images of {cal.get('source')}, seed {cal.get('seed')} ({STEADY_NOTE})"]
          if cal else []),
        "",
        "| metric | value | 95% CI (images) |",
        "|---|---|---|",
    ]
    # the steady figures first; then the proportions, each with its interval for the photo count
    for key in ("sqnr_db", "cosine_min", "cosine_mean", "max_abs_err", "top1_agreement", "top1_agreement_decisive",
                "top2_containment", "top5_agreement"):
        if key == "sqnr_db":
            lines.append(f"| sqnr_db | {_sqnr(m)} | |")
        elif m.get(key) is not None:
            value = _fmt(m[key], 6 if "cosine" in key else 4)
            if key in AGREEMENT_KEYS or key == "top5_agreement":
                count = _count(m, key, n)
                ci = ci95(m, key, count)
                lines.append(f"| {key} | {value} |" + (f" {ci[0]:.3f}–{ci[1]:.3f} (n={count}) |" if ci else " |"))
            else:
                lines.append(f"| {key} | {value} | |")
    lab = report.get("labelled")
    if lab:
        lines += ["", f"labelled ({lab['n']} images, labels from {report['labels']}):", "",
                  "| | top-1 | top-5 |", "|---|---|---|",
                  f"| engine | {lab['engine_top1']:.4f} | {lab['engine_top5']:.4f} |",
                  f"| reference | {lab['reference_top1']:.4f} | {lab['reference_top5']:.4f} |"]
    gate = report["gate"]
    lines += ["", "gate: " + ("**passed**" if gate["passed"] else "**FAILED**: " + "; ".join(gate["failures"]))]
    if report.get("stored"):
        lines += ["", fidelity_markdown({**{f"stored {k}": v for k, v in report["stored"].items()},
                                         "this check": summary(report)})]
    return "\n".join(lines)


def _qad_line(q: dict[str, Any]) -> str:
    """One line on a quantization-aware-distillation record (OpenVINO IR or Q/DQ graph)."""
    d = q.get("distillation") or {}
    curve = d.get("loss_curve_every_10_steps") or []
    ops = q.get("fake_quantize_ops", q.get("quantize_linear_nodes"))
    return (f"{q['tool']} {q['version']} {q['method']} (recipe qad): PyTorch PTQ on {q['ptq']['images']} images, "
            f"{len(q['ptq']['ignored_patterns'])} ignored pattern(s); "
            + (f"{d['steps']} distillation steps, KL {curve[0]} → {curve[-1]}, {d['seconds']} s" if curve else "no distillation")
            + f"; {ops} quantize ops")


def fidelity_markdown(rows: dict[str, dict[str, Any]]) -> str:
    """One row per image set (held-out calibration photos, unseen evaluation photos, ...): the
    figures side by side, because agreement on in-distribution photos reads high. The steady
    figures (SQNR, min cosine) lead; each agreement carries its 95% interval for the photo count."""
    lines = ["| figures | images | n | SQNR dB | min cos | mean cos | top-1 agr. (95% CI) | decisive (95% CI, n) | "
             "top-2 cont. (95% CI) | labelled top-1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    seeds = set()
    for name, r in rows.items():
        cells = []
        for key in AGREEMENT_KEYS:  # (a summary stored before the interval keys: derived from value and n)
            decisive = key == "top1_agreement_decisive"
            count = r.get("decisive_images") if decisive else r.get("n")
            cells.append(agreement_text(r.get(key), ci95(r, key, count), count if decisive else None, label=False))
        lines.append(f"| {name} | {r['images']} | {r['n']} | {_fmt(r.get('sqnr_db'), 2)} | "
                     f"{_fmt(r.get('cosine_min'), 6)} | {_fmt(r.get('cosine_mean'), 6)} | {' | '.join(cells)} | "
                     f"{_fmt(r.get('labelled_top1'))} |")
        if r.get("calibration_seed") is not None:
            seeds.add((r.get("calibration_images"), r["calibration_seed"]))
    if seeds:
        lines += ["", "calibration: " + "; ".join(f"{k} images, seed {s}" for k, s in sorted(seeds, key=str))
                  + f" ({STEADY_NOTE})"]
    return "\n".join(lines)


def bench_markdown(report: dict[str, Any]) -> str:
    ref = {r["batch"]: r for r in (report.get("reference") or {}).get("results", [])}
    fp16 = {r["batch"]: r for r in (report.get("reference_fp16") or {}).get("results", [])}
    host = report["host"]
    where = (f"{host['gpu']}; references: eager on {report['reference']['device']}" if host.get("gpu") and report.get("reference")
             else host.get("gpu") or f"{host['cpu']}, {host['cpu_count']} CPUs")
    io = (report.get("settings") or {}).get("io", "numpy")
    lines = [
        f"### bench: {report['model']} {report['engine']['backend']}/{report['engine']['precision']} ({where}"
        + (", tensors on the device in and out" if io == "device" else "") + ")",
        "",
        "| batch | p50 ms | p90 ms | p99 ms | mean ms | img/s | first call ms | ref p50 ms | ref img/s | speedup (p50) |"
        + (" fp16 ref p50 ms | fp16 ref img/s | vs fp16 (p50) |" if fp16 else ""),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if fp16 else ""),
    ]
    for r in report["results"]:
        b = r["batch"]
        rr, rf = ref.get(b), fp16.get(b)
        sp = (report.get("speedup") or {}).get(str(b))
        line = (
            f"| {b} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_ms']:.2f} | "
            f"{r['throughput_ips']:.1f} | {_fmt(r.get('first_call_ms'), 1)} | {_fmt(rr and rr['p50_ms'], 2)} | "
            f"{_fmt(rr and rr['throughput_ips'], 1)} | {_fmt(sp, 2) + '×' if sp else '–'} |"
        )
        if fp16:
            sp16 = (report.get("speedup_vs_fp16_eager") or {}).get(str(b))
            line += (f" {_fmt(rf and rf['p50_ms'], 2)} | {_fmt(rf and rf['throughput_ips'], 1)} | "
                     f"{_fmt(sp16, 2) + '×' if sp16 else '–'} |")
        lines.append(line)
    unsteady = [str(r["batch"]) for r in report["results"] if r.get("steady") is False]
    if unsteady:
        lines.append(f"\nnot steady by the end of warm-up at batch {', '.join(unsteady)} (the warm-up cap was reached)")
    repeat = (report.get("settings") or {}).get("repeat")
    if repeat:
        lines.append(f"\nspeedup: the median of {repeat} runs (times: the first run)")
    e2e = report.get("end_to_end")
    if e2e:
        lines += ["", f"end to end ({e2e['files']} files of {e2e['images']}, decode + preprocess on {e2e['workers']} threads):",
                  "", "| batch | images | files → labels img/s | tensor-only img/s | ratio |", "|---:|---:|---:|---:|---:|"]
        for r in e2e["results"]:
            lines.append(f"| {r['batch']} | {r['images']} | {r['images_per_s']:.1f} | {r['tensor_images_per_s']:.1f} | "
                         f"{r['ratio']:.2f} |")
    return "\n".join(lines)


def info_markdown(manifest: Manifest, path: str) -> str:
    m = manifest.model
    w = m.weights
    inp = manifest.input
    lines = [
        f"### {path}",
        f"- model: {m.name} (head {m.head}, {m.num_classes} classes)",
        f"- weights: {w['source']}" + (f", seed {w.get('seed')}" if w["source"] == "random" else "")
        + (f", {w.get('path') or w.get('hub_id')}" if w["source"] != "random" else "")
        + ("" if w.get("production", True) else " — NOT FOR PRODUCTION"),
        f"- backend: {manifest.backend} {manifest.precision} on {manifest.device}",
        f"- input: {inp.name} {inp.dtype} {inp.layout} {inp.shape}, batch {inp.batch[0]}..{inp.batch[1]}",
        "- outputs: " + ", ".join(f"{o.name} {o.shape}" for o in manifest.outputs),
        "- files: " + ", ".join(manifest.files),
        f"- built {manifest.created} with " + ", ".join(
            f"{k} {v}" for k, v in manifest.environment.items()
            if k in ("rexnet_deploy", "torch", "timm", "openvino", "nncf", "onnxruntime", "modelopt")),
    ]
    config = manifest.backend_config
    if "inference_precision_hint" in config:
        lines.append(f"- inference precision hint: {config['inference_precision_hint'] or 'CPU default'}"
                     f" (ran {config.get('inference_precision_here', '?')} on the build host)")
    cal = manifest.calibration
    if cal:
        lines.append(f"- calibration: {cal['n']} images from {cal['source']} (seed {cal['seed']}, "
                     f"{'stratified over ' + str(cal['classes']) + ' classes' if cal.get('stratified') else 'unstratified'}, "
                     f"{cal.get('unreadable', 0)} unreadable), list sha256 {cal['list_sha256'][:12]}…")
    q = config.get("quantization")
    if q and str(q.get("tool", "")).startswith("torchao.quantization.pt2e"):  # pt2 INT8 (PT2E), PTQ or distilled
        d = q.get("distillation") or {}
        unquantized = ", ".join(q.get("unquantized") or []) or "nothing"
        lines.append(f"- quantization: {q['tool']} {q.get('version', '')} {q.get('quantizer', '')}, "
                     f"recipe {q.get('recipe')} ({q.get('method', '')}) on {q.get('images', '?')} images, "
                     f"{q.get('activations', '')} activations, {q.get('weights', '')} weights, unquantized: {unquantized}"
                     + (f"; {d['steps']} distillation steps, {d.get('seconds')} s" if d.get("steps") else ""))
    elif q and "recipe" not in q:  # ONNX Runtime's own INT8
        lines.append(f"- quantization: {q['tool']} {q.get('format', '')}, {q.get('activations', '')} activations, "
                     f"{q.get('weights', '')} weights, {q.get('calib_method', '')} ranges")
    elif q and q["recipe"] == "qad":
        lines.append("- quantization: " + _qad_line(q))
    elif q and q["recipe"] == "fused-qad":  # ONNX Runtime's own graph distilled in place (int8.ort_fused)
        d = q.get("distillation") or {}
        lines.append(f"- quantization: {q['tool']}, recipe fused-qad: {q.get('format', '')}, {q.get('activations', '')} "
                     f"activations, {q.get('weights', '')} weights; "
                     + (f"{d['steps']} distillation steps (kept {d.get('kept_step')}), {d.get('seconds')} s"
                        if d.get("steps") else "no distillation"))
    elif q:
        scope = q.get("ignored_scope") or {}
        kept = sum(len(v) for v in scope.values()) if scope else 0
        lines.append(f"- quantization: {q['tool']} {q['version']} {q['method']}, recipe {q['recipe']}, preset {q['preset']}, "
                     f"overflow fix {q.get('overflow_fix', '?')}, {q['fake_quantize_ops']} FakeQuantize ops, "
                     f"{kept} ignored-scope entries"
                     + (f", max drop {q['max_drop']}" if q.get("max_drop") is not None else ""))
    p = config.get("precision_pass")
    if p and p.get("recipe") == "qad":
        lines.append("- precision pass: " + _qad_line(p))
    elif p:
        # (manifests before the rename say convs_kept_fp32 / nodes_kept_fp32 for the same lists)
        unquantized = p.get("convs_unquantized", p.get("convs_kept_fp32")) or []
        in_fp32 = p.get("nodes_in_fp32", p.get("nodes_kept_fp32")) or []
        detail = (f"{p['calib_method']} calibration from {p['calib_source']}, {p['convs_quantized']} convs quantized, "
                  f"{len(unquantized)} unquantized ({str(p.get('high_precision', 'fp32')).upper()}), "
                  f"exclude {p['exclude'] or 'nothing'}"
                  if "calib_method" in p else f"{len(in_fp32)} nodes in FP32")
        lines.append(f"- precision pass: {p['tool']} (ModelOpt {p.get('modelopt')}): {detail}")
    if manifest.backend == "tensorrt":
        e, prof = config.get("engine"), config.get("profile") or {}
        lines.append(f"- TensorRT profile batch {prof.get('min')}:{prof.get('opt')}:{prof.get('max')}; engine: "
                     + (f"TensorRT {e['tensorrt']} for {e['gpu']} (compute capability {e['compute_capability']})" if e
                        else "none yet (built without a TensorRT GPU host: load with --rebuild-engine there, "
                             "or check the graph here with --emulate)"))
    reports = manifest.reports
    if reports.get("check"):
        c = reports["check"]
        lines.append(f"- check: {c['n_images']} images, {fidelity_line(c, calibration=False)}, "
                     f"gate {'passed' if c['gate']['passed'] else 'FAILED'}")
    if reports.get("eval"):
        e = reports["eval"]
        lines.append(f"- eval: {e['n_images']} images of {e['images'].get('path') or e['images']['kind']}, "
                     f"{fidelity_line(e, calibration=False)}")
    if reports.get("bench"):
        b = reports["bench"]
        lines.append("- bench: " + ", ".join(f"batch {r['batch']} p50 {r['p50_ms']:.2f} ms" for r in b["results"])
                     + (" ; speedup vs eager " + ", ".join(f"{k}: {v:.2f}×" for k, v in b["speedup"].items()) if b.get("speedup") else ""))
    return "\n".join(lines)
