"""Per-layer-group INT8 sensitivity on ONNX Runtime CPU, and the ``--exclude`` list that meets a target.

From one calibrated Q/DQ graph (ModelOpt's, as the TensorRT backend builds it), each variant is a
graph edit, not a new calibration: a consumer that should read FP32 is rewired from the
DequantizeLinear output to the QuantizeLinear input. So

1. each layer group (the stem, every ``features.N`` block, the head) is quantized *alone*, and the
   top-1 agreement it costs against the FP32 graph is measured on held-out images;
2. groups are kept in FP32 in order of cost until the whole graph's agreement drop is at most
   ``max_drop``; those groups are the ``--exclude`` patterns.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..harness.metrics import cosine_rows
from ..log import LogLike, Progress, as_build_log

_GROUP = re.compile(r"^/(stem|head|features/features\.\d+)/")
QDQ = ("QuantizeLinear", "DequantizeLinear")


def group_of(node_name: str) -> str | None:
    """``/features/features.3/conv_dw/conv/Conv`` → ``features.3``; ``/stem/...`` → ``stem``."""
    m = _GROUP.match(node_name)
    return None if m is None else m.group(1).split("/")[-1]


def group_pattern(group: str) -> str:
    """The ``--exclude`` regex of a group (searched in node names)."""
    return "^/" + re.escape(group if group in ("stem", "head") else f"features/{group}") + "/"


def layer_groups(model) -> dict[str, list[str]]:
    """Group → the compute nodes that read a DequantizeLinear output (the quantized ones), in graph order."""
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type in QDQ or not any(i in dq_out for i in node.input):
            continue
        g = group_of(node.name)
        if g is not None:
            groups.setdefault(g, []).append(node.name)
    return groups


def quantized_only(model, keep: Callable[[str], bool]):
    """A copy of the Q/DQ graph in which only nodes with ``keep(name)`` read quantized inputs; the
    others read the FP32 tensor the Q/DQ pair was inserted on. Unused Q/DQ nodes are dropped."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = out.graph.node
    dq_source = {}
    producer = {o: n for n in nodes for o in n.output}
    for node in nodes:
        if node.op_type == "DequantizeLinear":
            q = producer.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                dq_source[node.output[0]] = q.input[0]
    for node in nodes:
        if node.op_type in QDQ or keep(node.name):
            continue
        for i, name in enumerate(node.input):
            if name in dq_source:
                node.input[i] = dq_source[name]
    _drop_dead_nodes(out.graph)
    return out


def _drop_dead_nodes(graph) -> None:
    wanted = {o.name for o in graph.output}
    changed = True
    while changed:
        used = wanted | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if n.op_type in QDQ and not any(o in used for o in n.output)]
        changed = bool(dead)
        for n in dead:
            graph.node.remove(n)


class _Runner:
    """An ONNX Runtime CPU session over a model proto; logits for a batch of images."""

    def __init__(self, model, batch_size: int = 16):
        from ..ort_session import cpu_session
        from .modelopt_passes import fp32_quantize_inputs

        model, _rewired = fp32_quantize_inputs(model)  # TensorRT's FP16 Q/DQ graphs: quantized as TensorRT does
        # errors only, even when debugging: not the notices about Q/DQ initializers the edit left unused
        self._session = cpu_session(model, log_level=3)
        self._input = self._session.get_inputs()[0].name
        self._batch = batch_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        outs = [self._session.run(None, {self._input: images[i:i + self._batch]})[0]
                for i in range(0, len(images), self._batch)]
        return np.concatenate(outs).astype(np.float32)


def _score(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    cos = cosine_rows(logits, reference)
    return {"top1_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
            "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


def sweep(fp32_model, qdq_model, images: np.ndarray, *, max_drop: float = 0.01,
          progress: Progress | None = None) -> dict[str, Any]:
    """Rank the layer groups of ``qdq_model`` by the top-1 agreement each costs when quantized
    alone, then find the groups to keep in FP32 so that the whole graph loses at most ``max_drop``."""
    step = progress or (lambda _d, _i, _n: None)
    reference = _Runner(fp32_model)(images)
    groups = layer_groups(qdq_model)
    full = _score(_Runner(qdq_model)(images), reference)
    rows = []
    for i, (group, names) in enumerate(groups.items()):
        step("quantizing one group at a time", i, len(groups))
        members = set(names)
        score = _score(_Runner(quantized_only(qdq_model, members.__contains__))(images), reference)
        rows.append({"group": group, "pattern": group_pattern(group), "quantized_nodes": len(names), **score,
                     "cost": round(1.0 - score["top1_agreement"], 6)})
    step("quantizing one group at a time", len(groups), len(groups))
    rows.sort(key=lambda r: (-r["cost"], r["cosine_min"]))
    excluded: list[str] = []
    current = full
    target = 1.0 - max_drop
    for i, row in enumerate(rows):
        if current["top1_agreement"] >= target - 1e-12:
            break
        step("keeping the costliest groups in FP32", i, len(rows))
        excluded.append(row["group"])
        kept = set(excluded)
        current = _score(_Runner(quantized_only(qdq_model, lambda n: group_of(n) not in kept))(images), reference)
    for group in list(reversed(excluded)):  # put back what the target does not need
        trial = set(excluded) - {group}
        score = _score(_Runner(quantized_only(qdq_model, lambda n: group_of(n) not in trial))(images), reference)
        if score["top1_agreement"] >= target - 1e-12:
            excluded.remove(group)
            current = score
    return {
        "n_images": int(len(images)),
        "max_drop": max_drop,
        "full_int8": full,
        "groups": rows,
        "exclude": [group_pattern(g) for g in excluded],
        "excluded_groups": excluded,
        "with_exclude": current,
        "target_met": current["top1_agreement"] >= target - 1e-12,
    }


def exclude_flags(patterns: Iterable[str]) -> str:
    """The build flags for a pattern list, shell-quoted."""
    import shlex

    return " ".join(f"--exclude {shlex.quote(p)}" for p in patterns)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"### INT8 sensitivity: one layer group quantized at a time ({report['n_images']} held-out images)",
             "", f"whole graph INT8: top-1 agreement {report['full_int8']['top1_agreement']:.4f}, "
             f"min cosine {report['full_int8']['cosine_min']:.4f}", "",
             "| group | quantized nodes | top-1 agreement | min cosine | cost |", "|---|---:|---:|---:|---:|"]
    for r in report["groups"]:
        lines.append(f"| {r['group']} | {r['quantized_nodes']} | {r['top1_agreement']:.4f} | "
                     f"{r['cosine_min']:.4f} | {r['cost']:.4f} |")
    w = report["with_exclude"]
    met = "met" if report["target_met"] else "NOT met (every group tried)"
    lines += ["", f"target: drop <= {report['max_drop']:g} → {met}; keep in FP32: "
              f"{', '.join(report['excluded_groups']) or 'nothing'} (top-1 agreement {w['top1_agreement']:.4f}, "
              f"min cosine {w['cosine_min']:.4f})"]
    if report["exclude"]:
        lines.append(f"build flags: {exclude_flags(report['exclude'])}")
    return "\n".join(lines)


def held_out_images(calib_set, config, limit: int) -> np.ndarray:
    """Up to ``limit`` preprocessed held-out images of the calibration source (never calibration images)."""
    from ..errors import UsageError
    from ..images import load_images
    from ..preprocess import preprocess_batch

    paths: Sequence[Path] = calib_set.held_out[:limit]
    if not paths:
        raise UsageError(f"{calib_set.source} has no images left over after the calibration sample; "
                         "lower --calib-size so that some are held out for measuring")
    loaded = load_images(paths, skip_bad=True)
    return preprocess_batch(loaded.images, config)


def analyze(target: str, *, calib: str, weights: str = "pretrained", seed: int = 0, calib_size: int = 300,
            calib_seed: int = 0, method: str = "entropy", images: int = 100, max_drop: float = 0.01,
            log: LogLike = None) -> dict[str, Any]:
    """The sweep for ``target``: an artifact folder (its model and weights; a TensorRT INT8
    artifact's own Q/DQ graph is used as it is) or a model name with ``weights``. ``log``: a
    :class:`~rexnet_deploy.log.BuildLog` (messages and the sweep's progress) or a function."""
    import tempfile

    import onnx

    from .. import backends, calibration, onnx_export
    from ..artifact import MANIFEST, read_manifest
    from ..errors import UsageError
    from ..models import create_reference
    from ..spec import ModelSpec, WeightsSpec
    from . import modelopt_passes
    from .recipes import PYTORCH_QDQ_RECIPES

    log = as_build_log(log)
    # the TensorRT backend's graph tools (ModelOpt, onnx): missing, one line naming the extra
    backends.load_module(backends.get("tensorrt"), for_build=True)
    if not 0 <= max_drop < 1:
        raise UsageError(f"--max-drop must be in [0, 1), got {max_drop}")
    if images < 1:
        raise UsageError("--images must be at least 1")
    qdq_source: Path | None = None  # a TensorRT INT8 artifact's own graph, else calibrated here
    recorded = None
    if (Path(target) / MANIFEST).is_file():
        manifest = read_manifest(target)
        m = manifest.model
        if m.head != "classify":
            raise UsageError("sensitivity ranks layers by top-1 agreement: it needs a classify-head model")
        model = ModelSpec.from_record(m.to_json())
        recipe = manifest.backend_config.get("precision_pass", {}).get("recipe")
        if recipe in PYTORCH_QDQ_RECIPES:  # its graph is of the BatchNorm-folded model: not the FP32 export's layers
            log(f"note: {target} was quantized in PyTorch (--recipe {recipe}); "
                "ranking layers of ModelOpt's ONNX PTQ of its model instead")
        elif manifest.backend == "tensorrt" and manifest.precision == "int8":
            qdq_source = Path(target) / manifest.backend_config["graph"]
            recorded = manifest.calibration
            if recorded:  # draw the artifact's own calibration sample, so the measuring images are held out
                calib_size, calib_seed = int(recorded.get("requested") or recorded["n"]), int(recorded["seed"])
    else:
        model = ModelSpec(name=target, weights=WeightsSpec.parse(weights, seed))
    calib_set = calibration.select(calib, calib_size, seed=calib_seed)
    log(f"creating the {model.name} reference ({model.weights.describe()})")
    ref = create_reference(model)
    with tempfile.TemporaryDirectory(prefix="rexnet-sensitivity-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        log("exporting the FP32 ONNX graph")
        onnx_export.export(ref, fp32)
        from_artifact = qdq_source is not None
        calib_set.load(ref.data_config)
        if from_artifact and (recorded is None or recorded.get("list_sha256") != calib_set.list_sha256()):
            log(f"warning: the artifact was not calibrated on this sample of {calib_set.source}; "
                "some measuring images may be calibration images")
        if not from_artifact:
            log(f"calibrating INT8 Q/DQ (ModelOpt, {method}) on {len(calib_set)} images")
            qdq_source = Path(tmp) / "int8.onnx"
            modelopt_passes.quantize_int8(fp32, qdq_source, calib=calib_set, method=method, warn=log)
        else:
            log(f"using the artifact's Q/DQ graph {qdq_source}")
        held = held_out_images(calib_set, ref.data_config, images)
        log(f"measuring on {len(held)} held-out images of {calib_set.source}")
        report = sweep(onnx.load(str(fp32)), onnx.load(str(qdq_source)), held, max_drop=max_drop, progress=log.progress)
    report["model"] = model.name
    report["calibration"] = {"source": str(calib_set.source), "method": method,
                             "graph": "the artifact's" if from_artifact else "calibrated here"}
    return report
