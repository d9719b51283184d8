"""End-to-end throughput (image files → top-k labels) against the same engine's tensor-only
throughput, same run. Target (issue 5): at batch 32, >= 80% on real JPEGs.

Run: .venv/bin/python -m pytest benchmarks/test_e2e.py -s
"""

from __future__ import annotations

import pytest

from .conftest import HAVE_SHARED, SHARED_CALIB, build_engine

pytest.importorskip("openvino")


@pytest.mark.skipif(not HAVE_SHARED, reason="the target is on real JPEGs (../shared/data/imagenet-sample)")
def test_end_to_end_batch32_keeps_80_percent_of_tensor_throughput(tmp_path_factory, weights_arg):
    from rexnet_deploy.harness.e2e import end_to_end

    with build_engine(tmp_path_factory.mktemp("bench") / "ov-fp32", "openvino", "fp32", weights_arg,
                      check_options={"synthetic": 8}) as engine:
        report = end_to_end(engine, SHARED_CALIB, batches=[32], min_images=256)
    row = report["results"][0]
    print(f"\nend to end at batch 32: {row['images_per_s']:.1f} img/s vs tensor-only {row['tensor_images_per_s']:.1f} "
          f"img/s = {row['ratio']:.2f} ({report['workers']} preprocessing threads)")
    assert row["ratio"] >= 0.8, row
