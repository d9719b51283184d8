"""Export engine artifacts as a Triton Inference Server model repository.

Each artifact becomes ``REPO/<name>/config.pbtxt`` + ``REPO/<name>/1/<model file>`` (+ the
artifact's ``labels.txt`` for Triton's classification extension, and ``preprocess.json``: the
eval transform clients must apply, since Triton receives the float32 NCHW batch).

Each backend's target is its registry row's :class:`~rexnet_deploy.backends.base.TritonTarget`:
OpenVINO (``openvino`` backend), ONNX Runtime (``onnxruntime_onnx``), TensorRT
(``tensorrt_plan``, only an artifact holding a built engine), TorchScript
(``pytorch_libtorch``, which addresses tensors by position: ``INPUT__0``, ``OUTPUT__k``) and PyTorch 2
(``torch_aoti``: Triton's PyTorch backend loads the AOTInductor ``model.pt2``, by the same positional
names, one request of batch 1 at a time as yet). A target's ``max_batch`` caps ``max_batch_size``
where Triton documents a limit; the instance kind follows the device the artifact was built for
(a ``.pt2`` package is compiled for one device: a CPU package cannot serve ``KIND_GPU``).

A target's parameters are written only in the spelling and values its Triton backend reads. The
openvino backend can pin bf16 (``HINT_BF16: "YES"``) but not f32: an FP32 or INT8 OpenVINO engine's
config says so in a comment at its top (on a bf16 CPU Triton runs it in bf16).

All models are staged in a hidden folder beside the repository and renamed into place only once every
one of them is written (and its config parsed by Triton's own protobuf, where tritonclient is
installed): an error leaves the repository as it was. No Triton library is needed to export.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from . import backends
from .artifact import Artifact, load_artifact
from .backends.base import TritonTarget
from .errors import ArtifactError, BuildError, UsageError

CONFIG = "config.pbtxt"
VERSION = "1"
PREPROCESS = "preprocess.json"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# What a Triton backend accepts for a parameter, by the manifest value it is written for; a value
# not listed is not written. Triton's openvino backend reads only INFERENCE_NUM_THREADS,
# COMPILATION_NUM_THREADS, HINT_BF16, NUM_STREAMS and PERFORMANCE_HINT into the CPU plugin's
# properties (triton-inference-server/openvino_backend src/openvino.cc, ModelState::ParseParameters;
# any other key is never read), and HINT_BF16 only as "YES" → ov::hint::inference_precision(bf16):
# "NO" fails the model load (ParseParameterHelper: "expected the parameter 'HINT_BF16' to be YES").
_PARAMETER_VALUES: dict[str, dict[str, str]] = {"HINT_BF16": {"bf16": "YES"}}
# Triton's openvino backend sets no precision unless HINT_BF16 is YES: the CPU plugin's default
# runs a model in bf16 on a CPU with AVX-512 BF16 / AMX (f32 elsewhere). Said in the exported config.
_OPENVINO_UNPINNED = (
    "This {precision} engine runs f32 under rexnet-deploy (INFERENCE_PRECISION_HINT f32), but Triton's openvino "
    "backend cannot pin f32: it reads only HINT_BF16, and only as YES (src/openvino.cc, ParseParameterHelper). "
    "On a CPU with bf16 (AVX-512 BF16 or AMX) the CPU plugin's default then runs it in bf16, whose answers differ "
    "from the engine's; on other CPUs in f32, as the build checked it. For the engine's answers on a bf16 CPU, "
    "serve it with rexnet-deploy serve.")
_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
           "uint8": "TYPE_UINT8"}


@dataclass(frozen=True)
class ExportedModel:
    name: str
    path: Path
    platform: str
    max_batch_size: int
    kind: str  # KIND_CPU / KIND_GPU


@dataclass(frozen=True)
class _Plan:
    """What one artifact becomes in Triton, worked out once: its backend's target (the registry
    row's), the batch limit, the instance kind and the I/O names."""

    artifact: Artifact
    target: TritonTarget
    max_batch: int
    kind: str  # KIND_CPU / KIND_GPU
    input_name: str
    output_names: list[str]
    parameters: dict[str, str]
    notes: tuple[str, ...] = ()  # written as comments at the top of the config: what the config cannot pin


def triton_io_names(artifact: Artifact) -> tuple[str, list[str]]:
    """The input and output names the Triton config uses (positional ones for libtorch)."""
    return _io_names(artifact, _target(artifact))


def _io_names(artifact: Artifact, target: TritonTarget) -> tuple[str, list[str]]:
    outputs = [o.name for o in artifact.manifest.outputs]
    if target.positional_names:
        return "INPUT__0", [f"OUTPUT__{k}" for k in range(len(outputs))]
    return artifact.manifest.input.name, outputs


def _target(artifact: Artifact) -> TritonTarget:
    info = backends.BACKENDS.get(artifact.manifest.backend)
    if info is None or info.triton is None:
        supported = [name for name, row in backends.BACKENDS.items() if row.triton is not None]
        raise UsageError(f"{artifact.path}: cannot export a {artifact.manifest.backend!r} artifact to Triton "
                         f"(supported: {', '.join(supported)})")
    target = info.triton
    if target.requires and not artifact.manifest.backend_config.get(target.requires[0]):
        raise ArtifactError(f"{artifact.path} {target.requires[1]}")
    return target


def _plan(artifact: Artifact, max_batch: int | None) -> _Plan:
    """The artifact's plan; refuses a foreign backend, an unexportable artifact or a bad --max-batch."""
    target, m = _target(artifact), artifact.manifest
    parameters = {}
    for param, key in target.parameters.items():
        value = m.backend_config.get(key)
        if value and param in _PARAMETER_VALUES:  # only a value the backend accepts (see _PARAMETER_VALUES)
            value = _PARAMETER_VALUES[param].get(str(value))
        if value:
            parameters[param] = str(value)
    notes: tuple[str, ...] = ()
    if target.platform == "openvino" and m.backend_config.get("inference_precision_hint") == "f32":
        notes = (_OPENVINO_UNPINNED.format(precision=m.precision.upper()),)
    return _Plan(artifact, target, _max_batch(artifact, max_batch, target),
                 "KIND_GPU" if m.device.startswith("cuda") else "KIND_CPU", *_io_names(artifact, target), parameters,
                 notes)


def _max_batch(artifact: Artifact, requested: int | None, target: TritonTarget) -> int:
    lo, hi = artifact.manifest.input.batch
    if target.max_batch:  # what Triton's backend for this platform documents it runs
        most, why = target.max_batch
        if requested is not None and requested > most:
            raise UsageError(f"{artifact.path}: --max-batch {requested}: {why}")
        hi = min(hi, most)
    # an optimization profile (TensorRT) is a hard limit; Triton batches anything from 1 up
    profile = artifact.manifest.backend_config.get("profile") or {}
    if profile:
        hi = min(hi, int(profile.get("max", hi)))
        if int(profile.get("min", lo)) > 1:
            title = backends.get(artifact.manifest.backend).title
            raise UsageError(f"{artifact.path}: its {title} profile starts at batch {profile['min']}, but Triton sends "
                             "batches from 1; rebuild it with --batch 1:MAX")
    if requested is None:
        return hi
    if not 1 <= requested <= hi:
        raise UsageError(f"--max-batch {requested} is outside 1..{hi}, the batch range of {artifact.path}")
    return requested


def _dims(shape: Sequence[int]) -> str:
    return "[ " + ", ".join(str(int(v)) for v in shape[1:]) + " ]"  # batch dim dropped: max_batch_size > 0


def _dtype(name: str, where: str) -> str:
    if name not in _DTYPES:
        raise UsageError(f"{where}: dtype {name!r} has no Triton type here")
    return _DTYPES[name]


def config_text(artifact: Artifact, name: str, *, max_batch: int | None = None, instances: int = 1,
                max_queue_delay_us: int = 500, labels: bool = False) -> str:
    """The ``config.pbtxt`` of one artifact (names, dims and dtypes from its manifest)."""
    return _config(_plan(artifact, max_batch), name, instances=instances, max_queue_delay_us=max_queue_delay_us,
                   labels=labels)


def _config(plan: _Plan, name: str, *, instances: int, max_queue_delay_us: int, labels: bool) -> str:
    target, m, where = plan.target, plan.artifact.manifest, str(plan.artifact.path)
    lines = [*(f"# {line}" for note in plan.notes for line in textwrap.wrap(note, 98)),
             f'name: "{name}"',
             f'backend: "{target.platform}"' if target.uses_backend_field else f'platform: "{target.platform}"',
             f"max_batch_size: {plan.max_batch}",
             "input [",
             f'  {{ name: "{plan.input_name}", data_type: {_dtype(m.input.dtype, where)}, '
             f'dims: {_dims(m.input.shape)} }}',
             "]",
             "output ["]
    outs = []
    for k, (spec, out_name) in enumerate(zip(m.outputs, plan.output_names)):
        # logits + labels.txt: Triton's classification extension can answer top-k with names
        label = ', label_filename: "labels.txt"' if labels and k == 0 and m.model.head == "classify" else ""
        outs.append(f'  {{ name: "{out_name}", data_type: {_dtype(spec.dtype, where)}, '
                    f'dims: {_dims(spec.shape)}{label} }}')
    lines += [",\n".join(outs), "]",
              f"instance_group [ {{ count: {instances}, kind: {plan.kind} }} ]",
              *[f'parameters {{ key: "{k}", value: {{ string_value: "{v}" }} }}' for k, v in plan.parameters.items()],
              f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}"]
    return "\n".join(lines) + "\n"


def parse_config(text: str) -> Any:
    """Parse config text into Triton's own ``ModelConfig`` protobuf (needs ``tritonclient[grpc]``):
    an unknown field, a bad enum or a syntax error raises."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _can_parse() -> bool:
    import importlib.util

    with contextlib.suppress(ImportError, ValueError):
        return importlib.util.find_spec("tritonclient.grpc.model_config_pb2") is not None
    return False


def _write_model(plan: _Plan, name: str, folder: Path, *, validate: bool, instances: int,
                 max_queue_delay_us: int) -> ExportedModel:
    artifact = plan.artifact
    has_labels = bool((artifact.manifest.labels or {}).get("file"))
    text = _config(plan, name, instances=instances, max_queue_delay_us=max_queue_delay_us, labels=has_labels)
    if validate:
        try:
            parse_config(text)
        except Exception as exc:  # text_format.ParseError: a bug of config_text, never silently shipped
            raise BuildError(f"the generated {CONFIG} of {name} does not parse as Triton's ModelConfig: {exc}") from None
    (folder / VERSION).mkdir(parents=True)
    for src, dst in plan.target.files.items():
        if not artifact.file(src).is_file():
            raise ArtifactError(f"{artifact.path} is missing its payload file {src}")
        shutil.copyfile(artifact.file(src), folder / VERSION / dst)
    if has_labels:
        shutil.copyfile(artifact.file(artifact.manifest.labels["file"]), folder / "labels.txt")
    (folder / PREPROCESS).write_text(json.dumps(artifact.manifest.preprocess, indent=2) + "\n")
    (folder / CONFIG).write_text(text)
    return ExportedModel(name, folder, plan.target.platform, plan.max_batch, plan.kind)


def export_triton(engines: Sequence[str | os.PathLike], repo: str | os.PathLike, *,
                  names: Sequence[str] | None = None, force: bool = False, max_batch: int | None = None,
                  instances: int = 1, max_queue_delay_us: int = 500, validate: bool | None = None) -> list[ExportedModel]:
    """Write each engine artifact into the Triton repository ``repo`` as one model.

    ``names``: one model name per engine (default: the artifact folder's name). ``validate``:
    parse every config with Triton's protobuf (default: when tritonclient is installed)."""
    if not engines:
        raise UsageError("export-triton needs at least one ENGINE")
    if names and len(names) != len(engines):
        raise UsageError(f"--name given {len(names)} times for {len(engines)} engines: give one per engine or none")
    if instances < 1 or max_queue_delay_us < 0:
        raise UsageError("--instances must be >= 1 and --max-queue-delay-us >= 0")
    validate = _can_parse() if validate is None else validate
    artifacts = [load_artifact(path) for path in engines]  # verifies checksums: never export a damaged payload
    chosen = list(names) if names else [a.path.resolve().name for a in artifacts]
    plans = []
    for name, artifact in zip(chosen, artifacts):
        if not _NAME.match(name):
            raise UsageError(f"{name!r} is not a usable Triton model name (letters, digits, _ . -): pass --name")
        # refuses a foreign backend, an engine-less TensorRT artifact or a bad --max-batch before writing
        plans.append(_plan(artifact, max_batch))
    clashes = sorted({n for n in chosen if chosen.count(n) > 1})
    if clashes:
        raise UsageError(f"two engines would both be Triton model {clashes[0]!r}: pass --name for each")
    root = Path(repo).expanduser()
    if root.exists() and not root.is_dir():
        raise UsageError(f"--repo {root} exists and is not a folder")
    for name in chosen:
        if (root / name).exists() and not force:
            raise UsageError(f"{root / name} already exists (pass --force to replace it)")
        if (root / name).exists() and not (root / name / CONFIG).is_file():
            raise UsageError(f"{root / name} exists and is not a Triton model (no {CONFIG}); refusing to replace it")
    try:
        root.mkdir(parents=True, exist_ok=True)
        # staged beside the repository, not in it: a polling Triton would try to load a hidden folder
        stage = Path(tempfile.mkdtemp(dir=root.resolve().parent, prefix=f".{root.name}.triton-"))
    except OSError as exc:
        raise UsageError(f"cannot create --repo {root}: {exc.strerror or exc}") from None
    try:
        staged = [_write_model(p, n, stage / n, validate=validate, instances=instances,
                               max_queue_delay_us=max_queue_delay_us) for p, n in zip(plans, chosen)]
        done = []
        for model in staged:
            dest = root / model.name
            if dest.exists():  # --force: old aside, new in (a crash in between leaves one of them whole)
                os.replace(dest, stage / f".old-{model.name}")
            os.replace(model.path, dest)
            done.append(ExportedModel(model.name, dest, model.platform, model.max_batch_size, model.kind))
        return done
    finally:
        shutil.rmtree(stage, ignore_errors=True)


__all__ = ["ExportedModel", "config_text", "export_triton", "parse_config", "triton_io_names"]
