"""Compiled-model cache folders: what a fresh replica reuses instead of compiling again.

OpenVINO compiles every batch size on first use and ONNX Runtime optimizes the graph at each
session start; both can keep the result on disk (OpenVINO's ``CACHE_DIR``, ONNX Runtime's
``optimized_model_filepath``). Those results are specific to the payload, the runtime version
and the CPU, so each lives in its own sub-folder of the cache root named by all three: a cache
written by another artifact, runtime release or CPU class is never read, just never looked at.

Every cached file is verified before a runtime reads it (:class:`VerifiedFolder`): its sha256 is
recorded in a sidecar ``<file>.sha256`` once the file is complete, and a file that does not match
its record, or has none (a foreign file under a name the runtime looks up, a replica's half-written
one), is removed before the runtime is pointed at the folder and rebuilt from the payload, whose
checksums ``Engine.load`` verifies. So a damaged cache costs a compile, never an answer. The
records live beside the files: they catch damage and foreign files, not someone who can write the
folder on purpose (they can rewrite a record too); keep it writable by the service only.
Torch-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from .artifact import Artifact, file_sha256
from .cpu import cpuinfo_flags, isa_class
from .errors import UsageError

RECORD_SUFFIX = ".sha256"  # <file>.sha256 beside each cached file: its sha256, written once the file is complete
log = logging.getLogger("rexnet_deploy.cache")


def cpu_key() -> str:
    """The ISA class plus a digest of every CPU flag: two hosts of one class can still differ in
    extensions a compiled kernel picks (avx512_bf16, amx_int8), and such a blob must not travel."""
    flags = " ".join(sorted(set(cpuinfo_flags())))
    return f"{isa_class()}-{hashlib.sha256(flags.encode()).hexdigest()[:8]}"


def artifact_key(artifact: Artifact) -> str:
    """A digest of the artifact's payload checksums, backend and precision (the manifest's
    ``files``: checked against the payload at load unless ``verify=False``)."""
    data = {"files": artifact.manifest.files, "backend": artifact.manifest.backend, "precision": artifact.manifest.precision}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def cache_folder(root: str | os.PathLike, artifact: Artifact, runtime: str, version: str) -> Path:
    """``root/<backend>-<artifact digest>/<runtime>-<version>/<cpu key>``, created if missing."""
    safe_version = "".join(c if c.isalnum() or c in ".-_" else "_" for c in version)
    folder = Path(root) / f"{artifact.manifest.backend}-{artifact_key(artifact)}" / f"{runtime}-{safe_version}" / cpu_key()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the cache folder {folder}: {exc.strerror or exc}") from None
    return folder


class VerifiedFolder:
    """A cache folder whose files are checked against their recorded sha256 before a runtime reads
    them. :meth:`check` before the runtime may read the folder (OpenVINO: before ``CACHE_DIR`` is set
    and before each compile; ONNX Runtime: before opening the cached graph); :meth:`record` after the
    runtime wrote a file. Replicas sharing the folder need no lock: each record is its own file,
    written under a temporary name and renamed; a record of a file another replica was still writing
    fails its check later, which costs a rebuild, never an answer. Files already hashed by this
    process are not hashed again while their inode, size and times are unchanged."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._known: dict[str, tuple[int, ...]] = {}  # name -> stat of the file this process verified
        self._lock = threading.Lock()

    def files(self) -> list[Path]:
        """The files a runtime could read: not the records, not hidden temporaries (``.name...tmp``)."""
        try:
            entries = list(self.folder.iterdir())
        except FileNotFoundError:
            return []
        return sorted(p for p in entries if not p.name.startswith(".") and not p.name.endswith(RECORD_SUFFIX)
                      and p.is_file())

    def check(self) -> bool:
        """Remove each file that fails its record or has none (and records whose file is gone), with
        one warning line naming them. False when such a file cannot be removed (a read-only folder):
        the runtime must then not read the folder at all (said in a second warning line)."""
        removed: list[str] = []
        stuck: list[str] = []
        with self._lock:
            for path in self.files():
                stamp = _stamp(path)
                if stamp is None or self._known.get(path.name) == stamp:
                    continue
                recorded = _read_record(path)
                try:
                    good = recorded is not None and file_sha256(path) == recorded
                except FileNotFoundError:  # removed meanwhile by another replica
                    continue
                except OSError:  # unreadable here: not verifiable, so not usable
                    good = False
                if good:
                    self._known[path.name] = stamp
                    continue
                self._known.pop(path.name, None)
                why = f"{path.name} {'failed its checksum' if recorded else 'is not recorded'}"
                try:
                    _remove(path)
                    _remove(_record_path(path))
                    removed.append(why)
                except OSError as exc:
                    stuck.append(f"{why} and cannot be removed ({exc.strerror or exc})")
            for record in self.folder.glob("*" + RECORD_SUFFIX):
                if not record.with_name(record.name[:-len(RECORD_SUFFIX)]).exists():
                    with contextlib.suppress(OSError):
                        _remove(record)
        if removed:
            log.warning("cache file%s %s (in %s): removed, rebuilt from the verified payload",
                        "s" if len(removed) > 1 else "", "; ".join(removed), self.folder)
        if stuck:
            log.warning("cache file%s %s (in %s): this engine does not use the cache folder",
                        "s" if len(stuck) > 1 else "", "; ".join(stuck), self.folder)
        return not stuck

    def publish(self, tmp: Path, name: str) -> None:
        """Move a complete file written under the temporary ``tmp`` into place as ``name``, its record
        written first: a replica never sees the file without its record (so never removes it as foreign)."""
        with self._lock:
            digest = file_sha256(tmp)
            if self._write_record(self.folder / name, digest):
                os.replace(tmp, self.folder / name)
                stamp = _stamp(self.folder / name)
                if stamp is not None:
                    self._known[name] = stamp

    def record(self, names: list[str] | None = None) -> None:
        """Record the sha256 of ``names`` (default: every file without a record: what the runtime
        wrote since the last :meth:`check`)."""
        with self._lock:
            paths = self.files() if names is None else [self.folder / n for n in names]
            for path in paths:
                if names is None and _record_path(path).exists():
                    continue
                stamp = _stamp(path)
                if stamp is None:
                    continue
                try:
                    digest = file_sha256(path)
                except FileNotFoundError:
                    continue
                if self._write_record(path, digest):
                    self._known[path.name] = stamp

    @staticmethod
    def _write_record(path: Path, digest: str) -> bool:
        record = _record_path(path)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(digest + "\n")
            os.replace(tmp, record)  # atomic: a reader sees the old record or the whole new one
            return True
        except OSError as exc:  # the cache is only a speed-up: serve on, unrecorded (removed at the next check)
            log.warning("cannot record the checksum of cache file %s: %s", path, exc.strerror or exc)
            return False
        finally:
            tmp.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def _read_record(path: Path) -> str | None:
    try:
        text = _record_path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def _stamp(path: Path) -> tuple[int, ...] | None:
    """What changes when the file's content can have: inode, size, mtime and ctime (ctime cannot be set back)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
