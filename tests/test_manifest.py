"""The typed manifest: schema-1 files written before it existed load and are written back
unchanged, a new build writes the same layout, and damaged manifests are refused as before."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from rexnet_deploy.artifact import MANIFEST, load_artifact, read_manifest, to_json
from rexnet_deploy.errors import ArtifactError
from rexnet_deploy.manifest import SCHEMA, InputSpec, Manifest, ModelRecord, OutputSpec

# manifest.json of `build --weights random --batch 1:2` written by commit 2566b03 (before the typed manifest)
HEAD_FILE = Path(__file__).parent / "data" / "manifest-schema1-2566b03.json"


def _head() -> dict:
    return json.loads(HEAD_FILE.read_text())


def test_a_manifest_written_before_the_typed_manifest_round_trips_unchanged():
    m = Manifest.from_json(_head())
    assert m.to_json() == _head() and list(m.to_json()) == list(_head())
    assert to_json(m.to_json()) == HEAD_FILE.read_text()  # byte for byte, key order included
    assert m.schema == SCHEMA == 1 and m.backend == "torchscript" and m.precision == "fp32" and m.device == "cpu"
    assert m.model == ModelRecord(name="rexnet_100", head="classify", num_classes=1000, test_size=False,
                                  weights=_head()["model"]["weights"])
    assert m.input == InputSpec(name="input", shape=[-1, 3, 224, 224], batch=(1, 2), dtype="float32", layout="NCHW")
    assert m.outputs == [OutputSpec(name="logits", dtype="float32", shape=[-1, 1000])]
    assert m.labels == {"file": "labels.txt", "wnids": "wnids.txt", "subset": "imagenet-1k"} and m.calibration is None
    assert m.payload == "model.ts" and set(m.files) == {"labels.txt", "model.ts", "wnids.txt"}
    assert m.reports["check"]["gate"]["passed"] and m.extra == {}


def test_a_new_build_writes_the_layout_of_the_old_one(ts_engine_path):
    new = json.loads((ts_engine_path / MANIFEST).read_text())
    old = _head()
    assert list(new) == list(old)
    for part in ("model", "input"):
        assert list(new[part]) == list(old[part])
    assert [list(o) for o in new["outputs"]] == [list(o) for o in old["outputs"]]
    assert Manifest.from_json(new).to_json() == new


def test_an_old_style_manifest_with_only_the_required_keys_loads(engine_copy):
    """A hand-written manifest (no device, labels, reports, ...): read with the defaults the old
    code assumed, and keys of no known field kept."""
    full = _head()
    minimal = {k: full[k] for k in ("format", "schema", "backend", "precision", "payload", "preprocess", "files")}
    minimal["model"] = {"name": "rexnet_100", "head": "classify", "weights": {"source": "random", "seed": 0}}
    minimal["input"] = {"name": "input", "shape": [-1, 3, 224, 224], "batch": [1, 2]}
    minimal["outputs"] = [{"name": "logits", "shape": [-1, 1000]}]
    minimal["note"] = "kept"
    minimal["input"]["note"] = "kept too"
    m = Manifest.from_json(copy.deepcopy(minimal))
    assert m.device == "cpu" and m.labels is None and m.reports == {} and m.backend_config == {}
    assert m.model.num_classes is None and m.input.dtype == "float32" and m.input.layout == "NCHW"
    assert m.outputs[0].dtype == "float32" and m.created is None
    written = m.to_json()
    assert written["note"] == "kept" and written["input"]["note"] == "kept too"
    assert {k: written[k] for k in minimal} == {**minimal, "input": {**minimal["input"], "dtype": "float32",
                                                                     "layout": "NCHW"},
                                                "model": {**minimal["model"], "num_classes": None, "test_size": False},
                                                "outputs": [{"name": "logits", "dtype": "float32",
                                                             "shape": [-1, 1000]}]}
    # and as an artifact on disk, checksums verified
    stored = json.loads((engine_copy / MANIFEST).read_text())
    (engine_copy / MANIFEST).write_text(json.dumps({**minimal, "files": stored["files"], "payload": stored["payload"]}))
    art = load_artifact(engine_copy)
    assert art.manifest.backend == "torchscript" and art.manifest.extra == {"note": "kept"}


@pytest.mark.parametrize("change,message", [
    ({"format": "someone-else"}, "not a rexnet-deploy artifact (foreign manifest): "),
    ({"schema": None}, "manifest without a schema version: "),
    ({"schema": 99}, "artifact schema 99 is newer than this rexnet-deploy understands (1); upgrade rexnet-deploy"),
    ({"files": ["model.ts"]}, "malformed manifest {mf}: 'files' is missing or not a dict"),
    ({"input": {}}, "malformed manifest {mf}: 'input' needs a name, a 4-D integer shape and a batch [MIN, MAX]"),
    ({"outputs": []}, "malformed manifest {mf}: 'outputs' must list named outputs"),
    ({"model": {"name": "rexnet_100"}}, "malformed manifest {mf}: 'model' needs a name and a head"),
    ({"backend_config": []}, "malformed manifest {mf}: 'backend_config' must be an object or null"),
])
def test_damaged_manifests_are_refused_with_the_file_named(tmp_path, change, message):
    (tmp_path / MANIFEST).write_text(json.dumps({**_head(), **change}))
    with pytest.raises(ArtifactError) as info:
        read_manifest(tmp_path)
    assert message.format(mf=tmp_path / MANIFEST) in str(info.value)
    with pytest.raises(ArtifactError):
        Manifest.from_json({**_head(), **change})  # without a file: the same checks


def test_not_a_dict_is_a_foreign_manifest():
    with pytest.raises(ArtifactError, match=r"^not a rexnet-deploy artifact \(foreign manifest\)$"):
        Manifest.from_json([1, 2])


def test_set_report_and_replace_file_keep_the_rest_of_the_manifest(engine_copy, tmp_path):
    art = load_artifact(engine_copy)
    before = art.manifest.to_json()
    art.set_report("extra", {"kind": "extra", "n": 1})
    again = load_artifact(engine_copy)
    assert again.manifest.reports["extra"] == {"kind": "extra", "n": 1}
    assert {k: v for k, v in again.manifest.to_json().items() if k != "reports"} == \
        {k: v for k, v in before.items() if k != "reports"}
    src = tmp_path / "labels.txt"
    src.write_text("a\nb\n")
    again.replace_file("labels.txt", src, runtime={"torch": ">=0"})
    third = load_artifact(engine_copy)  # checksums verified
    assert third.manifest.runtime == {"torch": ">=0"} and third.manifest.reports["extra"]["n"] == 1
    with pytest.raises(ArtifactError, match="'payload' is missing or not a str"):
        third.replace_file("labels.txt", engine_copy / "labels.txt", payload=3)  # validated as a read manifest is
