"""`rexnet-deploy batch` over a photo folder: local vs Ray Data with 1 and 2 actors, each checked
against ``Engine.predict_files`` (same files, same top-k), throughput as ratios to the local path.

    .venv/bin/python benchmarks/ray_batch.py ENGINE [PHOTOS] [--limit 400]

PHOTOS defaults to ../shared/data/imagenet-sample/calib (skips with a message when absent). Bounded:
at most --limit photos per run, 4 runs. Ray startup is reported apart (it is paid once per job).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rexnet_deploy import Engine  # noqa: E402
from rexnet_deploy.batch import batch_predict, list_files, read_predictions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("photos", nargs="?", default=str(REPO.parent / "shared/data/imagenet-sample/calib"))
    ap.add_argument("--limit", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    if not Path(args.photos).is_dir():
        print(f"skipped: no photos at {args.photos}")
        return
    work = Path(tempfile.mkdtemp(prefix="ray-batch-bench-"))
    src = work / "in"
    src.mkdir()
    for f in list_files(args.photos)[:args.limit]:  # a bounded copy, flat
        shutil.copy(f, src / Path(f).name)
    files = list_files(src)
    with Engine.load(args.engine) as engine:
        want = engine.predict_files(files, 5, skip_bad=True)
    expected = {n: [p.index for p in preds] for n, preds in zip(want.names, want.predictions)}

    import ray

    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    startup = time.perf_counter() - t
    runs = {}
    try:
        for label, actors, options in [("local", None, {}), ("ray 1 actor", 1, {}), ("ray 2 actors", 2, {}),
                                       ("ray 2 actors, 1 thread each", 2, {"threads": 1})]:
            out = work / f"{label.replace(' ', '_').replace(',', '')}.parquet"
            result = batch_predict(args.engine, src, out, topk=5, batch_size=args.batch_size, ray_actors=actors,
                                   **options)
            rows = read_predictions(out)
            same = all(r["indices"] == expected[r["file"]] for r in rows if r["error"] is None) and \
                len(rows) == len(files)
            runs[label] = {"seconds": round(result.seconds, 2), "images_per_s": round(result.images_per_s, 1),
                           "identical_top5": same}
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    base = runs["local"]["images_per_s"]
    for r in runs.values():
        r["vs_local"] = round(r["images_per_s"] / base, 2) if base else None
    print(json.dumps({"images": len(files), "batch_size": args.batch_size, "ray_startup_s": round(startup, 1),
                      "cpus": 2, "runs": runs}, indent=2))
    assert all(r["identical_top5"] for r in runs.values()), "a path disagrees with predict_files"


if __name__ == "__main__":
    main()
