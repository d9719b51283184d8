"""Steadier INT8 fidelity reporting (issue 20): agreement with its 95% Wilson interval for the photo
count, SQNR and the worst-case cosine first, and the calibration sample an INT8 engine was made from."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest

from rexnet_deploy import Engine
from rexnet_deploy.harness.metrics import Comparison, evaluate_gate, wilson_interval
from rexnet_deploy.harness.report import check_markdown, fidelity_line, fidelity_markdown, info_markdown, summary
from rexnet_deploy.manifest import Manifest

from .test_manifest import HEAD_FILE


# -- the interval ----------------------------------------------------------------------------------
def test_wilson_interval_on_known_values():
    lo, hi = wilson_interval(189, 200)  # 0.945 on 200 photos
    assert lo == pytest.approx(0.90421, abs=1e-4) and hi == pytest.approx(0.96901, abs=1e-4)
    lo, hi = wilson_interval(200, 200)  # all agree: not a zero-width interval
    assert hi == 1.0 and lo == pytest.approx(0.98115, abs=1e-4)
    lo, hi = wilson_interval(0, 200)
    assert lo == 0.0 and hi == pytest.approx(0.01885, abs=1e-4)
    assert wilson_interval(32, 32)[0] == pytest.approx(0.89282, abs=1e-4)
    # twice the photos, about 1/sqrt(2) the width
    w200, w400 = (np.subtract(*wilson_interval(k, n)[::-1]) for k, n in ((189, 200), (378, 400)))
    assert 0.65 < w400 / w200 < 0.75
    for bad in ((1, 0), (-1, 10), (11, 10)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_wilson_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for k, n in ((0, 1), (1, 1), (3, 7), (162, 165), (189, 200), (377, 400), (999, 1000)):
        ref = stats.binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_comparison_stores_an_interval_next_to_each_agreement():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 10)).astype(np.float32)
    eng = ref.copy()
    flip = np.arange(11)  # 11 of 200 swap their top two: top-1 agreement 0.945, top-2 containment 1.0
    top2 = np.argsort(-ref[flip], axis=1)[:, :2]
    eng[flip[:, None], top2] = eng[flip[:, None], top2[:, ::-1]]
    c = Comparison(["logits"], classify=True)
    c.update([ref[:120]], [eng[:120]])
    c.update([ref[120:]], [eng[120:]])
    m = json.loads(json.dumps(c.metrics()))  # as the manifest keeps it
    assert m["top1_agreement"] == 0.945
    assert m["top1_agreement_ci95"] == pytest.approx([0.90421, 0.96901], abs=1e-4)
    assert m["top2_containment"] == 1.0 and m["top2_containment_ci95"] == pytest.approx([0.98115, 1.0], abs=1e-4)
    assert m["top5_agreement_ci95"] == m["top2_containment_ci95"]
    n_dec = m["decisive_images"]
    hits = round(m["top1_agreement_decisive"] * n_dec)
    assert m["top1_agreement_decisive_ci95"] == pytest.approx(list(wilson_interval(hits, n_dec)))
    embed = Comparison(["embedding"], classify=False)
    embed.update([ref], [eng])
    assert not any(k.endswith("_ci95") for k in embed.metrics())  # no proportion, no interval


def test_the_gate_reads_the_value_and_names_the_interval():
    th = {"top1_agreement": 0.9}
    low = evaluate_gate({"top1_agreement": 0.885, "top1_agreement_ci95": [0.833, 0.923]}, th)
    assert not low["passed"] and low["failures"] == ["top1_agreement 0.885 (95% CI 0.833–0.923; needs >= 0.9)"]
    # an interval reaching below the bound does not fail a value above it (pass/fail as before)
    assert evaluate_gate({"top1_agreement": 0.905, "top1_agreement_ci95": [0.857, 0.937]}, th)["passed"]


# -- the reports -----------------------------------------------------------------------------------
def _int8_report() -> dict:
    """A check report of an INT8 engine on 200 photos, as check() writes it now."""
    return {
        "kind": "check", "engine": {"backend": "openvino", "precision": "int8"}, "model": "rexnet_100",
        "head": "classify", "images": {"kind": "folder", "path": "/photos/dev"}, "n_images": 200, "skipped": [],
        "labels": None,
        "calibration": {"source": "/photos/calib", "n": 300, "seed": 3, "list_sha256": "ab" * 32},
        "metrics": {"top1_agreement": 0.945, "top5_agreement": 1.0, "top2_containment": 0.99,
                    "top1_agreement_decisive": 160 / 162, "decisive_images": 162,
                    "cosine_mean": 0.99886, "cosine_min": 0.9449, "sqnr_db": 27.2, "max_abs_err": 1.5,
                    "top1_agreement_ci95": list(wilson_interval(189, 200)),
                    "top5_agreement_ci95": list(wilson_interval(200, 200)),
                    "top2_containment_ci95": list(wilson_interval(198, 200)),
                    "top1_agreement_decisive_ci95": list(wilson_interval(160, 162))},
        "labelled": None, "gate": {"passed": True, "thresholds": {}, "failures": []}, "host": {"cpu_isa": "avx512-vnni"},
    }


def _old_report() -> dict:
    """The same report as written before the intervals, the calibration note and decisive_images."""
    r = _int8_report()
    del r["calibration"]
    r["metrics"] = {k: v for k, v in r["metrics"].items() if not k.endswith("_ci95") and k != "decisive_images"}
    return r


def test_check_markdown_leads_with_the_steady_figures_and_names_the_calibration_seed():
    md = check_markdown(_int8_report())
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")]
    steady = max(rows.index("sqnr_db"), rows.index("cosine_min"))
    assert steady < min(rows.index(k) for k in ("top1_agreement", "top1_agreement_decisive", "top2_containment"))
    assert "| top1_agreement | 0.9450 | 0.904–0.969 (n=200) |" in md
    assert "| top1_agreement_decisive | 0.9877 | 0.956–0.997 (n=162) |" in md
    assert "calibration: 300 images of /photos/calib, seed 3" in md
    line = fidelity_line(_int8_report())
    assert line.index("SQNR 27.20 dB") < line.index("min cosine 0.944900") < line.index("top-1 agreement")
    assert "top-1 agreement 0.9450 (95% CI 0.904–0.969, n=200)" in line and line.endswith("calibration seed 3 (300 images)")


def test_fidelity_table_leads_with_the_steady_figures():
    md = fidelity_markdown({"eval": summary(_int8_report())})
    header = md.splitlines()[0]
    assert header.index("SQNR dB") < header.index("min cos") < header.index("top-1 agr.")
    assert "| 0.9450 (0.904–0.969) |" in md and "0.9877 (0.956–0.997, n=162)" in md
    assert "calibration: 300 images, seed 3" in md


def test_an_old_report_without_the_new_keys_still_renders():
    old = _old_report()
    md = check_markdown(copy.deepcopy(old))
    assert "| top1_agreement | 0.9450 | 0.904–0.969 (n=200) |" in md  # derived from the value and n
    assert "| top1_agreement_decisive | 0.9877 | |" in md and "calibration:" not in md  # no count, no interval
    assert "top-1 agreement 0.9450 (95% CI 0.904–0.969, n=200)" in fidelity_line(old)
    assert "| 0.9450 (0.904–0.969) |" in fidelity_markdown({"check": summary(old)})
    # and an artifact's manifest written before the typed manifest: info prints its check line
    m = Manifest.from_json(json.loads(HEAD_FILE.read_text()))
    c = m.reports["check"]
    n = c["n_images"]
    info = info_markdown(m, "old")
    assert f"- check: {n} images, SQNR " in info and f"top-1 agreement 1.0000 (95% CI " in info
    assert info.index("SQNR") < info.index("top-1 agreement") and "gate passed" in info


def test_an_int8_artifacts_reports_name_its_calibration_sample(ov_int8_path, image_dir, tmp_path):
    """The build's check report (stored), a fresh evaluation's log line and `info`, on a real INT8 artifact."""
    from rexnet_deploy.builder import verify

    art = tmp_path / "ov-int8"
    shutil.copytree(ov_int8_path, art)
    logs: list[str] = []
    with Engine.load(art) as engine:
        cal = engine.manifest.calibration
        check = engine.manifest.reports["check"]
        assert check["calibration"] == {k: cal[k] for k in ("source", "n", "seed", "list_sha256")}
        assert check["metrics"]["top1_agreement_ci95"][0] <= check["metrics"]["top1_agreement"]
        assert f"seed {cal['seed']}" in check_markdown(check)
        verify(engine, check=False, eval_images=image_dir, log=logs.append)
        info = info_markdown(engine.manifest, str(art))
    line = next(x for x in logs if x.startswith("evaluation ("))
    assert line.index("SQNR") < line.index("top-1 agreement") and "95% CI" in line
    assert line.endswith(f"calibration seed {cal['seed']} ({cal['n']} images)")
    assert "- eval: 6 images of " in info and "- check: 16 images, SQNR " in info


@pytest.mark.parametrize("recipe", ["ptq", "qad"])
def test_info_prints_a_pt2_int8_artifact(recipe):
    """`info` on a pt2 INT8 artifact: its PT2E record has neither NNCF's preset nor the OpenVINO/Q/DQ
    qad record's PTQ part (KeyError before)."""
    data = json.loads(HEAD_FILE.read_text())
    data.update(backend="pt2", precision="int8",
                calibration={"source": "/photos/calib", "kind": "folder", "n": 300, "requested": 300, "seed": 2,
                             "stratified": False, "classes": None, "list_sha256": "cd" * 32, "unreadable": 0})
    q = {"tool": "torchao.quantization.pt2e", "version": "0.18.0", "recipe": recipe, "quantizer": "X86InductorQuantizer",
         "activations": "uint8 asymmetric (per tensor)", "weights": "int8 symmetric (per channel)",
         "unquantized": ["squeeze-excitation gates (FP32)"], "kept_modules": 13, "images": 300,
         "method": "post-training quantization" if recipe == "ptq" else "quantization-aware distillation"}
    if recipe == "qad":
        q["distillation"] = {"steps": 100, "seconds": 201.5, "loss_curve_every_10_steps": [0.5, 0.1]}
    data["backend_config"] = {"quantization": q}
    info = info_markdown(Manifest.from_json(data), "pt2")
    assert f"- quantization: torchao.quantization.pt2e 0.18.0 X86InductorQuantizer, recipe {recipe}" in info
    assert "seed 2" in info and ("100 distillation steps" in info) == (recipe == "qad")
