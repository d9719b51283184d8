"""Builds: heads, weights sources, atomic writes, --force."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rexnet_deploy import BuildSpec, Engine, ModelSpec, WeightsSpec, build
from rexnet_deploy.artifact import load_artifact
from rexnet_deploy.errors import BuildError, GateFailed

pytestmark = pytest.mark.slow


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".building-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("head,names,shapes", [
    ("embed", ["embedding"], [[-1, 1280]]),
    ("features", [f"feature{i}" for i in range(5)],
     [[-1, 16, 112, 112], [-1, 38, 56, 56], [-1, 61, 28, 28], [-1, 128, 14, 14], [-1, 185, 7, 7]]),
])
def test_embed_and_features_heads(tmp_path, head, names, shapes):
    with build(ModelSpec("rexnet_100", head=head, weights=WeightsSpec("random", seed=1)), BuildSpec(batch=(1, 4)),
               tmp_path / head, check_options={"synthetic": 4}) as engine:
        assert [o.name for o in engine.manifest.outputs] == names
        assert [o.shape for o in engine.manifest.outputs] == shapes
        assert engine.manifest.labels is None
        x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
        out = engine(x)
        outs = out if isinstance(out, tuple) else (out,)
        assert [list(o.shape[1:]) for o in outs] == [s[1:] for s in shapes]
        report = engine.manifest.reports["check"]
        assert report["metrics"]["top1_agreement"] is None  # not a classifier
        assert report["metrics"]["cosine_min"] > 0.9999
        if head == "features":
            assert set(report["metrics"]["per_output"]) == set(names)
        with pytest.raises(Exception, match="classify"):
            engine.predict(x[0].transpose(1, 2, 0).astype(np.uint8))


def test_weights_file_round_trip_and_hash(tmp_path, ts_engine_path):
    """A .safetensors and a .pth of the seeded weights give the same state hash as the seed."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("rexnet_100")
    st, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_file(model.state_dict(), str(st))
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, str(pth))
    seeded = json.loads((ts_engine_path / "manifest.json").read_text())["model"]["weights"]["state_sha256"]
    from rexnet_deploy.models import create_reference

    for path in (st, pth):
        ref = create_reference(ModelSpec("rexnet_100", weights=WeightsSpec.parse(str(path))))
        assert ref.weights_record["state_sha256"] == seeded
        assert ref.weights_record["source"] == "file" and ref.weights_record["production"] is True
        assert len(ref.weights_record["sha256"]) == 64


def test_reference_rebuild_refuses_a_changed_weights_file(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from rexnet_deploy.errors import WeightsError
    from rexnet_deploy.harness.reference import TorchReference

    torch.manual_seed(0)
    w = tmp_path / "w.safetensors"
    save_file(timm.create_model("rexnet_100").state_dict(), str(w))
    with build(ModelSpec("rexnet_100", weights=WeightsSpec.parse(str(w))), BuildSpec(batch=(1, 2)),
               tmp_path / "e", check=False) as engine:
        manifest = engine.manifest
    torch.manual_seed(1)
    save_file(timm.create_model("rexnet_100").state_dict(), str(w))
    with pytest.raises(WeightsError, match="sha256"):
        TorchReference.from_manifest(manifest)


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    from rexnet_deploy.backends import torchscript

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torchscript, "build", boom)
    out = tmp_path / "engine"
    with pytest.raises(KeyboardInterrupt):
        build(ModelSpec(weights=WeightsSpec("random")), BuildSpec(), out)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_failed_gate_leaves_nothing(tmp_path):
    out = tmp_path / "engine"
    with pytest.raises(GateFailed, match="max_abs_err"):
        build(ModelSpec(weights=WeightsSpec("random")), BuildSpec(batch=(1, 2)), out,
              check_options={"synthetic": 2, "gate": {"max_abs_err": 0.0, "sqnr_db": 1000.0}})
    assert not out.exists() and _leftovers(tmp_path) == []


def test_force_replaces_an_existing_artifact(tmp_path, ts_engine_path):
    import shutil

    out = tmp_path / "engine"
    shutil.copytree(ts_engine_path, out)
    (out / "stale.txt").write_text("old")
    with pytest.raises(BuildError, match="exists"):
        build(ModelSpec(weights=WeightsSpec("random")), BuildSpec(), out, check=False)
    with build(ModelSpec(weights=WeightsSpec("random", seed=5)), BuildSpec(batch=(1, 2)), out, force=True,
               check=False) as engine:
        assert engine.manifest.model.weights["seed"] == 5
    assert not (out / "stale.txt").exists() and _leftovers(tmp_path) == []
    Engine.load(out).close()


@pytest.mark.gpu
def test_torchscript_fp16_on_cuda(tmp_path):
    """FP16 TorchScript on a CUDA GPU, checked against the FP32 CPU reference (skipped without CUDA)."""
    # random weights have near-flat logits, so top-1 agreement says little: gate on cosine/SQNR here
    with build(ModelSpec(weights=WeightsSpec("random")), BuildSpec(precision="fp16", device="cuda", batch=(1, 4)),
               tmp_path / "e", check_options={"synthetic": 8, "gate": {"top1_agreement": 0.0}}) as engine:
        assert engine.manifest.device == "cuda" and engine.manifest.backend_config["dtype"] == "float16"
        report = engine.manifest.reports["check"]
        assert report["gate"]["passed"] and report["metrics"]["cosine_min"] >= 0.999
        out = engine(np.zeros((2, 3, 224, 224), np.float32))
        assert out.dtype == np.float32 and out.shape == (2, 1000)


def test_measure_refused_measures_and_hands_the_reports_over(tmp_path):
    """A refused engine is still benchmarked; the GateFailed carries its reports, nothing is published."""
    out = tmp_path / "engine"
    with pytest.raises(GateFailed, match="max_abs_err") as info:
        build(ModelSpec(weights=WeightsSpec("random")), BuildSpec(batch=(1, 2)), out,
              check_options={"synthetic": 2, "gate": {"max_abs_err": 0.0, "sqnr_db": 1000.0}},
              bench_batches=[1], bench_seconds=0.1, measure_refused=True)
    reports = info.value.reports
    assert not reports["check"]["gate"]["passed"] and reports["bench"]["results"][0]["batch"] == 1
    assert not out.exists() and _leftovers(tmp_path) == []


def test_the_three_stages_compile_verify_publish(tmp_path):
    """``build`` is compile → verify → publish: the staged artifact sits hidden beside --out until
    published; leaving the stage unpublished removes it."""
    from rexnet_deploy.builder import compile, publish, verify

    out = tmp_path / "engine"
    with compile(ModelSpec(weights=WeightsSpec("random")), BuildSpec(batch=(1, 2)), out) as staged:
        assert staged.artifact.path.name.startswith(".engine.building-") and not out.exists()
        assert staged.artifact.manifest.reports == {} and staged.artifact.manifest.input.batch == (1, 2)
        reports = verify(staged.engine, staged.reference, check_options={"synthetic": 2})
        assert reports["check"]["gate"]["passed"] and not out.exists()
        engine = publish(staged)
    with engine:
        assert engine.artifact.path == out and engine.manifest.reports["check"]["n_images"] == 2
        assert load_artifact(out).manifest.reports == reports and _leftovers(tmp_path) == []
        # verify alone, on a published engine: the reference comes from its manifest's model record
        again = verify(engine, check_options={"synthetic": 3})
    assert again["check"]["n_images"] == 3 and load_artifact(out).manifest.reports == again
    with compile(ModelSpec(weights=WeightsSpec("random")), BuildSpec(batch=(1, 2)), tmp_path / "discarded"):
        pass
    assert not (tmp_path / "discarded").exists() and _leftovers(tmp_path) == []


def test_build_and_matrix_check_on_the_same_held_out_images(calib_dir):
    """One held-out selection: the plan the matrix draws before any build, and the loaded set of an
    INT8 build, give the same check images (never calibration images) and labels."""
    from rexnet_deploy.calibration import held_out_check, select
    from rexnet_deploy.preprocess import PreprocessConfig

    planned = held_out_check(select(calib_dir, 24), 10)
    loaded_set = select(calib_dir, 24).load(PreprocessConfig.from_data_config(
        {"input_size": [3, 32, 32], "interpolation": "bilinear", "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3}),
        minimum=1)
    loaded = held_out_check(loaded_set, 10)
    assert planned == loaded and len(loaded["images"]) == 10 and loaded["labels"] is None
    assert loaded_set.overlap(loaded["images"]) == 0
    assert held_out_check(select(calib_dir, 40)) is None  # every image calibrates
    assert held_out_check(select(calib_dir, 24), labels="l.csv")["labels"] == "l.csv"


def test_matrix_checks_every_engine_on_the_held_out_images_of_calib(tmp_path, calib_dir):
    """Without --images, the matrix checks even an FP32 engine on the calibration source's held-out
    images: the selection an INT8 build of the same source makes (40 images, 24 calibrate)."""
    from rexnet_deploy import matrix

    result = matrix.run(ModelSpec(weights=WeightsSpec("random")), tmp_path / "m", calib=str(calib_dir), calib_size=24,
                        only=["torchscript/fp32"], batches=(1,), seconds=0.1)
    assert result["check_images"] == f"16 held-out images of {calib_dir}"
    assert result["rows"][0]["check"]["n"] == 16 and result["rows"][0]["gate"] is True
