"""How much logit SQNR an INT8 engine needs for a given top-1 agreement on a set of photos.

    .venv/bin/python benchmarks/agreement_vs_sqnr.py ENGINE_DIR [ENGINE_DIR ...] --images DEV_DIR \
        [--weights W.safetensors] [--plot curve.png] [--out curve.json]

Each engine's error on the photos (its logits minus the FP32 reference's) is scaled by a factor k
and added back to the reference: the agreement an engine *with the same error pattern* would have
at SQNR + 20·log10(1/k). The mean over engines (e.g. one per distillation seed) says how many dB a
target such as top-1 >= 0.95 takes on average; the spread at a fixed SQNR is what 200 photos and a
seed leave to chance. A first-order model: real gains do not shrink every error in proportion.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

GAINS_DB = np.round(np.arange(-2.0, 8.01, 0.5), 2)
AS_MEASURED = list(GAINS_DB).index(0.0)  # the row of a curve at gain 0: the engine as it is


def scaled_agreement(reference: np.ndarray, output: np.ndarray,
                     gains_db: Sequence[float] = tuple(GAINS_DB)) -> list[dict[str, float]]:
    """The metrics of ``reference + k * (output - reference)`` for k = 10^(-gain/20), per gain:
    SQNR dB, top-1 agreement, decisive top-1, top-2 containment."""
    from rexnet_deploy.harness.metrics import Comparison

    error = np.asarray(output, np.float64) - reference
    rows = []
    for gain in gains_db:
        c = Comparison(["logits"], True)
        c.update([reference], [(reference + 10 ** (-gain / 20) * error).astype(np.float32)])
        m = c.metrics()
        rows.append({"gain_db": float(gain), "sqnr_db": round(m["sqnr_db"], 3), "top1": m["top1_agreement"],
                     "decisive": round(m["top1_agreement_decisive"], 4), "top2": m["top2_containment"]})
    return rows


def mean_curve(curves: Sequence[Sequence[dict[str, float]]]) -> list[dict[str, float]]:
    """The engines' curves averaged per gain (every metric; the gains must be the same)."""
    return [{k: float(np.mean([c[i][k] for c in curves])) for k in curves[0][i]} for i in range(len(curves[0]))]


def sqnr_for(curves: Sequence[Sequence[dict[str, float]]], target: float, metric: str = "top1") -> float | None:
    """The lowest mean SQNR at which the engines' mean ``metric`` reaches ``target`` (None: not within the gains)."""
    return next((row["sqnr_db"] for row in mean_curve(curves) if row[metric] >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engines", nargs="+", help="engine artifacts built from the same weights")
    ap.add_argument("--images", required=True, help="photos to measure on (e.g. dev/)")
    ap.add_argument("--weights", help="the weights file the engines were built from, when not at its recorded path")
    ap.add_argument("--targets", default="0.95,0.97", help="top-1 agreements to report the SQNR for")
    ap.add_argument("--plot", help="write the curves as a PNG")
    ap.add_argument("--out", help="write the curves as JSON")
    args = ap.parse_args()

    from tqdm import tqdm

    from rexnet_deploy import Engine
    from rexnet_deploy.harness.reference import TorchReference
    from rexnet_deploy.images import find_images

    files = find_images(args.images)
    curves: dict[str, Any] = {}
    reference_logits = x = None
    for path in tqdm(args.engines, desc="engines", unit="engine"):
        engine = Engine.load(path)
        if x is None:
            x = engine.preprocess(files)
            reference = TorchReference.from_manifest(engine.manifest, weights=args.weights)
            reference_logits = np.concatenate([reference(x[i:i + 32])[0] for i in range(0, len(x), 32)]).astype(np.float64)
        curves[str(path)] = scaled_agreement(reference_logits, engine.infer(x)[0])  # infer chunks to the engine's batches
        engine.close()
    table = list(curves.values())
    print(f"{len(files)} photos of {args.images}, {len(table)} engine(s); measured: "
          + ", ".join(f"{Path(p).name} {c[AS_MEASURED]['top1']:.3f} @ {c[AS_MEASURED]['sqnr_db']:.2f} dB"
                      for p, c in curves.items()))
    print("| SQNR dB (mean) | top-1 mean | top-1 min | top-1 max | decisive mean | top-2 mean |\n|---:|---:|---:|---:|---:|---:|")
    for i, mean in enumerate(mean_curve(table)):
        top1 = [c[i]["top1"] for c in table]
        print(f"| {mean['sqnr_db']:.2f} | {mean['top1']:.3f} | {min(top1):.3f} | {max(top1):.3f} | "
              f"{mean['decisive']:.3f} | {mean['top2']:.3f} |")
    for target in (float(t) for t in args.targets.split(",") if t):
        db = sqnr_for(table, target)
        print(f"mean top-1 >= {target:g}: " + (f"from {db:.1f} dB" if db is not None else "not within +8 dB"))
    if args.out:
        Path(args.out).write_text(json.dumps({"images": str(args.images), "curves": curves}, indent=1))
    if args.plot:
        _plot(curves, args.plot, f"{len(files)} photos of {Path(args.images).name}")


def _plot(curves: dict[str, Any], path: str, title: str) -> None:
    from rexnet_deploy.harness.plot import _pyplot, save_figure

    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2))
    for curve in curves.values():
        ax.plot([r["sqnr_db"] for r in curve], [r["top1"] for r in curve], color="0.75", lw=0.8)
        ax.plot(curve[AS_MEASURED]["sqnr_db"], curve[AS_MEASURED]["top1"], "o", color="tab:blue", ms=3)
    mean = mean_curve(list(curves.values()))
    ax.plot([r["sqnr_db"] for r in mean], [r["top1"] for r in mean], color="tab:red", lw=2, label="mean over engines")
    ax.axhline(0.95, color="k", ls=":", lw=0.8)
    ax.set_xlabel("logit SQNR vs FP32 (dB)")
    ax.set_ylabel("top-1 agreement")
    ax.set_title(f"{title}: each error scaled (grey), as measured (dots)", fontsize=8)
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
