"""``matrix`` with evaluation photos: check and eval figures side by side, the fidelity/speed
frontier panel, engines refused by their gate measured and drawn hollow (never published)."""

from __future__ import annotations

import json

import pytest

from rexnet_deploy.harness.plot import FrontierPoint, pareto_front
from rexnet_deploy.matrix import candidates, frontier_points, markdown

from .conftest import expect_error, run_cli


def _figures(top1: float) -> dict:
    return {"images": "somewhere", "n": 8, "top1_agreement": top1, "top1_agreement_decisive": None,
            "top2_containment": 1.0, "cosine_mean": 0.99, "cosine_min": 0.9, "sqnr_db": 30.0,
            "labelled_top1": None, "labelled_reference_top1": None, "cpu_isa": "avx2"}


def _row(engine: str, throughput: float, check: float, evaluated: float | None, refused: str | None = None) -> dict:
    return {"engine": engine, "size_mb": None if refused else 10.0, "build_seconds": 3.0, "check": _figures(check),
            "eval": _figures(evaluated) if evaluated is not None else None, "p50_ms_first_batch": 5.0,
            "first_batch": 1, "throughput_last_batch": throughput, "last_batch": 8, "speedup_first_batch": 2.0,
            "speedup_last_batch": 3.0, "gate": refused is None, "refused": refused,
            "path": None if refused else f"engines/{engine}"}


def _result(rows: list[dict], eval_images: str | None) -> dict:
    return {"model": "rexnet_100", "weights": "random (seed 0)", "batches": [1, 8], "calibration": "calib",
            "check_images": "16 held-out images of calib", "eval_images": eval_images, "rows": rows, "seconds": 9.0}


ROWS = [_row("onnxruntime/fp32", 100.0, 1.0, 0.9), _row("openvino/int8", 300.0, 0.95, 0.5, refused="gate failed"),
        {"engine": "tensorrt/fp16", "skipped": "no GPU"}, {"engine": "openvino/bf16", "failed": "boom"}]


def test_candidates_are_the_rows_measured_precisions_in_table_order():
    assert candidates() == [("torchscript", "fp32"), ("torchscript", "fp16"), ("pt2", "fp32"), ("pt2", "bf16"),
                            ("pt2", "fp16"), ("pt2", "int8"), ("openvino", "fp32"), ("openvino", "fp16"),
                            ("openvino", "bf16"), ("openvino", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
                            ("onnxruntime", "int8"), ("tensorrt", "fp16"), ("tensorrt", "int8")]
    assert candidates(["tensorrt", "openvino/int8"]) == [("openvino", "int8"), ("tensorrt", "fp16"), ("tensorrt", "int8")]


def test_frontier_points_keep_refused_engines_flagged():
    assert frontier_points(ROWS, "eval") == [FrontierPoint("onnxruntime/fp32", 100.0, 0.9, False),
                                              FrontierPoint("openvino/int8", 300.0, 0.5, True)]
    assert [p.agreement for p in frontier_points(ROWS, "check")] == [1.0, 0.95]
    no_eval = [_row("onnxruntime/fp32", 100.0, 1.0, None)]
    assert frontier_points(no_eval, "eval") == [] and len(frontier_points(no_eval, "check")) == 1


def test_pareto_front_leaves_out_refused_and_beaten_engines():
    points = [FrontierPoint("a", 100, 0.9, False), FrontierPoint("b", 300, 0.8, False),
              FrontierPoint("c", 200, 0.7, False), FrontierPoint("d", 900, 1.0, True)]
    assert [p.name for p in pareto_front(points)] == ["a", "b"]


def test_the_chart_has_a_frontier_panel_with_hollow_refused_engines():
    pytest.importorskip("matplotlib")
    from rexnet_deploy.harness.plot import matrix_figure

    fig = matrix_figure([], frontier_points(ROWS, "eval"), agreement_label="top-1 agreement, evaluation photos",
                        throughput_label="throughput at batch 8 (images/s)", title="t")
    try:
        assert len(fig.axes) == 3
        front = fig.axes[2]
        assert "evaluation photos" in front.get_ylabel()
        filled, hollow = front.collections  # published, then refused
        assert filled.get_facecolors()[0][3] == 1.0 and hollow.get_facecolors().size == 0
        assert {t.get_text() for t in front.texts} == {"onnxruntime/fp32", "openvino/int8"}
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_markdown_puts_check_and_eval_figures_side_by_side():
    md = markdown(_result(ROWS, "evaldir"))
    assert "top-1 agr. check / eval" in md and "decisive top-1 agr. check / eval" in md
    assert "eval: evaldir" in md and "check: 16 held-out images of calib" in md
    assert "| 1.0000 / 0.9000 |" in md and "| – / – |" in md  # decisive: not measured
    assert "openvino/int8 (REFUSED by its gate)" in md and "openvino/int8: gate failed" in md
    header, rule = md.splitlines()[3:5]
    assert header.count("|") == rule.count("|")
    assert all(line.count("|") == header.count("|") for line in md.splitlines() if line.startswith("| "))


def test_markdown_without_eval_images_has_no_eval_columns():
    md = markdown(_result([_row("onnxruntime/fp32", 100.0, 1.0, None)], None))
    assert "/ eval" not in md and "eval:" not in md
    assert "| 1.0000 |" in md


@pytest.mark.slow
def test_matrix_measures_eval_photos_and_a_refused_engine(tmp_path, image_dir, monkeypatch):
    """An fp32 gate no engine passes (max_abs_err <= -1): the engine is still measured, on the
    check and the evaluation photos, and drawn hollow; nothing of it is published."""
    from rexnet_deploy import ModelSpec, WeightsSpec, matrix
    from rexnet_deploy.harness import metrics

    monkeypatch.setitem(metrics.DEFAULT_GATES, "fp32", {"max_abs_err": -1.0})
    out = tmp_path / "m"
    result = matrix.run(ModelSpec("rexnet_100", weights=WeightsSpec("random", seed=0)), out,
                        eval_images=str(image_dir), only=["torchscript/fp32"], batches=(1, 2), seconds=0.2)
    (row,) = result["rows"]
    assert row["refused"] and "max_abs_err" in row["refused"] and row["path"] is None and row["gate"] is False
    assert row["eval"]["n"] == 6 and row["eval"]["top1_agreement"] is not None and row["check"]["n"] > 0
    assert row["throughput_last_batch"] > 0 and row["last_batch"] == 2
    assert list((out / "engines").iterdir()) == []  # neither the artifact nor its staging folder
    assert [p.refused for p in frontier_points(result["rows"])] == [True]
    saved = json.loads((out / "matrix.json").read_text())
    assert saved["eval_images"] == str(image_dir) and saved["rows"][0]["eval"]["n"] == 6
    assert "top-1 agr. check / eval" in (out / "matrix.md").read_text()
    if result.get("chart"):
        assert (out / "matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_matrix_bad_eval_images_fail_before_building(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for bad, fragment in ((tmp_path / "nope", "not found"), (empty, "no image files")):
        expect_error(run_cli("matrix", "--weights", "random", "--only", "torchscript/fp32", "--eval-images", str(bad),
                             "--out", str(tmp_path / "m"), "-q"), fragment)
    assert not (tmp_path / "m").exists()
