"""Compiled-model cache folders: what a fresh replica reuses instead of compiling again.

OpenVINO compiles every batch size on first use and ONNX Runtime optimizes the graph at each
session start; both can keep the result on disk (OpenVINO's ``CACHE_DIR``, ONNX Runtime's
``optimized_model_filepath``). Those results are specific to the payload, the runtime version
and the CPU, so each lives in its own sub-folder of the cache root named by all three: a cache
written by another artifact, runtime release or CPU class is never read, just never looked at.
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .artifact import Artifact
from .cpu import cpuinfo_flags, isa_class
from .errors import UsageError


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
