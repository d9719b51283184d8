"""The artifact manifest (``manifest.json``) as typed data.

:class:`Manifest` is what every module reads: typed parts where the schema is fixed (the model
record, the input, the outputs) and plain dicts where a backend or tool decides the contents
(``backend_config``, ``runtime``, ``environment``, ``calibration``, ``labels``, ``reports``,
``preprocess``). :meth:`Manifest.from_json` validates a parsed ``manifest.json``;
:meth:`Manifest.to_json` writes the same JSON back (schema 1, the key order of the files written
since schema 1; keys this version does not know are kept as they were). An optional key a
hand-made manifest leaves out is written back with its default.

A leaf module: it imports nothing of the package but its errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ArtifactError

FORMAT = "rexnet-deploy-engine"
SCHEMA = 1


def _extra(data: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    """The keys of ``data`` this version has no field for (kept so that a rewrite loses nothing)."""
    return {k: v for k, v in data.items() if k not in known}


@dataclass(frozen=True)
class ModelRecord:
    """The reference the artifact was built from (``ModelSpec.from_record`` reads it back)."""

    name: str
    head: str
    num_classes: int | None = None
    test_size: bool = False
    weights: dict[str, Any] = field(default_factory=dict)  # WeightsSpec record: source, seed/path, hashes
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("name", "head", "num_classes", "test_size", "weights")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelRecord":
        return cls(name=data["name"], head=data["head"], num_classes=data.get("num_classes"),
                   test_size=data.get("test_size", False), weights=data.get("weights") or {},
                   extra=_extra(data, cls.KEYS))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "head": self.head, "num_classes": self.num_classes, "test_size": self.test_size,
                "weights": self.weights, **self.extra}


@dataclass(frozen=True)
class InputSpec:
    """The engine's one input: a float NCHW batch; ``shape`` has -1 for the batch dimension,
    ``batch`` is the (MIN, MAX) batch range the engine accepts."""

    name: str
    shape: list[int]
    batch: tuple[int, int]
    dtype: str = "float32"
    layout: str = "NCHW"
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("name", "dtype", "layout", "shape", "batch")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "InputSpec":
        lo, hi = data["batch"]
        return cls(name=data["name"], shape=list(data["shape"]), batch=(lo, hi), dtype=data.get("dtype", "float32"),
                   layout=data.get("layout", "NCHW"), extra=_extra(data, cls.KEYS))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "layout": self.layout, "shape": list(self.shape),
                "batch": list(self.batch), **self.extra}


@dataclass(frozen=True)
class OutputSpec:
    """One named output; ``shape`` has -1 for the batch dimension."""

    name: str
    dtype: str = "float32"
    shape: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    KEYS = ("name", "dtype", "shape")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "OutputSpec":
        shape = data.get("shape")
        return cls(name=data["name"], dtype=data.get("dtype", "float32"),
                   shape=list(shape) if isinstance(shape, list) else shape, extra=_extra(data, cls.KEYS))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape, **self.extra}


# every top-level key of a schema-1 manifest, in the order it is written
KEYS = ("format", "schema", "created", "backend", "precision", "device", "model", "input", "preprocess", "outputs",
        "labels", "calibration", "payload", "backend_config", "runtime", "environment", "files", "reports")
# the free-form parts: a dict, or null where a build has none (labels of a feature head, calibration of FP32)
_NULLABLE = ("labels", "calibration")
_DICTS = ("backend_config", "runtime", "environment", "reports")  # null reads as {}


@dataclass
class Manifest:
    """An artifact's ``manifest.json``. ``files`` maps payload file names to sha256; ``reports``
    holds the check/eval/bench reports by kind; ``extra``: top-level keys of no known field."""

    backend: str
    precision: str
    model: ModelRecord
    input: InputSpec
    outputs: list[OutputSpec]
    payload: str
    preprocess: dict[str, Any]
    device: str = "cpu"
    labels: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    backend_config: dict[str, Any] = field(default_factory=dict)
    runtime: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)
    created: str | None = None
    schema: int = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any, *, source: str | os.PathLike | None = None) -> "Manifest":
        """Validate a parsed ``manifest.json`` (``source``: the file, named in the errors). A foreign
        or schema-less manifest, a newer schema, or a malformed part raises ArtifactError."""
        where = f" {os.fspath(source)}" if source is not None else ""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArtifactError(f"not a rexnet-deploy artifact (foreign manifest):{where}".rstrip(":"))
        schema = data.get("schema")
        if not isinstance(schema, int):
            raise ArtifactError(f"manifest without a schema version:{where}".rstrip(":"))
        if schema > SCHEMA:
            raise ArtifactError(
                f"artifact schema {schema} is newer than this rexnet-deploy understands ({SCHEMA}); upgrade rexnet-deploy"
            )
        problem = manifest_problem(data)
        if problem:
            raise ArtifactError(f"malformed manifest{where}: {problem}")
        return cls(
            backend=data["backend"], precision=data["precision"], device=data.get("device", "cpu"),
            model=ModelRecord.from_json(data["model"]), input=InputSpec.from_json(data["input"]),
            outputs=[OutputSpec.from_json(o) for o in data["outputs"]], payload=data["payload"],
            preprocess=data["preprocess"], labels=data.get("labels"), calibration=data.get("calibration"),
            **{k: data.get(k) or {} for k in _DICTS}, files=dict(data["files"]), created=data.get("created"),
            schema=schema, extra=_extra(data, KEYS),
        )

    def to_json(self) -> dict[str, Any]:
        """The ``manifest.json`` content: the same keys, order and values as it was read (or built) with."""
        return {
            "format": FORMAT, "schema": self.schema, "created": self.created, "backend": self.backend,
            "precision": self.precision, "device": self.device, "model": self.model.to_json(),
            "input": self.input.to_json(), "preprocess": self.preprocess, "outputs": [o.to_json() for o in self.outputs],
            "labels": self.labels, "calibration": self.calibration, "payload": self.payload,
            "backend_config": self.backend_config, "runtime": self.runtime, "environment": self.environment,
            "files": self.files, "reports": self.reports, **self.extra,
        }

    def updated(self, **changes: Any) -> "Manifest":
        """A copy with top-level keys replaced by JSON values (``backend_config={...}``, a new key),
        validated as a read manifest is."""
        return Manifest.from_json({**self.to_json(), **changes})


def manifest_problem(m: dict[str, Any]) -> str | None:
    """The first structural problem of a manifest (a hand-edited or damaged one), or None."""
    expected = {"backend": str, "precision": str, "model": dict, "input": dict, "outputs": list, "files": dict,
                "preprocess": dict, "payload": str}
    for key, kind in expected.items():
        if not isinstance(m.get(key), kind):
            return f"'{key}' is missing or not a {kind.__name__}"
    inp = m["input"]
    shape, batch = inp.get("shape"), inp.get("batch")
    if not (isinstance(inp.get("name"), str) and isinstance(shape, list) and len(shape) == 4
            and all(isinstance(v, int) for v in shape) and isinstance(batch, list) and len(batch) == 2
            and all(isinstance(v, int) and v >= 1 for v in batch) and batch[0] <= batch[1]):
        return "'input' needs a name, a 4-D integer shape and a batch [MIN, MAX]"
    if not m["outputs"] or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in m["outputs"]):
        return "'outputs' must list named outputs"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in m["files"].items()):
        return "'files' must map file names to sha256 strings"
    if not isinstance(m["model"].get("head"), str) or not isinstance(m["model"].get("name"), str):
        return "'model' needs a name and a head"
    for key in (*_NULLABLE, *_DICTS):
        if m.get(key) is not None and not isinstance(m[key], dict):
            return f"'{key}' must be an object or null"
    return None
