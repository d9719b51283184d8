#!/usr/bin/env python3
"""Make a small, class-balanced calibration set from an ImageNet-style folder.

    python calib/make_calib_set.py SRC DST [--size 300] [--seed 0] [--short-side 256]

SRC is a folder of images: class subfolders (an ImageFolder, e.g. ImageNet's wnid folders) or a
flat folder, optionally with a ``labels.csv`` (``file,class_index``). The sample is the one
``rexnet-deploy build --calib SRC --calib-size N --calib-seed S`` would draw (round-robin over
classes, seeded); each image is decoded, converted to RGB, resized so its shorter side is
``--short-side`` (never enlarged: the model's own 256/224 resize still happens at build time) and
saved as JPEG quality 90. DST gets the same class folders and a ``labels.csv`` when SRC had labels.
Unreadable files are skipped and counted.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from PIL import Image

from rexnet_deploy import calibration
from rexnet_deploy.errors import RexnetDeployError
from rexnet_deploy.harness.labelsets import read_labels_csv
from rexnet_deploy.images import load_image


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--size", type=int, default=calibration.DEFAULT_SIZE, help="images to keep [300]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--short-side", type=int, default=256, help="shorter side after resizing [256]")
    args = ap.parse_args(argv)
    try:
        if args.dst.exists() and any(args.dst.iterdir()):
            raise RexnetDeployError(f"{args.dst} exists and is not empty")
        plan = calibration.select(args.src, args.size, seed=args.seed)
        table = read_labels_csv(plan.labels_csv) if plan.labels_csv else None
        rows, bad = [], 0
        for path in plan.candidates:
            if len(rows) >= args.size:
                break
            try:
                img = load_image(path)
            except RexnetDeployError:
                bad += 1
                continue
            scale = args.short_side / min(img.size)
            if scale < 1:
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
            rel = path.relative_to(args.src).with_suffix(".jpg")
            out = args.dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            img.save(out, quality=90)
            label = table.get(path.relative_to(args.src).as_posix(), table.get(path.name)) if table else None
            rows.append((rel.as_posix(), label, path.parent.name))
    except RexnetDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if table is not None:
        with (args.dst / "labels.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "class_index"])
            w.writerows((r, c) for r, c, _ in rows if c is not None)
    if table is not None:
        classes = f"{len({c for _, c, _ in rows if c is not None})} labelled classes"
    elif plan.stratified:
        classes = f"{len({d for _, _, d in rows})} class folders"
    else:
        classes = "no class information"
    print(f"wrote {len(rows)} images ({classes}, {bad} unreadable skipped) to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
