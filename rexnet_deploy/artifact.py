"""The engine artifact: a directory of payload files plus ``manifest.json``.

Written atomically: everything goes into a hidden temporary sibling of ``--out`` that is renamed
into place at the end, so a failed or interrupted build leaves nothing at ``--out``. A build killed
outright (``kill -9``, power loss) cannot remove that staging folder itself; it records its owner
(host, pid, process start time) inside it, and the next build in the same folder sweeps the
staging folders whose owner process is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError, BuildError, one_line
from .manifest import SCHEMA, Manifest

MANIFEST = "manifest.json"
STAGING = ".building-"  # staging folders are ".{out.name}.building-XXXXXXXX" beside --out
OWNER = ".building-owner.json"  # inside a staging folder: which process is building it
OWNER_KIND = "rexnet-deploy-staging"
# mkdtemp/mkstemp create 0700/0600; published artifacts get the permissions of ordinary files
_UMASK = os.umask(0)
os.umask(_UMASK)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def to_json(data: Any) -> str:
    """Strict JSON (no NaN/Infinity tokens, which other parsers reject): non-finite floats → null."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(data), indent=2, allow_nan=False) + "\n"


def write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(to_json(data))
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def environment(**versions: str | None) -> dict[str, Any]:
    """The build environment: Python, platform, CPU (name and instruction-set class), and the
    library versions passed in."""
    from . import __version__
    from .cpu import isa_class

    env = {
        "rexnet_deploy": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_isa": isa_class(),  # what speed and bf16/INT8 results depend on; the name does not say it
        "cpu_count": os.cpu_count(),
    }
    try:
        import numpy

        env["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover
        pass
    env.update({k: v for k, v in versions.items() if v})
    return env


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@dataclass
class Artifact:
    """A loaded artifact directory and its manifest."""

    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        return self.path / name

    def save_manifest(self) -> None:
        write_json_atomic(self.path / MANIFEST, self.manifest.to_json())

    def set_report(self, kind: str, report: dict[str, Any]) -> None:
        """Store a check/bench report in the manifest (re-read first: another process may have written)."""
        fresh = read_manifest(self.path)
        fresh.reports[kind] = report
        self.manifest = fresh
        self.save_manifest()

    def replace_file(self, name: str, src: str | os.PathLike, **manifest_updates: Any) -> None:
        """Move ``src`` into the artifact as ``name`` (atomically), record its checksum, apply
        ``manifest_updates`` (top-level manifest keys, JSON values) and save the manifest — e.g. an
        engine recompiled from the artifact's stored graph on another host."""
        os.replace(src, self.file(name))
        self.manifest = self.manifest.updated(**manifest_updates)
        self.manifest.files[name] = file_sha256(self.file(name))
        self.save_manifest()


def read_manifest(path: str | os.PathLike) -> Manifest:
    root = Path(path)
    if not root.exists():
        raise ArtifactError(f"no such artifact: {root}")
    if not root.is_dir():
        raise ArtifactError(f"not an engine artifact (expected a folder with {MANIFEST}): {root}")
    mf = root / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"not an engine artifact (no {MANIFEST}): {root}")
    try:
        data = json.loads(mf.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"unreadable manifest {mf}: {one_line(exc)}") from None
    return Manifest.from_json(data, source=mf)


def load_artifact(path: str | os.PathLike, *, verify: bool = True) -> Artifact:
    """Read and validate ``manifest.json``; with ``verify``, check every payload file's sha256."""
    root = Path(path)
    manifest = read_manifest(root)
    if verify:
        verify_files(root, manifest.files)
    return Artifact(root, manifest)


def verify_files(root: Path, files: dict[str, str]) -> None:
    for name, expected in files.items():
        target = (root / name).resolve()
        if root.resolve() not in target.parents:
            raise ArtifactError(f"manifest names a file outside the artifact: {name}")
        if not target.is_file():
            raise ArtifactError(f"artifact {root} is missing its payload file {name}")
        actual = file_sha256(target)
        if actual != expected:
            raise ArtifactError(
                f"checksum mismatch for {root / name} (sha256 {actual[:12]}…, manifest says {expected[:12]}…): "
                "the artifact was modified or damaged; rebuild it"
            )


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (boot id + start time in clock ticks, from /proc), or None
    where /proc cannot say; with the pid it names one process, even after the pid is reused."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return f"{boot}:{fields[19]}"  # field 22, starttime


def _owner_record() -> dict[str, Any]:
    pid = os.getpid()
    return {"kind": OWNER_KIND, "host": socket.gethostname(), "pid": pid, "start": _process_start(pid)}


def _owner_is_dead(record: Any) -> bool:
    """True only when the recorded builder process is certainly gone: a record of another host,
    or one that cannot be read, counts as alive (its folder is kept)."""
    if not (isinstance(record, dict) and record.get("kind") == OWNER_KIND and isinstance(record.get("pid"), int)):
        return False
    if record.get("host") != socket.gethostname():
        return False  # a shared folder: that host's processes are not visible from here
    pid = record["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by another user
    except (OSError, OverflowError):
        return False
    start = record.get("start")
    return start is not None and _process_start(pid) not in (None, start)  # the pid now names another process


def sweep_stale_staging(parent: str | os.PathLike) -> list[Path]:
    """Remove the staging folders in ``parent`` left by builds that died without cleaning up
    (``kill -9``); returns them. Only hidden ``.*.building-*`` folders holding an owner record of
    a dead process go: a live build's folder, or one without a readable owner record, stays."""
    swept = []
    with contextlib.suppress(OSError):
        for folder in Path(parent).glob(f".*{STAGING}*"):
            if folder.is_symlink() or not folder.is_dir():
                continue
            try:
                record = json.loads((folder / OWNER).read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if _owner_is_dead(record):
                shutil.rmtree(folder, ignore_errors=True)
                if not folder.exists():  # a read-only parent keeps it; say only what went
                    swept.append(folder)
    return swept


class ArtifactWriter:
    """Collects payload files in a temporary directory; ``commit`` writes the manifest and renames."""

    def __init__(self, out: str | os.PathLike, *, force: bool = False):
        self.out = Path(out).expanduser()
        if self.out.exists() and not force:
            raise BuildError(f"--out {self.out} already exists (pass --force to replace it)")
        if self.out.exists() and not self.out.is_dir():
            raise BuildError(f"--out {self.out} exists and is not a folder")
        if self.out.exists() and force and any(self.out.iterdir()) and not (self.out / MANIFEST).exists():
            # --force replaces an artifact, never an unrelated folder full of someone's files
            raise BuildError(f"--out {self.out} is a non-empty folder that is not an artifact; refusing to replace it")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.swept = sweep_stale_staging(self.out.parent)
            self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}{STAGING}"))
            write_json_atomic(self.tmp / OWNER, _owner_record())
        except OSError as exc:  # a parent that is a file, a read-only or vanished folder
            if getattr(self, "tmp", None) is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
            raise BuildError(f"cannot create --out {self.out}: {exc.strerror or exc}") from None

    def path(self, name: str) -> Path:
        return self.tmp / name

    def finalize(self, manifest: Manifest) -> Artifact:
        """Checksum the payload and write the manifest (its ``created`` and ``files`` set here),
        still in the temporary directory, so the engine can be loaded and checked before it is
        published."""
        files = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file() and p.name != MANIFEST and p != self.tmp / OWNER:
                files[p.relative_to(self.tmp).as_posix()] = file_sha256(p)
        manifest = dataclasses.replace(
            manifest, schema=SCHEMA, files=files,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.artifact = Artifact(self.tmp, manifest)
        self.artifact.save_manifest()
        return self.artifact

    def publish(self) -> Artifact:
        """Rename the finished artifact into place at ``out``; returns it with its manifest as
        stored (the reports written since ``finalize`` included)."""
        os.chmod(self.tmp, 0o777 & ~_UMASK)
        (self.tmp / OWNER).unlink(missing_ok=True)  # bookkeeping of the build, not part of the artifact
        if self.out.exists():
            # swap: old aside, new in, old removed — a crash in between leaves one of them whole
            trash = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.old-"))
            os.replace(self.out, trash / "old")
            os.replace(self.tmp, self.out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)
        self.artifact = Artifact(self.out, read_manifest(self.out))
        return self.artifact

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "ArtifactWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp.exists():
            self.abort()

