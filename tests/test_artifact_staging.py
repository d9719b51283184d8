"""Staging folders of killed builds: the next build sweeps those of dead builds, and only those."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rexnet_deploy import artifact
from rexnet_deploy.artifact import OWNER, ArtifactWriter, sweep_stale_staging
from rexnet_deploy.manifest import InputSpec, Manifest, ModelRecord, OutputSpec


def _record(pid: int, **extra) -> dict:
    return {"kind": artifact.OWNER_KIND, "host": socket.gethostname(), "pid": pid,
            "start": artifact._process_start(pid), **extra}


def _staging(parent: Path, name: str, record: dict | None) -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"half-written payload")
    if record is not None:
        (folder / OWNER).write_text(json.dumps(record))
    return folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_build_killed_with_sigkill_leaves_a_folder_the_next_build_sweeps(tmp_path):
    out = tmp_path / "engines" / "ts"
    code = ("import sys, time\nfrom rexnet_deploy.artifact import ArtifactWriter\n"
            f"w = ArtifactWriter({str(out)!r})\nw.path('payload.bin').write_bytes(b'x' * 1000)\n"
            "print(w.tmp, flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        staging = Path(proc.stdout.readline().strip())
        assert staging.is_dir() and staging.name.startswith(".ts.building-")
        owner = json.loads((staging / OWNER).read_text())
        assert owner["pid"] == proc.pid and owner["host"] == socket.gethostname()
        # while the builder lives, another build beside it leaves its folder alone
        with ArtifactWriter(tmp_path / "engines" / "other") as live:
            assert live.swept == [] and staging.is_dir()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert staging.is_dir() and not out.exists()  # kill -9: nothing at --out, the staging folder stays
    with ArtifactWriter(out) as writer:
        assert writer.swept == [staging]
        assert not staging.exists() and writer.tmp.is_dir()


def test_only_staging_folders_of_dead_builders_are_swept(tmp_path):
    dead = _dead_pid()
    stale = _staging(tmp_path, ".a.building-dead1", _record(dead))
    live = _staging(tmp_path, ".a.building-live1", _record(os.getpid()))  # this test's own process
    kept = [
        live,
        _staging(tmp_path, ".a.building-noowner", None),  # no record: cannot tell whose, so kept
        _staging(tmp_path, ".a.building-elsewhere", _record(dead, host=socket.gethostname() + "-other")),
        _staging(tmp_path, ".a.building-foreign", {"pid": dead}),  # not our record
        _staging(tmp_path, ".a.old-dead", _record(dead)),  # a publish swap's trash, not a staging folder
        _staging(tmp_path, "a.building-dead", _record(dead)),  # not hidden: not ours
        _staging(tmp_path, "unrelated", _record(dead)),
    ]
    (tmp_path / ".b.building-file").write_text(json.dumps(_record(dead)))  # a file, not a folder
    (tmp_path / ".a.building-broken").mkdir()
    (tmp_path / ".a.building-broken" / OWNER).write_text("{half")
    assert sweep_stale_staging(tmp_path) == [stale]
    assert not stale.exists()
    for folder in kept:
        assert (folder / "model.onnx").read_bytes() == b"half-written payload", folder
    assert (tmp_path / ".b.building-file").is_file() and (tmp_path / ".a.building-broken").is_dir()


@pytest.mark.skipif(artifact._process_start(os.getpid()) is None, reason="needs /proc to tell processes apart")
def test_a_reused_pid_does_not_keep_a_dead_builders_folder(tmp_path):
    # the recorded pid is alive, but it is another process than the one that started the build
    reused = _staging(tmp_path, ".a.building-reused", _record(os.getpid(), start="another-boot:1"))
    assert sweep_stale_staging(tmp_path) == [reused] and not reused.exists()


def test_the_owner_record_is_not_published_with_the_artifact(tmp_path):
    out = tmp_path / "art"
    with ArtifactWriter(out) as writer:
        assert json.loads((writer.tmp / OWNER).read_text())["pid"] == os.getpid()
        writer.path("payload.bin").write_bytes(b"engine")
        art = writer.finalize(Manifest(backend="x", precision="fp32", model=ModelRecord("m", "classify"),
                                       input=InputSpec("input", [-1, 3, 8, 8], (1, 1)), outputs=[OutputSpec("y")],
                                       payload="payload.bin", preprocess={}))
        assert set(art.manifest.files) == {"payload.bin"}
        writer.publish()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "payload.bin"]
    assert not any(".building-" in p.name for p in tmp_path.iterdir())
