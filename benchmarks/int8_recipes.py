"""INT8 recipes side by side: fidelity on held-out calibration photos *and* on photos of unseen
classes, build time, and speed against the same backend's FP32 engine in the same run.

    .venv/bin/python benchmarks/int8_recipes.py --weights W.safetensors --calib CALIB_DIR \
        --eval DEV_DIR --out runs/int8-recipes [--only openvino/qad] [--bench 1,32]

Each recipe is one `rexnet-deploy build` through the library (the same code path as the CLI),
with the build's gate check on held-out calibration photos and an eval report on ``--eval``.
Writes ``recipes.md`` and ``recipes.json``. Minutes per recipe on 2 cores (QAD ones the most).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# (label, backend, backend options, note)
RECIPES = [
    ("openvino/nncf", "openvino", {"recipe": "nncf"}, "NNCF defaults (what a user gets without us)"),
    ("openvino/rexnet", "openvino", {"recipe": "rexnet"}, "NNCF PTQ, 7-bit weights everywhere (the fast recipe)"),
    ("openvino/qad", "openvino", {}, "PyTorch PTQ (SE FP32, asymmetric activations) + QAD on 160 px views, "
     "warm-up + cosine, at most 120 steps, early stop (the default)"),
    ("tensorrt/modelopt", "tensorrt", {"recipe": "modelopt"}, "ModelOpt ONNX PTQ, entropy (emulated on ORT CPU)"),
    ("tensorrt/rexnet", "tensorrt", {"recipe": "rexnet"}, "ModelOpt PyTorch PTQ, BN folded, SE + depthwise FP16 (emulated)"),
    ("tensorrt/qad", "tensorrt", {}, "tensorrt/rexnet + 100 QAD steps at lr 1e-5 (the default; emulated)"),
    ("onnxruntime/u8", "onnxruntime", {"recipe": "quantize_static"}, "ORT quantize_static, u8 activations, 7-bit weights, SE gates + head + stem FP32"),
    ("onnxruntime/qad", "onnxruntime", {"recipe": "qad", "qad_steps": 100}, "the distilled int8 Q/DQ graph of tensorrt/qad"),
    ("onnxruntime/fused-qad", "onnxruntime", {}, "onnxruntime/u8's graph (QLinearConv-fusable), its weights "
     "distilled in place, 40 steps, warm-up + cosine, crops 0.08-1 (the default)"),
    ("pt2/ptq", "pt2", {"recipe": "ptq"}, "PT2E X86InductorQuantizer defaults (u8 activations), SE gates float"),
    ("pt2/qad", "pt2", {}, "PT2E QAT graph (same quantizer) + 100 distillation steps (the default)"),
    ("pt2/qad-float-depthwise", "pt2", {"float_depthwise": True}, "pt2/qad with the depthwise convolutions in FP32"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True, help="photos of classes the calibration set lacks")
    ap.add_argument("--out", default="runs/int8-recipes")
    ap.add_argument("--only", action="append", default=[], help="recipe labels (repeatable)")
    ap.add_argument("--bench", default="", help="batch sizes to time against the backend's FP32 engine, e.g. 1,32")
    args = ap.parse_args()

    from rexnet_deploy import BuildSpec, ModelSpec, WeightsSpec, build
    from rexnet_deploy.harness.bench import bench
    from rexnet_deploy.harness.report import summary

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = ModelSpec("rexnet_100", weights=WeightsSpec("file", path=args.weights))
    batches = [int(b) for b in args.bench.split(",") if b]
    rows, fp32_engines = [], {}
    for label, backend, options, note in RECIPES:
        if args.only and label not in args.only:
            continue
        t0 = time.perf_counter()
        engine = build(model, BuildSpec(backend=backend, precision="int8", device="cpu" if backend != "tensorrt" else None),
                       out / label.replace("/", "-"), force=True, calib=args.calib, backend_options=dict(options),
                       eval_images=args.eval, check_options={"gate": {"top1_agreement": 0.0, "cosine_min": 0.0}})
        seconds = time.perf_counter() - t0
        reports = engine.manifest.reports
        row = {"recipe": label, "note": note, "build_s": round(seconds),
               "held_out": summary(reports["check"]), "eval": summary(reports["eval"])}
        if batches and not engine.emulation:
            if backend not in fp32_engines:
                fp32_engines[backend] = build(model, BuildSpec(backend=backend, precision="fp32"),
                                              out / f"{backend}-fp32", force=True, check=False)
            timed = bench(engine, batches=batches, reference=fp32_engines[backend], seconds=3.0)
            # the FP32 engine of the same backend plays the reference: ratios are FP32 time / INT8 time
            row["speed_vs_fp32"] = {b: round(v, 2) for b, v in (timed["throughput_ratio"] or {}).items()}
        engine.close()
        rows.append(row)
        print(json.dumps(row), flush=True)
    for e in fp32_engines.values():
        e.close()
    (out / "recipes.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| recipe | build | held-out calib top-1 / min cos | **unseen top-1** | decisive | top-2 cont. | "
             "min cos | mean cos | SQNR dB | speed vs FP32 (same backend) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        h, e = r["held_out"], r["eval"]
        speed = ", ".join(f"b{b} {v:.2f}×" for b, v in (r.get("speed_vs_fp32") or {}).items()) or "—"
        lines.append(f"| {r['recipe']} ({r['note']}) | {r['build_s']} s | {h['top1_agreement']:.3f} / {h['cosine_min']:.4f} | "
                     f"**{e['top1_agreement']:.3f}** | {e['top1_agreement_decisive']:.3f} | {e['top2_containment']:.3f} | "
                     f"{e['cosine_min']:.4f} | {e['cosine_mean']:.5f} | {e['sqnr_db']:.1f} | {speed} |")
    (out / "recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
