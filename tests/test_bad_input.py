"""Bad input, every kind: the CLI prints ONE line ``error: ...`` on stderr and exits 2 (exit 1 is
kept for a failed gate), never a traceback, and never leaves a half-written artifact (nothing at
--out, no hidden ``.NAME.building-*`` sibling). The library raises RexnetDeployError subclasses.

The CLI calls that import torch (and mostly timm too) take seconds each; they are started together
on a small thread pool by the ``slow`` fixture (only the ones the selected tests need), so this
file's runtime is about the longest of them rather than their sum. The rest run one by one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rexnet_deploy import BuildSpec, Engine, ModelSpec, WeightsSpec, build
from rexnet_deploy.errors import (ArtifactError, BuildError, ImageError, InputError, RexnetDeployError, UsageError,
                                  WeightsError)

from .conftest import expect_error, run_cli

RANDOM = ("--weights", "random", "--seed", "0", "-q")


# -- helpers --------------------------------------------------------------------------------------
def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".building-" in p.name or ".old-" in p.name)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was written by a failed build"
    assert leftovers(out.parent) == []


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rewrite_manifest(path: Path, **changes) -> None:
    mf = path / "manifest.json"
    manifest = json.loads(mf.read_text())
    manifest.update(changes)
    mf.write_text(json.dumps(manifest, indent=2))


# -- inputs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad(tmp_path_factory, image_dir) -> SimpleNamespace:
    """Bad image files, labels and weights files; names are distinctive so messages can be matched."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    (d / "corrupt.jpg").write_bytes(rng.bytes(4096))
    real = (image_dir / "img0.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(real[: len(real) // 2])
    (d / "text.png").write_text("this is a text file, not a picture\n")
    (d / "noimages").mkdir()
    (d / "noimages" / "notes.txt").write_text("no pictures in this folder\n")
    (d / "malformed.csv").write_text("file,class_index\nimg0.jpg,zebra\n")
    (d / "w.safetensors").write_bytes(rng.bytes(4096))
    (d / "w.pth").write_bytes(rng.bytes(4096))
    save_file({"foo": torch.zeros(3)}, str(d / "foo.safetensors"))
    return SimpleNamespace(
        dir=d, missing=d / "missing.jpg", corrupt=d / "corrupt.jpg", truncated=d / "truncated.jpg",
        text=d / "text.png", noimages=d / "noimages", missing_csv=d / "missing.csv", malformed_csv=d / "malformed.csv",
        weights_missing=d / "nope.safetensors", weights_st=d / "w.safetensors", weights_pth=d / "w.pth",
        weights_foo=d / "foo.safetensors",
    )


def _good(image_dir: Path) -> list[str]:
    return [str(p) for p in sorted(image_dir.iterdir())]


class _Background:
    """CLI calls running on a thread pool; ``[name]`` waits for one and returns its CompletedProcess
    (with ``wall``, its seconds)."""

    def __init__(self, workers: int):
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.jobs: dict[str, Future] = {}
        self.context: dict[str, dict] = {}

    def submit(self, name: str, args: list[str], env: dict | None = None, **context) -> None:
        def job():
            t = time.perf_counter()
            r = run_cli(*map(str, args), env=env)
            r.wall = time.perf_counter() - t
            return r

        self.context[name] = context
        self.jobs[name] = self.pool.submit(job)

    def __getitem__(self, name: str):
        return self.jobs[name].result()


def _slow_cases(engine: Path, image_dir: Path, bad: SimpleNamespace, tmp: Path) -> dict[str, dict]:
    """name → {"args", "env", and what the test needs to look at afterwards}."""
    cases: dict[str, dict] = {}
    good = _good(image_dir)
    # predict: each kind of bad file alone, then a mix with --skip-bad
    for name, path in [("missing", bad.missing), ("corrupt", bad.corrupt), ("truncated", bad.truncated),
                       ("text", bad.text), ("folder", bad.noimages)]:
        cases[f"predict-{name}"] = {"args": ["predict", engine, good[0], path]}
    mix = [good[0], bad.missing, good[1], bad.corrupt, bad.truncated, bad.text]
    cases["predict-skip-bad"] = {"args": ["predict", engine, "--skip-bad", "--topk", "2", *mix]}
    # check (never saving into the shared session artifact)
    cases["check-bad-files"] = {"args": ["check", engine, "-q", "--no-save", "--images", bad.missing, "--images", bad.corrupt,
                                         "--images", bad.truncated, "--images", bad.text]}
    cases["check-folder-without-images"] = {"args": ["check", engine, "-q", "--no-save", "--images", bad.noimages]}
    # 6 good files + 4 bad ones: the check runs in batches of 8, so the second batch is all bad
    report = tmp / "check-skip-bad.json"
    files = [*good, bad.corrupt, bad.text, bad.truncated, bad.missing]
    cases["check-skip-bad"] = {"args": ["check", engine, "-q", "--no-save", "--skip-bad", "--json", report,
                                        *[a for f in files for a in ("--images", f)]], "report": report}
    cases["check-labels-missing"] = {"args": ["check", engine, "-q", "--no-save", "--images", image_dir,
                                              "--labels", bad.missing_csv]}
    cases["check-labels-malformed"] = {"args": ["check", engine, "-q", "--no-save", "--images", image_dir,
                                                "--labels", bad.malformed_csv]}
    # bench: Engine.load comes first (torch), the range check before any timing or reference
    cases["bench-batch-16"] = {"args": ["bench", engine, "-q", "--no-save", "--batch", "16"]}

    # builds that fail once torch/timm are imported; each has its own parent folder for the leftover check
    def out_for(name: str) -> Path:
        parent = tmp / name
        parent.mkdir()
        return parent / "engine"

    for name, extra in [
        ("build-unknown-model", ["--model", "resnet50", *RANDOM]),
        ("build-fp16-on-cpu", ["--fp16", *RANDOM]),
        ("build-weights-missing", ["--weights", bad.weights_missing, "-q"]),
        ("build-weights-corrupt-safetensors", ["--weights", bad.weights_st, "-q"]),
        ("build-weights-corrupt-pth", ["--weights", bad.weights_pth, "-q"]),
        ("build-weights-wrong-keys", ["--weights", bad.weights_foo, "-q"]),
    ]:
        out = out_for(name)
        cases[name] = {"args": ["build", *extra, "--out", out], "out": out}
    # --weights pretrained without the network or a cached copy (an empty HF_HOME): the hub
    # switched off, or an endpoint that refuses connections
    for name, env in [("build-pretrained-offline", {"HF_HUB_OFFLINE": "1"}),
                      ("build-pretrained-unreachable", {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})]:
        out = out_for(name)
        cases[name] = {"args": ["build", "--weights", "pretrained", "-q", "--out", out], "out": out,
                       "env": {**env, "HF_HOME": str(tmp / name / "hf-home")}}
    # --force over an existing artifact: a failed build keeps the old one whole; a good one replaces it
    for name, extra in [("build-force-fails-keeps-old", ["--weights", bad.weights_foo, "-q"]),
                        ("build-force-replaces", ["--weights", "random", "--seed", "3", "--batch", "1:2",
                                                  "--skip-check", "-q"])]:
        out = out_for(name)
        shutil.copytree(engine, out)
        (out / "stale.txt").write_text("from the old artifact\n")
        cases[name] = {"args": ["build", *extra, "--force", "--out", out], "out": out, "before": snapshot(out)}
    return cases


@pytest.fixture(scope="module")
def slow(request, ts_engine_path, image_dir, bad, tmp_path_factory):
    needed = {item.callspec.params["case"] for item in request.session.items
              if getattr(item, "module", None) is request.module and "case" in getattr(item, "callspec", SimpleNamespace(params={})).params}
    cases = _slow_cases(ts_engine_path, image_dir, bad, tmp_path_factory.mktemp("slow"))
    runner = _Background(workers=max(2, min(4, (os.cpu_count() or 2) + 1)))
    for name, case in cases.items():
        if name in needed:
            runner.submit(name, case["args"], case.get("env"),
                          **{k: v for k, v in case.items() if k not in ("args", "env")})
    yield runner
    runner.pool.shutdown(wait=True, cancel_futures=True)


# -- predict / check: bad image files --------------------------------------------------------------
@pytest.mark.parametrize("case,fragments", [
    ("predict-missing", ["missing.jpg: not found"]),
    ("predict-corrupt", ["corrupt.jpg: not a supported image format"]),
    ("predict-truncated", ["truncated.jpg: corrupt image", "truncated"]),
    ("predict-text", ["text.png: not a supported image format"]),
])
def test_predict_refuses_a_bad_image(slow, case, fragments):
    line = expect_error(slow[case], "1 image could not be read", "--skip-bad", *fragments)
    assert "img0.jpg" not in line  # the good file next to it is not blamed


@pytest.mark.parametrize("case", ["predict-skip-bad"])
def test_predict_skip_bad_predicts_the_good_and_lists_the_skipped(slow, case, image_dir):
    r = slow[case]
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "error:" not in r.stderr
    good = _good(image_dir)
    out = r.stdout.splitlines()
    assert [line for line in out if not line.startswith(" ")] == [good[0], good[1]]  # one block per good image
    assert sum(bool(re.fullmatch(r"\s+\d+\.\d\d%\s+\d+\s+\S.*", line)) for line in out) == 4  # top-2 each
    skipped = [line for line in r.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 4, r.stderr
    for name in ("missing.jpg: not found", "corrupt.jpg: not a supported image format", "truncated.jpg: corrupt image",
                 "text.png: not a supported image format"):
        assert any(name in line for line in skipped), (name, skipped)


@pytest.mark.parametrize("case", ["check-bad-files"])
def test_check_names_every_bad_image_in_one_line(slow, case):
    expect_error(slow[case], "4 images could not be read", "missing.jpg: not found",
                 "corrupt.jpg: not a supported image format", "truncated.jpg: corrupt image",
                 "text.png: not a supported image format", "pass --skip-bad")


@pytest.mark.parametrize("case", ["check-folder-without-images", "predict-folder"])
def test_check_and_predict_refuse_a_folder_without_images(slow, case):
    expect_error(slow[case], "no image files", "found in", "noimages")


@pytest.mark.parametrize("case", ["check-skip-bad"])
def test_check_skip_bad_checks_the_good_and_lists_the_skipped(slow, case):
    r = slow[case]
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "error:" not in r.stderr
    report = json.loads(slow.context[case]["report"].read_text())
    assert report["n_images"] == 6 and report["gate"]["passed"] is True
    skipped = {Path(s["file"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"missing.jpg", "corrupt.jpg", "truncated.jpg", "text.png"}
    assert "6 images" in r.stdout and "4 skipped" in r.stdout


@pytest.mark.parametrize("case,fragments", [
    ("check-labels-missing", ["labels file not found", "missing.csv"]),
    ("check-labels-malformed", ["malformed.csv line 2", "expected file,class_index", "zebra"]),
])
def test_check_refuses_bad_labels(slow, case, fragments):
    expect_error(slow[case], *fragments)


# -- bench -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["bench-batch-16"])
def test_bench_refuses_a_batch_outside_the_engine_range(slow, case):
    expect_error(slow[case], "batch sizes [16]", "outside this engine's range 1..8")


@pytest.mark.parametrize("batch,fragment", [
    ("0", "batch sizes must be positive integers, got '0'"),
    ("a,b", "comma-separated list of integers, got 'a,b'"),
])
def test_bench_refuses_bad_batch_lists(ts_engine_path, batch, fragment):
    expect_error(run_cli("bench", str(ts_engine_path), "-q", "--no-save", "--batch", batch), fragment)


# -- build ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case,fragments", [
    ("build-unknown-model", ["unknown model 'resnet50'", "rexnet_100"]),
    ("build-fp16-on-cpu", ["FP16 needs --device cuda"]),
    ("build-weights-missing", ["weights file not found", "nope.safetensors"]),
    ("build-weights-corrupt-safetensors", ["cannot read weights file", "w.safetensors"]),
    ("build-weights-corrupt-pth", ["cannot read weights file", "w.pth"]),
    ("build-weights-wrong-keys", ["foo.safetensors does not fit", "unexpected (e.g. foo)"]),
])
def test_build_refuses_bad_models_and_weights(slow, case, fragments):
    line = expect_error(slow[case], *fragments)
    # torch's own advice ("re-run torch.load with weights_only=False") is no fix a CLI user can apply
    assert "weights_only" not in line
    assert_nothing_written(slow.context[case]["out"])


@pytest.mark.parametrize("case,why", [("build-pretrained-offline", "HF_HUB_OFFLINE is set"),
                                      ("build-pretrained-unreachable", "http://127.0.0.1:9 cannot be reached")])
def test_build_pretrained_offline_fails_fast_with_the_alternatives(slow, case, why):
    r = slow[case]
    expect_error(r, "pretrained weights for rexnet_100", "not in the local cache", why, "--weights PATH", "--weights random")
    assert r.wall < 30, f"took {r.wall:.1f} s"
    assert_nothing_written(slow.context[case]["out"])


@pytest.mark.parametrize("case", ["build-force-fails-keeps-old"])
def test_failed_forced_build_keeps_the_old_artifact(slow, case):
    expect_error(slow[case], "does not fit")
    out = slow.context[case]["out"]
    assert snapshot(out) == slow.context[case]["before"]
    assert leftovers(out.parent) == []


@pytest.mark.slow  # a real (unchecked) build
@pytest.mark.parametrize("case", ["build-force-replaces"])
def test_forced_build_replaces_an_existing_artifact(slow, case):
    r = slow[case]
    assert r.returncode == 0, r.stderr
    out = slow.context[case]["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["weights"]["seed"] == 3 and manifest["input"]["batch"] == [1, 2]
    assert not (out / "stale.txt").exists()
    assert leftovers(out.parent) == []


@pytest.mark.parametrize("args,fragments", [
    (["--backend", "foo"], ["unknown backend 'foo'", "torchscript"]),
    (["--backend", "torchscript", "--int8"], ["backend torchscript does not support int8"]),
    (["--precision", "fp32", "--int8"], ["--precision fp32 contradicts --int8"]),
    (["--batch", "0:4"], ["batch range", "1 <= MIN", "'0:4'"]),
    (["--batch", "8:2"], ["batch range", "not empty or inverted", "'8:2'"]),
    (["--batch", "x"], ["batch range", "integers", "'x'"]),
    (["--gate", "speed=2"], ["--gate takes KEY=VALUE", "top1_agreement", "'speed=2'"]),
    (["--gate", "top1_agreement=high"], ["--gate top1_agreement needs a number", "'high'"]),
], ids=["backend-foo", "int8-torchscript", "precision-contradiction", "batch-0:4", "batch-8:2", "batch-x",
        "gate-unknown-key", "gate-not-a-number"])
def test_build_refuses_bad_options_before_building(tmp_path, args, fragments):
    out = tmp_path / "engine"
    t = time.perf_counter()
    r = run_cli("build", *RANDOM, *args, "--out", str(out))
    expect_error(r, *fragments)
    assert_nothing_written(out)
    assert time.perf_counter() - t < 20  # refused while parsing: no model was created


@pytest.mark.parametrize("args,fragments", [
    (["build", "--head", "segment"], ["Invalid value for '--head'", "'segment'", "rexnet-deploy build --help"]),
    (["build", "--precision", "fp8"], ["Invalid value for '--precision'", "'fp8'"]),
    (["build", "--no-such-option"], ["No such option", "--no-such-option"]),
    (["predict", "ENGINE"], ["Missing argument 'IMAGES...'", "rexnet-deploy predict --help"]),
    (["predict", "ENGINE", "x.jpg", "--topk", "0"], ["Invalid value for '--topk'"]),
    (["bench", "ENGINE", "--seconds", "soon"], ["Invalid value for '--seconds'", "'soon'"]),
    (["compile"], ["No such command 'compile'"]),
    (["--nope"], ["No such option", "--nope"]),
], ids=["head", "precision", "unknown-option", "predict-no-images", "topk-0", "seconds-not-a-number", "unknown-command",
        "option-before-command"])
def test_option_parsing_errors_are_one_line_too(tmp_path, args, fragments):
    r = run_cli(*args, cwd=tmp_path)
    expect_error(r, *fragments)
    assert "Usage:" not in r.stderr and list(tmp_path.iterdir()) == []


def test_build_refuses_an_existing_out_without_force(engine_copy):
    before = snapshot(engine_copy)
    r = run_cli("build", *RANDOM, "--out", str(engine_copy))
    expect_error(r, "already exists", "pass --force")
    assert snapshot(engine_copy) == before and leftovers(engine_copy.parent) == []


def test_build_force_refuses_a_folder_that_is_not_an_artifact(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"someone's file")
    r = run_cli("build", *RANDOM, "--force", "--out", str(out))
    expect_error(r, "not an artifact", "refusing to replace it")
    assert snapshot(out) == {"holiday.jpg": b"someone's file"} and leftovers(tmp_path) == []


def test_build_refuses_an_out_that_is_a_file_or_below_one(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me\n")
    expect_error(run_cli("build", *RANDOM, "--force", "--out", str(f)), "exists and is not a folder")
    expect_error(run_cli("build", *RANDOM, "--out", str(f / "engine")), "--out", "notes.txt")
    assert f.read_text() == "keep me\n" and leftovers(tmp_path) == []


# -- artifacts --------------------------------------------------------------------------------------
def _not_a_folder_of_ours(p: Path) -> Path:
    shutil.rmtree(p)
    p.mkdir()
    (p / "readme.txt").write_text("just a folder\n")
    return p


def _foreign(p: Path) -> Path:
    (p / "manifest.json").write_text(json.dumps({"name": "some other tool's model", "version": 3}))
    return p


def _invalid_json(p: Path) -> Path:
    (p / "manifest.json").write_text('{"format": "rexnet-deploy-engine", "schema": ')
    return p


def _newer(p: Path) -> Path:
    rewrite_manifest(p, schema=99)
    return p


def _checksum(p: Path) -> Path:
    with open(p / "model.ts", "ab") as f:
        f.write(b"\0")
    return p


def _missing_payload(p: Path) -> Path:
    (p / "model.ts").unlink()
    return p


def _unknown_backend(p: Path) -> Path:
    rewrite_manifest(p, backend="tflite")
    return p


def _files_as_list(p: Path) -> Path:
    rewrite_manifest(p, files=["model.ts"])
    return p


def _empty_input(p: Path) -> Path:
    rewrite_manifest(p, input={})
    return p


def _backend_not_a_string(p: Path) -> Path:
    rewrite_manifest(p, backend=7)
    return p


ARTIFACT_CASES = [
    ("does-not-exist", lambda p: p.parent / "no-such-engine", ["no such artifact", "no-such-engine"], ("info", "predict")),
    ("not-an-artifact", _not_a_folder_of_ours, ["not an engine artifact (no manifest.json)"], ("info", "predict")),
    ("foreign-manifest", _foreign, ["not a rexnet-deploy artifact (foreign manifest)"], ("info", "predict")),
    ("invalid-json", _invalid_json, ["unreadable manifest", "manifest.json"], ("info", "predict")),
    ("newer-schema", _newer, ["schema 99 is newer", "upgrade rexnet-deploy"], ("info", "predict")),
    ("checksum-mismatch", _checksum, ["checksum mismatch", "model.ts", "rebuild it"], ("info", "predict")),
    ("missing-payload", _missing_payload, ["missing its payload file model.ts"], ("info", "predict")),
    # `info` still describes an artifact of a backend this version lacks; using it is refused
    ("unknown-backend", _unknown_backend, ["backend 'tflite' is not known"], ("predict",)),
    # hand-edited manifests with fields of the wrong type: refused as artifacts, not crashes
    ("files-as-list", _files_as_list, ["malformed manifest", "'files'"], ("info", "predict")),
    ("empty-input", _empty_input, ["malformed manifest", "'input'"], ("info", "predict")),
    ("backend-not-a-string", _backend_not_a_string, ["malformed manifest", "'backend'"], ("info", "predict")),
]


@pytest.mark.parametrize("tamper,fragments,commands", [c[1:] for c in ARTIFACT_CASES], ids=[c[0] for c in ARTIFACT_CASES])
def test_bad_artifacts_are_refused_by_cli_and_api(engine_copy, image_dir, tamper, fragments, commands):
    path = tamper(engine_copy)
    image = str(image_dir / "img0.jpg")
    for command in commands:
        args = ["info", str(path)] if command == "info" else ["predict", str(path), image]
        expect_error(run_cli(*args), *fragments)
    with pytest.raises(ArtifactError) as exc:
        Engine.load(path)
    for fragment in fragments:
        assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_backend_is_refused_by_check_and_bench(engine_copy):
    _unknown_backend(engine_copy)
    for args in (["check", str(engine_copy), "-q"], ["bench", str(engine_copy), "-q", "--batch", "1"]):
        expect_error(run_cli(*args), "backend 'tflite' is not known")


# -- the Python API: Engine input validation ------------------------------------------------------
@pytest.fixture(scope="module")
def engine(ts_engine_path):
    with Engine.load(ts_engine_path) as e:
        yield e


def _nan():
    x = np.zeros((1, 3, 224, 224), np.float32)
    x[0, 1, 2, 3] = np.nan
    return x


def _inf():
    x = np.zeros((2, 3, 224, 224), np.float32)
    x[1, 0, 0, 0] = -np.inf
    return x


BAD_BATCHES = [
    ("wrong-shape", lambda: np.zeros((1, 3, 100, 100), np.float32), r"shape \(N, 3, 224, 224\), got \(1, 3, 100, 100\)"),
    ("nhwc", lambda: np.zeros((1, 224, 224, 3), np.float32), r"NHWC.*transpose\(0, 3, 1, 2\)"),
    ("3-d", lambda: np.zeros((3, 224, 224), np.float32), r"add the batch axis: x\[None\]"),
    ("float64", lambda: np.zeros((1, 3, 224, 224), np.float64), r"must be float32.*got float64"),
    ("int64", lambda: np.zeros((1, 3, 224, 224), np.int64), r"must be float32.*got int64"),
    ("uint8", lambda: np.zeros((1, 3, 224, 224), np.uint8), r"must be float32.*got uint8"),
    ("nan", _nan, r"NaN or inf"),
    ("inf", _inf, r"NaN or inf"),
    ("batch-9", lambda: np.zeros((9, 3, 224, 224), np.float32), r"batch size 9 is outside this engine's range 1\.\.8"),
    ("batch-0", lambda: np.zeros((0, 3, 224, 224), np.float32), r"batch size 0 is outside"),
    ("list", lambda: np.zeros((1, 3, 224, 224), np.float32).tolist(), r"must be a numpy array, got list"),
]


@pytest.mark.parametrize("make,pattern", [c[1:] for c in BAD_BATCHES], ids=[c[0] for c in BAD_BATCHES])
def test_engine_call_refuses_bad_batches(engine, make, pattern):
    x = make()
    with pytest.raises(InputError, match=pattern):
        engine(x)
    with pytest.raises(InputError, match=pattern):
        engine.run(x)


@pytest.mark.parametrize("images,pattern", [
    (np.zeros((3, 224, 224), np.uint8), r"looks channel-first; pass HxWx3"),
    (np.zeros((224, 224, 3), np.float32), r"uint8 HxWx3 RGB \(got dtype float32\).*engine\(batch\)"),
    (np.zeros((0, 0, 3), np.uint8), r"empty|0, 0, 3"),
    (object(), r"cannot use a object as images"),
    ([object()], r"cannot use a object as an image"),
    (12, r"cannot use a int as images"),
], ids=["uint8-chw", "float-array", "empty-array", "object", "list-of-object", "int"])
def test_engine_predict_refuses_what_is_not_an_image(engine, images, pattern):
    with pytest.raises(InputError, match=pattern):
        engine.predict(images)


def test_engine_predict_names_every_bad_file(engine, bad, image_dir):
    with pytest.raises(ImageError) as exc:
        engine.predict([image_dir / "img0.jpg", bad.missing, bad.corrupt, bad.truncated, bad.text])
    assert [Path(f).name for f, _ in exc.value.bad] == ["missing.jpg", "corrupt.jpg", "truncated.jpg", "text.png"]
    assert "4 images could not be read" in str(exc.value) and "\n" not in str(exc.value)
    preds = engine.predict([image_dir / "img0.jpg", bad.corrupt], skip_bad=True)
    assert len(preds) == 1
    with pytest.raises(ImageError, match="no readable image"):
        engine.predict([bad.corrupt, bad.text], skip_bad=True)


# -- the Python API: check, with a stand-in reference (no timm needed) -----------------------------
@pytest.fixture(scope="module")
def same_as_engine(engine):
    return lambda batch: engine.infer(batch)


def test_check_api_skip_bad_survives_a_batch_of_only_bad_files(engine, same_as_engine, bad, image_dir):
    files = [*_good(image_dir), bad.corrupt, bad.text, bad.truncated, bad.missing]  # batches of 8: the 2nd all bad
    from rexnet_deploy.harness.check import check

    report = check(engine, images=files, reference=same_as_engine, skip_bad=True)
    assert report["n_images"] == 6 and len(report["skipped"]) == 4
    with pytest.raises(ImageError, match=r"4 images could not be read.*pass --skip-bad") as exc:
        check(engine, images=files, reference=same_as_engine)
    assert len(exc.value.bad) == 4


def test_check_api_takes_a_folder_among_files(engine, same_as_engine, bad, image_dir):
    from rexnet_deploy.harness.check import check

    report = check(engine, images=[image_dir, bad.corrupt], reference=same_as_engine, skip_bad=True)
    assert report["n_images"] == 6 and [Path(s["file"]).name for s in report["skipped"]] == ["corrupt.jpg"]
    with pytest.raises(ImageError, match="no image files"):
        check(engine, images=[bad.noimages, image_dir / "img0.jpg"], reference=same_as_engine)


def test_check_api_refuses_bad_labels_and_counts(engine, same_as_engine, bad, image_dir):
    from rexnet_deploy.harness.check import check

    with pytest.raises(InputError, match="labels file not found"):
        check(engine, images=image_dir, labels=bad.missing_csv, reference=same_as_engine)
    with pytest.raises(InputError, match="line 2: expected file,class_index"):
        check(engine, images=image_dir, labels=bad.malformed_csv, reference=same_as_engine)
    with pytest.raises(UsageError, match="synthetic"):
        check(engine, synthetic=0, reference=same_as_engine)
    with pytest.raises(UsageError, match="limit"):
        check(engine, images=image_dir, limit=0, reference=same_as_engine)


# -- the Python API: build ------------------------------------------------------------------------
def test_build_specs_refuse_bad_values():
    from rexnet_deploy.spec import parse_batch_list, parse_batch_range

    for text in ("0:4", "8:2", "x", "1:2:3", ""):
        with pytest.raises(UsageError, match="batch range"):
            parse_batch_range(text)
    for text in ("0", "a,b", ""):
        with pytest.raises(UsageError, match="batch sizes"):
            parse_batch_list(text)
    with pytest.raises(UsageError, match="1 <= MIN <= MAX"):
        BuildSpec(batch=(0, 4))
    with pytest.raises(UsageError, match="unknown precision"):
        BuildSpec(precision="fp8")
    with pytest.raises(UsageError, match="unknown head"):
        ModelSpec(head="segment")
    with pytest.raises(UsageError, match="unknown weights source"):
        WeightsSpec("hub")


@pytest.mark.parametrize("model,spec,error,pattern", [
    (lambda b: ModelSpec("resnet50", weights=WeightsSpec("random")), BuildSpec(), UsageError, "unknown model 'resnet50'"),
    (lambda b: ModelSpec(weights=WeightsSpec("random")), BuildSpec(backend="foo"), UsageError, "unknown backend 'foo'"),
    (lambda b: ModelSpec(weights=WeightsSpec("random")), BuildSpec(precision="int8"), UsageError, "does not support int8"),
    (lambda b: ModelSpec(weights=WeightsSpec("random")), BuildSpec(precision="fp16"), UsageError, "needs --device cuda"),
    (lambda b: ModelSpec(weights=WeightsSpec.parse(str(b.weights_missing))), BuildSpec(), WeightsError, "not found"),
    (lambda b: ModelSpec(weights=WeightsSpec.parse(str(b.weights_st))), BuildSpec(), WeightsError, "cannot read weights"),
    (lambda b: ModelSpec(weights=WeightsSpec.parse(str(b.weights_pth))), BuildSpec(), WeightsError, "cannot read weights"),
    (lambda b: ModelSpec(weights=WeightsSpec.parse(str(b.weights_foo))), BuildSpec(), WeightsError, "does not fit"),
], ids=["unknown-model", "unknown-backend", "int8", "fp16-cpu", "weights-missing", "weights-corrupt-safetensors",
        "weights-corrupt-pth", "weights-wrong-keys"])
def test_build_api_refuses_and_writes_nothing(tmp_path, bad, model, spec, error, pattern):
    out = tmp_path / "engine"
    with pytest.raises(error, match=pattern) as exc:
        build(model(bad), spec, out, check=False)
    assert "\n" not in str(exc.value) and "weights_only" not in str(exc.value)
    assert_nothing_written(out)


def test_build_api_refuses_existing_and_impossible_outs(tmp_path, engine_copy):
    before = snapshot(engine_copy)
    with pytest.raises(BuildError, match="already exists"):
        build(ModelSpec(weights=WeightsSpec("random")), BuildSpec(), engine_copy, check=False)
    assert snapshot(engine_copy) == before
    f = tmp_path / "notes.txt"
    f.write_text("keep me\n")
    with pytest.raises(BuildError, match=re.escape(str(f / "engine"))):
        build(ModelSpec(weights=WeightsSpec("random")), BuildSpec(), f / "engine", check=False)
    assert f.read_text() == "keep me\n" and leftovers(tmp_path) == []


def test_every_refusal_is_a_rexnet_deploy_error():
    # the CLI turns exactly these into `error: ...` + exit 2; anything else would be exit 70
    for cls in (UsageError, InputError, ImageError, WeightsError, ArtifactError, BuildError):
        assert issubclass(cls, RexnetDeployError) and cls.exit_code == 2


def test_check_weights_override_is_refused_for_a_random_weights_engine(ts_engine_path, tmp_path):
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    r = run_cli("check", str(ts_engine_path), "--synthetic", "1", "--no-save", "-q", "--weights", str(w))
    expect_error(r, "--weights is for engines built from a weights file", "random")
